"""The node core learns as a row of the vectorised simulator does (:func:`streamlearn.sim.simulate`).

Same data, same learner template (the same w0), same mini-batches: the scalar core (one learner,
``predict_proba_learn_many``, the evaluator's clipped log loss) against the simulator's (m, d) bank
(one batched functional forward and backward for all rows). No broker.

- ``nosync``: every core equals its row: the same 0/1 predictions, losses and final model up to
  float32 rounding (the bank sums its rows' gradients in one backward; the learner steps alone).
- ``periodic``: the test plays the coordinator for two cores: at every b-th step both send their
  models, and both get the mean back as model and reference (a full sync), which is what the
  simulator's lockstep driver does with the same protocol.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamlearn.learners import TorchLearner
from streamlearn.node import NodeCore
from streamlearn.sim import NodeData, simulate
from test_node_core import Msg

B, N, M = 10, 1000, 2
FEATURES = ["a", "b", "c", "d"]


def node_data(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(M, N, len(FEATURES))).astype(np.float32) * np.arange(1, 5, dtype=np.float32)
    w = rng.normal(size=(M, len(FEATURES)))
    y = (np.einsum("mnf,mf->mn", X, w) > 0).astype(np.int64)  # each node a concept of its own
    return NodeData(X=X, y=y, classes=[0, 1], feature_names=FEATURES)


def template(**kw):
    return TorchLearner(**{"arch": "logreg", "lr": 0.3, "seed": 1, "device": "cpu", **kw})


def cores(data, spec, **kw):
    return [NodeCore(template(**kw).clone({"features": FEATURES, "classes": data.classes}), data.classes, spec,
                     node=i, detector=None) for i in range(data.m)]


def run_cores(data, nodes, b=None):
    """Learn every node's stream round by round; with ``b``, average the models every b rounds (the test is
    the coordinator). Per node: correct and loss of every sample."""
    correct = [[] for _ in nodes]
    losses = [[] for _ in nodes]
    for r in range(data.n // B):
        reports = []
        for i, core in enumerate(nodes):
            sl = slice(r * B, (r + 1) * B)
            core.learn_many(data.X[i, sl], data.y[i, sl], np.arange(sl.start, sl.stop))
            correct[i].append(core.step_correct)
            losses[i].append(core.step_loss)
            out = core.node_rule()
            if out is not None:
                reports.append(out)
        if b is not None and reports:
            assert len(reports) == len(nodes) and all(o.fields["model"] is not None for o in reports)
            mean = torch.stack([o.fields["model"].float() for o in reports]).mean(dim=0)
            for core in nodes:
                assert core.receive(Msg("send", reference=True, model=mean.numpy())).applied
    return np.array([np.concatenate(c) for c in correct]), np.array([np.concatenate(x) for x in losses])


@pytest.mark.parametrize("kw", [{}, {"scale": True}], ids=["logreg", "scaled"])
def test_nosync_core_equals_its_row_of_the_simulator(kw):
    data = node_data()
    res = simulate(data, template(**kw), "nosync", batch_size=B, progress=False)
    nodes = cores(data, "nosync", **kw)
    correct, losses = run_cores(data, nodes)
    np.testing.assert_array_equal(correct, res.correct)
    np.testing.assert_allclose(losses, res.losses, rtol=1e-4, atol=1e-5)
    for i, core in enumerate(nodes):
        assert core.preq.accuracy == pytest.approx(res.correct[i].mean())
        torch.testing.assert_close(core.learner.get_flat(), res.final_models[i], rtol=1e-4, atol=1e-5)


def test_periodic_cores_equal_the_simulator_rows():
    data = node_data(seed=1)
    spec = "periodic:b=5"
    res = simulate(data, template(), spec, batch_size=B, progress=False)
    nodes = cores(data, spec)
    correct, losses = run_cores(data, nodes, b=5)
    np.testing.assert_array_equal(correct, res.correct)
    np.testing.assert_allclose(losses, res.losses, rtol=1e-4, atol=1e-5)
    assert res.comm["full_syncs"] == nodes[0].syncs == N // B // 5
    for i, core in enumerate(nodes):
        assert core.preq.accuracy == pytest.approx(res.correct[i].mean())
        torch.testing.assert_close(core.learner.get_flat(), res.final_models[i], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(core.reference, core.learner.get_flat())  # the last step synced
