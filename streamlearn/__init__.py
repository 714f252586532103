"""streamlearn: learn together across nodes from drifting data streams, with little communication."""

from streamlearn.errors import BadRecordError, ConfigError, StreamlearnError

__version__ = "0.1.0"
__all__ = ["StreamlearnError", "ConfigError", "BadRecordError", "__version__"]
