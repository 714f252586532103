# streamlearn in a container: the image of the producer, node and sync services of docker-compose.yml.
#
#   docker build -t streamlearn .                                   # CPU build of torch (default)
#   docker build --build-arg TORCH_INDEX_URL=https://pypi.org/simple -t streamlearn .   # CUDA build of torch
#
# PyPI's Linux x86_64 torch wheels are the CUDA build (with the CUDA libraries as pip packages): run that
# image with an NVIDIA GPU (NVIDIA Container Toolkit, `--gpus all` or the compose override in README.md,
# section "Run it as services: docker compose up", subsection GPU)
# and the learners and the sync service's model bank use cuda. A CUDA-specific index such as
# https://download.pytorch.org/whl/cu128 works too, when it has this torch version.
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# torch first, in its own layer: the largest download, redone only when its version or index changes.
# The CPU index must not serve the other packages, hence a separate step.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

COPY pyproject.toml README.md ./
COPY streamlearn ./streamlearn
COPY connectors ./connectors
# torch is already there (torch==2.13.0 satisfies the package's range), so pip keeps that build.
RUN pip install . \
    && useradd --create-home --uid 10001 streamlearn

USER streamlearn
# Every service serves Prometheus metrics on this port (--metrics-port 9100 --metrics-host 0.0.0.0).
EXPOSE 9100
ENTRYPOINT ["streamlearn"]
CMD ["--help"]
