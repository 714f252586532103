"""ArrayStream replays arrays and takes drift like any stream."""

import numpy as np
import pytest

from streamlearn.errors import ConfigError
from streamlearn.streams import ArrayStream, inject


def test_replay_and_drift():
    X = np.arange(2000.0).reshape(1000, 2)
    y = np.arange(1000) % 2
    s = ArrayStream(X, y)
    assert s.feature_names == ["x0", "x1"] and s.classes == [0, 1] and s.n_samples == 1000
    assert np.array_equal(s.to_arrays(5000)[0], X) and len(list(s)) == 1000
    Xd, yd = inject(s, "sudden@600").to_arrays(1000)
    assert np.array_equal(Xd, X) and np.array_equal(yd[:600], y[:600]) and np.array_equal(yd[600:], 1 - y[600:])


def test_bad_shapes():
    with pytest.raises(ConfigError):
        ArrayStream([[1.0]], [1, 2])
    with pytest.raises(ConfigError):
        ArrayStream([[1.0, 2.0]], [1], feature_names=["a"])
