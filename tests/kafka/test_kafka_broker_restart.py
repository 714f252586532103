"""A memory-only broker (the embedded Tansu) killed with SIGKILL and restarted on the same port while the
producer keeps producing: the loss is counted once, nothing is learned twice, the stream stays in order.

Real Tansu, the real ``Producer`` (as ``streamlearn produce`` runs it), two node services and the sync
service as threads. Waits are on conditions only.
"""

from __future__ import annotations

import threading
import time
from itertools import pairwise

from kafka import KafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry

from streamlearn.kafka.broker import EmbeddedBroker, free_port
from streamlearn.kafka.codecs import decode_sample_batch
from streamlearn.kafka.config import KafkaSettings
from streamlearn.kafka.node import NodeConfig, NodeService
from streamlearn.kafka.producer import ProduceError, Producer, ProducerConfig
from streamlearn.kafka.sync_service import SyncConfig, SyncService
from streamlearn.kafka.topics import ensure_topics, samples_topic
from streamlearn.metrics import NodeMetrics, ProducerMetrics

NODES = (0, 1)
RATE = 600  # samples/s per node: a live stream a loaded 2-core machine keeps up with
DELIVERY_TIMEOUT = 6.0  # s: records the dead broker does not take fail (and are counted) during the outage


def _seqs(settings, topic) -> list:
    """The sequence numbers of a samples topic, in offset order (one list per record)."""
    consumer = KafkaConsumer(**settings.consumer_kwargs())
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        out, deadline = [], time.monotonic() + 60
        while consumer.position(tp) < end and time.monotonic() < deadline:
            for recs in consumer.poll(timeout_ms=200).values():
                out.extend(decode_sample_batch(r.value).seqs.tolist() for r in recs)
        return out
    finally:
        consumer.close()


def test_a_memory_broker_killed_and_restarted_under_load_costs_one_counted_gap(tmp_path):
    broker = EmbeddedBroker(port=free_port(), storage="memory://tansu/", log_path=str(tmp_path / "tansu.log")).start()
    bootstrap, prefix = broker.bootstrap, "rs.sl"
    settings = KafkaSettings(bootstrap_servers=bootstrap)
    ensure_topics(bootstrap, prefix, len(NODES), settings=settings)
    sync = SyncService(SyncConfig(protocol="dynamic:delta=1.0,b=1", max_nodes=4, timeout=1.0, device="cpu",
                                  status_interval=0.2, bootstrap=bootstrap, prefix=prefix, settings=settings))
    threads = [threading.Thread(target=sync.run, daemon=True)]
    nodes, registries = [], []
    for node in NODES:
        svc = NodeService(NodeConfig(node=node, features=["x0", "x1", "x2"], classes=[False, True], device="cpu",
                                     learner_params={"lr": 0.5, "scale": True}, status_interval=0.2,
                                     commit_interval=0.3, sync_timeout=1.0, protocol="dynamic:delta=1.0,b=1",
                                     bootstrap=bootstrap, prefix=prefix, settings=settings))
        registries.append(CollectorRegistry())
        NodeMetrics(registries[-1], node, status=svc.status)
        nodes.append(svc)
        threads.append(threading.Thread(target=svc.run, daemon=True))
    preg = CollectorRegistry()
    producer = Producer(ProducerConfig(source="sea", nodes=len(NODES), rate=RATE, format="binary", batch=20, seed=5,
                                       bootstrap=bootstrap, prefix=prefix, settings=settings, live_drift=False,
                                       progress=False, delivery_timeout=DELIVERY_TIMEOUT),
                        metrics=ProducerMetrics(preg, nodes=len(NODES)))
    out = {}

    def produce():
        try:
            out["stats"] = producer.run()
        except ProduceError as exc:  # records not delivered: expected here, counted in the stats
            out["stats"], out["error"] = exc.stats, exc

    threads.append(threading.Thread(target=produce, daemon=True))

    def status(key):
        return [s.status().get(key) for s in nodes]

    def until(condition, what, timeout=90.0):
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, (
                f"timed out waiting for {what}: " + str([{k: s.status().get(k) for k in (
                    "samples", "last_seq", "seq_gaps", "seq_lost", "offset", "topic_resets", "relearned")}
                    for s in nodes]) + f" producer {producer.sent} {producer.delivery()}\n{broker.log_tail()}")
            time.sleep(0.05)

    try:
        for t in threads:
            t.start()
        # a history well longer than the outage: the records the producer holds meanwhile and sends on the
        # restart must not refill the new topic past the nodes' positions before they fetch again (then
        # the skipped ones would only be counted as lost, see TopicWatch)
        until(lambda: all(n and n >= 20 * RATE for n in status("samples")), "a first stretch learned")
        before = producer.delivery()
        assert before["errors"] == 0

        broker.kill()  # SIGKILL: the memory broker loses every topic
        # While it is down the producer says so, and records it cannot deliver fail and are counted as they do.
        until(lambda: producer.delivery()["unreachable"] > 0, "the producer seeing the broker unreachable")
        assert preg.get_sample_value("streamlearn_producer_broker_unreachable") == 1
        until(lambda: producer.delivery()["errors"] > 0, "delivery errors during the outage")
        during = producer.delivery()
        assert preg.get_sample_value("streamlearn_producer_errors_total") >= during["errors"] > 0
        assert preg.get_sample_value("streamlearn_producer_failed_samples_total") > 0
        assert all(s.status()["state"] == "running" for s in nodes)

        broker.start()  # the same port, empty
        ensure_topics(bootstrap, prefix, len(NODES), settings=settings)
        restarted = dict(producer.sent)
        until(lambda: all(producer.sent[k] >= restarted[k] + 3000 for k in NODES), "a stretch after the restart")
        until(lambda: all(r == 1 for r in status("topic_resets")), "each node noticing the lost topic once")
        producer.stop()
        threads[-1].join(timeout=60)
        assert not threads[-1].is_alive()
        stats = out["stats"]
        produced = stats.sent
        assert stats.errors >= during["errors"] and stats.failed_samples > 0 and stats.outage_seconds > 0
        assert "error" in out and "not delivered" in str(out["error"])  # the producer's exit says so too

        # every sample the broker holds is learned, once: last_seq is the last produced
        until(lambda: all(s.status()["last_seq"] == produced[k] - 1 and s.status()["buffered"] == 0
                          for k, s in zip(NODES, nodes)), "the nodes learning everything the broker holds")
        # in order: what the restarted broker holds is the tail of the stream, no backward step. A hole only
        # where a record failed after the restart (the delivery timeout is short here, and the machine may
        # be loaded): the producer counted it
        holes = {}
        for k in NODES:
            flat = [x for rec in _seqs(settings, samples_topic(prefix, k)) for x in rec]
            assert flat, k
            backward = sum(b <= a for a, b in pairwise(flat))
            holes[k] = [(a, b) for a, b in pairwise(flat) if b > a + 1]
            assert backward == 0, f"node {k}: {backward} backward steps, holes {holes[k][:5]}"
            assert flat[-1] == produced[k] - 1, (flat[-1], produced[k])
            assert sum(b - a - 1 for a, b in holes[k]) <= stats.failed_samples

        for k, s, reg in zip(NODES, nodes, registries):
            st = s.status()
            lost = produced[k] - st["samples"]
            # one gap per node, of exactly the samples that never came (the broker lost them, or they were
            # not delivered): the rest learned once (no reading again in a loop)
            seen = {key: st[key] for key in ("samples", "last_seq", "seq_gaps", "seq_lost", "topic_resets",
                                             "relearned")}
            assert st["topic_resets"] == 1 and st["relearned"] == 0, (k, produced[k], seen)
            assert st["seq_gaps"] == 1 + len(holes[k]), (k, produced[k], seen, holes[k])
            assert st["seq_lost"] == lost > 0, (st["seq_lost"], lost)
            assert st["deadletters"] == 0
            label = {"node": str(k)}
            assert reg.get_sample_value("streamlearn_node_lost_samples_total", label) == lost
            assert reg.get_sample_value("streamlearn_node_topic_resets_total", label) == 1
        # sync.up was made anew too: read again once, never in a loop (0 when, on a loaded machine, the nodes'
        # joins and reports refilled it past the service's position before it fetched again)
        assert sync.status()["topic_resets"] <= 1

    finally:
        producer.stop()
        for s in nodes:
            s.stop()
        sync.stop()
        for t in threads:
            t.join(timeout=20)
        broker.stop()


class _FakeConsumer:
    """What TopicWatch reads of a kafka-python consumer: the topic id in its metadata, the high-water mark of
    its last fetch, its position and (asked) the broker's end offset."""

    def __init__(self, topic_id, hw, position, end=None):
        import types

        self.ids, self.hw, self.pos, self.end, self.updates = {"t": topic_id}, hw, position, end, 0
        cluster = types.SimpleNamespace(topic_id=lambda name: self.ids.get(name), request_update=self._update)
        self._client = types.SimpleNamespace(cluster=cluster)

    def _update(self):
        self.updates += 1

    def highwater(self, tp):
        return self.hw

    def position(self, tp, timeout_ms=None):
        return self.pos

    def end_offsets(self, tps, timeout_ms=None):
        return {tp: self.end for tp in tps}

    def topics(self):  # the metadata refreshed: the ids are the current ones already here
        self.updates += 1
        return set(self.ids)


def test_a_high_water_mark_that_lags_what_was_read_is_no_loss():
    import uuid

    from streamlearn.kafka.node import TopicWatch

    tp = TopicPartition("t", 0)
    # Tansu: a fetch's mark below records it already served; asked, the broker's end offset holds them
    c = _FakeConsumer(uuid.uuid4(), hw=18_421, position=18_516, end=18_600)
    watch = TopicWatch(c, tp)
    assert not any(watch.lost() for _ in range(50))  # never a reset, however often the mark lags
    assert watch.lagged >= 1 and c.updates == 0
    watch.next_ask = 0.0
    c.end = 18_421  # the end offset lags too, but the topic is the same one (its id, refreshed)
    assert not watch.lost() and c.updates == 1
    watch.next_ask = 0.0
    c.hw, c.end = 18_600, 18_600
    c.ids["t"] = uuid.uuid4()  # a new id alone, the broker holding what was read: no reading again
    assert not watch.lost()


def test_an_end_offset_below_the_position_in_a_new_topic_is_a_loss_counted_once():
    import uuid

    from streamlearn.kafka.node import TopicWatch

    tp = TopicPartition("t", 0)
    c = _FakeConsumer(uuid.uuid4(), hw=18_516, position=18_516, end=18_516)
    watch = TopicWatch(c, tp)
    assert not watch.lost()
    c.hw = c.end = 40  # the restarted broker: a new topic, with a new id
    c.ids["t"] = uuid.uuid4()
    assert watch.lost()
    c.pos = 40  # read again from its start
    assert not any(watch.lost() for _ in range(10))
    c.ids["t"], c.pos, c.hw = uuid.uuid4(), 0, 0
    assert not watch.lost()  # nothing read: nothing to read again
    for end, lost in ((125, False), (10, True)):  # a broker without topic ids: its end offset decides
        assert TopicWatch(_FakeConsumer(None, hw=10, position=120, end=end), tp).lost() is lost


def test_a_client_is_back_within_its_records_delivery_timeout_after_a_long_outage(tmp_path):
    """kafka-python doubles its reconnect backoff up to 30 s: after a 15 s outage it would try again only
    seconds after the broker is back, and records sent meanwhile would fail their 6 s delivery timeout.
    Capped at 1 s (RECONNECT_BACKOFF_MAX_MS), no record sent after the restart times out, and they are delivered
    again: one at a time until one is (a just-restarted Tansu may first answer a batch with UnknownError; a burst
    of records sent at once shares one batch and so one answer)."""
    from kafka import KafkaProducer
    from kafka.errors import KafkaError, KafkaTimeoutError

    broker = EmbeddedBroker(port=free_port(), storage="memory://tansu/", log_path=str(tmp_path / "tansu.log")).start()
    settings = KafkaSettings(bootstrap_servers=broker.bootstrap)
    topic = samples_topic("rb.sl", 0)
    ensure_topics(broker.bootstrap, "rb.sl", [0], settings=settings)
    producer = KafkaProducer(**settings.producer_kwargs(linger_ms=5, delivery_timeout_ms=int(DELIVERY_TIMEOUT * 1000),
                                                        request_timeout_ms=5000))
    try:
        producer.send(topic, b"before", partition=0).get(30)
        broker.kill()
        failed = []
        outage_end = time.monotonic() + 15.0  # the scenario: an outage of 15 s with records waiting throughout
        while time.monotonic() < outage_end:
            producer.send(topic, b"during", partition=0).add_errback(failed.append)
            time.sleep(0.5)
        broker.start()
        ensure_topics(broker.bootstrap, "rb.sl", [0], settings=settings)
        outcomes: list[str] = []
        deadline = time.monotonic() + 30.0
        while outcomes[-1:] != ["delivered"] and time.monotonic() < deadline:
            try:
                producer.send(topic, b"after %d" % len(outcomes), partition=0).get(30)
                outcomes.append("delivered")
            except KafkaTimeoutError:  # waited past its delivery timeout: the producer was not back in time
                outcomes.append("timed out")
            except KafkaError as exc:  # the broker answered, with an error (a just-restarted Tansu may): back
                outcomes.append(type(exc).__name__)
                time.sleep(0.2)
        assert "timed out" not in outcomes and outcomes[-1] == "delivered", outcomes
        assert failed  # the outage was one: records sent into it failed
    finally:
        producer.close(timeout=5)
        broker.stop()
