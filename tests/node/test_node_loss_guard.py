"""A node's loss guard: NodeCore damps a learner blown up by a glitch, and the status and metric say so."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from prometheus_client import CollectorRegistry

from streamlearn.learners import TorchLearner
from streamlearn.metrics import NodeMetrics
from streamlearn.node.core import NodeCore


def glitch(n=4000, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
    X[2000:2100] *= 100  # the sensors read 100 times too high for 100 samples
    return X, y


def run(loss_guard: bool, **kwargs):
    X, y = glitch()
    learner = TorchLearner("mlp", hidden=(16,), n_features=4, classes=[0, 1], lr=0.5, seed=0, device="cpu", **kwargs)
    core = NodeCore(learner, [0, 1], protocol="periodic:b=5", node=2, detector=None, loss_guard=loss_guard)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for i in range(0, len(y), 10):
            core.learn_many(X[i:i + 10], y[i:i + 10], np.arange(i, i + 10))
            core.node_rule()  # reports; nobody answers
    return core


def test_node_core_damps_the_learner_and_counts_it():
    off, on = run(False), run(True)
    assert off.loss_guard is None
    g = on.loss_guard
    assert g.n_events >= 1 and g.learning
    status = g.status()
    assert status["divergences"] == g.n_events and status["guard_lr"] == 0.5 * 0.5 ** g.n_events
    assert status["last_divergence"]["action"] == "damped"
    assert on.preq.loss < off.preq.loss / 2 and on.preq.rolling_accuracy > 0.97
    assert torch.isfinite(on.learner.get_flat()).all()
    reg = CollectorRegistry()
    NodeMetrics(reg, 2).update_from_status({"node": 2, **status})
    assert reg.get_sample_value("streamlearn_node_divergences_total", {"node": "2"}) == g.n_events
    assert reg.get_sample_value("streamlearn_node_learning_stopped", {"node": "2"}) == 0.0


def test_a_stopped_node_predicts_on_without_learning():
    core = run(True, momentum=0.5)  # the torch path (not numpy's)
    g = core.loss_guard
    g.learning = False  # as after max_damps
    before = core.learner.get_flat()
    X, y = glitch(50, seed=1)
    core.learn_many(X[:10], y[:10], np.arange(10))
    torch.testing.assert_close(core.learner.get_flat(), before)
    assert core.step_proba.shape == (10, 2) and core.n_samples == 4010
