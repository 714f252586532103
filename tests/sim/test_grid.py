"""A grid in one pass equals its settings run one by one (streamlearn.sim.grid)."""

import numpy as np
import pytest
import torch

from streamlearn.errors import ConfigError
from streamlearn.learners import TorchLearner
from streamlearn.sim import build_node_data
from streamlearn.sim.grid import Setting, bank_key, simulate_grid
from streamlearn.sim.simulator import simulate

# Every protocol family, codecs, an extrapolating reference, groups: each alone and in one bank.
SPECS = ["nosync", "continuous", "periodic:b=4", "periodic:b=3,codec=int8", "dynamic:delta=0.05,b=1",
         "dynamic:delta=0.5,b=2", "dynamic:delta=0.05,extrapolate=1", "dynamic:delta=0.02,split=2",
         "fedavg:b=5,C=0.5", "lsgd:tau=4,strength=0.3", "dynamic:delta=0.1,codec=sign"]


@pytest.fixture(scope="module")
def data():
    return build_node_data("sea", 4, ["sudden@600"], n=1200, seed=3)


def _same(alone, got):
    assert np.array_equal(alone.correct, got.correct), alone.protocol
    assert np.array_equal(alone.losses, got.losses), alone.protocol
    assert alone.comm == got.comm, alone.protocol
    assert alone.syncs == got.syncs and alone.restarts == got.restarts and alone.groups == got.groups
    assert torch.equal(alone.final_models, got.final_models), alone.protocol


@pytest.mark.parametrize("arch,scale", [("logreg", False), ("mlp", True)])
def test_a_grid_of_protocols_and_rates_equals_separate_runs(data, arch, scale):
    settings = [Setting(spec, TorchLearner(arch, hidden=(8,), lr=(0.05, 0.3)[i % 2], scale=scale, seed=i % 3), seed=i)
                for i, spec in enumerate(SPECS + SPECS[:3])]
    got = simulate_grid(data, settings, batch_size=5, progress=False, guard=(40, 0.0))
    assert {r.bank_settings for r in got} == {len(settings)}  # one bank: learners differ only in lr and seed
    assert sum(r.transfers for r in got) > 0 and len({r.accuracy for r in got}) > len(SPECS)
    for s, r in zip(settings, got):
        _same(simulate(data, s.learner, s.protocol, batch_size=5, seed=s.seed, progress=False, guard=(40, 0.0)), r)


def test_step_size_restarts_per_setting_equal_separate_runs():
    data = build_node_data("sea", 4, ["label-permutation@1000"], n=2000, seed=3)
    settings = [Setting(spec, TorchLearner("logreg", lr=0.5, lr_decay=50, seed=0)) for spec in
                ("nosync", "periodic:b=8", "dynamic:delta=0.1")]
    got = simulate_grid(data, settings, batch_size=5, progress=False, detector="adwin")
    assert any(r.restarts for r in got)
    for s, r in zip(settings, got):
        _same(simulate(data, s.learner, s.protocol, batch_size=5, progress=False, detector="adwin"), r)


def test_learners_that_cannot_share_a_bank_run_apart(data):
    adam = [TorchLearner("logreg", optimizer="adam", lr=lr, seed=0) for lr in (0.01, 0.05)]
    sgd = TorchLearner("mlp", hidden=(4,), lr=0.1, seed=0)
    assert bank_key(adam[0]) != bank_key(adam[1])  # adam: a per-row lr would not be exact
    settings = [Setting("periodic:b=4", adam[0]), Setting("periodic:b=4", sgd), Setting("nosync", adam[1]),
                Setting("nosync", sgd)]
    got = simulate_grid(data, settings, batch_size=10, progress=False)
    assert [r.bank_settings for r in got] == [1, 2, 1, 2]
    for s, r in zip(settings, got):
        _same(simulate(data, s.learner, s.protocol, batch_size=10, progress=False), r)


def test_bad_settings_are_clear_errors(data):
    with pytest.raises(ConfigError, match="at least one"):
        simulate_grid(data, [])
    with pytest.raises(ConfigError, match="Setting"):
        simulate_grid(data, [("nosync", TorchLearner())])


def test_a_regression_setting_runs_its_own_loop():
    rng = np.random.default_rng(0)
    from streamlearn.sim.simulator import NodeData

    X = rng.normal(size=(2, 300, 2)).astype(np.float32)
    data = NodeData(X=X, y=X.sum(-1).astype(np.float32), classes=[], feature_names=["a", "b"], task="regression")
    learner = TorchLearner("logreg", loss="squared", lr=0.05, seed=0)
    [got] = simulate_grid(data, [Setting("periodic:b=5", learner)], progress=False)
    alone = simulate(data, learner, "periodic:b=5", progress=False)
    assert np.array_equal(got.losses, alone.losses) and got.transfers == alone.transfers > 0
