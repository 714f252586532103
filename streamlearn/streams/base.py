"""The stream contract: ``Stream``, ``DriftEvent`` and the block machinery every source and injector shares.

Every stream produces its samples as numpy blocks of exactly ``BLOCK`` rows (the last block of a finite
stream may be shorter). Iteration and ``to_arrays`` both read those same blocks, so the two paths give the
same samples and draw the same random numbers, and injectors transform whole blocks at once.
Blocks may be views of cached arrays: code that receives a block never modifies it in place.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from streamlearn.errors import ConfigError

__all__ = ["BLOCK", "DriftEvent", "Stream", "label_array", "rng_for"]

# Fixed so that the random draws of an injector never depend on who reads the stream (iteration or to_arrays).
BLOCK = 512


def rng_for(*keys: int) -> np.random.Generator:
    """A numpy generator seeded by a tuple of integers (any sign), so related streams get independent draws."""
    return np.random.default_rng([int(k) % 2**63 for k in keys])


def label_array(labels) -> np.ndarray:
    """Labels as a 1-d array: bool, int or float dtype when they are all such, else object (never fixed-width str)."""
    arr = np.asarray(labels)
    if arr.dtype.kind in "biuf":
        return arr.reshape(-1)
    return np.array(list(labels), dtype=object).reshape(-1)


def factorize(values) -> tuple[np.ndarray, list, np.ndarray]:
    """``(codes, distinct, first)`` of hashable values: ``distinct`` in order of first appearance,
    ``values[i] == distinct[codes[i]]``, ``first[k]`` the index where ``distinct[k]`` first appears.

    One dict pass in C (``np.unique`` on an object array sorts by Python comparisons: ten times slower).

    >>> codes, distinct, first = factorize(["b", "a", "b", "c"])
    >>> codes.tolist(), distinct, first.tolist()
    ([0, 1, 0, 2], ['b', 'a', 'c'], [0, 1, 3])
    """
    values = values.tolist() if isinstance(values, np.ndarray) else list(values)
    index: dict = {}
    # a new value is stored with its row number (the running count), an old one gives back its first row
    at = np.fromiter(map(index.setdefault, values, itertools.count()), np.int64, len(values))
    first = np.fromiter(index.values(), np.int64, len(index))
    rank = np.empty(len(values), dtype=np.int64)
    rank[first] = np.arange(len(first))
    return rank[at], list(index), first


def _jsonable(value):
    """Params as plain JSON types (numpy scalars to Python, tuples to lists)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass(frozen=True)
class DriftEvent:
    """Ground truth of one injected drift.

    Parameters
    ----------
    position
        Index, in the stream of ``node``, of the first sample of the new concept
        (for ``gradual`` the centre of the transition, for ``incremental`` and
        progressive feature drifts the first changed sample; ``params['width']`` gives the length).
    node
        The node whose stream drifts.
    kind
        A key of ``DRIFT_KINDS`` (``"sudden"``, ``"gradual"``, ...).
    params
        The drift's parameters, JSON-friendly.

    Examples
    --------
    >>> DriftEvent(5000, 2, "gradual", {"width": 1000}).to_dict()
    {'position': 5000, 'node': 2, 'kind': 'gradual', 'params': {'width': 1000}}
    """

    position: int
    node: int
    kind: str
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"position": int(self.position), "node": int(self.node), "kind": self.kind,
                "params": _jsonable(self.params)}

    @classmethod
    def from_dict(cls, d: dict) -> "DriftEvent":
        return cls(int(d["position"]), int(d["node"]), str(d["kind"]), dict(d.get("params", {})))


def reblock(parts):
    """``(X, y)`` parts of any size as blocks of exactly ``BLOCK`` rows (the last one shorter); a full block
    that comes while nothing waits passes as it is.

    >>> import numpy as np
    >>> parts = [(np.zeros((300, 1)), np.zeros(300)), (np.zeros((0, 1)), np.zeros(0)), (np.zeros((400, 1)), np.zeros(400))]
    >>> [len(y) for _, y in reblock(parts)]
    [512, 188]
    """
    bufX, bufy, have = [], [], 0
    for X, y in parts:
        if have == 0 and len(y) == BLOCK:
            yield X, y
            continue
        if len(y):
            bufX.append(X)
            bufy.append(y)
            have += len(y)
        while have >= BLOCK:
            Xa, ya = np.concatenate(bufX), np.concatenate(bufy)
            yield Xa[:BLOCK], ya[:BLOCK]
            bufX, bufy, have = [Xa[BLOCK:]], [ya[BLOCK:]], have - BLOCK
    if have:
        yield np.concatenate(bufX), np.concatenate(bufy)


def check_count(n, what: str = "n") -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ConfigError(f"{what} must be a non-negative integer, got {n!r}")
    return int(n)


class Stream:
    """Base class of every source and injector: a seeded, replayable stream of ``(x, y)``.

    Subclasses implement ``_blocks(n)``; most also ``_events`` (injectors) or ``_concept`` (sources
    with an alternate concept of their own).

    Attributes
    ----------
    feature_names
        Order of the features in ``x`` dicts and in the columns of ``to_arrays``.
    classes
        The label set when known, else None.
    seed
        The seed the stream was built with.
    n_samples
        Finite length when known (CSV, elec2), None for endless generators.
    """

    feature_names: list
    classes: list | None = None
    seed: int = 0
    n_samples: int | None = None

    # -- what subclasses provide ------------------------------------------------------------
    def _blocks(self, n: int | None):
        """Yield ``(X, y)``: X float64 (b, f), y (b,), b == BLOCK except for the last block of a finite stream.

        ``n`` is a hint: the caller reads at most ``n`` samples (None: possibly all, lazily).
        """
        raise NotImplementedError

    def _events(self, horizon: int | None) -> list:
        """Ground-truth events with position < horizon (None: all, only valid when finitely many)."""
        return []

    def _unbounded_events(self) -> bool:
        """True when the stream has infinitely many events (so ``drift_events`` needs ``n``)."""
        return False

    def _concept(self, k: int) -> "Stream":
        return Relabeled(self, k)

    def key_values(self, name: str):
        """Raw text of column ``name`` for every sample when the stream keeps it (a CSV file's key), else None.

        Used to split a stream by a text key; aligned with the samples (finite streams only).
        """
        return None

    # -- the public contract ----------------------------------------------------------------
    def __iter__(self):
        names = list(self.feature_names)
        for X, y in self._blocks(None):
            for row, label in zip(X.tolist(), y.tolist()):
                yield dict(zip(names, row)), label

    def take(self, n: int):
        """The first ``n`` samples as an iterator of ``(x, y)``."""
        return itertools.islice(iter(self), check_count(n))

    def to_arrays(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The first ``n`` samples (fewer when the stream is shorter) as ``X`` float64 (n', f) and ``y`` (n',)."""
        n = check_count(n)
        Xs, ys, got = [], [], 0
        if n:
            for X, y in self._blocks(n):
                Xs.append(X)
                ys.append(y)
                got += len(y)
                if got >= n:
                    break
        if not Xs:
            return np.empty((0, len(self.feature_names))), label_array(self.classes or [])[:0]
        return np.concatenate(Xs)[:n], np.concatenate(ys)[:n]

    def drift_events(self, n: int | None = None) -> list:
        """Ground-truth ``DriftEvent``\\ s within the first ``n`` samples (default: the whole stream), by position."""
        horizon = self.n_samples
        if n is not None:
            n = check_count(n)
            horizon = n if horizon is None else min(n, horizon)
        if horizon is None and self._unbounded_events():
            raise ConfigError("this stream has endlessly recurring drifts: pass n to drift_events(n)")
        events = [e for e in self._events(horizon) if horizon is None or e.position < horizon]
        return sorted(events, key=lambda e: (e.position, e.node, e.kind))

    def concept(self, k: int = 1) -> "Stream":
        """The same stream under its k-th alternate concept (k=0: itself).

        Sources with concepts of their own use them (SEA variant, Agrawal/STAGGER classification
        function, Hyperplane/RBF model seed + k); every other stream cyclically shifts its labels by
        k positions in ``classes``. Samples stay aligned: sample i of every concept is drawn in the same way.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ConfigError(f"concept index must be a non-negative integer, got {k!r}")
        return self if k == 0 else self._concept(int(k))


def class_index(y: np.ndarray, classes: list) -> np.ndarray:
    """Index of each label in ``classes`` (-1 when absent), vectorized over the few classes."""
    out = np.full(len(y), -1, dtype=np.int64)
    for i, c in enumerate(classes):
        out[y == c] = i
    return out


class Relabeled(Stream):
    """A stream whose labels are cyclically shifted by ``k`` places in its ``classes`` (a generic alternate concept)."""

    def __init__(self, inner: Stream, k: int):
        classes = inner.classes
        if not classes or len(classes) < 2:
            raise ConfigError(f"{inner!r} has no known label set of 2+ classes, so it has no alternate concept")
        self.inner = inner
        self.k = k
        self.feature_names = inner.feature_names
        self.seed = inner.seed
        self._table = label_array(classes)

    @property
    def classes(self):
        return self.inner.classes

    @property
    def n_samples(self):
        return self.inner.n_samples

    def _concept(self, k):
        return Relabeled(self.inner, self.k + k)

    def key_values(self, name):
        return self.inner.key_values(name)  # relabeling keeps the samples, so their keys

    def _blocks(self, n):
        K = len(self._table)
        for X, y in self.inner._blocks(n):
            idx = class_index(y, self.classes)
            out = self._table[(idx + self.k) % K]
            # labels outside the declared set stay as they are
            yield X, np.where(idx >= 0, out, y) if (idx < 0).any() else out

    def __repr__(self):
        return f"{self.inner!r}.concept({self.k})"


def sigmoid(t: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(t, -60.0, 60.0)))


def degrees_to_radians(angle: float) -> float:
    return angle * math.pi / 180.0
