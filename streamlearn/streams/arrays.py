"""A finite stream replaying arrays already in memory (handy for tests, simulations and recorded data)."""

from __future__ import annotations

import numpy as np

from streamlearn.errors import ConfigError
from streamlearn.streams.base import BLOCK, Stream, check_count, label_array

__all__ = ["ArrayStream"]


class ArrayStream(Stream):
    """Replay ``X`` (n, f) and ``y`` (n,) as a stream; its alternate concept shifts the labels cyclically.

    Parameters
    ----------
    X, y
        Features and labels, same length. X is copied as float64.
    feature_names
        Column names (default ``x0, x1, ...``).
    classes
        Label set (default: the sorted distinct labels of ``y``).
    seed
        Kept for the contract (used as the default seed of injected drifts).

    Examples
    --------
    >>> s = ArrayStream([[1, 2], [3, 4]], ["a", "b"], feature_names=["u", "v"])
    >>> list(s), s.n_samples, s.classes
    ([({'u': 1.0, 'v': 2.0}, 'a'), ({'u': 3.0, 'v': 4.0}, 'b')], 2, ['a', 'b'])
    """

    def __init__(self, X, y, feature_names=None, classes=None, seed: int = 0):
        X = np.array(X, dtype=np.float64)
        y = label_array(list(y) if not isinstance(y, np.ndarray) else y)
        if X.ndim != 2 or len(X) != len(y):
            raise ConfigError(f"X must be (n, f) and y (n,); got {X.shape} and {y.shape}")
        self._X, self._y = X, y
        self.feature_names = list(feature_names) if feature_names is not None else [f"x{i}" for i in range(X.shape[1])]
        if len(self.feature_names) != X.shape[1]:
            raise ConfigError(f"{len(self.feature_names)} feature names for {X.shape[1]} columns")
        self.classes = list(classes) if classes is not None else sorted(set(y.tolist()))
        self.seed = int(seed)
        self.n_samples = len(y)

    def __repr__(self):
        return f"ArrayStream(n_samples={self.n_samples}, feature_names={self.feature_names!r})"

    def _blocks(self, n):
        for start in range(0, self.n_samples, BLOCK):
            yield self._X[start:start + BLOCK], self._y[start:start + BLOCK]

    def to_arrays(self, n):
        n = check_count(n)
        return self._X[:n].copy(), self._y[:n].copy()
