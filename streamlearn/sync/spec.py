"""Protocols by name: the registry, the CLI spec parser and the ``make_protocol`` factory."""

from __future__ import annotations

from streamlearn.errors import ConfigError
from streamlearn.sync.dynamic import Dynamic
from streamlearn.sync.fedavg import FedAvg
from streamlearn.sync.groups import Grouped
from streamlearn.sync.lsgd import LSGD
from streamlearn.sync.nosync import NoSync
from streamlearn.sync.periodic import Continuous, Periodic
from streamlearn.sync.protocol import Protocol

__all__ = ["PROTOCOLS", "parse_spec", "make_protocol"]

PROTOCOLS: dict[str, type[Protocol]] = {cls.name: cls for cls in (NoSync, Continuous, Periodic, FedAvg, Dynamic, LSGD)}

# Constructor arguments that are not hyperparameters, accepted by make_protocol as keywords.
_COMMON = ("initial_nodes", "device", "dtype", "n_params")
#: Settings of every averaging protocol that make_protocol handles itself: ``split=N`` runs the protocol
#: per group of nodes (:class:`~streamlearn.sync.groups.Grouped`).
WRAPPERS: dict[str, type] = {"split": int}


def _known(name: str) -> dict[str, type]:
    return {**PROTOCOLS[name].params, **({} if name == "nosync" else WRAPPERS)}


def _convert(name: str, key: str, kind: type, text: str):
    try:
        if kind is int:
            return int(text)
        return kind(text)
    except ValueError:
        raise ConfigError(f"protocol {name!r}: {key} must be {kind.__name__}, got {text!r}") from None


def parse_spec(spec: str) -> tuple[str, dict]:
    """Split a CLI spec like ``"dynamic:delta=0.5,b=1"`` into the protocol name and typed parameters.

    Raises ConfigError naming the bad protocol, key or value.

    Examples
    --------
    >>> parse_spec("dynamic:delta=0.5,b=1")
    ('dynamic', {'delta': 0.5, 'b': 1})
    >>> parse_spec("nosync")
    ('nosync', {})
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"protocol spec must be a non-empty string, got {spec!r}")
    name, _, rest = spec.strip().partition(":")
    name = name.strip().lower()
    if name not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {name!r} in {spec!r}; choose from {', '.join(PROTOCOLS)}")
    known = _known(name)
    params: dict = {}
    for item in filter(None, (part.strip() for part in rest.split(","))):
        key, eq, value = (s.strip() for s in item.partition("="))
        if not eq or not key or not value:
            raise ConfigError(f"protocol {name!r}: expected key=value, got {item!r}")
        if key not in known:
            allowed = ", ".join(known) or "none"
            raise ConfigError(f"protocol {name!r} has no parameter {key!r} (parameters: {allowed})")
        if key in params:
            raise ConfigError(f"protocol {name!r}: parameter {key!r} given twice")
        params[key] = _convert(name, key, known[key], value)
    return name, params


def make_protocol(spec_or_name: str, m: int, d: int, w0=None, seed: int | None = None, **params) -> Protocol:
    """Build a protocol from a spec string (or bare name) plus keyword hyperparameters.

    Keywords may also set ``initial_nodes``, ``device``, ``dtype`` and ``n_params``; a key set both in
    the spec and as a keyword is a ConfigError.

    Examples
    --------
    >>> p = make_protocol("periodic:b=8", m=4, d=10, seed=0)
    >>> type(p).__name__, p.b
    ('Periodic', 8)
    >>> make_protocol("fedavg", m=4, d=10, seed=0, b=4, C=0.5).C
    0.5
    >>> p = make_protocol("periodic:b=1,split=3", m=4, d=10, seed=0)   # one periodic per group of nodes
    >>> type(p).__name__, p.b, p.split
    ('Grouped', 1, 3)
    """
    name, parsed = parse_spec(spec_or_name)
    cls = PROTOCOLS[name]
    for key, value in params.items():
        if key not in _known(name) and key not in _COMMON:
            allowed = ", ".join(_known(name)) or "none"
            raise ConfigError(f"protocol {name!r} has no parameter {key!r} (parameters: {allowed})")
        if key in parsed:
            raise ConfigError(f"protocol {name!r}: parameter {key!r} given in the spec and as a keyword")
        parsed[key] = value
    split = parsed.pop("split", None)
    protocol = cls(m, d, w0=w0, seed=seed, **parsed)
    return protocol if split is None else Grouped(protocol, split=split)
