"""Protocols by name: the registry, the CLI spec parser and the ``make_protocol`` factory."""

from __future__ import annotations

from streamlearn.errors import ConfigError
from streamlearn.sync.dynamic import Dynamic
from streamlearn.sync.fedavg import FedAvg
from streamlearn.sync.groups import Grouped
from streamlearn.sync.hierarchy import Hierarchy
from streamlearn.sync.lsgd import LSGD
from streamlearn.sync.nosync import NoSync
from streamlearn.sync.periodic import Continuous, Periodic
from streamlearn.sync.protocol import Protocol

__all__ = ["PROTOCOLS", "parse_spec", "make_protocol"]

PROTOCOLS: dict[str, type[Protocol]] = {cls.name: cls for cls in (NoSync, Continuous, Periodic, FedAvg, Dynamic, LSGD)}

# Constructor arguments that are not hyperparameters, accepted by make_protocol as keywords.
_COMMON = ("initial_nodes", "device", "dtype", "n_params")
#: Settings of every averaging protocol that make_protocol handles itself: ``split=N`` runs the protocol
#: per group of nodes (:class:`~streamlearn.sync.groups.Grouped`); ``shards=S,root=R`` runs it per shard
#: of the nodes with a root average (:class:`~streamlearn.sync.hierarchy.Hierarchy`).
WRAPPERS: dict[str, type] = {"split": int, "shards": int, "root": int}


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


def shard_layout(spec: str) -> tuple[str, int, int]:
    """``(spec of one shard's own protocol, shards, root)``: a sharded spec with ``shards`` and ``root`` taken
    out (a node's rule and one shard's sync service run the shard's own protocol). Unsharded: ``(spec, 1, 0)``.

    >>> shard_layout("periodic:b=8,shards=3,root=2")
    ('periodic:b=8', 3, 2)
    >>> shard_layout("dynamic:delta=0.5")
    ('dynamic:delta=0.5', 1, 0)
    """
    name, parsed = parse_spec(spec)
    shards, root = parsed.pop("shards", None), parsed.pop("root", None)
    if shards is None:
        return spec, 1, 0
    if root is not None and root < 0:
        raise ConfigError(f"root must be an integer >= 0, got {root!r}")
    if shards < 1:
        raise ConfigError(f"shards must be an integer >= 1, got {shards!r}")
    return name + (":" + ",".join(f"{k}={v}" for k, v in parsed.items()) if parsed else ""), shards, root or 0


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
    >>> p = make_protocol("periodic:b=8,shards=2,root=4", m=4, d=10, seed=0)   # per shard of nodes, a root
    >>> type(p).__name__, p.b, p.shards, p.root
    ('Hierarchy', 8, 2, 4)
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
    split, shards, root = (parsed.pop(key, None) for key in ("split", "shards", "root"))
    if root is not None and shards is None:
        raise ConfigError(f"protocol {name!r}: root={root!r} averages shards: set shards=S too")
    if split is not None and shards is not None:
        raise ConfigError(f"protocol {name!r}: split={split!r} and shards={shards!r} do not combine; choose one")
    protocol = cls(m, d, w0=w0, seed=seed, **parsed)
    if shards is not None:
        return Hierarchy(protocol, shards=shards, root=0 if root is None else root)
    return protocol if split is None else Grouped(protocol, split=split)
