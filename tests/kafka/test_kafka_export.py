"""`streamlearn export` on a real pipeline (Tansu): nodes with --checkpoint-dir and a sync service with
--state-dir learn and stop; the exported models, loaded with streamlearn.load and no Kafka, predict
what the nodes' models predict."""

from __future__ import annotations

import threading

import numpy as np

import streamlearn
from streamlearn.cli import main
from streamlearn.kafka.status import StatusReader, model_hash
from streamlearn.kafka.sync_service import SyncConfig, SyncService
from streamlearn.kafka.topics import ensure_topics
from streamlearn.learners import make_learner

from separable import make_data
from test_kafka_faults_helpers import CLASSES, FEATURES, Threads, batches, publish, wait

PROTOCOL = "dynamic:delta=1.0,b=1"
LEARNER = {"lr": 0.3, "hidden": (8,), "scale": True}
N = 600


def test_exported_models_predict_as_the_nodes_did(broker, settings, prefix, tmp_path, capsys):
    ckpt, state = tmp_path / "ckpt", tmp_path / "state"
    ensure_topics(broker.bootstrap, prefix, 2, settings=settings)
    sync = SyncService(SyncConfig(protocol=PROTOCOL, max_nodes=4, timeout=2.0, device="cpu", status_interval=0.2,
                                  state_dir=str(state), bootstrap=broker.bootstrap, prefix=prefix, settings=settings))
    sync_thread = threading.Thread(target=sync.run, daemon=True)
    sync_thread.start()
    threads = Threads(broker.bootstrap, settings, prefix)
    reader = StatusReader(broker.bootstrap, prefix, settings=settings)
    try:
        nodes = [threads.node(n, learner="mlp", learner_params=LEARNER, protocol=PROTOCOL, detector=None,
                              checkpoint_dir=str(ckpt)) for n in (0, 1)]
        wait(reader, lambda r: r.sync and r.sync["nodes_alive"] == 2, what="2 joins")
        data = {n: make_data(N, 60 + n) for n in (0, 1)}
        # features on sensor-like scales: the exported scaler statistics matter
        data = {n: (X * np.float32([5.0, 0.5, 2.0]) + np.float32([20.0, 1000.0, 50.0]), y)
                for n, (X, y) in data.items()}
        publish(broker.bootstrap, settings, prefix, {n: batches(X, y) for n, (X, y) in data.items()}, seconds=1.0)
        wait(reader, lambda r: all(r.nodes.get(n, {}).get("samples") == N for n in (0, 1))
             and r.sync["full_syncs"] >= 1 and not r.sync["pending"], what="learning with full syncs", timeout=60)
        wait(reader, lambda r: all(r.nodes[n]["reference_hash"] == r.sync["reference_hash"]
                                   and not r.nodes[n]["awaiting_sync"] for n in (0, 1)), what="settled")
        threads.stop()  # each node writes a checkpoint as it stops
        sync.stop()
        sync_thread.join(timeout=20)
        assert not sync_thread.is_alive()
    finally:
        threads.stop()
        sync.stop()
        reader.close()

    X_new, _ = make_data(500, 99)  # rows none of the nodes saw
    X_new = X_new * np.float32([5.0, 0.5, 2.0]) + np.float32([20.0, 1000.0, 50.0])

    # a node's own model: what it predicted with when it stopped
    out = tmp_path / "node0-model"
    assert main(["export", "--checkpoint-dir", str(ckpt), "--node", "0", "--out", str(out)]) == 0
    assert "exported the local model of node 0" in capsys.readouterr().out
    model = streamlearn.load(out)
    node_learner = nodes[0].learner_
    assert list(model.predict_many(X_new)) == list(node_learner.predict_many(X_new))
    np.testing.assert_allclose(model.predict_proba_many(X_new), node_learner.predict_proba_many(X_new),
                               rtol=1e-6, atol=1e-7)
    rows = [dict(zip(FEATURES, map(float, r))) for r in X_new[:50]]
    assert [model.predict_one(x) for x in rows] == [node_learner.predict_one(x) for x in rows]
    assert model.classes_ == CLASSES and model.feature_names_ == FEATURES
    info = model.model_info_
    prov = info["provenance"]
    assert prov["node"] == 0 and prov["samples_seen"] == N and prov["protocol"] == PROTOCOL
    assert prov["sync_epoch"] == sync.epoch_ and prov["syncs"] >= 1
    assert info["scaler"]["count"] > 0 and abs(info["scaler"]["mean"][1] - 1000.0) < 1.0

    # the sync service's reference (the average of the last full sync), with the layout of node 1's checkpoint
    ref_out = tmp_path / "reference"
    assert main(["export", "--checkpoint-dir", str(ckpt), "--node", "1", "--state-dir", str(state),
                 "--out", str(ref_out)]) == 0
    reference = streamlearn.load(ref_out)
    held = nodes[1].core.reference  # the reference node 1 held: the sync service's (settled above)
    assert model_hash(held) == model_hash(sync.protocol_.reference)
    expect = make_learner("mlp", features=FEATURES, classes=CLASSES, seed=0, device="cpu", **LEARNER)
    expect.set_flat(held)
    assert list(reference.predict_many(X_new)) == list(expect.predict_many(X_new))
    np.testing.assert_allclose(reference.predict_proba_many(X_new), expect.predict_proba_many(X_new),
                               rtol=1e-6, atol=1e-7)
    assert reference.model_info_["provenance"]["full_syncs"] >= 1
    assert reference.model_info_["provenance"]["source"] == "sync state"
