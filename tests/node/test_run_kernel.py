"""A run of mini-batches in one compiled call (:meth:`NodeCore.learn_run`) learns as the mini-batches one by one.

Two cores from the same learner template on the same stream: one calls ``learn_many`` then ``node_rule``
per mini-batch, the other ``learn_run`` on everything left (as the node service does). Both must send the
same messages at the same steps, count the same suppressed violations and loss-guard events, score the
same, and end with the same model to float rounding (the kernel sums in another order than numpy's
matrix products).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamlearn.learners import TorchLearner
from streamlearn.node import NodeCore
from streamlearn.node import run_kernel

pytestmark = pytest.mark.skipif(not run_kernel.AVAILABLE, reason="needs numba (pip install numba)")

CLASSES = [0, 1]


def stream(n=6000, f=4, seed=0):
    """Features of spread scales; the concept flips half-way (a drift the models must follow)."""
    rng = np.random.default_rng(seed)
    X = (rng.normal(size=(n, f)) * np.arange(1, f + 1)).astype(np.float32)
    w = rng.normal(size=f)
    y = (X @ w > 0).astype(np.int64)
    y[n // 2:] = 1 - y[n // 2:]
    return X, y


def core(spec, *, sync_timeout=5.0, centre_only=False, detector=None, **kw):
    learner = TorchLearner(**{"arch": "logreg", "n_features": 4, "classes": CLASSES, "seed": 0, "device": "cpu",
                              "lr": 0.3, **kw})
    if centre_only:  # a scaler that only centres (not a constructor option: set on the learner's scaler)
        learner._scaler.with_std = False
        learner._fast.row_shape = None  # (the one-row step standardises)
    return NodeCore(learner, CLASSES, spec, detector=detector, sync_timeout=sync_timeout)


def drive(c, X, y, B, run, answer_every=1):
    """Learn the stream; a model sent up is answered (a full sync to itself) at the ``answer_every``-th
    message, else left awaited. Returns the (step, kind) of every message."""
    seqs = np.arange(len(y))
    sent, i, n_out = [], 0, 0
    while i + B <= len(y):
        if run:
            k, out = c.learn_run(X[i:], y[i:], seqs[i:], B)
        else:
            c.learn_many(X[i:i + B], y[i:i + B], seqs[i:i + B])
            out, k = c.node_rule(), 1
        i += k * B
        if out is not None:
            sent.append((c.n_steps, out.kind))
            n_out += 1
            if n_out % answer_every == 0:
                c.awaiting = None
                c.reference = c.learner.get_flat().clone()
    return sent


SPECS = ["dynamic:delta=0.5,b=1", "dynamic:delta=0.05,b=4", "periodic:b=8", "fedavg:b=5", "nosync"]


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("B", [1, 10, 37])
@pytest.mark.parametrize("kw", [{}, {"scale": False, "lr": 0.01, "weight_decay": 0.001},
                                      {"scale": True, "centre_only": True, "lr": 0.01}, {"detector": "adwin"},
                                      {"arch": "mlp", "hidden": (8,), "scale": True, "lr": 0.05},
                                      {"arch": "mlp", "hidden": (5,), "lr": 0.01, "weight_decay": 0.01}],
                         ids=["plain", "unscaled+wd", "centred", "adwin", "mlp", "mlp-unscaled+wd"])
def test_a_run_learns_as_its_mini_batches_one_by_one(spec, B, kw):
    X, y = stream()
    one, many = core(spec, **kw), core(spec, **kw)
    assert many.runs() and not many.regression
    sent_one, sent_many = drive(one, X, y, B, run=False), drive(many, X, y, B, run=True)
    assert sent_one == sent_many
    assert (one.n_steps, one.n_samples, one.since_sync, one.last_seq) == \
           (many.n_steps, many.n_samples, many.since_sync, many.last_seq)
    assert one.preq.accuracy == many.preq.accuracy
    assert many.preq.loss == pytest.approx(one.preq.loss, rel=1e-5)
    # (an MLP's one-row numpy step keeps its softmax in float64 and decays the weights as a factor: over 6,000
    # steps its rounding drifts to some 6e-5)
    atol = 1e-4 if kw.get("arch") == "mlp" and B == 1 else 2e-5
    np.testing.assert_allclose(many.learner.get_flat().numpy(), one.learner.get_flat().numpy(), atol=atol)
    assert many.learner.n_steps_ == one.learner.n_steps_ and many.learner.n_samples_seen_ == one.learner.n_samples_seen_
    np.testing.assert_allclose(many.step_proba, one.step_proba, atol=1e-5)
    assert many.divergence == pytest.approx(one.divergence, rel=1e-4, abs=1e-9)
    g1, g2 = one.loss_guard, many.loss_guard
    assert (g1.position, g1.n_steps, g1.n_seen, g1.n_events) == (g2.position, g2.n_steps, g2.n_seen, g2.n_events)
    assert list(one.drifts) == list(many.drifts) and one.n_drifts == many.n_drifts
    if kw.get("detector"):
        assert one.n_drifts >= 1 and one.monitor.n_ == many.monitor.n_ == one.n_samples
    rel = 1e-3 if atol > 2e-5 else 1e-5
    assert g2.recent == pytest.approx(g1.recent, rel=rel) and g2.level == pytest.approx(g1.level, rel=rel)


@pytest.mark.parametrize("B", [1, 10])
def test_violations_while_a_model_is_awaited_are_counted_as_suppressed(B):
    """No answer ever comes: after the first violation every later one is suppressed, in both."""
    X, y = stream()
    one, many = core("dynamic:delta=0.05,b=1", sync_timeout=1e9), core("dynamic:delta=0.05,b=1", sync_timeout=1e9)
    sent_one = drive(one, X, y, B, run=False, answer_every=10 ** 9)
    sent_many = drive(many, X, y, B, run=True, answer_every=10 ** 9)
    assert sent_one == sent_many and len(sent_one) == 1
    assert one.suppressed == many.suppressed > 100


@pytest.mark.parametrize("kw", [dict(lr=0.5, scale=False), dict(lr=10.0)], ids=["unscaled", "scaled"])
def test_the_loss_guard_fires_at_the_same_step(kw):
    """A glitch (readings 100 times too high, labels flipped, for 100 samples) blows the loss up: the guard
    restores and damps at the same sample in both, and the runs after it go on with the damped step size."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4000, 4)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
    X[2000:2100] *= 100
    y[2000:2100] = 1 - y[2000:2100]
    one, many = core("periodic:b=5", **kw), core("periodic:b=5", **kw)
    sent_one, sent_many = drive(one, X, y, 10, run=False), drive(many, X, y, 10, run=True)
    assert sent_one == sent_many
    events = [[(e.position, e.reason, e.action) for e in c.loss_guard.events] for c in (one, many)]
    assert events[0] == events[1] and len(events[0]) == 1
    assert one.learner.lr == many.learner.lr
    np.testing.assert_allclose(many.learner.get_flat().numpy(), one.learner.get_flat().numpy(), atol=2e-5)


def test_a_bad_feature_raises_at_the_same_mini_batch_as_one_by_one():
    """The learner rejects a NaN feature naming its row and column: a run stops before its mini-batch, which
    then raises as it does alone, after the same steps."""
    from streamlearn.errors import BadRecordError

    X, y = stream(2000)
    X[1234, 2] = np.nan
    errors = []
    for run in (False, True):
        c = core("nosync")
        with pytest.raises(BadRecordError) as e:
            drive(c, X, y, 10, run=run)
        errors.append((str(e.value), c.n_steps, c.n_samples, c.learner.get_flat().numpy()))
    assert errors[0][:3] == errors[1][:3] == (errors[0][0], 123, 1230)
    assert "row 4" in errors[0][0] and "nan" in errors[0][0]
    np.testing.assert_allclose(errors[0][3], errors[1][3], atol=1e-5)


@pytest.mark.parametrize("kw", [dict(arch="mlp", hidden=(8, 8)), dict(lr_decay=2.0)], ids=["mlp2", "lr_decay"])
def test_learners_the_kernel_does_not_cover_learn_one_mini_batch_per_call(kw):
    X, y = stream(200)
    learner = TorchLearner(**{"arch": "logreg", "n_features": 4, "classes": CLASSES, "seed": 0, "device": "cpu", **kw})
    c = NodeCore(learner, CLASSES, "nosync")
    assert not c.runs()
    k, out = c.learn_run(X, y, np.arange(200), 10)
    assert (k, out, c.n_steps, c.n_samples) == (1, None, 1, 10)


def test_a_detector_that_restarts_the_step_size_schedule_keeps_mini_batches_one_by_one():
    learner = TorchLearner("logreg", n_features=4, classes=CLASSES, seed=0, device="cpu", lr_decay=2.0)
    assert not NodeCore(learner, CLASSES, "nosync", detector="adwin").runs()
    assert NodeCore(learner.clone(), CLASSES, "nosync", detector="adwin").restarts


@pytest.mark.parametrize("n", [1, 7, 8, 9, 16, 17, 127, 128, 129, 300, 1001])
def test_the_kernel_sums_a_batch_loss_as_numpy_does(n):
    a = np.random.default_rng(n).exponential(size=n) * 10.0 ** np.random.default_rng(n + 1).integers(-3, 4, n)
    assert run_kernel._pairwise_sum(a, 0, n) == float(a.sum())


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=24, max_size=24),
       st.lists(st.integers(0, 1), min_size=6, max_size=6), st.sampled_from(["dynamic:delta=0.5,b=1", "nosync"]))
def test_any_finite_readings_are_learnt_without_harm(values, labels, spec):
    """Readings of any finite float32 (up to 3.4e38: the logits overflow) go through a run as through the
    per-batch steps: the same counts, the same messages, a model that is finite or was set back by the guard."""
    X = np.array(values, dtype=np.float32).reshape(6, 4)
    y = np.array(labels, dtype=np.int64)
    sent, cores = [], []
    with np.errstate(all="ignore"):
        for run in (False, True):
            c = core(spec)
            sent.append(drive(c, X, y, 2, run=run))
            cores.append(c)
    assert sent[0] == sent[1]
    one, many = cores
    assert (one.n_steps, one.n_samples, one.loss_guard.position) == (many.n_steps, many.n_samples,
                                                                     many.loss_guard.position) == (3, 6, 6)
    assert one.preq.n == many.preq.n == 6
