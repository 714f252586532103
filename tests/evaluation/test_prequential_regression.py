"""Regression metrics (MAE, RMSE, rolling) and the scaled error stream, against brute force."""

import numpy as np
import pytest

from streamlearn.evaluation import RegressionPrequential, RegressionPrequentialBank
from streamlearn.evaluation.detectors import DriftMonitor, TargetScale
from streamlearn.learners.schedule import error_rose


def test_bank_matches_brute_force_across_the_ring():
    rng = np.random.default_rng(0)
    m, window, every = 3, 7, 5
    bank = RegressionPrequentialBank(m, window=window, every=every)
    truth, preds = [], []
    for B in (3, 1, 9, 4, 12, 2):
        t = rng.normal(100, 20, size=(m, B))
        p = t + rng.normal(0, 5, size=(m, B))
        bank.update_many(t, p)
        truth.append(t), preds.append(p)
    t, p = np.concatenate(truth, axis=1), np.concatenate(preds, axis=1)
    e = np.abs(p - t)
    np.testing.assert_allclose(bank.mae, e.mean(axis=1))
    np.testing.assert_allclose(bank.rmse, np.sqrt((e ** 2).mean(axis=1)))
    np.testing.assert_allclose(bank.rolling_mae, e[:, -window:].mean(axis=1))
    np.testing.assert_allclose(bank.rolling_rmse, np.sqrt((e[:, -window:] ** 2).mean(axis=1)))
    h = bank.history()
    for k, pos in enumerate(h["position"]):
        np.testing.assert_allclose(h["mae"][:, k], e[:, :pos].mean(axis=1))
        np.testing.assert_allclose(h["rolling_rmse"][:, k], np.sqrt((e[:, max(0, pos - window):pos] ** 2).mean(axis=1)))


def test_missing_predictions_are_not_scored_and_state_round_trips():
    p = RegressionPrequential(window=3)
    p.update_many([1.0, 2.0, 3.0, 4.0], [None, 2.5, float("nan"), 5.0])
    assert p.n == 4 and p.n_scored == 2
    assert p.mae == pytest.approx(0.75) and p.rmse == pytest.approx(np.sqrt((0.25 + 1.0) / 2))
    q = RegressionPrequential(window=3)
    assert q.set_state(*p.get_state())
    assert (q.n, q.mae, q.rolling_mae) == (p.n, p.mae, p.rolling_mae)


def test_target_scale_is_the_std_of_the_targets_before_each_sample():
    rng = np.random.default_rng(1)
    y = rng.normal(500, 80, size=(2, 60))
    e = np.abs(rng.normal(size=(2, 60)))
    ts = TargetScale(2)
    got = np.concatenate([ts.scale(e[:, i:i + 7], y[:, i:i + 7]) for i in range(0, 60, 7)], axis=1)
    for node in range(2):
        for k in range(2, 60):
            assert got[node, k] == pytest.approx(e[node, k] / y[node, :k].std(), rel=1e-9)
    assert np.array_equal(got[:, :2], e[:, :2])  # fewer than two targets before: unscaled


def test_real_valued_errors_rise_and_adwin_finds_it():
    rng = np.random.default_rng(2)
    calm, worse = np.abs(rng.normal(size=1500)), 2.5 * np.abs(rng.normal(size=1500))
    assert error_rose(np.r_[calm[:800], worse[:200]])
    assert not error_rose(np.r_[worse[:800], calm[:200]])  # the error fell: no rise
    mon = DriftMonitor("adwin")
    found = mon.update_many(np.r_[calm, worse])
    assert found and 1500 <= found[0] < 1700, found
    assert all(f >= 1500 for f in found)
