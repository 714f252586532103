"""streamlearn: learn together across nodes from drifting data streams, with little communication."""

from streamlearn.errors import BadRecordError, ConfigError, StreamlearnError

__version__ = "0.1.0"
__all__ = ["StreamlearnError", "ConfigError", "BadRecordError", "__version__", "load"]


def load(path, device=None):
    """A model written by ``streamlearn export`` (or :func:`streamlearn.model_file.save`), as a river learner.

    ``path`` is the ``--out`` stem, or its ``.json`` or ``.safetensors``. The learner gives the
    exported model's predictions (``predict_one``, ``predict_proba_one``, ``predict_many``,
    ``predict_proba_many``) without Kafka; see :func:`streamlearn.model_file.load`.
    """
    from streamlearn.model_file import load as _load  # lazy: `import streamlearn` stays cheap (no torch)

    return _load(path, device=device)
