"""The step-size schedule (lr_decay): the formula, the one-sided restart rule, TorchLearner's use of both."""

import math

import numpy as np
import pytest
import torch
from learners_data import FEATURES, separable_stream

from streamlearn.errors import ConfigError
from streamlearn.learners import TorchLearner, make_learner
from streamlearn.learners.schedule import RiseFilter, decayed_lr, error_rose


def learner(**kw):
    kw = {"features": FEATURES, "classes": [False, True], "seed": 0, "device": "cpu", **kw}
    return TorchLearner(**kw)


# -- the formula ----------------------------------------------------------------------------------

def test_decayed_lr_is_the_formula_on_floats_arrays_and_tensors():
    assert decayed_lr(0.5, 0, 0, 10) == 0.5
    assert decayed_lr(0.5, 30, 0, 10) == pytest.approx(0.25)
    assert decayed_lr(0.5, 130, 100, 10) == pytest.approx(0.25)  # counts from the restart
    assert decayed_lr(0.5, 10**6, 0, None) == 0.5  # no decay
    rng = np.random.default_rng(0)
    t_reset = rng.integers(0, 100, size=8)
    want = np.array([0.3 / math.sqrt(1 + (100 - r) / 25) for r in t_reset])
    np.testing.assert_allclose(decayed_lr(0.3, 100, t_reset, 25), want, rtol=1e-12)
    got = decayed_lr(0.3, 100, torch.from_numpy(t_reset).double(), 25)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)


def test_error_rose_is_one_sided():
    rng = np.random.default_rng(3)
    up = np.r_[rng.random(800) < 0.1, rng.random(200) < 0.5].astype(float)  # a drift
    down = np.r_[rng.random(800) < 0.5, rng.random(200) < 0.1].astype(float)  # a model that learns
    assert error_rose(up) and not error_rose(down)
    # an alarm long after the error fell (ADWIN's late alarms while a model learns): both recent
    # windows are low, the history before them is not
    late = np.r_[rng.random(300) < 0.5, rng.random(700) < 0.1].astype(float)
    assert not error_rose(late)
    assert not error_rose(np.zeros(1000)) and not error_rose(np.ones(1000))  # no change is no rise
    # only the last (1 + history) * window errors count
    assert error_rose(np.r_[np.zeros(5000), up]) and error_rose(np.r_[np.ones(5000), up])
    # a rise of a few errors within the noise is no rise; a larger one is
    def exactly(k, n):  # n errors of which exactly k are 1, in a seeded order
        return rng.permutation(np.r_[np.ones(k), np.zeros(n - k)])

    before = exactly(160, 800)  # 0.20
    assert not error_rose(np.r_[before, exactly(44, 200)])  # 0.22: within one standard error (0.031)
    assert error_rose(np.r_[before, exactly(70, 200)])  # 0.35
    assert error_rose(up[:850], window=50, history=1) and not error_rose(down[:850], window=50, history=1)
    assert error_rose([0, 1], window=5) and not error_rose([1]) and not error_rose([])


def test_rise_filter_sees_what_error_rose_sees_on_the_whole_history():
    rng = np.random.default_rng(4)
    errors = (rng.random(3000) < np.r_[np.full(1500, 0.2), np.full(1500, 0.5)]).astype(float)
    valid = rng.random(3000) > 0.1
    hits = sorted(rng.choice(3000, size=60, replace=False).tolist())
    window = 100
    rise = RiseFilter(window, history=2)
    for start in range(0, 3000, 10):
        batch = [k - start for k in hits if start <= k < start + 10]
        got = rise.update(errors[start:start + 10], batch, valid[start:start + 10])
        # the same rule on the whole valid history up to each detection
        want = any(error_rose(errors[:start + k + 1][valid[:start + k + 1]], window, 2) for k in batch)
        assert got == want
    for bad in (dict(window=0), dict(history=0), dict(z=-1.0), dict(window=2.5)):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            RiseFilter(**bad)


# -- TorchLearner(lr_decay=tau) ---------------------------------------------------------------------

@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "100", True])
def test_lr_decay_is_validated_naming_field_and_value(bad):
    with pytest.raises(ConfigError, match="lr_decay") as e:
        learner(lr_decay=bad)
    assert repr(bad) in str(e.value)
    with pytest.raises(ConfigError, match="lr_decay"):
        make_learner("mlp", lr_decay=bad)


@pytest.mark.parametrize("kw", [dict(arch="logreg"), dict(arch="mlp", hidden=(5,)),
                                dict(arch="mlp", hidden=(5,), momentum=0.9, weight_decay=1e-3),
                                dict(arch="mlp", hidden=(5,), optimizer="adam", scale=True)])
def test_lr_decays_and_restart_schedule_wakes_it_up(kw):
    X, y = separable_stream(400, seed=1)
    model = learner(lr=0.4, lr_decay=5, **kw)
    # a reference learner at constant lr whose optimizer gets the schedule's lr by hand, step by step
    ref = learner(lr=0.4, **kw)
    seen = []
    for step, i in enumerate(range(0, 400, 10)):
        if step == 20:
            model.restart_schedule()
            assert model.t_reset_ == 20 and model.lr_ == 0.4
        t_reset = 0 if step < 20 else 20
        assert model.lr_ == pytest.approx(0.4 / math.sqrt(1 + (step - t_reset) / 5), rel=1e-15)
        seen.append(model.lr_)
        ref.optimizer_.param_groups[0]["lr"] = model.lr_
        model.learn_many(X[i:i + 10], y[i:i + 10])
        ref.learn_many(X[i:i + 10], y[i:i + 10])
        assert model.optimizer_.param_groups[0]["lr"] == seen[-1]  # the step took the schedule's lr
    assert torch.equal(model.get_flat(), ref.get_flat())
    assert seen[19] < seen[0] / 2 and seen[20] == 0.4  # settled, then woke up
    assert model.n_steps_ == 40


@pytest.mark.parametrize("kw", [dict(arch="logreg"), dict(arch="mlp", hidden=(5,), scale=True),
                                dict(arch="mlp", hidden=(5,), momentum=0.9, weight_decay=1e-3),
                                dict(arch="mlp", hidden=(5,), optimizer="adam")])
def test_without_lr_decay_nothing_changes(kw):
    """lr_decay=None keeps today's constant-lr path: the optimizer's lr is never written, and a
    schedule that stays at lr (tau so large that 1 + t/tau == 1 in float64) steps bit for bit alike."""
    X, y = separable_stream(300, seed=2)
    plain, flat_schedule = learner(lr=0.3, **kw), learner(lr=0.3, lr_decay=1e300, **kw)
    for i in range(0, 300, 10):
        P = plain.predict_proba_learn_many(X[i:i + 10], y[i:i + 10])
        Q = flat_schedule.predict_proba_learn_many(X[i:i + 10], y[i:i + 10])
        assert np.array_equal(P, Q)
    plain.restart_schedule()  # harmless without a schedule
    assert plain.optimizer_.param_groups[0]["lr"] == 0.3 and plain.lr_ == 0.3
    assert torch.equal(plain.get_flat(), flat_schedule.get_flat())


def test_clone_starts_the_schedule_afresh_and_keeps_tau():
    X, y = separable_stream(100, seed=0)
    model = learner(lr=0.2, lr_decay=3)
    for i in range(0, 100, 10):
        model.learn_many(X[i:i + 10], y[i:i + 10])
    model.restart_schedule()
    model.learn_many(X[:10], y[:10])
    fresh = model.clone()
    assert (model.n_steps_, model.t_reset_) == (11, 10)
    assert (fresh.lr_decay, fresh.n_steps_, fresh.t_reset_, fresh.lr_) == (3, 0, 0, 0.2)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_checkpoint_keeps_the_schedule_clock(optimizer):
    from streamlearn.kafka.checkpoint import CheckpointError, learner_state, restore_learner_state

    X, y = separable_stream(400, seed=5)
    a = learner(arch="mlp", hidden=(4,), lr=0.3, lr_decay=4, optimizer=optimizer)
    for i in range(0, 200, 10):
        a.learn_many(X[i:i + 10], y[i:i + 10])
        if i == 120:
            a.restart_schedule()
    arrays, meta = learner_state(a)
    assert meta["schedule"] == [20, 13]
    b = learner(arch="mlp", hidden=(4,), lr=0.3, lr_decay=4, optimizer=optimizer, seed=9)
    restore_learner_state(b, {k: np.asarray(v.detach().cpu() if hasattr(v, "detach") else v)
                              for k, v in arrays.items()}, meta)
    assert (b.n_steps_, b.t_reset_, b.lr_) == (20, 13, a.lr_)
    for i in range(200, 400, 10):
        a.learn_many(X[i:i + 10], y[i:i + 10])
        b.learn_many(X[i:i + 10], y[i:i + 10])
    assert torch.equal(a.get_flat(), b.get_flat())
    for bad in ([5, 7], [3], "x", [1.5, 0]):
        with pytest.raises(CheckpointError, match="schedule"):
            restore_learner_state(b, arrays, {**meta, "schedule": bad})


@pytest.mark.parametrize("binary", [True, False])
def test_rise_filter_answers_as_error_rose_on_the_last_errors(binary):
    # RiseFilter answers every detection of a batch at once (0/1 errors: from prefix sums); the answer must be
    # error_rose's on the last (1 + history) * window errors fed up to the detection, exactly
    rng = np.random.default_rng(7)
    rise = RiseFilter(window=20, history=2, z=1.0)
    fed_so_far: list[float] = []
    answers = []
    for step in range(60):
        n = int(rng.integers(1, 40))
        p = 0.2 if step < 30 else 0.6
        errors = (rng.random(n) < p).astype(float) if binary else np.abs(rng.normal(p, 0.3, n))
        valid = rng.random(n) < 0.9 if step % 3 == 0 else None
        detections = sorted(rng.choice(n, size=min(n, int(rng.integers(0, 6))), replace=False).tolist())
        got = rise.rises(errors, detections, valid)
        kept = errors if valid is None else errors[valid]
        for k, ans in zip(detections, got):
            c = k + 1 if valid is None else int(valid[:k + 1].sum())
            want = error_rose(np.array(fed_so_far + kept[:c].tolist())[-60:], 20, 2, 1.0)
            assert ans == want, (step, k)
            answers.append(ans)
        fed_so_far += kept.tolist()
    assert any(answers) and not all(answers)  # both answers were exercised
