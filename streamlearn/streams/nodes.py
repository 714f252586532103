"""One stream per node: per-node sources or one split source, with drifts scheduled per node and missing
values imputed or skipped per node (:class:`WithMissing`)."""

from __future__ import annotations

import itertools

import numpy as np

from streamlearn.errors import ConfigError
from streamlearn.streams.base import Stream, reblock
from streamlearn.streams.drift_spec import parse_drift
from streamlearn.streams.injectors import inject
from streamlearn.streams.registry import CONCEPT_SEED_PARAMS, make_source
from streamlearn.streams.split import Split

__all__ = ["node_streams", "parse_schedule", "parse_split", "WithMissing", "MISSING_CHOICES"]

#: ``node_streams(on_missing=...)``: impute or skip per node stream, or keep NaN for a consumer downstream
#: (the producer: the node service imputes or skips).
MISSING_CHOICES = ("impute", "skip", "keep")
# Blocks per MissingValues call when WithMissing only counts its rows (bounded memory, few calls).
_COUNT_CHUNK = 64


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

    ``"round-robin"``; ``"key:COLUMN"`` or ``"key:COLUMN:first"`` (one node per distinct value, numbered
    in order of first appearance); ``"key:COLUMN:hash"`` (an integer value mod m, any other by a stable
    hash); ``"key:COLUMN:value"`` (integer value mod m); ``"key:COLUMN:V=N,V=N,..."`` (value V to node N;
    V a number, or a text key such as a machine id).

    Examples
    --------
    >>> parse_split("key:station")
    {'key': 'station', 'how': 'first'}
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
        raise ConfigError(f"bad split {split!r}: expected 'round-robin', "
                          "'key:COLUMN[:first|:hash|:value|:V=N,...]'")
    how = how.strip() or "first"
    if how in ("first", "hash", "value"):
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


def node_streams(source, nodes: int | None, drifts=(), schedule: str = "all", split: str | None = None,
                 seed: int = 0, *, keep_key: bool = False, key_map: dict | None = None, on_missing: str | None = None,
                 **source_params) -> list:
    """The streams of ``nodes`` nodes, with ground-truth events per node.

    Parameters
    ----------
    source
        A source name for ``make_source`` (or, with ``split``, a ready ``Stream``).
    nodes
        Number of nodes m; None with a first-seen key split of a file (``"key:COLUMN"``): one node per
        distinct key value.
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
    on_missing
        Missing feature values (an empty CSV field): None, the source's own rule (a CSV file: a bad
        record); ``"impute"`` or ``"skip"``: every node stream imputes or skips its own, in order
        (:class:`WithMissing`, before any drift is injected); ``"keep"``: left as NaN for a consumer
        downstream (the producer: the node service imputes or skips).
    **source_params
        Parameters of the source (``SOURCES[name]["params"]``).

    Examples
    --------
    >>> streams = node_streams("sea", 3, ["sudden@1000"], schedule="staggered:500", seed=1)
    >>> [(e.node, e.position) for s in streams for e in s.drift_events()]
    [(0, 1000), (1, 1500), (2, 2000)]
    """
    if nodes is not None and (isinstance(nodes, bool) or not isinstance(nodes, (int, np.integer)) or nodes < 1):
        raise ConfigError(f"nodes must be a positive integer, got {nodes!r}")
    if on_missing is not None and on_missing not in MISSING_CHOICES:
        raise ConfigError(f"on_missing must be one of {', '.join(MISSING_CHOICES)}, got {on_missing!r}")
    is_csv = isinstance(source, str) and source.partition(":")[0].strip().lower() == "csv"
    if on_missing is not None and is_csv:
        source_params = {"missing": "nan", **source_params}  # empty fields come as NaN, handled below
    specs = [parse_drift(d) for d in ([drifts] if isinstance(drifts, str) else drifts)]
    if nodes is None and (split is None or parse_split(split).get("how") != "first"):
        raise ConfigError("nodes: give the number of nodes (only a split by key:COLUMN counts them itself)")
    if nodes is not None:
        parse_schedule(schedule, int(nodes))  # a bad schedule is reported before the source is read
    if split is None:
        nodes = int(nodes)
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
        if how["key"] is not None and is_csv:
            params.setdefault("key", how["key"])  # kept as raw text (a machine id), out of the default features
        base = source if isinstance(source, Stream) else make_source(source, seed=seed, **params)
        if key_map:
            if how["key"] is None:
                raise ConfigError("key_map needs split='key:COLUMN'")
            how = {"key": how["key"], "how": "map", "mapping": key_map}
        elif keep_key and how["key"] is None:
            raise ConfigError("keep_key needs split='key:COLUMN'")
        streams = Split(base, nodes, keep_key=keep_key, **how).streams()
        nodes = len(streams)
    offsets = parse_schedule(schedule, nodes)
    if on_missing in ("impute", "skip"):
        streams = [WithMissing(stream, on_missing) for stream in streams]
    out = []
    for k, stream in enumerate(streams):
        if offsets[k] is None or not specs:
            out.append(stream)
        else:
            out.append(inject(stream, [spec.shifted(offsets[k]) for spec in specs], node=k, seed=seed))
    return out


class WithMissing(Stream):
    """A stream whose missing feature values (NaN) are imputed or whose rows with one are skipped, in order.

    One :class:`~streamlearn.learners.preprocessing.MissingValues` per pass over the stream (so every
    replay gives the same rows); ``counts()`` gives what the last full pass did. Blocks keep the
    ``BLOCK``-row contract (skipped rows are made up from the next ones).

    Examples
    --------
    >>> from streamlearn.streams.arrays import ArrayStream
    >>> s = WithMissing(ArrayStream([[1.0], [np.nan], [3.0], [np.nan]], [0, 1, 0, 1]), "impute")
    >>> s.to_arrays(4)[0].ravel().tolist(), s.counts()
    ([1.0, 1.0, 3.0, 2.0], {'imputed': 2, 'skipped': 0, 'rows_with_missing': 2})
    """

    def __init__(self, inner: Stream, policy: str):
        from streamlearn.learners.preprocessing import check_missing_policy

        self.inner = inner
        self.policy = check_missing_policy(policy)
        self.feature_names = inner.feature_names
        self.seed = inner.seed
        self._last = None  # MissingValues of the last pass
        self._n = None

    def __repr__(self):
        return f"WithMissing({self.inner!r}, {self.policy!r})"

    @property
    def classes(self):
        return self.inner.classes

    @property
    def n_samples(self):
        if self.inner.n_samples is None:
            return None
        if self._n is None:  # rows that cannot be imputed are skipped too: count them once
            self._n = self._count()
        return self._n

    def _count(self) -> int:
        """A full pass that only counts the rows kept: ``MissingValues`` over chunks of many blocks, not
        block by block (its counts are integers, the same for any chunking; only the imputed numbers,
        not needed here, depend on it)."""
        from streamlearn.learners.preprocessing import MissingValues

        mv = MissingValues(len(self.feature_names), self.policy)
        self._last = mv
        kept, chunk = 0, []
        for X, _ in itertools.chain(self.inner._blocks(None), [(None, None)]):
            if X is not None:
                chunk.append(X)
            if chunk and (X is None or len(chunk) == _COUNT_CHUNK):
                kept += int(mv.apply(np.concatenate(chunk))[1].sum())
                chunk = []
        return kept

    def counts(self) -> dict:
        """What the last full pass imputed and skipped (a pass: ``to_arrays``, iteration, ``n_samples``)."""
        return {"imputed": 0, "skipped": 0, "rows_with_missing": 0} if self._last is None else self._last.counts()

    def _concept(self, k):
        return WithMissing(self.inner.concept(k), self.policy)

    def key_values(self, name):
        return None if self.policy == "skip" else self.inner.key_values(name)

    def _events(self, horizon):
        return self.inner._events(horizon)

    def _unbounded_events(self):
        return self.inner._unbounded_events()

    def _blocks(self, n):
        from streamlearn.learners.preprocessing import MissingValues

        mv = MissingValues(len(self.feature_names), self.policy)
        self._last = mv

        def kept():
            # no hint: rows may be skipped under either policy (impute skips a row missing a feature never
            # seen yet), so the first n kept rows can lie past the inner stream's first n; reading stays lazy
            for X, y in self.inner._blocks(None):
                Xk, keep = mv.apply(X)
                yield Xk, (y if keep.all() else y[keep])

        yield from reblock(kept())
