"""The near-separable stream the node and pipeline tests learn: label ``a + b > 0`` over three features."""

from __future__ import annotations

import numpy as np

FEATURES = ["a", "b", "c"]
CLASSES = [0, 1]


def make_data(n: int, seed: int, flip_at: int | None = None):
    """A near-separable stream (label a + b > 0); labels swapped from ``flip_at`` on (a drift)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, len(FEATURES))).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
    if flip_at is not None:
        y[flip_at:] = 1 - y[flip_at:]
    return X, y
