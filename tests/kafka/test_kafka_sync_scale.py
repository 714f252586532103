"""Issue 18 against the real Tansu broker: a full sync to more nodes than one record may name goes out as
chunked records that every node can read, and a node skips a sync.down record addressed to others on its
header, without decoding or checking its model."""

from __future__ import annotations

import numpy as np
import pytest
from kafka import KafkaProducer

from streamlearn.errors import ConfigError
from streamlearn.kafka.status import decode_status
from streamlearn.kafka.sync_service import STATUS_LIST_LIMIT, SyncConfig
from streamlearn.kafka.topics import status_topic, sync_down_topic, sync_up_topic
from streamlearn.kafka.wire import (
    MAX_TARGETS,
    SyncMessage,
    decode_sync,
    encode_sync,
    encode_sync_many,
)

from sync_wire_helpers import FakeNodes, read_all
from test_kafka_pipeline import Pipeline
from waiting import wait_until

SPEC = "periodic:b=1"


def published(settings, prefix) -> list:
    """The sync service's statuses on the status topic, oldest first."""
    return [decode_status(r.value) for r in read_all(settings, status_topic(prefix)) if r.key == b"sync"]


def test_a_full_sync_to_more_than_max_targets_nodes_reaches_every_node_in_chunks(broker, settings, prefix):
    m = MAX_TARGETS + 50
    f = FakeNodes(broker, settings, prefix, SyncConfig(
        protocol="periodic", params={"b": 1}, max_nodes=m, timeout=60.0, device="cpu", status_interval=0.5,
        max_reports_per_second=None, clip=None, bootstrap=broker.bootstrap, prefix=prefix, settings=settings))
    try:
        up = sync_up_topic(prefix)
        # Many messages, one flush: the nodes' joins, then (once all are in) one model each.
        for node in range(m):
            f.producer.send(up, encode_sync(SyncMessage("join", node=node, d=2, layout="L", spec=SPEC,
                                                        model=np.zeros(2, np.float32))), partition=0)
        f.producer.flush()
        wait_until(lambda: f.service.status().get("nodes_alive") == m, f"{m} joins", timeout=120)
        for node in range(m):
            model = np.array([float(node % 2), 1.0], np.float32)
            f.producer.send(up, encode_sync(SyncMessage("report", node=node, step=1, n_samples=10, model=model)),
                            partition=0)
        f.producer.flush()
        full = [f.expect(lambda msg: msg.kind == "send" and msg.reason == "sync", "a chunk of the full sync",
                         timeout=120) for _ in range(2)]
        assert sorted(len(msg.targets) for msg in full) == [50, MAX_TARGETS]
        assert sorted(t for msg in full for t in msg.targets) == list(range(m))  # every node, once
        mean = [((m // 2) / m), 1.0]
        for msg in full:
            assert msg.reference and np.allclose(msg.model, mean)
        # every record went out: the hello, the join answers, the two chunks of the full sync. The joins of one
        # poll are answered by one record naming them all: every node once, in far fewer records than nodes.
        wait_until(lambda: f.service.status().get("full_syncs") == 1, "the status after the sync")
        st = f.service.status()
        joins = [msg for msg in (decode_sync(r.value) for r in read_all(settings, sync_down_topic(prefix)))
                 if msg.kind == "send" and msg.reason == "join"]
        assert sorted(t for msg in joins for t in msg.targets) == list(range(m))
        assert all(msg.reference and np.array_equal(msg.model, np.zeros(2, np.float32)) for msg in joins)
        print(f"{m} joins answered in {len(joins)} records")
        assert len(joins) <= m // 100, len(joins)
        assert st["messages_down"] == 1 + len(joins) + 2 and st["send_errors"] == 0
        # its status too (the per-node lists shortened when they would not fit one record; the counts whole)
        wait_until(lambda: any(s.get("full_syncs") == 1 for s in published(settings, prefix)), "a published status")
        last = published(settings, prefix)[-1]
        assert last["nodes_alive"] == m
        assert len(last["alive"]) == (STATUS_LIST_LIMIT if last.get("lists_truncated") else m)
    finally:
        f.close()


def test_a_node_skips_records_addressed_to_others_without_decoding_them(broker, settings, prefix):
    with Pipeline(broker, settings, prefix, spec=SPEC) as p:
        p.start_sync()
        p.start_node(0)
        p.wait(lambda r: r.nodes.get(0, {}).get("joined"), what="node 0 joined")
        st = p.status.nodes[0]
        skipped, bad = st["sync_skipped"], st["bad_sync_records"]
        producer = KafkaProducer(**settings.producer_kwargs())
        try:
            down = sync_down_topic(prefix)
            wrong = np.zeros(7, np.float32)  # not the node's model length: decoding it would be a bad record
            others = SyncMessage("send", targets=(3, 5), epoch="5f0c2a9e13d4", reference=True, reason="sync",
                                 model=wrong)
            # a full sync to 9,000 nodes in 3 records; node 0 is named in the first only
            big = encode_sync_many(SyncMessage("send", targets=tuple(range(1, 9001)), epoch="5f0c2a9e13d4",
                                               reference=True, reason="sync", model=wrong))
            assert len(big) == 3
            for data in [encode_sync(others), *big]:
                producer.send(down, data, partition=0)
            # then one for node 0, just as wrong: this one is decoded, and counted as bad
            producer.send(down, encode_sync(SyncMessage("send", targets=(0, 3), epoch="5f0c2a9e13d4",
                                                        reference=True, reason="sync", model=wrong)), partition=0)
            producer.flush()
        finally:
            producer.close()
        p.wait(lambda r: r.nodes[0].get("bad_sync_records") == bad + 1, what="the record for node 0 decoded")
        st = p.status.nodes[0]
        assert st["sync_skipped"] == skipped + 4  # the other nodes' records, never decoded
        assert st["bad_sync_records"] == bad + 1
    # and each of the big sync's records decodes in full for the nodes it names
    records = [decode_sync(r.value) for r in read_all(settings, sync_down_topic(prefix))
               if r.value in big]
    assert sorted(t for msg in records for t in msg.targets) == list(range(1, 9001))


@pytest.mark.parametrize("kw, message", [
    ({"max_nodes": (1 << 31) + 1}, "max_nodes must be at most 2147483648"),
    ({"max_params": 20_000_000}, "max_params must be at most 18612224"),
])
def test_caps_that_remain_are_config_errors_at_start(kw, message):
    with pytest.raises(ConfigError, match=message):
        SyncConfig(protocol=SPEC, **kw)
