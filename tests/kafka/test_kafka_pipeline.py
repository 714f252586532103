"""The node and sync services end to end, against the real Tansu broker of conftest.py.

Services run as threads (one subprocess test checks SIGTERM and the resume position);
samples are published by the tests with kafka-python and the codecs, paced like a live
stream unless a backlog is the point.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streamlearn.kafka.codecs import Sample, encode_model, encode_sample_batch, encode_sample_json
from streamlearn.kafka.node import NodeConfig, NodeService
from streamlearn.kafka.status import StatusReader
from streamlearn.kafka.sync_service import SyncConfig, SyncService
from streamlearn.kafka.topics import deadletter_topic, ensure_topics, samples_topic, sync_up_topic
from streamlearn.kafka.wire import decode_sync

from separable import make_data

FEATURES = ["a", "b", "c"]
CLASSES = [0, 1]


def encode(X, y, first_seq: int, fmt: str, chunk: int) -> list:
    """Records of the samples: one JSON record per sample, or binary batches of ``chunk``."""
    if fmt == "json":
        return [encode_sample_json(Sample(seq=first_seq + i, x=dict(zip(FEATURES, X[i].tolist())),
                                          y=CLASSES[int(y[i])])) for i in range(len(y))]
    return [encode_sample_batch(X[i:i + chunk], y[i:i + chunk], first_seq=first_seq + i, names=FEATURES)
            for i in range(0, len(y), chunk)]


def publish(settings, prefix, streams: dict, *, seconds: float | None = None) -> None:
    """Publish ``{node: [records]}``; with ``seconds``, each node's records spread evenly over that time."""
    producer = KafkaProducer(**settings.producer_kwargs())
    try:
        schedule = sorted((i / len(recs), node, i) for node, recs in streams.items() for i in range(len(recs)))
        t0 = time.monotonic()
        for when, node, i in schedule:
            if seconds:
                time.sleep(max(0.0, t0 + when * seconds - time.monotonic()))
            producer.send(samples_topic(prefix, node), streams[node][i])
        producer.flush()
    finally:
        producer.close()


class Pipeline:
    """Sync and node services as threads on one prefix; stops them all on exit."""

    def __init__(self, broker, settings, prefix, spec="dynamic:delta=1.0,b=1", timeout=2.0):
        self.broker, self.settings, self.prefix, self.spec, self.timeout = broker, settings, prefix, spec, timeout
        self.threads: list = []
        self.sync: SyncService | None = None
        self.nodes: dict[int, NodeService] = {}
        ensure_topics(broker.bootstrap, prefix, 4, settings=settings)
        self.status = StatusReader(broker.bootstrap, prefix, settings=settings)

    def _start(self, svc):
        errors = []

        def target():
            try:
                svc.run()
            except BaseException as exc:  # surfaced by stop()
                errors.append(exc)

        t = threading.Thread(target=target, daemon=True)
        t.errors = errors
        t.start()
        self.threads.append((svc, t))
        return svc

    def start_sync(self) -> SyncService:
        self.sync = self._start(SyncService(SyncConfig(
            protocol=self.spec, max_nodes=8, timeout=self.timeout, device="cpu", status_interval=0.3,
            bootstrap=self.broker.bootstrap, prefix=self.prefix, settings=self.settings)))
        return self.sync

    def start_node(self, node: int, **kw) -> NodeService:
        kw = {"learner_params": {"lr": 0.5}, "status_interval": 0.2, "commit_interval": 0.3, "protocol": self.spec,
              **kw}
        self.nodes[node] = self._start(NodeService(NodeConfig(
            node=node, features=FEATURES, classes=CLASSES, device="cpu",
            bootstrap=self.broker.bootstrap, prefix=self.prefix, settings=self.settings, **kw)))
        return self.nodes[node]

    def stop(self, svc) -> None:
        for s, t in self.threads:
            if s is svc:
                s.stop()
                t.join(timeout=20)
                assert not t.is_alive(), f"{type(s).__name__} did not stop"
                assert not t.errors, t.errors

    def wait(self, condition, timeout=30.0, what="condition"):
        assert self.status.wait_for(condition, timeout), f"timed out waiting for {what}: " \
            f"nodes={ {n: (s.get('samples'), s.get('joined')) for n, s in self.status.nodes.items()} }, " \
            f"sync={self.status.sync and {k: self.status.sync.get(k) for k in ('nodes_alive', 'models')} }"

    def learned(self, counts: dict):
        """Condition: node n's status says it learned counts[n] samples."""
        return lambda r: all(r.nodes.get(n, {}).get("samples") == c for n, c in counts.items())

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for svc, t in reversed(self.threads):
            svc.stop()
        for svc, t in self.threads:
            t.join(timeout=20)
        self.status.close()


def committed(settings, prefix, node) -> int | None:
    consumer = KafkaConsumer(**settings.consumer_kwargs(group_id=f"{prefix}.node.{node}", enable_auto_commit=False))
    try:
        tp = TopicPartition(samples_topic(prefix, node), 0)
        consumer.assign([tp])
        return consumer.committed(tp)
    finally:
        consumer.close()


# ------------------------------------------------------------------------------------------------


# Samples per node, and where the labels of every node swap (a drift). By then the models have
# converged (syncs come ever further apart: at about 100, 250, 550, 1000, 1900 samples), while
# swapped labels send every model from w to about -w: several syncs in a row at every node.
N, FLIP = 3400, 2800
LR, DRIFT_SPEC = 0.5, "dynamic:delta=1.0,b=1"
BURST = 10  # one last mini-batch per node, of large readings labelled against the concept in force


def _three_nodes(broker, settings, prefix, flip):
    """Three nodes and a sync service learn seeded streams (labels swapped from ``flip`` on, at every
    node; None: no drift), then one burst mini-batch per node.

    Returns the statuses of the nodes once the stream was learned (before the burst), the final
    statuses of the nodes and the final status of the sync service.
    """
    data = {node: make_data(N, seed=node, flip_at=flip) for node in range(3)}
    streams = {
        0: encode(*data[0], 0, "json", 1),  # one reading per record
        1: encode(*data[1], 0, "binary", 20),
        # JSON then binary batches on one topic
        2: encode(data[2][0][:FLIP], data[2][1][:FLIP], 0, "json", 1)
        + encode(data[2][0][FLIP:], data[2][1][FLIP:], FLIP, "binary", 20),
    }
    first = {0: FLIP, 1: FLIP // 20, 2: FLIP}  # records before the drift
    # The burst moves every model far (||dw||^2 of about 75 against delta 1) in its node's last
    # step: every node violates, no subset can balance, so the last sync is a full one that every
    # node applies after its last step.
    burst = {}
    for node in range(3):
        X, y = make_data(BURST, seed=100 + node, flip_at=None if flip is not None else 0)
        burst[node] = encode(10 * X, y, N, "json" if node == 0 else "binary", BURST)
    phases = [(FLIP, {node: recs[:first[node]] for node, recs in streams.items()}, 2.0),
              (N, {node: recs[first[node]:] for node, recs in streams.items()}, 1.0),
              (N + BURST, burst, None)]
    learned = {}
    with Pipeline(broker, settings, prefix, spec=DRIFT_SPEC) as p:
        sync = p.start_sync()
        for node in range(3):
            p.start_node(node, learner_params={"lr": LR})
        p.wait(lambda r: r.sync and r.sync.get("nodes_alive") == 3, what="3 joins")
        # Each part once every node has learned the one before: a node lagging behind would otherwise
        # still learn the old concept while the others' syncs bring it the new one.
        for done, part, seconds in phases:
            publish(settings, prefix, part, seconds=seconds)
            p.wait(p.learned({0: done, 1: done, 2: done}), what=f"{done} samples learned")
            p.wait(lambda r: not any(s["awaiting_sync"] for s in r.nodes.values()) and not r.sync["pending"],
                   what="no sync in flight")
            p.status.poll(0.5)  # statuses from after the last sync
            if done == N:
                learned = dict(p.status.nodes)
        for node in range(3):
            p.stop(p.nodes[node])
        p.wait(lambda r: r.sync["nodes_alive"] == 0, what="the leaves")
        p.stop(sync)
        p.status.poll(0.5)
        nodes, final = dict(p.status.nodes), sync.status()
    for node, st in nodes.items():
        assert st["state"] == "stopped"
        # each sample once, in order
        assert st["samples"] == N + BURST and st["seq_gaps"] == 0 and st["last_seq"] == N + BURST - 1
        assert st["deadletters"] == 0 and st["buffered"] == 0
        assert committed(settings, prefix, node) == len(streams[node]) + len(burst[node])  # after the last record
        assert len(st["sync_positions"]) < 100  # the status keeps the last 100: none was dropped
    return learned, nodes, final


def syncs_between(nodes: dict, lo: int, hi: int) -> int:
    """Syncs the nodes applied once they had learned more than ``lo`` and at most ``hi`` samples."""
    return sum(lo < pos <= hi for st in nodes.values() for pos in st["sync_positions"])


def test_three_nodes_with_a_drift_learn_every_sample_once_and_sync_after_it(broker, settings, prefix):
    learned, nodes, final = _three_nodes(broker, settings, prefix, flip=FLIP)
    calm, _, _ = _three_nodes(broker, settings, prefix + "calm", flip=None)  # control: same streams, no drift

    for st in learned.values():
        assert st["accuracy"] > 0.7
    for st in calm.values():
        assert st["accuracy"] > 0.9
    # A sync follows the drift: the swapped labels drive every model away from the reference, so
    # the part after the drift has many more syncs than as many samples before it, and than the
    # same part of the run without a drift. Both of those may hold the calm run's own next sync
    # (once or twice per node, anywhere from about 2,550 to 3,100 samples, as the nodes' timing
    # falls), so the drift's syncs are counted on top of them: at least two more per node. Over 9
    # runs on a loaded machine: 15 to 27 after the drift, 0 to 5 before it, 0 to 7 without a drift.
    window = N - FLIP
    after = syncs_between(learned, FLIP, N)
    before = syncs_between(learned, FLIP - window, FLIP)
    control = syncs_between(calm, FLIP, N)
    assert after >= 12 and after >= max(before, control) + 2 * 3, (after, before, control)
    assert all(syncs_between({0: st}, FLIP, N) >= 2 for st in learned.values()), learned  # at every node

    assert final["full_syncs"] >= 1 and final["leaves"] == 3 and final["nodes_alive"] == 0
    # Synced nodes hold equal models: the burst ended with a full sync, which every node applied
    # after its last step, so every node holds the very model that sync sent, as model and reference.
    w0 = {st["w0_hash"] for st in nodes.values()}
    assert len(w0) == 1 and final["reference_hash"] not in w0
    assert [st["last_sync_kind"] for st in nodes.values()] == ["full"] * 3
    for st in nodes.values():
        assert st["model_hash"] == st["synced_hash"] == st["reference_hash"] == final["reference_hash"]
    # the protocol's count of models down equals what the nodes applied (plus the join replies)
    assert final["models_down"] == sum(st["models_received"] for st in nodes.values())


def test_a_late_joining_node_receives_the_reference(broker, settings, prefix):
    n = 600
    with Pipeline(broker, settings, prefix) as p:
        p.start_sync()
        for node in (0, 1):
            p.start_node(node)
        p.wait(lambda r: r.sync and r.sync.get("nodes_alive") == 2, what="2 joins")
        publish(settings, prefix, {node: encode(*make_data(n, node), 0, "binary", 20) for node in (0, 1)}, seconds=1.0)
        p.wait(lambda r: p.learned({0: n, 1: n})(r) and r.sync["full_syncs"] >= 1, what="training with a full sync")
        settled = time.time() + 0.5  # a status of the sync service once the last sync is done
        p.wait(lambda r: r.sync["ts"] > settled and not r.sync["pending"], what="a settled sync service")
        reference = p.status.sync["reference_hash"]
        w0 = p.status.nodes[0]["w0_hash"]
        assert reference != w0  # the reference moved away from w0

        p.start_node(2)
        p.wait(lambda r: r.nodes.get(2, {}).get("joined"), what="the late join")
        st = p.status.nodes[2]
        assert st["w0_hash"] == w0  # it started from w0 ...
        assert st["join_hash"] == reference  # ... got the current reference when it joined ...
        assert st["reference_hash"] == reference and st["model_hash"] == reference  # ... and took it as both
        assert st["last_sync_kind"] == "join" and st["samples"] == 0


def test_nodes_learn_on_while_the_sync_service_is_down_and_resync_when_it_returns(broker, settings, prefix):
    n = 300
    part = {node: make_data(3 * n, 10 + node, flip_at=n) for node in (0, 1)}  # a drift while the service is down

    def chunk(k):
        return {node: encode(X[k * n:(k + 1) * n], y[k * n:(k + 1) * n], k * n, "binary", 20)
                for node, (X, y) in part.items()}

    with Pipeline(broker, settings, prefix) as p:
        first = p.start_sync()
        for node in (0, 1):
            p.start_node(node)
        p.wait(lambda r: r.sync and r.sync.get("nodes_alive") == 2, what="2 joins")
        publish(settings, prefix, chunk(0), seconds=1.0)
        p.wait(p.learned({0: n, 1: n}), what="part 1 learned")
        p.stop(first)
        received = {node: p.nodes[node].status()["models_received"] for node in (0, 1)}

        publish(settings, prefix, chunk(1))  # the stream drifts; nobody answers violations
        p.wait(p.learned({0: 2 * n, 1: 2 * n}), what="part 2 learned without a sync service")
        p.status.poll(0.3)
        for node in (0, 1):
            st = p.status.nodes[node]
            assert st["models_received"] == received[node]
            assert st["violations"] >= 1  # it did ask, and went on learning

        second = p.start_sync()
        p.wait(lambda r: r.sync and r.sync["epoch"] == second.epoch_ and r.sync["nodes_alive"] == 2,
               what="the nodes registering with the new sync service")
        publish(settings, prefix, chunk(2), seconds=1.0)
        p.wait(lambda r: p.learned({0: 3 * n, 1: 3 * n})(r) and r.sync["epoch"] == second.epoch_
               and r.sync["full_syncs"] + r.sync["partial_syncs"] >= 1, what="a sync by the new service")
        for node in (0, 1):
            st = p.nodes[node].status()
            assert st["epoch"] == second.epoch_ and st["joined"]
            assert st["models_received"] > received[node] + 1  # more than the join reply
            assert st["seq_gaps"] == 0


def _run_protocol(broker, settings, prefix, spec, data):
    with Pipeline(broker, settings, prefix, spec=spec, timeout=1.0) as p:
        sync = p.start_sync()
        for node in data:
            p.start_node(node)
        p.wait(lambda r: r.sync and r.sync.get("nodes_alive") == len(data), what="joins")
        publish(settings, prefix, {node: encode(X, y, 0, "binary", 10) for node, (X, y) in data.items()},
                seconds=3.0)  # a step every 50 ms: nodes do not outrun the sync round trip
        n = len(next(iter(data.values()))[1])
        p.wait(lambda r: p.learned({node: n for node in data})(r) and not r.sync["pending"], what="done")
        p.stop(sync)
        stats = sync.status()
        return stats["models_up"] + stats["models_down"] - len(data), stats  # without the join replies


def test_dynamic_sends_far_fewer_models_than_periodic_in_the_pipeline_and_the_simulator(broker, settings, prefix):
    from streamlearn.learners import TorchLearner
    from streamlearn.sim.simulator import NodeData, simulate

    m, n = 3, 600
    data = {node: make_data(n, 20 + node) for node in range(m)}
    dyn, dyn_stats = _run_protocol(broker, settings, prefix + "d", "dynamic:delta=1.0,b=1", data)
    per, per_stats = _run_protocol(broker, settings, prefix + "p", "periodic:b=1", data)
    assert dyn_stats["violations"] >= 1 and per_stats["full_syncs"] >= 10
    assert per > 3 * dyn, (per, dyn)

    sim = NodeData(X=np.stack([data[i][0] for i in range(m)]), y=np.stack([data[i][1] for i in range(m)]),
                   classes=CLASSES, feature_names=FEATURES)
    learner = TorchLearner("logreg", lr=0.5, seed=0, device="cpu")
    sim_dyn = simulate(sim, learner, "dynamic:delta=1.0,b=1", batch_size=10, progress=False)
    sim_per = simulate(sim, learner, "periodic:b=1", batch_size=10, progress=False)
    assert sim_per.transfers > 3 * sim_dyn.transfers  # the simulator agrees in kind
    assert sim_dyn.accuracy > 0.85


def test_bad_records_go_to_the_dead_letter_topic_and_the_valid_ones_are_all_learned(broker, settings, prefix, consume):
    X, y = make_data(80, 5)
    good = encode(X[:10], y[:10], 0, "json", 1)
    good += encode(X[10:60], y[10:60], 10, "binary", 25)
    good += encode(X[60:], y[60:], 60, "json", 1)
    bad = [
        b"\x00\x01 not a record",
        b'{"seq": 1000, "x": {"a": NaN, "b": 1, "c": 1}, "y": 1}',
        b'{"seq": 1001, "x": {"a": 1, "b": 1, "c": 1}, "y": 7}',  # not one of the classes
        b'{"seq": 1002, "x": {"a": 1, "b": 1}, "y": 1}',  # a feature missing
        encode_sample_batch(X[:5], y[:5], first_seq=2000, names=["a", "b", "z"]),  # other features
        encode_sample_batch(X[:5], y[:5], first_seq=3000, names=FEATURES)[:-9],  # truncated
        encode_model(np.zeros(3, dtype=np.float32), node=0, version=1),  # a model is not a sample
    ]
    records = good[:5] + bad[:3] + good[5:12] + bad[3:] + good[12:]
    ensure_topics(broker.bootstrap, prefix, 1, settings=settings)
    publish(settings, prefix, {0: records})
    # No sync service at all: the node must not wait for one.
    with Pipeline(broker, settings, prefix) as p:
        node = p.start_node(0)
        p.wait(lambda r: r.nodes.get(0, {}).get("samples") == 80 and r.nodes[0]["deadletters"] == len(bad),
               what="all records handled")
        p.stop(node)
        st = node.status()
    assert st["seq_gaps"] == 0 and st["last_seq"] == 79 and not st["joined"]
    assert committed(settings, prefix, 0) == len(records)
    dead = consume(deadletter_topic(prefix), len(bad))
    assert [r.value for r in dead] == bad
    offsets = [i for i, rec in enumerate(records) if rec in bad]
    for rec, offset in zip(dead, offsets):
        headers = dict(rec.headers)
        assert headers["sl-source-topic"] == samples_topic(prefix, 0).encode()
        assert int(headers["sl-source-offset"]) == offset and headers["sl-error"]


def test_a_node_process_stops_on_sigterm_and_a_restart_resumes_after_what_it_learned(broker, settings, prefix,
                                                                                      consume):
    X, y = make_data(500, 7)
    ensure_topics(broker.bootstrap, prefix, 1, settings=settings)
    publish(settings, prefix, {0: encode(X[:300], y[:300], 0, "binary", 20)})
    code = ("from streamlearn.kafka.node import run_node; "
            f"run_node({{'id': 0, 'features': 'a,b,c', 'classes': '0,1', 'lr': 0.5, 'device': 'cpu', 'protocol': 'nosync', "
            f"'prefix': {prefix!r}, 'bootstrap': {broker.bootstrap!r}, 'status-interval': 0.2, "
            f"'max-seconds': 60}})")
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap)
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
    try:
        with StatusReader(broker.bootstrap, prefix, settings=settings) as reader:
            assert reader.wait_for(lambda r: r.nodes.get(0, {}).get("samples") == 300, 60), proc.poll()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, proc.stderr.read().decode()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert committed(settings, prefix, 0) == 15  # every record learned, the position stored
    kinds = [decode_sync(r.value).kind for r in consume(sync_up_topic(prefix), 3, timeout=3)]
    assert kinds == ["join", "leave"]  # registered, and said goodbye on SIGTERM

    publish(settings, prefix, {0: encode(X[300:], y[300:], 300, "binary", 20)})
    with Pipeline(broker, settings, prefix) as p:
        node = p.start_node(0, status_interval=0.2)
        p.wait(lambda r: r.nodes.get(0, {}).get("samples") == 200 and r.nodes[0]["last_seq"] == 499,
               what="the rest learned")
        p.stop(node)
    st = node.status()
    assert st["samples"] == 200 and st["seq_gaps"] == 0  # resumed where it stopped: nothing learned twice


@pytest.mark.parametrize("bad", [{"node": -1}, {"batch_size": 0}, {"protocol": "gossip"}, {"learner": "svm"},
                                 {"sync_timeout": 0}])
def test_bad_node_settings_are_config_errors(bad):
    from streamlearn.errors import ConfigError

    with pytest.raises(ConfigError):
        NodeConfig(**{"node": 0, "features": FEATURES, "classes": CLASSES, **bad})


def test_river_learners_in_nodes_averageable_ones_sync_local_ones_learn_alone(broker, settings, prefix):
    n = 200
    with Pipeline(broker, settings, prefix) as p:
        p.start_sync()
        linear = p.start_node(0, learner="river-logreg", learner_params={"lr": 0.5})
        local = p.start_node(1, learner="hoeffding-tree", learner_params={})
        p.wait(lambda r: r.sync and r.sync.get("nodes_alive") == 1, what="the river-logreg join")
        publish(settings, prefix, {node: encode(*make_data(n, 30 + node), 0, "binary", 20) for node in (0, 1)})
        p.wait(p.learned({0: n, 1: n}), what="both learned")
        p.stop(linear)
        p.stop(local)
    a, b = linear.status(), local.status()
    assert a["averageable"] and a["joined"] and a["model_hash"] and a["accuracy"] > 0.7
    assert not b["averageable"] and not b["joined"] and b["models_sent"] == 0 and b["accuracy"] > 0.6


def test_a_backlog_larger_than_the_buffer_is_learned_to_the_end(broker, settings, prefix):
    X, y = make_data(8000, 9)
    ensure_topics(broker.bootstrap, prefix, 1, settings=settings)
    publish(settings, prefix, {0: encode(X, y, 0, "binary", 400)})
    with Pipeline(broker, settings, prefix) as p:  # no sync service, protocol without messages
        node = p.start_node(0, protocol="nosync", batch_size=50, max_poll_records=3, detector=None)
        p.wait(lambda r: r.nodes.get(0, {}).get("samples") == 8000, what="the whole backlog")
        p.stop(node)
    st = node.status()
    assert st["seq_gaps"] == 0 and st["steps"] == 160 and st["accuracy"] > 0.9
