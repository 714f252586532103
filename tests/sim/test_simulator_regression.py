"""The simulator on float targets: MAE/RMSE, the same protocols averaging the same flat models."""

from pathlib import Path

import numpy as np
import pytest
import torch

from streamlearn.cli import main
from streamlearn.errors import ConfigError
from streamlearn.learners import TorchLearner
from streamlearn.sim import simulate
from streamlearn.sim.regression import RegressionSimResult
from streamlearn.sim.run import detect, result_row
from streamlearn.sim.simulator import NodeData
from streamlearn.streams.base import DriftEvent

SLICE = Path(__file__).resolve().parents[1] / "data" / "beijing_slice.csv.gz"


def node_data(m=4, n=2000, shift_at=None, seed=0):
    """y = 300 + 40 x0 - 25 x1 + noise at every node (a shared concept), features on raw scales."""
    rng = np.random.default_rng(seed)
    X = (rng.normal(size=(m, n, 2)) * [1.0, 4.0] + [0.0, 20.0]).astype(np.float32)
    y = 300.0 + 40.0 * X[..., 0] - 25.0 * X[..., 1] + rng.normal(scale=5.0, size=(m, n))
    events = []
    if shift_at is not None:
        y[:, shift_at:] += 200.0
        events = [DriftEvent(position=shift_at, node=i, kind="target-shift") for i in range(m)]
    return NodeData(X=X, y=y.astype(np.float32), classes=[], feature_names=["a", "b"], events=events,
                    task="regression")


def learner(**kw):
    return TorchLearner(**{"arch": "mlp", "hidden": (8,), "loss": "squared", "scale": True, "lr": 0.05, "seed": 0,
                           "device": "cpu", **kw})


def test_one_node_equals_the_learner():
    data = node_data(m=1, n=400)
    res = simulate(data, learner(loss="huber"), "nosync", batch_size=10, progress=False)
    assert isinstance(res, RegressionSimResult)
    alone = learner(loss="huber", features=["a", "b"])
    errs = np.concatenate([np.abs(alone.predict_learn_many(data.X[0, i:i + 10], data.y[0, i:i + 10])
                                  - data.y[0, i:i + 10]) for i in range(0, 400, 10)])
    np.testing.assert_allclose(res.errors[0], errs, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(res.final_models[0], alone.get_flat(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("protocol", ["nosync", "periodic:b=1", "dynamic:delta=0.5,b=2", "fedavg:b=4,C=0.5"])
def test_four_nodes_learn_and_protocols_average(protocol):
    res = simulate(node_data(), learner(), protocol, batch_size=10, progress=False)
    assert res.m == 4 and res.n == 2000
    # the target's std is 113; the noise alone gives MAE 4
    assert res.mae < 20 and res.rmse >= res.mae, (res.mae, res.rmse)
    assert res.rolling_mae(200)[:, -1].max() < 10
    row = result_row(res)
    assert row["task"] == "regression" and row["accuracy"] is None
    assert row["node_mae_min"] <= row["mae"] <= row["node_mae_max"]
    if protocol == "nosync":
        assert res.transfers == 0
    else:
        assert res.transfers > 0
    if protocol == "periodic:b=1":  # a full sync after every step: every node ends on one model and statistics
        assert res.comm["full_syncs"] == 200
        for i in range(1, 4):
            torch.testing.assert_close(res.final_models[i], res.final_models[0])
        # the averaged target statistics are the mean of every node's (count, mean) so far
        assert res.final_models[0, -1].item() == pytest.approx(2000.0)


def test_syncing_helps_nodes_with_little_data():
    data = node_data(m=8, n=300, seed=1)
    alone = simulate(data, learner(), "nosync", batch_size=10, progress=False)
    synced = simulate(data, learner(), "periodic:b=1", batch_size=10, progress=False)
    assert synced.mae < alone.mae, (synced.mae, alone.mae)


def test_a_shift_of_the_target_is_detected():
    data = node_data(m=4, n=3000, shift_at=1500)
    res = simulate(data, learner(), "periodic:b=5", batch_size=10, progress=False)
    det = detect(res, "adwin", max_delay=500)
    assert det["drifts_detected"] == 4, det
    assert det["false_alarms"] <= 2, det


def test_guard_keeps_a_node_with_its_own_concept():
    data = node_data(m=4, n=2000)
    rng = np.random.default_rng(5)
    data.y[3] = 300.0 - 40.0 * data.X[3, :, 0] + 25.0 * data.X[3, :, 1] + rng.normal(scale=5.0, size=2000)
    plain = simulate(data, learner(), "periodic:b=5", batch_size=10, progress=False)
    guarded = simulate(data, learner(), "periodic:b=5", batch_size=10, progress=False, guard=(100, 0.05))
    assert guarded.comm["declines"] > 0
    assert guarded.node_mae[3] < plain.node_mae[3] / 3, (guarded.node_mae, plain.node_mae)
    assert guarded.mae < plain.mae


def test_mismatched_learner_and_data_are_refused():
    with pytest.raises(ConfigError, match="regression loss, but the data has classes"):
        rng = np.random.default_rng(0)
        X = rng.normal(size=(2, 40, 2)).astype(np.float32)
        cls = NodeData(X=X, y=(X.sum(-1) > 0).astype(np.int64), classes=[0, 1], feature_names=["a", "b"])
        simulate(cls, learner(), "nosync", progress=False)
    with pytest.raises(ConfigError, match="need a torch learner with a regression loss"):
        simulate(node_data(n=40), TorchLearner("logreg", seed=0), "nosync", progress=False)
    with pytest.raises(ConfigError, match="watches 0/1 errors"):
        simulate(node_data(n=40), learner(lr_decay=100), "nosync", progress=False, detector="ddm")


def test_cli_simulate_regression(capsys, tmp_path):
    out = tmp_path / "s.json"
    code = main(["simulate", "--source", f"csv:{SLICE}", "--label", "co", "--task", "regression", "--nodes", "4",
                 "--n", "1000", "--protocol", "periodic", "--b", "4", "--no-progress", "--json", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "MAE" in text and "RMSE" in text and "periodic:b=4" in text
    import json

    row = json.loads(out.read_text())
    assert row["task"] == "regression" and 0 < row["mae"] < row["rmse"] and row["transfers"] > 0
    assert main(["simulate", "--source", f"csv:{SLICE}", "--label", "co", "--task", "regression", "--nodes", "4",
                 "--n", "200", "--compare", "nosync", "periodic:b=2", "--no-progress"]) == 2
    assert "not yet by a regression's error" in capsys.readouterr().err
