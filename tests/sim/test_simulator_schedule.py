"""The simulator's step-size schedule (lr_decay) equals separate learners that restart on a rise."""

import numpy as np
import pytest
import torch

from streamlearn.evaluation import DriftMonitor
from streamlearn.learners import TorchLearner, make_learner
from streamlearn.sim import NodeData, simulate
from streamlearn.sim.run import build_node_data


def flipped_data(m=3, n=2000, f=4, flip_at=1000, seed=0):
    """Separable labels, swapped from ``flip_at`` on at every node (a sudden label permutation)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(m, n, f)).astype(np.float32) * np.arange(1, f + 1, dtype=np.float32)
    y = (X @ rng.normal(size=f) > 0).astype(np.int64)
    y[:, flip_at:] = 1 - y[:, flip_at:]
    return NodeData(X=X, y=y, classes=[0, 1], feature_names=[f"x{i}" for i in range(f)])


def scalar_run(template, data, node, B, detector):
    """One learner test-then-trained on one node's stream, as the node service does it: predict and
    learn in one pass, feed the errors to the (one-sided) monitor, restart the schedule after a detection:
    the monitor reports only rises of the error."""
    learner = template.clone({"features": data.feature_names, "classes": data.classes})
    monitor = None if detector is None else DriftMonitor(detector)
    correct, restarts = [], []
    for start in range(0, data.n, B):
        Xb, yb = data.X[node, start:start + B], data.y[node, start:start + B]
        P = learner.predict_proba_learn_many(Xb, yb)
        ok = P.argmax(axis=1) == yb
        correct.append(ok)
        if monitor is not None:
            if monitor.update_many((~ok).astype(float)):
                learner.restart_schedule()
                restarts.append((learner.n_steps_, node))
    return np.concatenate(correct), learner, restarts


@pytest.mark.parametrize("kw", [
    dict(arch="logreg"),                                                   # plain SGD: gradient rows scaled
    dict(arch="mlp", hidden=(8,), scale=True),                             # plain SGD, with the scaler
    dict(arch="mlp", hidden=(8,), momentum=0.9, weight_decay=1e-3, lr=0.05),  # the update rows scaled
    dict(arch="mlp", hidden=(8,), optimizer="adam", lr=0.02),              # the update rows scaled
])
@pytest.mark.parametrize("detector", ["adwin", None])
def test_nosync_rows_equal_scalar_learners_with_the_schedule(kw, detector):
    data, B = flipped_data(), 10
    template = TorchLearner(**{"lr": 0.3, "seed": 1, "device": "cpu", **kw}, lr_decay=20)
    res = simulate(data, template, "nosync", batch_size=B, progress=False, detector=detector)
    restarts = []
    for node in range(data.m):
        correct, learner, node_restarts = scalar_run(template, data, node, B, detector)
        np.testing.assert_array_equal(res.correct[node], correct)
        torch.testing.assert_close(res.final_models[node], learner.get_flat(), rtol=1e-4, atol=1e-5)
        restarts += node_restarts
    assert sorted(res.restarts) == sorted(restarts)
    if detector is None:
        assert res.restarts == []
    else:  # every node restarted after the flip at sample 1000, and only then
        assert {node for _, node in res.restarts} == set(range(data.m))
        assert all(1000 <= step * B < 1400 for step, _ in res.restarts)
    assert res.summary()["restarts"] == len(res.restarts)


def test_a_single_node_equals_the_scalar_learner_and_the_decay_matters():
    data, B = flipped_data(m=1), 10
    template = TorchLearner("mlp", hidden=(8,), lr=0.3, seed=2, device="cpu", lr_decay=10)
    res = simulate(data, template, "nosync", batch_size=B, progress=False, detector="adwin")
    correct, learner, restarts = scalar_run(template, data, 0, B, "adwin")
    np.testing.assert_array_equal(res.correct[0], correct)
    torch.testing.assert_close(res.final_models[0], learner.get_flat(), rtol=1e-4, atol=1e-5)
    assert res.restarts == restarts and restarts
    constant = simulate(data, template.clone({"lr_decay": None}), "nosync", batch_size=B, progress=False,
                        detector="adwin")
    assert constant.restarts == []  # no schedule, nothing to restart
    assert not torch.allclose(constant.final_models, res.final_models)


def test_without_lr_decay_the_detector_changes_nothing():
    data = flipped_data(m=3, n=600, flip_at=300)
    template = TorchLearner("mlp", hidden=(8,), lr=0.3, seed=0, device="cpu")
    a = simulate(data, template, "dynamic:delta=0.1,b=1", progress=False)
    b = simulate(data, template, "dynamic:delta=0.1,b=1", progress=False, detector="adwin")
    assert np.array_equal(a.correct, b.correct) and torch.equal(a.final_models, b.final_models)
    assert a.syncs == b.syncs and b.restarts == []


def test_sea_restarts_follow_the_injected_drift_only():
    """SEA with 10% noise, labels permuted at sample 3000 of every node: the nodes restart their
    step size within a few hundred samples after the drift, and never while the stream is stable
    (where ADWIN also fires, as the error falls while the models learn)."""
    data = build_node_data("sea", 6, ["label-permutation@3000"], n=6000, seed=0, source_params={"noise": 0.1})
    learner = make_learner("mlp", hidden=(16,), lr=0.5, scale=True, seed=0, device="cpu", lr_decay=100)
    for protocol in ("nosync", "periodic:b=4"):
        res = simulate(data, learner, protocol, batch_size=10, progress=False, detector="adwin")
        positions = [step * 10 for step, _ in res.restarts]
        assert positions and all(3000 <= p < 3600 for p in positions), positions
        assert len({node for _, node in res.restarts}) >= data.m // 2
