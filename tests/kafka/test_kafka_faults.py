"""Faults with the real broker: the pipeline goes on learning, no accepted sample is lost, the status says what
happened. Killed services run as real ``streamlearn`` processes; the others are threads."""

from __future__ import annotations

import threading
import time

import pytest

from streamlearn.kafka.status import StatusReader
from streamlearn.kafka.sync_service import SyncConfig, SyncService
from streamlearn.kafka.topics import ensure_topics
from streamlearn.kafka.wire import decode_sync

from test_kafka_faults_helpers import Proc, S3Server, Threads, batches, make_data, publish, wait

SYNC = ["sync", "--protocol", "dynamic", "--delta", 1.0, "--b", 1, "--max-nodes", 4, "--timeout", 1, "--device", "cpu"]


def learned_all(counts: dict):
    """Condition: node n learned counts[n] samples, each once and in order (no gap, last sequence number)."""
    return lambda r: all(r.nodes.get(n, {}).get("samples") == c and r.nodes[n]["last_seq"] == c - 1
                         and r.nodes[n]["seq_gaps"] == 0 for n, c in counts.items())


def test_the_sync_service_killed_mid_stream_nodes_learn_on_and_register_with_its_successor(broker, settings, prefix,
                                                                                           tmp_path):
    ensure_topics(broker.bootstrap, prefix, 2, settings=settings)
    threads = Threads(broker.bootstrap, settings, prefix)
    sync = Proc(SYNC, broker.bootstrap, prefix, tmp_path / "sync1.log")
    reader = StatusReader(broker.bootstrap, prefix, settings=settings)
    try:
        for node in (0, 1):
            threads.node(node, sync_timeout=1.0)
        wait(reader, lambda r: r.sync and r.sync["nodes_alive"] == 2, what="2 joins", procs=[sync])
        first = reader.sync["epoch"]
        n = 900
        data = {node: make_data(n, 60 + node, flip_at=300) for node in (0, 1)}
        recs = {node: batches(X, y) for node, (X, y) in data.items()}
        publish(broker.bootstrap, settings, prefix, {node: r[:15] for node, r in recs.items()}, seconds=1.0)
        wait(reader, learned_all({0: 300, 1: 300}), what="part 1", procs=[sync])
        sync.kill()  # mid-stream: the drift is being published
        publish(broker.bootstrap, settings, prefix, {node: r[15:30] for node, r in recs.items()}, seconds=1.0)
        wait(reader, learned_all({0: 600, 1: 600}), what="part 2 without a sync service")
        assert all(reader.nodes[node]["violations"] >= 1 for node in (0, 1))  # they asked, nobody answered

        sync = Proc(SYNC, broker.bootstrap, prefix, tmp_path / "sync2.log")
        wait(reader, lambda r: r.sync["epoch"] != first and r.sync["nodes_alive"] == 2
             and all(r.nodes[node]["epoch"] == r.sync["epoch"] for node in (0, 1)), what="re-registration",
             procs=[sync])
        publish(broker.bootstrap, settings, prefix, {node: r[30:] for node, r in recs.items()}, seconds=1.0)
        wait(reader, lambda r: learned_all({0: n, 1: n})(r) and r.sync["full_syncs"] + r.sync["partial_syncs"] >= 1,
             what="everything learned and synced by the successor", procs=[sync])
        for node in (0, 1):
            st = reader.nodes[node]
            assert st["joined"] and st["deadletters"] == 0 and st["accuracy"] > 0.6
        assert sync.stop() == 0
    finally:
        threads.stop()
        if sync.alive:
            sync.kill()
        reader.close()


def test_a_node_that_stops_answering_is_given_up_and_a_slow_node_catches_up(broker, settings, prefix):
    ensure_topics(broker.bootstrap, prefix, 3, settings=settings)
    threads = Threads(broker.bootstrap, settings, prefix)
    sync = SyncService(SyncConfig(protocol="dynamic:delta=1.0,b=1", max_nodes=4, timeout=0.5, device="cpu",
                                  status_interval=0.2, bootstrap=broker.bootstrap, prefix=prefix, settings=settings))
    sync_thread = threading.Thread(target=sync.run, daemon=True)
    sync_thread.start()
    reader = StatusReader(broker.bootstrap, prefix, settings=settings)
    try:
        threads.node(0)
        slow = threads.node(1)
        mute = threads.node(2)
        ignored = []
        on_down = mute._on_down

        def deaf(rec):  # node 2 learns on but never answers a request for its model
            msg = decode_sync(rec.value)
            if msg.kind == "request" and msg.addressed_to(2):
                ignored.append(msg.request)
                return
            on_down(rec)

        mute._on_down = deaf
        # ... nor sends its model any other way: a violation report with its model would answer the request
        # (a pending node whose model comes in a report is no longer awaited), and on a loaded machine that
        # happened before the timeout
        mute._publish_model = lambda kind, **fields: None
        step = slow._step

        def sluggish(n, batches=1):  # node 1 needs 40 ms per mini-batch: it falls behind the stream
            time.sleep(0.04)
            step(n)  # one mini-batch per call (not a run of them)

        slow._step = sluggish
        wait(reader, lambda r: r.sync and r.sync["nodes_alive"] == 3, what="3 joins")
        n = 600
        data = {node: make_data(n, 70 + node, flip_at=200) for node in range(3)}
        publish(broker.bootstrap, settings, prefix, {node: batches(X, y) for node, (X, y) in data.items()},
                seconds=1.5)
        lagging = []
        wait(reader, lambda r: (lagging.append(r.nodes.get(1, {}).get("lag") or 0) or True)
             and r.nodes.get(0, {}).get("samples") == n and r.nodes.get(2, {}).get("samples") == n,
             what="the prompt nodes done")
        wait(reader, lambda r: learned_all({0: n, 1: n, 2: n})(r) and not r.sync["pending"],
             what="the slow node done")
        st = reader.sync
        assert ignored and st["timeouts"] >= 1  # node 2 was asked, did not answer, was given up on ...
        assert st["full_syncs"] >= 1  # ... and the syncs went on with the others
        for node in (0, 1, 2):
            assert reader.nodes[node]["models_received"] >= 2  # the full syncs reach the mute node too
        assert max(lagging) > 0  # the slow node's status showed its backlog
    finally:
        threads.stop()
        sync.stop()
        sync_thread.join(timeout=10)
        reader.close()


def _gate(svc, hold: threading.Event, go: threading.Event, stalled: threading.Event) -> None:
    """While ``hold`` is set and ``go`` is not, the node's next mini-batch waits for ``go``: its loop stands
    still (no fetch, no commit), so what is produced meanwhile exists only in the broker."""
    step = svc._step

    def gated(n, batches=1):
        if hold.is_set() and not go.is_set():
            stalled.set()
            go.wait(timeout=120)
        step(n, batches)

    svc._step = gated


@pytest.mark.parametrize("storage,how", [("s3", "kill"), ("s3", "term"), ("memory", "kill")])
def test_a_broker_restart_with_samples_not_yet_learned(storage, how, tmp_path):
    """Samples are produced and acknowledged while the nodes are stalled, the broker goes down (SIGKILL or
    SIGTERM) before the nodes have fetched them, and comes back on the same port with the same storage.

    Durable storage (``s3://`` on a local S3 server): every acknowledged sample is learned exactly once
    (no sequence gap, no topic reset), the nodes and the sync service go on by themselves. Memory storage
    (the default): the restarted broker has lost the samples the nodes had not fetched; the nodes notice
    (``topic_resets``), learn everything produced after the restart, and the loss shows in their status
    and metrics as one sequence gap of exactly the lost samples."""
    from prometheus_client import CollectorRegistry

    from streamlearn.kafka.broker import EmbeddedBroker, free_port
    from streamlearn.kafka.config import KafkaSettings
    from streamlearn.metrics import NodeMetrics, SyncMetrics

    s3 = S3Server(tmp_path / "s3.log") if storage == "s3" else None
    broker = EmbeddedBroker(port=free_port(), storage=s3.storage if s3 else "memory://tansu/",
                            env=s3.env if s3 else None, log_path=str(tmp_path / "tansu.log")).start()
    assert broker.durable == (storage == "s3")
    bootstrap, prefix = broker.bootstrap, "br.sl"
    settings = KafkaSettings(bootstrap_servers=bootstrap)
    ensure_topics(bootstrap, prefix, 2, settings=settings)
    threads = Threads(bootstrap, settings, prefix)
    # Tansu 0.6.0 on s3:// answers a fetch with nothing when reading the object store takes longer than the
    # fetch's max wait, and a consumer asking again with a short wait can stay stuck: wait longer on s3.
    fetch_wait_ms = 500 if s3 else 20
    sync = SyncService(SyncConfig(protocol="dynamic:delta=1.0,b=1", max_nodes=4, timeout=1.0, device="cpu",
                                  status_interval=0.2, fetch_wait_ms=fetch_wait_ms, bootstrap=bootstrap,
                                  prefix=prefix, settings=settings))
    sync_registry = CollectorRegistry()
    SyncMetrics(sync_registry, status=sync.status)
    sync_thread = threading.Thread(target=sync.run, daemon=True)
    sync_thread.start()
    nodes, registries = [], []
    hold, go = threading.Event(), threading.Event()
    stalled = {node: threading.Event() for node in (0, 1)}

    def until(condition, what, timeout=60.0):
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: " + str(
                [{k: s.status().get(k) for k in ("samples", "last_seq", "offset", "lag", "buffered", "topic_resets")}
                 for s in nodes]) + f" {sync.status()}\n{broker.log_tail()}"
            time.sleep(0.1)

    # 3000 samples per node in records of 20: part 0 (300) learned before anything happens; part 1 (200)
    # fetched as the nodes stall; the burst (2000) produced while they stand still; part 2 (500, a drift)
    # produced after the restart.
    n, stop = 3000, {"kill": broker.kill, "term": broker.stop}[how]
    data = {node: make_data(n, 90 + node, flip_at=2500) for node in (0, 1)}
    recs = {node: batches(X, y) for node, (X, y) in data.items()}
    try:
        for node in (0, 1):
            svc = threads.node(node, sync_timeout=1.0, fetch_wait_ms=fetch_wait_ms)
            _gate(svc, hold, go, stalled[node])
            registries.append(CollectorRegistry())
            NodeMetrics(registries[-1], node, status=svc.status)
            nodes.append(svc)
        until(lambda: sync.status().get("nodes_alive") == 2, "2 joins")
        publish(bootstrap, settings, prefix, {node: r[:15] for node, r in recs.items()}, seconds=1.0)
        until(lambda: all(s.status().get("samples") == 300 for s in nodes), "part 0")

        hold.set()
        publish(bootstrap, settings, prefix, {node: r[15:25] for node, r in recs.items()})
        until(lambda: all(e.is_set() for e in stalled.values()), "the nodes stalling on part 1")
        time.sleep(fetch_wait_ms / 1000 + 0.5)  # a fetch sent before they stalled is answered without the burst
        publish(bootstrap, settings, prefix, {node: r[25:125] for node, r in recs.items()})  # all acknowledged
        syncs_before = sync.status()["full_syncs"] + sync.status()["partial_syncs"]

        stop()
        go.set()  # the nodes go on while the broker is down, with what they had fetched
        time.sleep(2.0)
        assert all(s.status()["state"] == "running" for s in nodes) and sync_thread.is_alive()
        # The high-water mark of the last fetch each node got: the burst (records 25 to 124) was produced after
        # it, and exists only in the broker's storage.
        seen = [s._consumer.highwater(s._samples_tp) for s in nodes]
        assert all(h is not None and 15 <= h <= 25 for h in seen), seen

        broker.start()  # the same port and storage
        if not broker.durable:
            ensure_topics(bootstrap, prefix, 2, settings=settings)  # what `streamlearn produce` does on start
            until(lambda: all(s.status()["topic_resets"] >= 1 for s in nodes), "the nodes noticing the lost topics")
        publish(bootstrap, settings, prefix, {node: r[125:] for node, r in recs.items()}, seconds=1.0)
        # Memory: what a node had fetched, and part 2; the rest of part 1 and the burst are gone.
        learned = [n if broker.durable else 20 * h + 500 for h in seen]
        until(lambda: all(s.status()["samples"] == c and s.status()["last_seq"] == n - 1
                          for s, c in zip(nodes, learned)), "every sample the broker still holds")
        until(lambda: sync.status()["full_syncs"] + sync.status()["partial_syncs"] > syncs_before,
              "a sync after the restart")
        for s, reg in zip(nodes, registries):
            st = s.status()
            assert st["joined"] and st["deadletters"] == 0 and st["models_received"] >= 2
            lost = n - st["samples"]
            assert lost == st["last_seq"] + 1 - st["samples"]  # the status shows the loss (no sample twice)
            if broker.durable:  # exactly once: nothing lost, nothing repeated, nothing read again
                assert lost == 0 and st["seq_gaps"] == 0 and st["topic_resets"] == 0 and st["relearned"] == 0
            else:  # the samples the node had not fetched before the broker went down (at least the burst)
                assert lost >= 2000 and st["seq_gaps"] == 1 and st["topic_resets"] >= 1
            node = {"node": str(st["node"])}
            for metric, key in (("streamlearn_node_samples_total", "samples"),
                                ("streamlearn_node_sequence_gaps_total", "seq_gaps"),
                                ("streamlearn_node_topic_resets_total", "topic_resets")):
                assert reg.get_sample_value(metric, node) == st[key]
        resets = sync.status()["topic_resets"]
        assert resets == 0 if broker.durable else resets >= 1  # sync.up read again from its start when lost
        assert sync_registry.get_sample_value("streamlearn_sync_topic_resets_total") == resets
        if s3 is not None:
            assert s3.objects() > 0  # the records were in the object store, not in the broker process
    finally:
        go.set()
        try:
            threads.stop()
        finally:  # the servers go even when a node does not stop in time
            sync.stop()
            sync_thread.join(timeout=20)
            broker.stop()
            if s3 is not None:
                s3.stop()


@pytest.mark.parametrize("storage", ["memory", "s3"])
def test_the_producer_sends_on_through_a_broker_restart(storage, tmp_path):
    """`streamlearn produce` outlives a broker restart: what it hands to Kafka after the restart all
    arrives, in order, and it reports no lost record (an idempotent producer would fail for good here).
    With durable storage (killed with SIGKILL) the restarted broker holds the whole stream; a send retried
    across the crash may be there twice (at-least-once into Kafka), none is missing."""
    from kafka import KafkaConsumer, TopicPartition

    from streamlearn.kafka.broker import EmbeddedBroker, free_port
    from streamlearn.kafka.codecs import decode_sample_batch
    from streamlearn.kafka.config import KafkaSettings
    from streamlearn.kafka.producer import Producer, ProducerConfig
    from streamlearn.kafka.topics import samples_topic

    s3 = S3Server(tmp_path / "s3.log") if storage == "s3" else None
    broker = EmbeddedBroker(port=free_port(), storage=s3.storage if s3 else "memory://tansu/",
                            env=s3.env if s3 else None, log_path=str(tmp_path / "tansu.log")).start()
    bootstrap, prefix = broker.bootstrap, "pr.sl"
    settings = KafkaSettings(bootstrap_servers=bootstrap)
    producer = Producer(ProducerConfig(source="sea", nodes=1, rate=400, format="binary", batch=20, seed=3,
                                       bootstrap=bootstrap, prefix=prefix, settings=settings, live_drift=False,
                                       progress=False))
    out = {}

    def run():
        try:
            out["stats"] = producer.run()
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def until(condition, what, timeout=40.0):
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: sent {producer.sent}, {out}"
            time.sleep(0.05)

    try:
        until(lambda: producer.ready.is_set() and producer.sent.get(0, 0) >= 400, "a first second of samples")
        broker.kill() if s3 else broker.stop()
        time.sleep(2.0)
        assert thread.is_alive()  # still running, buffering and retrying
        broker.start()  # the same port and storage
        ensure_topics(bootstrap, prefix, 1, settings=settings)
        restarted_at = producer.sent[0]
        until(lambda: producer.sent[0] >= restarted_at + 800, "two seconds more")
        producer.stop()
        thread.join(timeout=60)
        assert not thread.is_alive() and "error" not in out, out.get("error")
        total = out["stats"].sent[0]
        assert out["stats"].errors == 0

        consumer = KafkaConsumer(**settings.consumer_kwargs())
        try:
            tp = TopicPartition(samples_topic(prefix, 0), 0)
            consumer.assign([tp])
            consumer.seek_to_beginning(tp)
            end = consumer.end_offsets([tp])[tp]
            seqs = []
            deadline = time.monotonic() + 20
            while consumer.position(tp) < end and time.monotonic() < deadline:
                for recs in consumer.poll(timeout_ms=200).values():
                    seqs.extend(s for r in recs for s in decode_sample_batch(r.value).seqs.tolist())
        finally:
            consumer.close()
        if s3 is None:  # the new broker holds a contiguous tail of the stream, up to the last sample sent
            assert seqs and seqs[0] <= restarted_at and seqs[-1] == total - 1
            assert seqs == list(range(seqs[0], total))
        else:  # the whole stream, from its first sample; repeats only where a send was retried
            assert seqs and seqs[0] == 0 and seqs[-1] == total - 1
            assert sorted(set(seqs)) == list(range(total)), f"{len(seqs) - len(set(seqs))} repeats"
    finally:
        producer.stop()
        thread.join(timeout=30)
        broker.stop()
        if s3 is not None:
            s3.stop()
