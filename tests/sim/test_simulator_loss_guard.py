"""The simulator's loss guard (LossGuardBank in the model bank) does what the evaluator's LossGuard does."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest

from streamlearn.errors import ConfigError
from streamlearn.evaluation import evaluate
from streamlearn.learners import TorchLearner
from streamlearn.learners.loss_guard import LossGuard
from streamlearn.sim.grid import Setting, simulate_grid
from streamlearn.sim.simulator import NodeData, simulate

FEATURES = ["x0", "x1", "x2", "x3"]


def glitch_data(m=1, n=4000):
    """x0 + x1 > 0 at each node, with a sensor glitch: samples 2000-2099 read 100 times too high."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(m, n, len(FEATURES))).astype(np.float32)
    y = (X[..., 0] + X[..., 1] > 0).astype(np.int64)
    X[:, 2000:2100] *= 100
    return NodeData(X=X, y=y, classes=[0, 1], feature_names=FEATURES)


def _events(divergences):
    return [(d["position"], d["reason"], d["action"], d["lr"], d["restored"]) for d in divergences]


@pytest.mark.parametrize("kwargs, params", [({}, {}), ({"momentum": 0.5}, {}), ({}, {"max_damps": 0})])
def test_a_node_of_the_simulator_is_guarded_as_the_evaluator_guards_one_learner(kwargs, params, caplog):
    # plain SGD (per-row step sizes), momentum (a per-row multiplier of the update, state cleared) and a guard
    # that stops at its first event (the row keeps its model and scaler statistics from then on)
    data = glitch_data()
    stream = [(dict(zip(FEATURES, map(float, x))), int(t)) for x, t in zip(data.X[0], data.y[0])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow in the unguarded run
        ev = evaluate(stream, TorchLearner("mlp", hidden=(16,), features=FEATURES, classes=[0, 1], lr=0.5, seed=0,
                                           device="cpu", **kwargs),
                      batch_size=10, detector=None, progress=False, loss_guard=LossGuard(**params))
        with caplog.at_level(logging.WARNING, logger="streamlearn.learners.loss_guard"):
            on = simulate(data, TorchLearner("mlp", hidden=(16,), lr=0.5, seed=0, device="cpu", **kwargs), "nosync",
                          progress=False, loss_guard=params or True)
        off = simulate(data, TorchLearner("mlp", hidden=(16,), lr=0.5, seed=0, device="cpu", **kwargs), "nosync",
                       progress=False, loss_guard=False)
    assert ev.divergences and _events(on.divergences) == _events(ev.divergences)
    assert 2000 <= on.divergences[0]["position"] <= 2200 and on.divergences[0]["restored"] < 2000
    assert [d["node"] for d in on.divergences] == [0] * len(ev.divergences)
    assert on.accuracy == pytest.approx(ev.accuracy, abs=1e-3) and on.accuracy > off.accuracy
    assert off.divergences == [] and on.summary()["divergences"] == len(ev.divergences)
    assert any("simulate nosync node 0: loss exploded" in r.getMessage() for r in caplog.records)
    if params:
        assert on.divergences[-1]["action"] == "stopped"


def test_a_grid_guards_each_setting_as_its_run_alone():
    # Two nodes (one with the glitch), two step sizes, synced and not: every setting's rows, events and results
    # equal its own run.
    data = glitch_data(m=2)
    data.X[1, 2000:2100] /= 100
    settings = [Setting(spec, TorchLearner("mlp", hidden=(16,), lr=lr, seed=0, device="cpu"))
                for spec, lr in (("nosync", 0.5), ("periodic:b=20", 0.5), ("nosync", 0.05))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        grid = simulate_grid(data, settings, progress=False)
        alone = [simulate(data, s.learner, s.protocol, progress=False) for s in settings]
    assert grid[0].divergences and {d["node"] for g in grid for d in g.divergences} == {0}  # the node with the glitch
    for g, a in zip(grid, alone):
        assert g.divergences == a.divergences
        assert np.array_equal(g.correct, a.correct) and np.array_equal(g.losses, a.losses)


def test_a_bad_guard_setting_is_a_config_error():
    with pytest.raises(ConfigError, match="'max_damp'"):
        simulate(glitch_data(n=100), TorchLearner("logreg"), "nosync", progress=False, loss_guard={"max_damp": 1})
    with pytest.raises(ConfigError, match="damp"):
        simulate(glitch_data(n=100), TorchLearner("logreg"), "nosync", progress=False, loss_guard={"damp": 2.0})
