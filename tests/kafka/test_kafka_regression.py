"""Regression in the Kafka pipeline: node services learn float targets (JSON readings, binary batches with float
labels, late labels), report MAE/RMSE, publish predicted values, and sync by the same protocols. The demo still
learns classes only and says so at start.
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from kafka import KafkaProducer

from streamlearn.cli import main
from streamlearn.errors import ConfigError
from streamlearn.kafka.codecs import encode_sample_batch
from streamlearn.kafka.node import NodeConfig, NodeService
from streamlearn.kafka.predictions import PredictionReader
from streamlearn.kafka.status import StatusReader
from streamlearn.kafka.sync_service import SyncConfig, SyncService
from streamlearn.kafka.topics import samples_topic
from streamlearn.learners import TorchLearner
from streamlearn.node.core import NodeCore

FEATURES = ["a", "b", "c"]
N = 600  # per node: 300 in JSON, 250 in binary batches, 50 with a late label


def _data(seed: int):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(N, 3))
    y = 40.0 + 12.0 * X[:, 0] - 7.0 * X[:, 1] + rng.normal(scale=1.0, size=N)  # a target in its own units
    return X, y


def test_a_regression_demo_without_a_float_label_or_torch_learner_fails_at_start(capsys, tmp_path):
    assert main(["demo", "--task", "regression", "--duration", "1"]) == 2  # sea: classes, no float label
    assert "the demo reads a float label from a csv file" in capsys.readouterr().err
    path = tmp_path / "t.csv"
    path.write_text("a,b,y\n1,2,3.5\n")
    assert main(["demo", "--task", "regression", "--source", f"csv:{path}", "--label", "y", "--learner",
                 "river-logreg", "--duration", "1"]) == 2
    assert "needs a torch learner" in capsys.readouterr().err
    assert main(["demo", "--task", "regression", "--source", f"csv:{path}", "--label", "y", "--classes", "0,1",
                 "--duration", "1"]) == 2
    assert "it has no classes" in capsys.readouterr().err


def test_bad_regression_node_settings_are_config_errors(capsys):
    with pytest.raises(ConfigError, match="takes no classes"):
        NodeConfig(node=0, features=FEATURES, classes=(0, 1), learner_params={"loss": "huber"})
    with pytest.raises(ConfigError, match="guarded averaging compares log losses"):
        NodeCore(TorchLearner("logreg", features=FEATURES, loss="huber", seed=0, device="cpu"), [],
                 "periodic:b=2", guard=50)
    with pytest.raises(ConfigError, match="watches 0/1 errors"):
        NodeCore(TorchLearner("logreg", features=FEATURES, loss="huber", seed=0, device="cpu"), [], detector="ddm")
    assert main(["node", "--id", "0", "--features", "a,b", "--classes", "0,1", "--task", "regression"]) == 2
    assert "takes no classes" in capsys.readouterr().err


def _publish(settings, bootstrap, prefix, node, X, y):
    producer = KafkaProducer(**settings.producer_kwargs(bootstrap))
    topic = samples_topic(prefix, node)
    for i in range(300):
        producer.send(topic, json.dumps({"node": node, "seq": i, "x": dict(zip(FEATURES, map(float, X[i]))),
                                         "y": float(y[i])}).encode(), partition=0)
    for i in range(300, 550, 50):
        producer.send(topic, encode_sample_batch(X[i:i + 50], y[i:i + 50], first_seq=i, names=FEATURES), partition=0)
    for i in range(550, N):  # the reading first, its label later
        producer.send(topic, json.dumps({"node": node, "seq": i, "key": f"r{i}",
                                         "x": dict(zip(FEATURES, map(float, X[i]))), "y": None}).encode(), partition=0)
    for i in range(550, N):
        producer.send(topic, json.dumps({"node": node, "key": f"r{i}", "y": float(y[i])}).encode(), partition=0)
    producer.flush()
    producer.close()


def test_two_regression_nodes_learn_float_targets_sync_and_publish_their_predictions(broker, settings, prefix):
    spec = "periodic:b=4"
    kw = dict(bootstrap=broker.bootstrap, prefix=prefix, settings=settings)
    services = [SyncService(SyncConfig(protocol=spec, max_nodes=4, timeout=10.0, device="cpu", status_interval=0.3,
                                       **kw))]
    services += [NodeService(NodeConfig(node=k, features=FEATURES, learner="logreg",
                                        learner_params={"loss": "huber", "lr": 0.3, "scale": True}, protocol=spec,
                                        batch_size=10, detector="adwin", status_interval=0.3, commit_interval=0.5,
                                        device="cpu", **kw)) for k in range(2)]
    errors: list = []

    def run(svc):
        try:
            svc.run()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(svc,), daemon=True) for svc in services]
    status = StatusReader(broker.bootstrap, prefix, settings=settings)
    reader = PredictionReader(broker.bootstrap, prefix, settings, from_beginning=True)
    data = {k: _data(seed=k) for k in range(2)}
    try:
        threads[0].start()
        assert status.wait_for(lambda r: r.sync is not None and r.sync.get("state") == "running", 60)
        for t in threads[1:]:
            t.start()
        assert status.wait_for(lambda r: all(r.nodes.get(k, {}).get("joined") for k in range(2)), 60)
        for k in range(2):
            _publish(settings, broker.bootstrap, prefix, k, *data[k])
        assert status.wait_for(lambda r: all(r.nodes.get(k, {}).get("samples") == N for k in range(2)), 120), \
            {k: s.get("samples") for k, s in status.nodes.items()}
        nodes = {k: dict(status.nodes[k]) for k in range(2)}
        got: dict = {0: {}, 1: {}}
        while sum(map(len, got.values())) < 2 * N:
            batch = reader.poll(2.0)
            assert batch, f"predictions stopped at {[len(v) for v in got.values()]}"
            for p in batch:
                got[p["node"]][p["seq"]] = p
    finally:
        reader.close()
        for svc in reversed(services):
            svc.stop()
        for t in threads:
            t.join(timeout=30)
        status.close()
    assert not errors, errors
    for k, st in nodes.items():
        X, y = data[k]
        assert st["task"] == "regression" and st["deadletters"] == 0 and st["labels_matched"] == 50
        assert st["accuracy"] is None and st["syncs"] > 0
        baseline = float(np.mean(np.abs(y - y.mean())))  # always predicting the mean: ~11
        print(f"node {k}: MAE {st['mae']:.3f}, rolling {st['rolling_mae']:.3f}, RMSE {st['rmse']:.3f}; mean "
              f"predictor {baseline:.3f}; syncs {st['syncs']}")
        assert st["mae"] < 0.5 * baseline and st["rolling_mae"] < 0.25 * baseline, (st["mae"], st["rolling_mae"], baseline)
        preds = got[k]
        assert sorted(preds) == list(range(N)) and all(p["proba"] is None for p in preds.values())
        assert all(p["late"] == (s >= 550) for s, p in preds.items())
        mae = float(np.mean([abs(preds[s]["prediction"] - y[s]) for s in range(N)]))
        assert mae == pytest.approx(st["mae"], rel=1e-4)  # the published values are the ones scored
