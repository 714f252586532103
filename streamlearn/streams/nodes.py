"""One stream per node: per-node sources or one split source, with drifts scheduled per node."""

from __future__ import annotations

import numpy as np

from streamlearn.errors import ConfigError
from streamlearn.streams.base import Stream
from streamlearn.streams.drift_spec import parse_drift
from streamlearn.streams.injectors import inject
from streamlearn.streams.registry import CONCEPT_SEED_PARAMS, make_source
from streamlearn.streams.split import Split

__all__ = ["node_streams", "parse_schedule", "parse_split"]


def parse_schedule(schedule: str, nodes: int) -> list:
    """Offset of the drifts at each node (None: that node does not drift).

    ``"all"``: every node at the given positions; ``"staggered:GAP"``: node k at position + k * GAP;
    ``"subset:0,3,5"``: only the listed nodes.

    Examples
    --------
    >>> parse_schedule("staggered:100", 3), parse_schedule("subset:0,2", 3)
    ([0, 100, 200], [0, None, 0])
    """
    text = str(schedule).strip()
    kind, _, arg = text.partition(":")
    kind = kind.strip().lower()
    if kind == "all" and not arg:
        return [0] * nodes
    if kind == "staggered":
        try:
            gap = int(arg)
        except ValueError:
            gap = -1
        if gap < 0:
            raise ConfigError(f"bad schedule {schedule!r}: expected staggered:GAP with an integer GAP >= 0")
        return [k * gap for k in range(nodes)]
    if kind == "subset":
        try:
            chosen = {int(a) for a in arg.split(",") if a.strip()}
        except ValueError:
            chosen = set()
        if not chosen:
            raise ConfigError(f"bad schedule {schedule!r}: expected subset:0,3,5 (node ids)")
        outside = sorted(k for k in chosen if not 0 <= k < nodes)
        if outside:
            raise ConfigError(f"bad schedule {schedule!r}: nodes {outside} are not in 0..{nodes - 1}")
        return [0 if k in chosen else None for k in range(nodes)]
    raise ConfigError(f"bad schedule {schedule!r}: expected 'all', 'staggered:GAP' or 'subset:0,3,5'")


def parse_split(split: str) -> dict:
    """Split syntax to ``Split`` keyword arguments.

    ``"round-robin"``; ``"key:COLUMN"`` or ``"key:COLUMN:hash"`` (an integer value mod m, any other by
    a stable hash); ``"key:COLUMN:value"`` (integer value mod m); ``"key:COLUMN:V=N,V=N,..."`` (value V
    to node N; V a number, or a text key such as a machine id).

    Examples
    --------
    >>> parse_split("key:day:1=0,2=1")
    {'key': 'day', 'how': 'map', 'mapping': {1.0: 0, 2.0: 1}}
    >>> parse_split("key:machine:press-1=0,lathe=1")["mapping"]
    {'press-1': 0, 'lathe': 1}
    """
    text = str(split).strip()
    if text.lower() in ("round-robin", "roundrobin", "rr"):
        return {"key": None}
    kind, _, rest = text.partition(":")
    column, _, how = rest.partition(":")
    if kind.strip().lower() != "key" or not column.strip():
        raise ConfigError(f"bad split {split!r}: expected 'round-robin', 'key:COLUMN[:hash|:value|:V=N,...]'")
    how = how.strip() or "hash"
    if how in ("hash", "value"):
        return {"key": column.strip(), "how": how}
    mapping = {}
    for item in how.split(","):
        value, eq, node = item.rpartition("=")
        value = value.strip()
        try:
            if not eq or not value:
                raise ValueError
            node = int(node)
        except ValueError:
            raise ConfigError(f"bad split {split!r}: mapping item {item!r} is not VALUE=NODE") from None
        try:
            mapping[float(value)] = node
        except ValueError:
            mapping[value] = node  # a text key
    return {"key": column.strip(), "how": "map", "mapping": mapping}


def node_streams(source, nodes: int, drifts=(), schedule: str = "all", split: str | None = None,
                 seed: int = 0, *, keep_key: bool = False, key_map: dict | None = None,
                 **source_params) -> list:
    """The streams of ``nodes`` nodes, with ground-truth events per node.

    Parameters
    ----------
    source
        A source name for ``make_source`` (or, with ``split``, a ready ``Stream``).
    nodes
        Number of nodes m.
    drifts
        Drift specs (strings or ``DriftSpec``) applied, in order, at each scheduled node.
    schedule
        ``"all"`` | ``"staggered:GAP"`` (node k drifts at position + k * GAP) | ``"subset:0,3,5"``.
    split
        None: one source per node, node k seeded ``seed + k`` with the same concept (Hyperplane and RBF
        share ``model_seed = seed`` unless given; a CSV file gives every node the same records).
        ``"round-robin"`` or ``"key:COLUMN[...]"`` (see ``parse_split``): one source seeded ``seed``
        divided among the nodes; positions then count each node's own samples. A CSV file's key
        column is kept as text and is not a feature unless listed (``CSVSource(key=...)``).
    seed
        Seed of the sources and of the drifts (the same drift definition at every node).
    keep_key
        With a key split, keep the key column as a feature.
    key_map
        With a key split, an explicit {key value: node} mapping (instead of the hash).
    **source_params
        Parameters of the source (``SOURCES[name]["params"]``).

    Examples
    --------
    >>> streams = node_streams("sea", 3, ["sudden@1000"], schedule="staggered:500", seed=1)
    >>> [(e.node, e.position) for s in streams for e in s.drift_events()]
    [(0, 1000), (1, 1500), (2, 2000)]
    """
    if isinstance(nodes, bool) or not isinstance(nodes, (int, np.integer)) or nodes < 1:
        raise ConfigError(f"nodes must be a positive integer, got {nodes!r}")
    nodes = int(nodes)
    specs = [parse_drift(d) for d in ([drifts] if isinstance(drifts, str) else drifts)]
    offsets = parse_schedule(schedule, nodes)
    if split is None:
        if isinstance(source, Stream):
            raise ConfigError("a ready Stream can only be divided among nodes: pass split='round-robin' or 'key:...'")
        if keep_key or key_map:
            raise ConfigError("keep_key and key_map need split='key:COLUMN'")
        params = dict(source_params)
        shared = CONCEPT_SEED_PARAMS.get(str(source).partition(":")[0].strip().lower())
        if shared and params.get(shared) is None:
            params[shared] = seed
        streams = [make_source(source, seed=seed + k, **params) for k in range(nodes)]
    else:
        how = parse_split(split)
        params = dict(source_params)
        if how["key"] is not None and isinstance(source, str) and source.partition(":")[0].strip().lower() == "csv":
            params.setdefault("key", how["key"])  # kept as raw text (a machine id), out of the default features
        base = source if isinstance(source, Stream) else make_source(source, seed=seed, **params)
        if key_map:
            if how["key"] is None:
                raise ConfigError("key_map needs split='key:COLUMN'")
            how = {"key": how["key"], "how": "map", "mapping": key_map}
        elif keep_key and how["key"] is None:
            raise ConfigError("keep_key needs split='key:COLUMN'")
        streams = Split(base, nodes, keep_key=keep_key, **how).streams()
    out = []
    for k, stream in enumerate(streams):
        if offsets[k] is None or not specs:
            out.append(stream)
        else:
            out.append(inject(stream, [spec.shifted(offsets[k]) for spec in specs], node=k, seed=seed))
    return out
