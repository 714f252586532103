import math

import numpy as np
import pytest

from streamlearn.errors import ConfigError
from streamlearn.evaluation import Prequential, PrequentialBank, clipped_log_loss


def reference(correct, loss, valid, window, every):
    """Per-sample, loop-based reference of one node's tracker."""
    pos, acc, loss_cum, racc, rloss = [], [], [], [], []
    n = len(correct)
    for t in range(1, n + 1):
        if t % every and t != n:
            continue
        sl = slice(max(0, t - window), t)
        v = valid[:t]
        c = correct[:t] & v
        wv, wc = valid[sl], (correct[sl] & valid[sl])
        lv = valid[sl] & np.isfinite(loss[sl])
        lc = valid[:t] & np.isfinite(loss[:t])
        pos.append(t)
        acc.append(c.sum() / v.sum() if v.sum() else math.nan)
        loss_cum.append(loss[:t][lc].sum() / lc.sum() if lc.sum() else math.nan)
        racc.append(wc.sum() / wv.sum() if wv.sum() else math.nan)
        rloss.append(loss[sl][lv].sum() / lv.sum() if lv.sum() else math.nan)
    return {"position": np.array(pos), "accuracy": np.array(acc), "loss": np.array(loss_cum),
            "rolling_accuracy": np.array(racc), "rolling_loss": np.array(rloss)}


CORRECT = np.array([1, 0, 1, 1, 0, 0, 1], dtype=bool)
P_TRUE = np.array([0.9, 0.4, 0.8, 0.7, 0.3, 0.45, 0.6])


@pytest.mark.parametrize("chunks", [[7], [1] * 7, [3, 4], [2, 2, 2, 1], [5, 2]])
def test_hand_computed_sequence(chunks):
    p = Prequential(window=3, every=2)
    start = 0
    for c in chunks:
        p.update(CORRECT[start : start + c], -np.log(P_TRUE[start : start + c]))
        start += c
    h = p.history()
    # positions 2, 4, 6 and the final one, 7
    np.testing.assert_array_equal(h["position"], [2, 4, 6, 7])
    np.testing.assert_allclose(h["accuracy"], [1 / 2, 3 / 4, 3 / 6, 4 / 7])
    # windows of 3: [1,0], [0,1,1], [1,0,0], [0,0,1]
    np.testing.assert_allclose(h["rolling_accuracy"], [1 / 2, 2 / 3, 1 / 3, 1 / 3])
    ln = np.log
    expect_rloss = [
        -(ln(0.9) + ln(0.4)) / 2,
        -(ln(0.4) + ln(0.8) + ln(0.7)) / 3,
        -(ln(0.7) + ln(0.3) + ln(0.45)) / 3,
        -(ln(0.3) + ln(0.45) + ln(0.6)) / 3,
    ]
    np.testing.assert_allclose(h["rolling_loss"], expect_rloss, rtol=1e-12)
    # cumulative loss: the mean of every loss up to each point
    cum_loss = -np.cumsum(np.log(P_TRUE)) / np.arange(1, 8)
    np.testing.assert_allclose(h["loss"], cum_loss[[1, 3, 5, 6]], rtol=1e-12)
    assert h["loss"][-1] == pytest.approx(p.loss, rel=1e-12)
    assert p.n == 7 and p.n_scored == 7
    assert p.accuracy == pytest.approx(4 / 7)
    assert p.rolling_accuracy == pytest.approx(1 / 3)
    assert p.loss == pytest.approx(-np.log(P_TRUE).mean())


def test_update_many_labels_none_and_clipping():
    p = Prequential(window=10, every=100)
    p.update_many([True, False, True, True], [True, True, None, True], [1.0, 0.0, 0.5, 0.25])
    assert p.n == 4 and p.n_scored == 3  # None is not scored, as in river
    assert p.accuracy == pytest.approx(2 / 3)
    # p=1 -> ~0, p=0 -> clipped at 1e-15, None sample ignored
    assert p.loss == pytest.approx((0.0 + -math.log(1e-15) + -math.log(0.25)) / 3, rel=1e-9)
    assert clipped_log_loss(0.0) == pytest.approx(-math.log(1e-15))


def test_no_proba_gives_nan_loss_but_accuracy():
    p = Prequential(window=5, every=2)
    p.update_many(["a", "b", "c"], ["a", "b", "x"])
    assert p.accuracy == pytest.approx(2 / 3)
    assert math.isnan(p.loss) and math.isnan(p.rolling_loss)
    assert np.isnan(p.history()["loss"]).all()


def test_nothing_predicted_is_nan():
    p = Prequential(window=5, every=1)
    p.update_many([1, 2], [None, None])
    assert p.n == 2 and p.n_scored == 0
    assert math.isnan(p.accuracy)
    assert np.isnan(p.history()["accuracy"]).all()


@pytest.mark.parametrize("window,every", [(1, 1), (7, 3), (50, 10), (300, 64)])
def test_against_reference_with_invalid_and_nan(window, every):
    rng = np.random.default_rng(window)
    n = 700
    correct = rng.random(n) < 0.7
    valid = rng.random(n) < 0.9
    loss = rng.exponential(size=n)
    loss[rng.random(n) < 0.1] = np.nan
    p = Prequential(window=window, every=every)
    start = 0
    while start < n:
        b = int(rng.integers(1, 120))
        p.update(correct[start : start + b], loss[start : start + b], valid[start : start + b])
        start += b
    ref = reference(correct, loss, valid, window, every)
    got = p.history()
    for key in ref:
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-9, atol=1e-12, err_msg=key)


def test_bank_equals_m_single_trackers():
    m, n, window, every = 4, 600, 50, 7
    rng = np.random.default_rng(1)
    y_true = rng.integers(0, 3, size=(m, n))
    y_pred = np.where(rng.random((m, n)) < 0.6, y_true, rng.integers(0, 3, size=(m, n)))
    proba = rng.random((m, n))
    bank = PrequentialBank(m, window=window, every=every)
    singles = [Prequential(window=window, every=every) for _ in range(m)]
    start = 0
    while start < n:  # the bank gets mini-batches, the single trackers one sample at a time
        b = int(rng.integers(1, 80))
        sl = slice(start, start + b)
        bank.update_many(y_true[:, sl], y_pred[:, sl], proba[:, sl])
        start += b
    for i, s in enumerate(singles):
        for t in range(n):
            s.update_one(y_true[i, t], y_pred[i, t], proba[i, t])
    hb = bank.history()
    for i, s in enumerate(singles):
        hs = s.history()
        np.testing.assert_array_equal(hb["position"], hs["position"])
        assert set(hb) == set(hs) == {"position", "accuracy", "loss", "rolling_accuracy", "rolling_loss"}
        for key in ("accuracy", "loss", "rolling_accuracy", "rolling_loss"):
            np.testing.assert_allclose(hb[key][i], hs[key], rtol=1e-9, err_msg=key)
        assert bank.accuracy[i] == pytest.approx(s.accuracy, abs=1e-12)
        assert bank.rolling_accuracy[i] == pytest.approx(s.rolling_accuracy, abs=1e-12)
        assert bank.rolling_loss[i] == pytest.approx(s.rolling_loss, rel=1e-9)
        assert bank.loss[i] == pytest.approx(s.loss, rel=1e-9)
    assert bank.n == n


def test_bad_settings_and_shapes():
    with pytest.raises(ConfigError):
        PrequentialBank(0)
    with pytest.raises(ConfigError):
        Prequential(window=0)
    with pytest.raises(ConfigError):
        PrequentialBank(2, every=1.5)
    bank = PrequentialBank(3)
    with pytest.raises(ConfigError):
        bank.update(np.ones((2, 4), dtype=bool))
    assert bank.clone().n == 0


def test_cumulative_loss_over_time_skips_unknown_losses_and_survives_a_checkpoint():
    p = Prequential(window=2, every=2)
    p.update([True, False], [0.5, np.nan], [True, True])  # the second loss is unknown
    p.update([True, True], [1.5, 2.0], [True, False])  # the fourth sample was not predicted
    q = Prequential(window=2, every=2)
    q.set_state(*p.get_state())  # a node restored from a checkpoint goes on from the same totals
    for tracker in (p, q):
        tracker.update([False], [4.0])
    np.testing.assert_allclose(p.history()["loss"], [0.5, 1.0, 2.0])  # (0.5), (0.5 + 1.5), (0.5 + 1.5 + 4)
    assert p.loss == q.loss == pytest.approx(2.0)
    assert q.n_scored == 4 and q.accuracy == pytest.approx(2 / 4)
    with pytest.raises(ConfigError, match="loss"):
        p.update([True], [0.1, 0.2])


def test_an_evaluation_keeps_the_cumulative_loss_over_time_in_its_json(tmp_path):
    import json

    from river import linear_model

    from streamlearn.evaluation import evaluate, plot_history
    from streamlearn.streams import make_source

    res = evaluate(make_source("sea", seed=0), linear_model.LogisticRegression(), n=600, every=100, detector=None,
                   progress=False)
    h = res.history
    assert set(h) == {"position", "accuracy", "loss", "rolling_accuracy", "rolling_loss"}
    assert len(h["loss"]) == len(h["position"]) == 6 and np.isfinite(h["loss"]).all()
    assert h["loss"][-1] == pytest.approx(res.loss, rel=1e-12)  # the last point is the final cumulative loss
    d = json.loads(json.dumps(res.to_dict()))  # what `streamlearn evaluate --json` writes
    np.testing.assert_allclose(d["history"]["loss"], h["loss"])
    assert plot_history(res, path=str(tmp_path / "h.png")) == str(tmp_path / "h.png")  # --plot still draws


def test_valid_none_is_every_sample_valid_also_with_unknown_and_infinite_losses():
    rng = np.random.default_rng(3)
    correct = rng.random(500) < 0.6
    loss = rng.exponential(size=500)
    loss[rng.random(500) < 0.1] = np.nan
    loss[[7, 300]] = np.inf
    a, b = Prequential(window=40, every=30), Prequential(window=40, every=30)
    for s in range(0, 500, 13):  # batches that wrap around the ring
        a.update(correct[s:s + 13], loss[s:s + 13])
        b.update(correct[s:s + 13], loss[s:s + 13], np.ones(len(correct[s:s + 13]), dtype=bool))
    ha, hb = a.history(), b.history()
    for key in hb:
        np.testing.assert_array_equal(ha[key], hb[key], err_msg=key)
    known = np.isfinite(loss)
    assert a.loss == pytest.approx(loss[known].mean(), rel=1e-12)
