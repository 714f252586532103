"""Shared test data for tests/learners (a plain module: file names must be unique across tests/)."""

import numpy as np

FEATURES = ["x0", "x1", "x2"]


def separable_stream(n: int, seed: int):
    """Bool label = sign of x0, kept at least 0.5 from the boundary; x1, x2 are noise."""
    rng = np.random.default_rng(seed)
    y = rng.random(n) < 0.5
    X = rng.normal(size=(n, 3)).astype(np.float32)
    X[:, 0] = np.where(y, 1.0, -1.0) * rng.uniform(0.5, 2.0, size=n)
    return X, y


def as_dicts(X):
    return [dict(zip(FEATURES, row)) for row in X.tolist()]
