# streamlearn in a container: the image of the producer, node, sync and connector services of docker-compose.yml.
#
#   docker build -t streamlearn .                                   # CPU build of torch (default)
#   docker build --build-arg TORCH_INDEX_URL=https://pypi.org/simple -t streamlearn .   # CUDA build of torch
#
# PyPI's Linux x86_64 torch wheels are the CUDA build (with the CUDA libraries as pip packages): run that
# image with an NVIDIA GPU (NVIDIA Container Toolkit, `--gpus all` or the compose override in README.md,
# section "Run it as services: docker compose up", subsection GPU)
# and the learners and the sync service's model bank use cuda. A CUDA-specific index such as
# https://download.pytorch.org/whl/cu128 works too, when it has this torch version.
#
# Layers, from the most to the least stable: torch; the other dependencies, read from pyproject.toml alone;
# then the code, installed without dependencies. An edit of the code rebuilds only the last two steps.
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# Extras of pyproject.toml installed with the dependencies (comma-separated; one pyproject.toml does not
# declare is skipped): the MQTT client of `streamlearn connect mqtt`. What only the demo and plots need stays out.
ARG EXTRAS=mqtt

# NUMBA_CACHE_DIR: numba keeps the compiled node kernel (streamlearn.node.run_kernel) where the service user may write
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The user the services run as, and the folders of their checkpoints (--checkpoint-dir) and state
# (--state-dir): a named volume mounted there starts with this owner.
RUN useradd --create-home --uid 10001 streamlearn \
    && mkdir -p /var/lib/streamlearn/checkpoints /var/lib/streamlearn/state \
    && chown -R streamlearn:streamlearn /var/lib/streamlearn

# torch first, in its own layer: the largest download, redone only when its version or index changes.
# The CPU index must not serve the other packages, hence a separate step.
RUN pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

# The other dependencies, from pyproject.toml only (torch==2.13.0 already satisfies the package's range, so
# pip keeps that build). Redone when pyproject.toml or EXTRAS change, not when the code does.
COPY pyproject.toml docker/requirements.py /tmp/build/
RUN python /tmp/build/requirements.py /tmp/build/pyproject.toml "${EXTRAS}" > /tmp/build/requirements.txt \
    && pip install -r /tmp/build/requirements.txt \
    && rm -r /tmp/build

COPY docker/healthcheck.py /usr/local/bin/streamlearn-healthcheck

# The code last, without dependencies (all in place above).
COPY pyproject.toml README.md ./
COPY streamlearn ./streamlearn
COPY connectors ./connectors
RUN pip install --no-deps .

USER streamlearn
# Every service serves Prometheus metrics on this port (--metrics-port 9100 --metrics-host 0.0.0.0).
EXPOSE 9100
# Healthy while the command's metrics endpoint (its --metrics-port) answers; a command without one is
# healthy while it runs (docker/healthcheck.py).
HEALTHCHECK --interval=15s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "/usr/local/bin/streamlearn-healthcheck"]
ENTRYPOINT ["streamlearn"]
CMD ["--help"]
