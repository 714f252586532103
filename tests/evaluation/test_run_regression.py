"""``evaluate`` on regression streams: MAE/RMSE, drift detection on the error stream, bad targets."""

import math
from pathlib import Path

import numpy as np
import pytest
from river import linear_model, preprocessing

from streamlearn.cli import main
from streamlearn.errors import BadRecordError, ConfigError
from streamlearn.evaluation import evaluate
from streamlearn.learners import TorchLearner

SLICE = Path(__file__).resolve().parents[1] / "data" / "beijing_slice.csv.gz"


def shifted_stream(n=6000, at=3000, shift=150.0, seed=0):
    """y = 200 + 30 x0 - 20 x1 + noise; from ``at`` on the target jumps by ``shift`` (a sudden drift)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    y = 200.0 + 30.0 * X[:, 0] - 20.0 * X[:, 1] + rng.normal(scale=5.0, size=n)
    y[at:] += shift
    return [({"a": float(a), "b": float(b)}, float(t)) for (a, b), t in zip(X, y)]


def regressor(**kw):
    return TorchLearner("mlp", hidden=(8,), loss="squared", scale=True, lr=0.05, seed=0, device="cpu", **kw)


@pytest.mark.parametrize("batch_size, n", [(1, 3000), (10, 6000)])
def test_mae_rmse_and_the_shift_is_detected(batch_size, n):
    at = n // 2
    res = evaluate(shifted_stream(n, at), regressor(), batch_size=batch_size, window=500, progress=False, events=[at])
    assert res.task == "regression" and math.isnan(res.accuracy)
    assert res.n == n and res.n_scored == n - batch_size  # the first batch has no model to predict with yet
    assert 0 < res.mae < res.rmse < 60, (res.mae, res.rmse)
    h = res.history
    assert set(h) == {"position", "mae", "rmse", "rolling_mae", "rolling_rmse"}
    # the model has learnt the concept before the shift: the rolling error is the noise's (E|N(0,5)| = 4)
    before = h["rolling_mae"][h["position"] == at][0]
    assert before < 10, before
    assert res.score.detected == 1, res.detections
    assert res.score.delays[0] < 300
    assert res.score.false_alarms <= 1, res.detections
    d = res.to_dict()
    assert d["task"] == "regression" and d["mae"] == pytest.approx(res.mae) and d["accuracy"] is None


def test_page_hinkley_runs_on_the_error_stream_binary_detectors_do_not():
    res = evaluate(shifted_stream(n=4000, at=2000), regressor(), batch_size=10, progress=False,
                   detector="page_hinkley", events=[2000])
    assert res.score.detected == 1
    with pytest.raises(ConfigError, match="detector 'ddm' watches 0/1 errors"):
        evaluate(shifted_stream(n=10), regressor(), detector="ddm", progress=False)


def test_a_river_regressor_is_scored_the_same_way():
    model = preprocessing.StandardScaler() | linear_model.LinearRegression(intercept_lr=0.1)
    res = evaluate(shifted_stream(n=3000, shift=0.0), model, progress=False, detector=None)
    assert res.task == "regression" and res.n_scored == 3000
    assert res.mae < 15, res.mae


def test_bad_targets_follow_the_policy():
    stream = shifted_stream(n=50)
    stream[7] = (stream[7][0], "high")
    stream[9] = (stream[9][0], float("nan"))
    with pytest.raises(BadRecordError, match=r"label is not a number.*row 7.*'high'"):
        evaluate(stream, regressor(), progress=False)
    res = evaluate(stream, regressor(), progress=False, on_bad_record="skip", batch_size=5)
    assert res.n_bad == 2 and res.n_scored == 48 - 5 and res.n == 50  # the first batch is not predicted


def test_cli_evaluate_regression_on_beijing_slice(capsys, tmp_path):
    out = tmp_path / "r.json"
    code = main(["evaluate", "--source", f"csv:{SLICE}", "--label", "co", "--task", "regression", "--learner", "mlp",
                 "--n", "3000", "--batch-size", "10", "--no-progress", "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "MAE" in text and "RMSE" in text and "accuracy" not in text
    import json

    payload = json.loads(out.read_text())
    assert payload["task"] == "regression" and 0 < payload["mae"] < payload["rmse"]
    assert main(["evaluate", "--source", f"csv:{SLICE}", "--label", "co", "--loss", "huber", "--n", "500",
                 "--no-progress"]) == 0
    assert "MAE" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--source", "sea", "--task", "regression"], "needs a numeric label"),
    (["--source", f"csv:{SLICE}", "--label", "co", "--task", "classification", "--loss", "huber"],
     "is a regression loss"),
    (["--source", f"csv:{SLICE}", "--label", "co", "--task", "regression", "--classes", "1,2"], "has no classes"),
    (["--source", f"csv:{SLICE}", "--label", "co", "--task", "regression", "--learner", "naive-bayes"],
     "--task regression: learners"),
])
def test_cli_refuses_what_cannot_be_a_regression(capsys, argv, message):
    assert main(["evaluate", *argv, "--n", "100", "--no-progress"]) == 2
    assert message in capsys.readouterr().err
