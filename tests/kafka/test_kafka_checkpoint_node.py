"""Node checkpoints (--checkpoint-dir, --checkpoint-every): kill -9 mid-stream, restart, count.

The guarantee under test: model, optimizer state, scaler, reference, evaluator counts and the
consumer position are saved together, so learning is exactly once with respect to the restored
model: nothing is skipped, and the samples learned between the last checkpoint and the crash
are learned again from Kafka (counted in ``relearned``). The final model is then the very
model of a node that never crashed.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition

from streamlearn.errors import ConfigError
from streamlearn.kafka.checkpoint import CheckpointStore
from streamlearn.kafka.node import NodeConfig
from streamlearn.kafka.status import StatusReader
from streamlearn.kafka.topics import ensure_topics, samples_topic

from test_kafka_faults_helpers import CLASSES, FEATURES, Proc, Threads, batches, make_data, node_args, publish, wait

N, CHUNK = 3000, 50


def committed(settings, bootstrap, prefix, node) -> int | None:
    consumer = KafkaConsumer(**settings.consumer_kwargs(bootstrap, group_id=f"{prefix}.node.{node}",
                                                        enable_auto_commit=False))
    try:
        tp = TopicPartition(samples_topic(prefix, node), 0)
        consumer.assign([tp])
        return consumer.committed(tp)
    finally:
        consumer.close()


def done(node: int, n: int):
    return lambda r: r.nodes.get(node, {}).get("samples") == n and r.nodes[node]["buffered"] == 0 \
        and r.nodes[node]["last_seq"] == n - 1


def test_a_node_killed_mid_stream_resumes_from_its_checkpoint_exactly_once(broker, settings, prefix, tmp_path):
    ckpt = tmp_path / "ckpt"
    ensure_topics(broker.bootstrap, prefix, 2, settings=settings)
    X, y = make_data(N, 80, flip_at=N // 2)
    records = batches(X, y, chunk=CHUNK)
    every = 980  # not a multiple of the record size: the checkpoint cuts a record in two
    args = node_args(0, "--checkpoint-dir", ckpt, "--checkpoint-every", every, "--detector", "none")
    node = Proc(args, broker.bootstrap, prefix, tmp_path / "node0.log")
    threads = Threads(broker.bootstrap, settings, prefix)
    reader = StatusReader(broker.bootstrap, prefix, settings=settings)
    try:
        # node 1 learns the same stream and never crashes: the model node 0 must end with
        threads.node(1, detector=None, checkpoint_dir=str(tmp_path / "ckpt1"), checkpoint_every=every)
        wait(reader, lambda r: 0 in r.nodes and 1 in r.nodes, what="both nodes up", procs=[node])
        publish(broker.bootstrap, settings, prefix, {0: records[:30], 1: records[:30]}, seconds=1.5)
        # 1500 learned and committed, the last checkpoint at 980: then kill -9, mid-stream
        wait(reader, lambda r: r.nodes[0]["samples"] == 1500 and r.nodes[0]["committed"] == 30,
             what="node 0 at 1500", procs=[node])
        node.kill()
        publish(broker.bootstrap, settings, prefix, {0: records[30:], 1: records[30:]}, seconds=1.5)
        kept = CheckpointStore(ckpt / "node-0", "node").latest()
        assert (kept.meta["samples"], kept.meta["position"], kept.meta["skip_seq"]) == (980, 19, 979)
        assert committed(settings, broker.bootstrap, prefix, 0) == 30

        node = Proc(args, broker.bootstrap, prefix, tmp_path / "node0b.log")
        wait(reader, lambda r: done(0, N)(r) and r.nodes[0]["state"] == "running" and done(1, N)(r),
             what="the rest learned", procs=[node])
        st = reader.nodes[0]
        assert st["resumed_from"] == kept.seq
        assert st["seq_gaps"] == 0 and st["deadletters"] == 0  # nothing skipped ...
        assert st["relearned"] == 1500 - 980  # ... what it had learned after its checkpoint was learned again
        assert st["model_hash"] == reader.nodes[1]["model_hash"]  # exactly once: the uncrashed node's model
        assert st["accuracy"] == pytest.approx(reader.nodes[1]["accuracy"])
        assert st["steps"] == reader.nodes[1]["steps"] == N // 10
        assert node.stop() == 0
    finally:
        threads.stop()
        if node.alive:
            node.kill()
        reader.close()


def test_a_clean_stop_checkpoints_and_a_restart_learns_on_without_relearning(broker, settings, prefix, tmp_path):
    ensure_topics(broker.bootstrap, prefix, 1, settings=settings)
    X, y = make_data(1000, 81)
    threads = Threads(broker.bootstrap, settings, prefix)
    reader = StatusReader(broker.bootstrap, prefix, settings=settings)
    kw = dict(protocol="nosync", detector="adwin", checkpoint_dir=str(tmp_path), checkpoint_every=10_000)
    try:
        first = threads.node(0, **kw)
        publish(broker.bootstrap, settings, prefix, {0: batches(X[:600], y[:600], chunk=CHUNK)})
        wait(reader, done(0, 600), what="part 1")
        threads.stop(first)
        store = CheckpointStore(tmp_path / "node-0", "node")
        assert store.sequence() == [1]  # written at the stop (the interval was not reached)
        kept = store.latest()
        assert kept.meta["samples"] == 600 and kept.meta["position"] == 600 // CHUNK
        assert all(name.endswith(".npy") or name == "manifest.json" for name in os.listdir(kept.path))
        for name in os.listdir(kept.path):  # plain numpy files, loadable without pickle
            if name.endswith(".npy"):
                np.load(os.path.join(kept.path, name), allow_pickle=False)

        second = threads.node(0, **kw)
        publish(broker.bootstrap, settings, prefix, {0: batches(X[600:], y[600:], first_seq=600, chunk=CHUNK)})
        wait(reader, lambda r: done(0, 1000)(r) and r.nodes[0]["resumed_from"] == 1, what="part 2")
        st = second.status()
        assert st["relearned"] == 0 and st["seq_gaps"] == 0 and st["steps"] == 100
        assert st["accuracy"] > 0.8  # the evaluator's counts went on from the checkpoint
    finally:
        threads.stop()
        reader.close()


def test_checkpoint_settings_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="pickle"):
        NodeConfig(node=0, features=FEATURES, classes=CLASSES, learner="hoeffding-tree", checkpoint_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="checkpoint_every"):
        NodeConfig(node=0, features=FEATURES, classes=CLASSES, checkpoint_dir=str(tmp_path), checkpoint_every=0)
