"""LossGuard: the rule on a stand-in learner, then TorchLearner (numpy and torch paths), RiverLinear and evaluate."""

from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import torch
from river import linear_model

from streamlearn.errors import ConfigError
from streamlearn.evaluation import evaluate
from streamlearn.learners import RiverLinear, TorchLearner
from streamlearn.learners.loss_guard import LossGuard, LossGuardBank, scale_lr

FEATURES = ["x0", "x1", "x2", "x3"]


class Flat:
    """A stand-in averageable learner: a flat vector and a step size."""

    def __init__(self, d=4, lr=0.4):
        self.w = torch.ones(d)
        self.rate = lr

    def get_flat(self):
        return self.w.clone()

    def set_flat(self, v):
        self.w = torch.as_tensor(v).clone()

    def scale_lr(self, factor):
        self.rate *= factor
        return self.rate


def feed(guard, learner, steps, loss, B=10):
    return [e for e in (guard.observe(learner, np.full(B, loss)) for _ in range(steps)) if e is not None]


def test_steady_loss_and_a_drift_without_grown_weights_do_not_fire():
    guard, learner = LossGuard(warmup=100, every=100), Flat()
    assert feed(guard, learner, 100, 0.3) == []
    # a concept drift: the loss jumps far up, the weights do not grow
    assert feed(guard, learner, 50, 5.0) == [] and guard.learning
    assert guard.status() == {"divergences": 0, "learning_stopped": False, "guard_lr": None, "last_divergence": None}


def test_an_explosion_restores_the_good_model_and_halves_the_step(caplog):
    guard, learner = LossGuard(warmup=100, every=100, name="node 3"), Flat()
    feed(guard, learner, 100, 0.3)  # snapshots at 0, 100, ... samples
    good = guard._good[1].clone()
    learner.w *= 10  # the weights blow up ...
    with caplog.at_level(logging.WARNING, logger="streamlearn.learners.loss_guard"):
        events = feed(guard, learner, 30, 8.0)  # ... and the loss with them
    assert len(events) == 1
    e = events[0]
    assert (e.reason, e.action, e.lr) == ("loss exploded", "damped", 0.2) and e.loss > 3 * max(e.level, math.log(2))
    torch.testing.assert_close(learner.w, good)
    assert learner.rate == 0.2 and guard.status()["divergences"] == 1 and guard.status()["guard_lr"] == 0.2
    assert len([r for r in caplog.records if "node 3: loss exploded" in r.getMessage()]) == 1  # once per event


def test_non_finite_parameters_fire_at_once_and_repeated_events_stop_learning(caplog):
    guard, learner = LossGuard(max_damps=2), Flat()
    guard.observe(learner, np.full(10, 0.5))  # the first snapshot
    events = []
    for k in range(3):
        learner.w[0] = float("nan")
        events.append(guard.observe(learner, np.array([np.nan] * 10)))
        assert torch.isfinite(learner.w).all()
    assert [e.action for e in events] == ["damped", "damped", "stopped"]
    assert [e.reason for e in events] == ["parameters not finite"] * 3
    assert not guard.learning and guard.status()["learning_stopped"]
    learner.w[0] = float("nan")
    assert guard.observe(learner, np.full(10, np.nan)) is None  # stopped: said once, then silent
    # a NaN loss with finite parameters (no prediction yet) is not an event
    fresh = LossGuard()
    assert fresh.observe(Flat(), np.full(10, np.nan)) is None and fresh.n_events == 0


def test_a_learner_without_a_step_size_is_stopped():
    learner = RiverLinear(linear_model.PAClassifier(), features=FEATURES)
    guard = LossGuard()
    guard.observe(learner, np.full(5, 0.5))
    learner.set_flat(torch.full((5,), float("inf")))
    e = guard.observe(learner, np.full(5, np.nan))
    assert e.action == "stopped" and e.lr is None and not guard.learning
    assert torch.isfinite(learner.get_flat()).all()


def test_bad_settings_are_config_errors():
    for kwargs in ({"factor": 0.5}, {"damp": 1.0}, {"every": 0}, {"max_damps": -1}, {"min_loss": float("nan")}):
        with pytest.raises(ConfigError, match=next(iter(kwargs))):
            LossGuard(**kwargs)


@pytest.mark.parametrize("kwargs, fast", [({}, True), ({"momentum": 0.5}, False), ({"optimizer": "adam"}, False)])
def test_scale_lr_on_torch_learners_both_paths(kwargs, fast):
    X = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    a = TorchLearner("mlp", hidden=(8,), features=FEATURES, classes=[0, 1], lr=0.4, seed=0, device="cpu", **kwargs)
    b = TorchLearner("mlp", hidden=(8,), features=FEATURES, classes=[0, 1], lr=0.2, seed=0, device="cpu", **kwargs)
    assert (a._fast is not None) == fast
    assert scale_lr(a, 0.5) == pytest.approx(0.2)
    assert all(g["lr"] == pytest.approx(0.2) for g in a.optimizer_.param_groups)
    a.learn_many(X, y), b.learn_many(X, y)
    torch.testing.assert_close(a.get_flat(), b.get_flat())  # the next step takes the halved step size


def glitch_stream(n=4000, seed=0):
    """x0 + x1 > 0, with a sensor glitch: samples 2000-2099 read 100 times too high."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    X[2000:2100] *= 100
    return [(dict(zip(FEATURES, map(float, r))), int(t)) for r, t in zip(X, y)]


@pytest.mark.parametrize("kwargs", [{"hidden": (16,)}, {"hidden": (16,), "momentum": 0.5}])  # numpy path, torch path
def test_evaluate_damps_an_mlp_blown_up_by_a_glitch(kwargs):
    stream = glitch_stream()
    out = {}
    for guarded in (False, True):
        learner = TorchLearner("mlp", features=FEATURES, classes=[0, 1], lr=0.5, seed=0, device="cpu", **kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # overflow in the unguarded run
            out[guarded] = evaluate(stream, learner, batch_size=10, detector=None, progress=False,
                                    loss_guard=guarded)
    off, on = out[False], out[True]
    assert off.divergences == [] and off.settings["loss_guard"] is False
    assert on.settings["loss_guard"] is True and on.divergences
    first = on.divergences[0]
    assert 2000 <= first["position"] <= 2200 and first["action"] == "damped" and first["lr"] == 0.25
    assert first["restored"] < 2000  # a model from before the glitch
    assert on.loss < off.loss / 2 and on.accuracy > off.accuracy
    assert on.history["rolling_accuracy"][-1] > 0.97
    assert on.to_dict()["divergences"][0]["reason"] == "loss exploded"


def test_evaluate_leaves_river_models_and_regressors_alone():
    from river import naive_bayes

    res = evaluate(glitch_stream(500), naive_bayes.GaussianNB(), detector=None, progress=False)
    assert res.settings["loss_guard"] is False and res.divergences == [] and not res.learning_stopped


def test_evaluate_rejects_a_guard_it_cannot_use():
    from river import naive_bayes

    with pytest.raises(ConfigError, match="loss_guard"):
        evaluate(glitch_stream(50), naive_bayes.GaussianNB(), detector=None, progress=False, loss_guard=LossGuard())
    with pytest.raises(ConfigError, match="loss_guard"):
        evaluate(glitch_stream(50), RiverLinear(features=FEATURES, classes=[0, 1]), progress=False, loss_guard="on")


def test_the_bank_guard_fires_as_one_loss_guard_per_row():
    # Rows that have a hard stretch then blow up, drift (loss up, weights not grown), blow up (loss and weights),
    # break (NaN) and blow up again and again (damped, then stopped): each row of LossGuardBank must do what a LossGuard
    # does on the same losses and models.
    rng = np.random.default_rng(5)
    rows, steps, B, d = 6, 700, 10, 4
    kwargs = dict(warmup=100, every=100, max_damps=2)
    loss = np.full((rows, steps, B), 0.3) + 0.05 * rng.random((rows, steps, B))
    grow = np.ones((rows, steps))
    loss[0, 200:440] = 1.7  # a harder stretch (no snapshot once the loss is above twice its level) ...
    loss[0, 440:460] = 9.0
    grow[0, 440:460] = 1.4  # ... then an explosion: the model restored is from before the stretch
    loss[1, 300:] += 4.0  # a drift: loss up, weights as they were
    loss[2, 300:320] = 8.0
    grow[2, 300:320] = 1.3  # an explosion
    loss[3, 250, :3] = np.nan  # a few unscored samples, parameters fine
    for start in (200, 350, 500):  # again and again: damped, damped, stopped
        loss[4, start:start + 20] = 9.0
        grow[4, start:start + 20] = 1.5
    broken = {(5, 400), (5, 401)}  # non-finite parameters
    guards, learners = [LossGuard(**kwargs) for _ in range(rows)], [Flat(d) for _ in range(rows)]
    bank, W, lrs = LossGuardBank(rows, **kwargs), torch.ones(rows, d), np.full(rows, 0.4)
    scalar_events, bank_events = [], []
    for t in range(steps):
        for i in range(rows):
            if not guards[i].learning:
                continue
            learners[i].w = learners[i].w * float(grow[i, t])
            if (i, t) in broken:
                learners[i].w[0] = float("nan")
            step_loss = np.full(B, np.nan) if torch.isnan(learners[i].w).any() else loss[i, t]
            e = guards[i].observe(learners[i], step_loss)
            if e is not None:
                scalar_events.append((i, e))
        live = torch.as_tensor(bank.learning)
        W[live] = W[live] * torch.as_tensor(grow[:, t], dtype=torch.float32)[live, None]
        for i, tt in broken:
            if tt == t and bank.learning[i]:
                W[i, 0] = float("nan")
        step_loss = np.where(torch.isnan(W).any(1).numpy()[:, None], np.nan, loss[:, t])
        act = bank.observe(step_loss, lambda: W, lrs)
        for i, model in zip(act.restore, act.models):
            W[i] = model
        lrs[act.damped] *= bank.rule.damp
        bank_events += act.events
    assert [(i, e.position, e.reason, e.action, e.restored) for i, e in bank_events] == \
        [(i, e.position, e.reason, e.action, e.restored) for i, e in sorted(scalar_events, key=lambda x: x[1].position)]
    for (_, a), (_, b) in zip(bank_events, sorted(scalar_events, key=lambda x: x[1].position)):
        assert a.lr == pytest.approx(b.lr) and a.loss == pytest.approx(b.loss) and a.level == pytest.approx(b.level)
    assert {i for i, _ in bank_events} == {0, 2, 4, 5}  # the drifting and the half-scored rows never fired
    # restored: a model from while the recent loss was within twice its level, early in the stretch
    assert all(2000 < e.restored < 2500 for i, e in bank_events if i == 0)
    assert [e.action for i, e in bank_events if i == 4] == ["damped", "damped", "stopped"]
    assert bank.learning.tolist() == [g.learning for g in guards]
    for i in range(rows):
        torch.testing.assert_close(W[i], learners[i].w)
        assert bank.recent[i] == pytest.approx(guards[i].recent) and bank.level[i] == pytest.approx(guards[i].level)


_STEP = st.tuples(st.sampled_from(["calm", "high", "nan", "some_nan", "inf"]), st.sampled_from([1.0, 1.0, 1.3, 3.0]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(_STEP, min_size=1, max_size=4), min_size=2, max_size=3), st.integers(0, 2 ** 16))
def test_the_bank_guard_agrees_with_loss_guards_on_random_streams(phases, seed):
    # Random phases of calm, high, unscored and infinite losses, with the weights growing or not, at every row:
    # the bank's fast and general paths together must do what one LossGuard per row does.
    rng = np.random.default_rng(seed)
    rows, B, d = len(phases), 5, 3
    kwargs = dict(warmup=20, every=20, max_damps=1, fast=20, slow=200)
    plan = [[kind_grow for kind_grow in row for _ in range(15)] for row in phases]
    steps = max(len(p) for p in plan)
    guards, learners = [LossGuard(**kwargs) for _ in range(rows)], [Flat(d) for _ in range(rows)]
    bank, W, lrs = LossGuardBank(rows, **kwargs), torch.ones(rows, d), np.full(rows, 0.4)
    scalar_events, bank_events = [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for t in range(steps):
            loss = np.empty((rows, B))
            grow = np.ones(rows)
            for i in range(rows):
                kind, g = plan[i][t] if t < len(plan[i]) else ("calm", 1.0)
                loss[i] = {"calm": 0.3, "high": 6.0, "nan": np.nan, "some_nan": 0.4, "inf": np.inf}[kind] \
                    + 0.05 * rng.random(B)
                if kind == "some_nan":
                    loss[i, : B // 2] = np.nan
                grow[i] = g
            for i in range(rows):
                if guards[i].learning:
                    learners[i].w = learners[i].w * float(grow[i])
                    e = guards[i].observe(learners[i], loss[i])
                    if e is not None:
                        scalar_events.append((i, e))
            live = torch.as_tensor(bank.learning)
            W[live] = W[live] * torch.as_tensor(grow, dtype=torch.float32)[live, None]
            act = bank.observe(np.where(bank.learning[:, None], loss, np.nan), lambda: W, lrs)
            for i, model in zip(act.restore, act.models):
                W[i] = model
            lrs[act.damped] *= bank.rule.damp
            bank_events += act.events
    key = lambda ev: (ev[1].position, ev[0])  # noqa: E731
    assert [(i, e.position, e.reason, e.action, e.restored) for i, e in sorted(bank_events, key=key)] == \
        [(i, e.position, e.reason, e.action, e.restored) for i, e in sorted(scalar_events, key=key)]
    assert bank.learning.tolist() == [g.learning for g in guards]
    for i in range(rows):
        torch.testing.assert_close(W[i], learners[i].w, equal_nan=True)
        if guards[i].learning:
            assert bank.n_seen[i] == guards[i].n_seen
            np.testing.assert_allclose([bank.recent[i], bank.level[i]], [guards[i].recent, guards[i].level])
