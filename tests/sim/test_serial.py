"""The serial baseline (one learner on every node's samples) steps a TorchLearner as itself: it must agree with
the simulator's bank of one model (same predictions, models equal to float rounding)."""

import numpy as np
import pytest
import torch

from streamlearn.learners import TorchLearner
from streamlearn.sim.run import serial_baseline, serial_data, serial_run
from streamlearn.sim.simulator import NodeData, simulate


def _data(classes):
    rng = np.random.default_rng(3)
    X = (rng.normal(size=(3, 400, 4)) * [1, 5, 0.1, 2]).astype(np.float32)
    y = ((X[..., 0] + X[..., 1] / 5 > 0).astype(np.int64) + (X[..., 3] > 1)) % len(classes)
    return NodeData(X=X, y=y, classes=classes, feature_names=["a", "b", "c", "d"])


@pytest.mark.parametrize("classes", [[0, 1], ["low", "mid", "high"]])
@pytest.mark.parametrize("arch", ["logreg", "mlp"])
def test_equals_a_simulated_bank_of_one(arch, classes):
    data = _data(classes)
    learner = TorchLearner(arch, hidden=(8,), lr=0.1, scale=True, seed=2)
    fast = serial_run(data, learner, batch_size=10)
    bank = simulate(serial_data(data), learner, "nosync", batch_size=10, progress=False)
    assert (fast.m, fast.n, fast.transfers) == (bank.m, bank.n, 0)
    assert np.array_equal(fast.correct, bank.correct)
    np.testing.assert_allclose(fast.losses, bank.losses, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fast.final_models, bank.final_models, rtol=1e-4, atol=1e-5)
    row = serial_baseline(data, learner, batch_size=10)
    assert row["protocol"] == "serial" and row["accuracy"] == pytest.approx(bank.accuracy)
