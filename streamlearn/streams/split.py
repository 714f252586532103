"""One stream divided among m nodes: round-robin, or by a key column (first seen, hash, integer value, or a mapping).

Every sample of the source goes to exactly one node, in order; positions in a node's stream count that node's
samples only. The key is a numeric feature (removed from the nodes' features unless ``keep_key=True``) or a
text column the source keeps as raw text (a CSV file's machine id, see ``CSVSource(key=...)``).
First seen (``how="first"``, what ``--split key:COLUMN`` means): one node per distinct key value, numbered in
the order the values first appear in the source (the first value seen is node 0), so no two values share a
node; a finite source's number of distinct values is the number of nodes.
By hash, an integer key goes to node ``value mod m`` and any other key by a stable hash (text: BLAKE2b, the
rule of the connectors' ``NodeRouter``, so a record lands on the same node in every run and process).
A key value that cannot be placed raises ``BadRecordError`` whose ``row`` is the 1-based index of the sample
in the source stream.
"""

from __future__ import annotations

import numpy as np

from streamlearn.errors import BadRecordError, ConfigError, StreamlearnError
from streamlearn.records import is_int_key, node_of_key
from streamlearn.streams.base import BLOCK, Stream, factorize, reblock

__all__ = ["Split", "SplitNode"]

# An endless source that gives a node nothing for this many samples in a row is a split that starves it.
MAX_GAP = 200_000
# Numeric keys that are integers below this go to value mod m (the integer keys of streamlearn.records).
_INT_LIMIT = 10**10


def _splitmix64(bits: np.ndarray) -> np.ndarray:
    z = bits + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _as_key_text(value) -> str:
    """A mapping key as the text it matches: ``1.0`` and ``1`` name ``"1"``."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        value = int(value)
    return str(value).strip()


def _key_number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"split mapping key {value!r} is not a number (the key is a numeric feature)") from None


class Split:
    """Divide ``source`` among ``nodes`` nodes; ``streams()`` gives one ``SplitNode`` per node.

    Parameters
    ----------
    source
        The stream to divide.
    nodes
        Number of nodes m. None with ``how="first"`` on a finite source: the number of distinct key values.
    key
        Name of the key column: a feature, or a column the source keeps as text (``source.key_values``);
        None splits round-robin (sample i to node i mod m).
    how
        With a key: ``"first"`` (one node per distinct value, numbered in order of first appearance; on a
        finite source ``nodes`` must equal the number of distinct values, on an endless one a value beyond
        the m-th distinct is an error), ``"hash"`` (an integer value mod m, any other value by a fixed
        64-bit hash, mod m), ``"value"`` (the value must be an integer; node = value mod m) or ``"map"``
        (``mapping[value]``).
    mapping
        For ``how="map"``: key value -> node (text keys compare as text, ``1.0`` naming ``"1"``).
    keep_key
        Keep a numeric key column as a feature (a text key is never a feature).

    Examples
    --------
    >>> from streamlearn.streams.generators import STAGGERStream
    >>> parts = Split(STAGGERStream(seed=0), 3, key="color", how="value").streams()
    >>> X, _ = parts[2].to_arrays(50)
    >>> parts[2].feature_names, X.shape
    (['size', 'shape'], (50, 2))
    >>> import tempfile, os
    >>> from streamlearn.streams import CSVSource
    >>> path = os.path.join(tempfile.mkdtemp(), "m.csv")
    >>> _ = open(path, "w").write("machine,t,y\\npress-1,1,a\\nlathe,2,b\\npress-1,3,b\\n7,4,a\\n")
    >>> parts = Split(CSVSource(path, label="y", key="machine"), 2, key="machine").streams()
    >>> [p.to_arrays(9)[0][:, 0].tolist() for p in parts]   # 7 % 2 = 1; the texts by their hash
    [[1.0, 3.0], [2.0, 4.0]]
    >>> first = Split(CSVSource(path, label="y", key="machine"), None, key="machine", how="first")
    >>> first.nodes, first.key_nodes()   # one node per machine, in order of first appearance
    (3, {'press-1': 0, 'lathe': 1, '7': 2})
    """

    def __init__(self, source: Stream, nodes: int | None, key: str | None = None, how: str = "hash",
                 mapping: dict | None = None, keep_key: bool = False):
        if nodes is not None and (isinstance(nodes, bool) or not isinstance(nodes, (int, np.integer)) or nodes < 1):
            raise ConfigError(f"nodes must be a positive integer, got {nodes!r}")
        if nodes is None and (key is None or how != "first"):
            raise ConfigError("nodes: give the number of nodes (only a first-seen key split counts them itself)")
        self.source = source
        self.nodes = None if nodes is None else int(nodes)
        self.key = key
        self.how = how if key is not None else "round-robin"
        self.mapping = None
        self.keep_key = bool(keep_key)
        self._key_text = None  # raw text of a text key, one per source sample
        if key is not None:
            if key not in source.feature_names:
                self._key_text = source.key_values(key)
                if self._key_text is None:
                    raise ConfigError(f"split key {key!r} is not a feature of the source nor a text column it "
                                      f"keeps; its features are {source.feature_names}")
                if self.keep_key:
                    raise ConfigError(f"keep_key: the split key {key!r} is a text column, not a feature")
            if how not in ("first", "hash", "value", "map"):
                raise ConfigError(f"split by key must use how='first', 'hash', 'value' or 'map', got {how!r}")
            if how == "map":
                if not mapping:
                    raise ConfigError("split how='map' needs a mapping {key value: node}")
                self.mapping = {}
                for value, node in mapping.items():
                    value = _as_key_text(value) if self._key_text is not None else _key_number(value)
                    if isinstance(node, bool) or not isinstance(node, (int, np.integer)) or not 0 <= node < self.nodes:
                        raise ConfigError(f"split mapping sends {value!r} to node {node!r}, not in 0..{nodes - 1}")
                    self.mapping[value] = int(node)
        self._key_col = None if key is None or self._key_text is not None else source.feature_names.index(key)
        self._first: dict = {}  # how="first": key value (text, or float) -> node, in order of first appearance
        if self.how == "first":
            self._count_keys()
        keep = [i for i in range(len(source.feature_names)) if i != self._key_col or self.keep_key]
        self._columns = None if len(keep) == len(source.feature_names) else keep
        self.feature_names = [source.feature_names[i] for i in keep]
        # shared, growing cache of the source: filled by to_arrays requests and by finite sources
        self._X, self._y, self._owner = [], [], []
        self._counts = np.zeros(self.nodes, dtype=np.int64)
        self._rows = 0
        self._live = None
        self._exhausted = False
        self._joined = None
        self._concepts = {}
        self._streams = [SplitNode(self, k) for k in range(self.nodes)]

    def _count_keys(self) -> None:
        """First-seen numbering of a finite source's key values, and ``nodes`` checked against their count."""
        if self.source.n_samples is None:
            if self.nodes is None:
                raise ConfigError(f"split key:{self.key}: an endless source needs the number of nodes (--nodes)")
            return  # numbered as values come (see _first_nodes)
        if self._key_text is not None:
            values = self._key_text
        else:
            values = self.source.to_arrays(self.source.n_samples)[0][:, self._key_col]
        self._first_nodes(values, 0, check=False)
        if self.nodes is None:
            self.nodes = max(len(self._first), 1)
        elif len(self._first) != self.nodes:
            raise ConfigError(f"split key:{self.key} gives one node per distinct value: the source has "
                              f"{len(self._first)} distinct {self.key!r} values but nodes is {self.nodes} "
                              f"(leave --nodes out to get {len(self._first)} nodes)")

    def key_nodes(self) -> dict:
        """``how="first"``: key value -> node, in order of first appearance (those seen so far on an endless source)."""
        return dict(self._first)

    def _first_nodes(self, values: np.ndarray, start: int, check: bool = True) -> np.ndarray:
        """Node of each key value by first appearance, numbering the values not seen before."""
        if values.dtype.kind == "f" and np.isnan(values).any():
            i = int(np.flatnonzero(np.isnan(values))[0])
            raise BadRecordError("split key value is missing", row=start + i + 1, column=self.key, value=None)
        if values.dtype.kind == "f":
            distinct, first, inverse = np.unique(values, return_index=True, return_inverse=True)
            order = np.argsort(first, kind="stable").tolist()
            distinct = distinct.tolist()
        else:  # text: one dict pass, already in order of first appearance (np.unique would sort the strings)
            inverse, distinct, first = factorize(values)
            order = range(len(distinct))
        for j in order:
            v = distinct[j]
            v = v if isinstance(v, str) else float(v)
            if v == "":
                raise BadRecordError("split key value is missing", row=start + int(first[j]) + 1, column=self.key,
                                     value=v)
            if v not in self._first:
                if check and self.nodes is not None and len(self._first) >= self.nodes:
                    raise BadRecordError(f"split key value would be distinct value number {len(self._first) + 1} "
                                         f"of {self.key!r}, but there are only {self.nodes} nodes (one per value)",
                                         row=start + int(first[j]) + 1, column=self.key, value=v)
                self._first[v] = len(self._first)
        table = np.asarray([self._first[v if isinstance(v, str) else float(v)] for v in distinct],
                           dtype=np.int64)
        return table[inverse.reshape(-1)]

    def __repr__(self):
        by = "round-robin" if self.key is None else f"key {self.key!r} ({self.how})"
        return f"Split({self.source!r}, nodes={self.nodes}, by {by})"

    def streams(self) -> list:
        return list(self._streams)

    def concept(self, k: int) -> "Split":
        """The same split of ``source.concept(k)`` (kept, so all nodes share it)."""
        if k not in self._concepts:
            self._concepts[k] = Split(self.source.concept(k), self.nodes, self.key, self.how, self.mapping,
                                      self.keep_key)
        return self._concepts[k]

    def assign(self, X: np.ndarray, start: int) -> np.ndarray:
        """Node of each row of a block of the source whose first row has index ``start``."""
        m = self.nodes
        if self.key is None:
            return (np.arange(start, start + len(X)) % m).astype(np.int64)
        if self.how == "first":
            values = self._key_text[start:start + len(X)] if self._key_text is not None else X[:, self._key_col]
            return self._first_nodes(values, start)
        if self._key_text is not None:
            return self._assign_text(self._key_text[start:start + len(X)], start)
        values = X[:, self._key_col]
        if self.how == "hash":
            bits = (values + 0.0).view(np.uint64)  # + 0.0 turns -0.0 into 0.0
            owner = (_splitmix64(bits) % np.uint64(m)).astype(np.int64)
            whole = (values == np.round(values)) & (np.abs(values) < _INT_LIMIT)
            owner[whole] = values[whole].astype(np.int64) % m
            return owner
        if self.how == "value":
            bad = np.flatnonzero(values != np.round(values))
            if len(bad):
                i = int(bad[0])
                raise BadRecordError("split key value is not an integer", row=start + i + 1, column=self.key,
                                     value=float(values[i]))
            return values.astype(np.int64) % m
        owner = np.full(len(values), -1, dtype=np.int64)
        for value, node in self.mapping.items():
            owner[values == value] = node
        bad = np.flatnonzero(owner < 0)
        if len(bad):
            i = int(bad[0])
            raise BadRecordError("split key value has no node in the mapping", row=start + i + 1, column=self.key,
                                 value=float(values[i]))
        return owner

    def _assign_text(self, texts: np.ndarray, start: int) -> np.ndarray:
        """Node of each text key (-1 never returned: a key that cannot be placed raises); each distinct value once."""
        inverse, distinct, _ = factorize(texts)
        nodes, reasons = [], {}
        for v in distinct:
            node = -1
            if v == "":
                reasons[v] = "split key value is missing"
            elif self.how == "hash":
                node = node_of_key(v, self.nodes)
            elif self.how == "value":
                if is_int_key(v):
                    node = int(v) % self.nodes
                else:
                    reasons[v] = "split key value is not an integer"
            elif v in self.mapping:
                node = self.mapping[v]
            else:
                reasons[v] = "split key value has no node in the mapping"
            nodes.append(node)
        owner = np.asarray(nodes, dtype=np.int64)[inverse.reshape(-1)]
        bad = np.flatnonzero(owner < 0)
        if len(bad):
            i = int(bad[0])
            raise BadRecordError(reasons[texts[i]], row=start + i + 1, column=self.key, value=texts[i])
        return owner

    def _select(self, X):
        return X if self._columns is None else X[:, self._columns]

    def _grow(self, node: int, n: int | None):
        """Read the source until ``node`` has ``n`` samples cached (None: to the end of a finite source)."""
        if self._live is None:
            self._live = self.source._blocks(None)
        since = 0
        while not self._exhausted and (n is None or self._counts[node] < n):
            try:
                X, y = next(self._live)
            except StopIteration:
                self._exhausted = True
                break
            owner = self.assign(X, self._rows)
            self._X.append(X)
            self._y.append(y)
            self._owner.append(owner)
            self._rows += len(y)
            self._counts += np.bincount(owner, minlength=self.nodes)
            self._joined = None
            since = 0 if (owner == node).any() else since + len(y)
            if since > MAX_GAP and self.source.n_samples is None:
                raise StreamlearnError(f"node {node} got no sample in {since} samples of {self.source!r}: "
                                       "the split starves it (check the key and mapping)")

    def _node_arrays(self, node: int, n: int | None):
        self._grow(node, n)
        if self._joined is None:
            if self._X:
                self._joined = (np.concatenate(self._X), np.concatenate(self._y), np.concatenate(self._owner))
            else:
                self._joined = (np.empty((0, len(self.source.feature_names))), np.empty(0), np.empty(0, np.int64))
        X, y, owner = self._joined
        mine = np.flatnonzero(owner == node)[:n]
        return self._select(X[mine]), y[mine]

    def _filtered_blocks(self, node: int):
        """Node ``node``'s samples in exact BLOCK-row blocks, from a private pass over an endless source."""
        def mine_only():
            start = since = 0
            for X, y in self.source._blocks(None):
                mine = self.assign(X, start) == node
                start += len(y)
                since = 0 if mine.any() else since + len(y)
                if since > MAX_GAP:
                    raise StreamlearnError(f"node {node} got no sample in {since} samples of {self.source!r}: "
                                           "the split starves it (check the key and mapping)")
                if mine.any():
                    yield self._select(X[mine]), y[mine]

        yield from reblock(mine_only())


class SplitNode(Stream):
    """The part of a ``Split`` that node ``node`` receives.

    ``to_arrays`` and finite sources read a cache shared by all nodes of the split (the source is generated
    once); iterating a node of an endless source makes its own pass over the source, so memory stays bounded.
    """

    def __init__(self, split: Split, node: int):
        self.split = split
        self.node = node
        self.feature_names = split.feature_names
        self.seed = split.source.seed

    def __repr__(self):
        return f"{self.split!r}[{self.node}]"

    @property
    def classes(self):
        return self.split.source.classes

    @property
    def n_samples(self):
        if self.split.source.n_samples is None:
            return None
        self.split._grow(self.node, None)
        return int(self.split._counts[self.node])

    def _concept(self, k):
        return self.split.concept(k).streams()[self.node]

    def _blocks(self, n):
        if n is None and self.split.source.n_samples is None:
            yield from self.split._filtered_blocks(self.node)
            return
        X, y = self.split._node_arrays(self.node, n)
        for start in range(0, len(y), BLOCK):
            yield X[start:start + BLOCK], y[start:start + BLOCK]
