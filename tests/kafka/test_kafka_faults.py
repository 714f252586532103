"""Faults with the real broker: the pipeline goes on learning, no accepted sample is lost, the status says what
happened. Killed services run as real ``streamlearn`` processes; the others are threads."""

from __future__ import annotations

import threading
import time

from streamlearn.kafka.status import StatusReader
from streamlearn.kafka.sync_service import SyncConfig, SyncService
from streamlearn.kafka.topics import ensure_topics
from streamlearn.kafka.wire import decode_sync

from test_kafka_faults_helpers import Proc, Threads, batches, make_data, publish, wait

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
        step = slow._step

        def sluggish(n):  # node 1 needs 40 ms per mini-batch: it falls behind the stream
            time.sleep(0.04)
            step(n)

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


def test_a_broker_restart_loses_its_data_and_the_services_reconnect_and_learn_what_comes_after(tmp_path):
    """The embedded Tansu keeps topics in memory: a restart loses every record and every committed offset,
    and offsets count from 0 again. The services must notice (a topic shorter than what they read), read
    the new topics from their start and learn on; what the broker lost is lost."""
    from streamlearn.kafka.broker import EmbeddedBroker, free_port
    from streamlearn.kafka.config import KafkaSettings

    port = free_port()
    broker = EmbeddedBroker(port=port, log_path=str(tmp_path / "tansu1.log")).start()
    bootstrap, prefix = broker.bootstrap, "br.sl"
    settings = KafkaSettings(bootstrap_servers=bootstrap)
    ensure_topics(bootstrap, prefix, 2, settings=settings)
    threads = Threads(bootstrap, settings, prefix)
    sync = SyncService(SyncConfig(protocol="dynamic:delta=1.0,b=1", max_nodes=4, timeout=1.0, device="cpu",
                                  status_interval=0.2, bootstrap=bootstrap, prefix=prefix, settings=settings))
    sync_thread = threading.Thread(target=sync.run, daemon=True)
    sync_thread.start()

    def until(condition, what, timeout=40.0):
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: " \
                f"{[(s.status().get('samples'), s.status().get('topic_resets')) for s in nodes]} {sync.status()}"
            time.sleep(0.1)

    try:
        nodes = [threads.node(node, sync_timeout=1.0) for node in (0, 1)]
        until(lambda: sync.status().get("nodes_alive") == 2, "2 joins")
        data = {node: make_data(900, 90 + node, flip_at=450) for node in (0, 1)}
        recs = {node: batches(X, y) for node, (X, y) in data.items()}
        publish(bootstrap, settings, prefix, {node: r[:15] for node, r in recs.items()}, seconds=1.0)
        until(lambda: all(s.status()["samples"] == 300 for s in nodes), "part 1")
        syncs_before = sync.status()["full_syncs"] + sync.status()["partial_syncs"]

        broker.stop()  # every topic, record and committed offset is gone
        time.sleep(2.0)  # the services see the broker gone; they keep running
        assert all(s.status()["state"] == "running" for s in nodes) and sync_thread.is_alive()
        broker = EmbeddedBroker(port=port, log_path=str(tmp_path / "tansu2.log")).start()
        ensure_topics(bootstrap, prefix, 2, settings=settings)  # what `streamlearn produce` does when it starts
        until(lambda: all(s.status()["topic_resets"] >= 1 for s in nodes), "the nodes noticing the lost topics")

        publish(bootstrap, settings, prefix, {node: r[15:] for node, r in recs.items()}, seconds=1.5)
        until(lambda: all(s.status()["samples"] == 900 and s.status()["last_seq"] == 899 for s in nodes),
              "what was produced after the restart")
        until(lambda: sync.status()["full_syncs"] + sync.status()["partial_syncs"] > syncs_before,
              "a sync after the restart")
        for s in nodes:
            st = s.status()
            assert st["seq_gaps"] == 0 and st["joined"] and st["deadletters"] == 0
            assert st["models_received"] >= 2  # the join reply, and syncs on either side of the restart
        assert sync.status()["topic_resets"] >= 1  # sync.up was read again from its start
    finally:
        threads.stop()
        sync.stop()
        sync_thread.join(timeout=20)
        broker.stop()


def test_the_producer_sends_on_through_a_broker_restart(tmp_path):
    """`streamlearn produce` outlives a broker restart: what it hands to Kafka after the restart all
    arrives, in order, and it reports no lost record (an idempotent producer would fail for good here)."""
    from kafka import KafkaConsumer, TopicPartition

    from streamlearn.kafka.broker import EmbeddedBroker, free_port
    from streamlearn.kafka.codecs import decode_sample_batch
    from streamlearn.kafka.config import KafkaSettings
    from streamlearn.kafka.producer import Producer, ProducerConfig
    from streamlearn.kafka.topics import samples_topic

    port = free_port()
    broker = EmbeddedBroker(port=port, log_path=str(tmp_path / "tansu1.log")).start()
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
        broker.stop()
        time.sleep(2.0)
        assert thread.is_alive()  # still running, buffering and retrying
        broker = EmbeddedBroker(port=port, log_path=str(tmp_path / "tansu2.log")).start()
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
        # The new broker holds a contiguous tail of the stream, from before the restart to the last sample sent.
        assert seqs and seqs[0] <= restarted_at and seqs[-1] == total - 1
        assert seqs == list(range(seqs[0], total))
    finally:
        producer.stop()
        thread.join(timeout=30)
        broker.stop()
