"""Compressed transfer in the Kafka pipeline: what the simulator measures (codec, server step) the services do.

Against the real Tansu broker of conftest.py:

- three nodes on SEA with ``periodic:b=1,codec=sign`` and ``dynamic:delta=0.1,codec=int8,server_lr=2``
  learn, sync, end on a full sync with equal models, and every model record on the wire is the
  protocol's ``message_bytes`` plus the sync envelope;
- hand-played nodes (the pattern of test_kafka_hostile.py) send hostile and stale deltas: refused,
  counted by reason, dead-lettered, and the sync goes on without them; a node whose codec differs
  is rejected at its join;
- a real node that receives a delta to a reference it does not hold registers again.

Without a broker: the codec and server step state a restarted sync service resumes
(``protocol_state``), and fuzzing of ``unpack_delta``, ``decode_sync`` and ``_model_fault``.
"""

from __future__ import annotations

import struct
import threading
import time
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given, settings as hsettings
from hypothesis import strategies as st
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streamlearn.errors import BadRecordError
from streamlearn.kafka.checkpoint import CheckpointError, protocol_state, restore_protocol_state
from streamlearn.kafka.codecs import DecodeError, EncodeError, encode_model, encode_sample_batch
from streamlearn.kafka.node import NodeConfig, NodeService
from streamlearn.kafka.status import model_hash
from streamlearn.kafka.sync_service import SyncConfig, SyncService, _model_fault
from streamlearn.kafka.topics import (deadletter_topic, ensure_topics, samples_topic, sync_down_topic,
                                      sync_up_topic)
from streamlearn.kafka.wire import (FLAG_DELTA, SYNC_MAGIC, SyncMessage, decode_sync, encode_sync,
                                    envelope_bytes)
from streamlearn.metrics import REJECT_REASONS
from streamlearn.streams import make_source
from streamlearn.sync.codec import (HEADER_BYTES, compress_rows, make_codec, message_bytes, pack_delta,
                                    reference_tag, unpack_delta)
from streamlearn.sync.spec import make_protocol

from sync_wire_helpers import FakeNodes, nodes_fixture
from test_kafka_pipeline import Pipeline as BasePipeline, publish
from waiting import wait_until

_HEAD = struct.Struct("<4sHHI")
_DELTA_HEAD = struct.Struct("<2sBBIIII")


def delta(codec, w, r, n_params, memory=None) -> bytes:
    """The compressed message of model ``w`` against reference ``r`` (as a node sends it)."""
    codec = make_codec(codec)
    w, r = torch.as_tensor(w, dtype=torch.float32), torch.as_tensor(r, dtype=torch.float32)
    _, parts, _ = compress_rows(codec, w[None], r[None], memory, n_params)
    return pack_delta(codec, parts, tail=w[n_params:], reference=r, n_params=n_params)


def reconstruct(data: bytes, r) -> np.ndarray:
    """The model a delta stands for against reference ``r`` (as a node or the service decodes it)."""
    r = torch.as_tensor(r, dtype=torch.float32)
    codec, parts, tail, n, _ = unpack_delta(data, reference=r)
    w = r.clone()
    w[:n] += codec.dequantize(parts, n)[0]
    w[n:] = tail
    return w.numpy()


def with_crc(data: bytes) -> bytes:
    """A compressed message whose CRC32 is made to fit its (altered) body again."""
    head = list(_DELTA_HEAD.unpack_from(data, 0))
    head[-1] = zlib.crc32(data[HEADER_BYTES:])
    return _DELTA_HEAD.pack(*head) + data[HEADER_BYTES:]


def with_header(data: bytes, **fields) -> bytes:
    names = ("magic", "version", "code", "n", "t", "tag", "crc")
    head = dict(zip(names, _DELTA_HEAD.unpack_from(data, 0)))
    head.update(fields)
    return with_crc(_DELTA_HEAD.pack(*(head[k] for k in names)) + data[HEADER_BYTES:])


def envelope_of(record: bytes) -> int:
    """Bytes of a sync record before its model part, either envelope version (v1: 12 bytes plus the JSON
    header; v2: the binary header of report, model and send)."""
    return envelope_bytes(record)


def read_topic(settings, topic: str) -> list:
    """Every record of partition 0 of ``topic`` written so far."""
    consumer = KafkaConsumer(**settings.consumer_kwargs(fetch_max_wait_ms=20))
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        end = consumer.end_offsets([tp])[tp]
        consumer.seek_to_beginning(tp)
        records: list = []
        deadline = time.monotonic() + 20
        while consumer.position(tp) < end and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        # Tansu's end offset may lag the records it serves (a fetch can return records past it): keep those before it
        records = [r for r in records if r.offset < end]
        assert len(records) == end, (len(records), end)
        return records
    finally:
        consumer.close()


# ---------------------------------------------------------------------------- the pipeline on SEA

SEA = make_source("sea", seed=0)
FEATURES, CLASSES = list(SEA.feature_names), list(SEA.classes)
LEARNER = {"lr": 0.5, "scale": True}  # logreg on SEA: 8 parameters, then 7 scaler statistics (d = 15)
N, BATCH = 1500, 10


class Pipeline(BasePipeline):
    """The sync service and nodes of test_kafka_pipeline.py on SEA's layout: 3 slots, logreg with a scaler."""

    def __init__(self, broker, settings, prefix, spec):
        super().__init__(broker, settings, prefix, spec, timeout=3.0)

    def start_sync(self) -> SyncService:
        return self._start(SyncService(SyncConfig(
            protocol=self.spec, max_nodes=3, timeout=self.timeout, device="cpu", status_interval=0.2,
            bootstrap=self.broker.bootstrap, prefix=self.prefix, settings=self.settings)))

    def start_node(self, node: int) -> NodeService:
        return self._start(NodeService(NodeConfig(
            node=node, features=FEATURES, classes=CLASSES, learner="logreg", learner_params=LEARNER,
            protocol=self.spec, batch_size=BATCH, device="cpu", status_interval=0.2, commit_interval=0.3,
            detector=None, bootstrap=self.broker.bootstrap, prefix=self.prefix, settings=self.settings)))

    def wait(self, condition, what: str, timeout: float = 60.0) -> None:
        super().wait(condition, timeout=timeout, what=what)

    def publish(self, streams: dict, seconds: float | None = None) -> None:
        publish(self.settings, self.prefix, streams, seconds=seconds)


def sea_records(node: int, n: int, first_seq: int = 0, flip: bool = False) -> list:
    X, y = make_source("sea", seed=10 + node).to_arrays(first_seq + n)
    X, y = X[first_seq:], y[first_seq:].astype(np.int64)
    if flip:  # a burst labelled against the concept: a large step at every node
        y = 1 - y
    return [encode_sample_batch(X[i:i + BATCH], y[i:i + BATCH], first_seq=first_seq + i, names=FEATURES)
            for i in range(0, n, BATCH)]


def run_sea(broker, settings, prefix, spec) -> dict:
    """Three nodes learn N SEA samples each under ``spec``, then one burst mini-batch each (a last full sync
    every node applies after its last step). Returns statuses, and the sync topics' records."""
    with Pipeline(broker, settings, prefix, spec) as p:
        sync = p.start_sync()
        nodes = [p.start_node(node) for node in range(3)]
        p.wait(lambda r: r.sync and r.sync.get("nodes_alive") == 3, "3 joins")
        settled = lambda r: not any(s["awaiting_sync"] for s in r.nodes.values()) and not r.sync["pending"]  # noqa
        p.publish({node: sea_records(node, N) for node in range(3)}, seconds=4.0)
        p.wait(lambda r: all(r.nodes[n]["samples"] == N for n in range(3)) and settled(r), "the stream learned")
        p.status.poll(0.5)
        learned = {n: dict(s) for n, s in p.status.nodes.items()}
        p.publish({node: sea_records(node, BATCH, first_seq=N, flip=True) for node in range(3)})
        p.wait(lambda r: all(r.nodes[n]["samples"] == N + BATCH for n in range(3)) and settled(r), "the burst")
        for svc in nodes:
            p.stop(svc)
        p.wait(lambda r: r.sync["nodes_alive"] == 0, "the leaves")
        p.stop(sync)
        p.status.poll(0.5)
        final = {n: dict(s) for n, s in p.status.nodes.items()}
        return {"learned": learned, "nodes": final, "sync": sync.status(),
                "up": read_topic(settings, sync_up_topic(prefix)),
                "down": read_topic(settings, sync_down_topic(prefix))}


@pytest.mark.parametrize("spec", ["periodic:b=1,codec=sign", "dynamic:delta=0.1,codec=int8,server_lr=2",
                                  "dynamic:delta=0.1,codec=sign,extrapolate=1"])
def test_three_sea_nodes_learn_and_sync_compressed_and_the_wire_carries_what_the_protocol_counts(
        broker, settings, prefix, spec):
    got = run_sea(broker, settings, prefix, spec)
    st, nodes = got["sync"], got["nodes"]
    codec = make_codec(spec.split("codec=")[1].split(",")[0])
    d, p = 15, 8
    size = message_bytes(codec, d, p)  # sign: 20 + 1 + 4 + 28 = 53; int8: 20 + 8 + 4 + 28 = 60 (fp32: 112)
    assert size == {"sign": 53, "int8": 60}[codec.name]

    # the nodes learned (SEA without noise: no sync 0.97 in the simulator), together
    for s in got["learned"].values():
        assert s["accuracy"] > 0.85, s["accuracy"]
        assert s["reference_mismatches"] == 0 and s["bad_sync_records"] == 0 and s["send_errors"] == 0
    # periodic b=1 syncs after every round of steps whose round trip is done (a node that awaits an answer
    # learns on without sending): tens of full syncs in 150 steps; dynamic several
    assert st["full_syncs"] >= (20 if spec.startswith("periodic") else 3), st["full_syncs"]
    # (a timeout may end the stream: a round that waits on a node whose last step was in the round before)
    assert st["rejected_models"] == 0 and st["bad_records"] == 0
    assert st["deltas_up"] == st["models_up"] > 0

    # the burst ended on a full sync every node applied after its last step: equal models, the reference
    assert [s["last_sync_kind"] for s in nodes.values()] == ["full"] * 3
    for s in nodes.values():
        assert s["samples"] == N + BATCH and s["seq_gaps"] == 0
        assert s["model_hash"] == s["synced_hash"] == s["reference_hash"] == st["reference_hash"]
    assert len({s["w0_hash"] for s in nodes.values()}) == 1 and st["reference_hash"] != nodes[0]["w0_hash"]

    # bytes: the protocol counts message_bytes per model; the wire carries exactly that plus the envelope
    assert st["bytes_up"] == st["models_up"] * size
    up = [(r, decode_sync(r.value)) for r in got["up"]]
    models_up = [(r, m) for r, m in up if m.kind in ("report", "model") and m.carries_model]
    assert all(m.delta is not None and len(m.delta) == size for _, m in models_up)
    assert len(models_up) == st["models_up"]
    assert sum(len(r.value) - envelope_of(r.value) for r, _ in models_up) == st["bytes_up"]
    # the node's wire counter counts whole records: envelope + model part
    for node, s in nodes.items():
        assert s["bytes_sent"] == sum(len(r.value) for r, m in up if m.node == node)
        assert s["models_sent"] == sum(1 for _, m in up if m.node == node and m.carries_model)  # join included
    sends = [(r, m) for r, m in ((r, decode_sync(r.value)) for r in got["down"]) if m.kind == "send"]
    joins = [(r, m) for r, m in sends if m.reason == "join"]
    syncs = [(r, m) for r, m in sends if m.reason == "sync"]
    assert all(m.model is not None and len(r.value) - envelope_of(r.value) == 52 + 4 * d for r, m in joins)
    assert all(m.delta is not None and len(r.value) - envelope_of(r.value) == size for r, m in syncs)
    # a sync.down record counts once per target (every addressee reads it)
    assert st["bytes_down"] == sum(len(m.targets) * (len(r.value) - envelope_of(r.value)) for r, m in sends)
    assert st["bytes_down_wire"] == sum(len(r.value) for r in got["down"])
    envelopes = sorted(envelope_of(r.value) for r, _ in models_up)
    print(f"{spec}: model part {size} B, envelope {envelopes[0]}-{envelopes[-1]} B "
          f"(median {envelopes[len(envelopes) // 2]}), fp32 model part {52 + 4 * d} B; accuracy "
          f"{[round(s['accuracy'], 3) for s in got['learned'].values()]}, {st['full_syncs']} full syncs, "
          f"{st['models_up']} models up ({st['stale_deltas']} against the reference before), "
          f"{st['models_down']} down, bytes up/down {st['bytes_up']}/{st['bytes_down']}, "
          f"wire up/down {st['bytes_up_wire']}/{st['bytes_down_wire']}")


# ---------------------------------------------------------------------------- hand-played nodes

D, P = 6, 4  # 4 parameters, then 2 buffers
R0 = np.zeros(D, dtype=np.float32)
W_VIOLATE = np.array([4.0, 0.0, 0.0, 0.0, 1.0, 2.0], dtype=np.float32)


def int8_delta(w, r=R0, n_params=P) -> bytes:
    return delta("int8", w, r, n_params)


def _nan_scale(r) -> bytes:
    good = int8_delta(r + 0.5, r)
    body = bytearray(good[HEADER_BYTES:])
    struct.pack_into("<f", body, P, float("nan"))  # the block's scale, after the P int8 codes
    return with_crc(good[:HEADER_BYTES] + bytes(body))


def _minus_128(r) -> bytes:
    good = int8_delta(r + 0.5, r)
    body = bytearray(good[HEADER_BYTES:])
    body[0] = 0x80
    return with_crc(good[:HEADER_BYTES] + bytes(body))


def _flip(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0xFF
    return bytes(b)


# (refusal reason, the delta node 3 answers a request with, given the service's reference r)
HOSTILE_DELTAS = {
    "bad checksum": ("checksum", lambda r: _flip(int8_delta(r + 1, r), HEADER_BYTES)),
    "truncated": ("malformed", lambda r: with_crc(int8_delta(r + 1, r)[:-9])),
    "nan scale": ("nonfinite", _nan_scale),
    "code -128": ("malformed", _minus_128),
    "unknown codec": ("malformed", lambda r: with_header(int8_delta(r + 1, r), code=9)),
    "other version": ("malformed", lambda r: with_header(int8_delta(r + 1, r), version=7)),
    "huge counts": ("shape", lambda r: with_header(int8_delta(r + 1, r), n=1 << 30)),
    "params split otherwise": ("shape", lambda r: delta("int8", r + 1, r, n_params=5)),
    "another reference": ("reference", lambda r: int8_delta(r + 1, r + 1)),
    "absurd norm": ("norm", lambda r: int8_delta(r + 1e7, r)),
    "bad magic": ("malformed", lambda r: with_header(int8_delta(r + 1, r), magic=b"ZZ")),
}


def raw_delta(msg: SyncMessage, data: bytes) -> bytes:
    """``msg``'s envelope carrying ``data`` as its delta, unchecked (encode_sync would refuse a bad magic)."""
    good = encode_sync(SyncMessage(**{**msg.__dict__, "delta": int8_delta(R0)}))
    return good[:envelope_bytes(good)] + data


class Nodes(FakeNodes):
    """Four hand-played nodes and a sync service with ``dynamic:delta=1,codec=int8`` (d = 6, 4 parameters)."""

    def __init__(self, broker, settings, prefix, spec="dynamic:delta=1.0,b=1,codec=int8", **kw):
        kw = {"max_nodes": 4, "timeout": 60.0, "device": "cpu", "status_interval": 0.1, **kw}
        super().__init__(broker, settings, prefix, SyncConfig(protocol=spec, bootstrap=broker.bootstrap,
                                                              prefix=prefix, settings=settings, **kw))
        self.spec = spec

    def join_all(self) -> None:
        for node in range(4):
            self.send(SyncMessage("join", node=node, d=D, n_params=P, layout="L", spec=self.spec, model=R0))
            reply = self.expect(lambda m, node=node: m.kind == "send" and m.targets == (node,))
            assert reply.reason == "join" and reply.model is not None and reply.delta is None  # the reference whole


nodes = nodes_fixture(Nodes)


def test_hostile_and_stale_deltas_are_refused_counted_and_the_sync_goes_on_without_them(nodes, settings, prefix):
    f = nodes()
    f.join_all()
    r = R0.copy()
    raws = []
    for step, (name, (reason, bad)) in enumerate(HOSTILE_DELTAS.items(), start=1):
        # node 0 violates (||w - r||^2 = 16 > 1): nodes 1-3 are asked, node 3 answers with a hostile delta
        f.send(SyncMessage("report", node=0, step=step, n_samples=10, delta=int8_delta(r + W_VIOLATE, r)))
        request = f.expect(lambda m: m.kind == "request")
        assert request.targets == (1, 2, 3), name
        for node in (1, 2):
            f.send(SyncMessage("model", node=node, step=step, request=request.request, delta=int8_delta(r, r)))
        raws.append(raw_delta(SyncMessage("model", node=3, step=step, request=request.request), bad(r)))
        f.send(raw=raws[-1])
        # at once (the timeout is 60 s away), without node 3, to every node, as a delta to the reference
        full = f.expect(lambda m: m.kind == "send" and m.reason == "sync")
        assert full.reference and full.targets == (0, 1, 2, 3) and full.delta is not None, name
        assert unpack_delta(full.delta, reference=torch.from_numpy(r))[4] == reference_tag(torch.from_numpy(r), P)
        new = reconstruct(full.delta, r)
        # the mean of nodes 0-2 only, within int8's step (one scale per 256 entries: max |x| / 127)
        np.testing.assert_allclose(new, r + W_VIOLATE / 3, atol=4 / 3 / 127 * 1.01, err_msg=name)
        r = new
        wait_until(lambda: f.service.status().get("rejected_models") == step, f"the refusal of {name!r}")
        assert f.service.status()["timeouts"] == step, name
    st = f.service.status()
    assert st["bad_records"] == 0 and st["nodes_alive"] == 4 and st["pending"] == []
    assert set(st["rejected_models_by_reason"]) == set(REJECT_REASONS)
    expected = {k: sum(1 for reason, _ in HOSTILE_DELTAS.values() if reason == k) for k in REJECT_REASONS}
    assert st["rejected_models_by_reason"] == expected
    assert st["models_up"] == 3 * len(HOSTILE_DELTAS) and st["deltas_up"] == st["models_up"]
    dead = wait_until(lambda: (lambda recs: recs if len(recs) == len(raws) else None)(
        read_topic(settings, deadletter_topic(prefix))), "the dead letters")
    assert [x.value for x in dead] == raws
    assert all(b"model refused" in dict(x.headers)["sl-error"] for x in dead)

    # a report sent just before its node applied the last full sync: decoded against the reference before
    prev, step = r, len(HOSTILE_DELTAS) + 1
    f.send(SyncMessage("report", node=0, step=step, delta=int8_delta(prev + W_VIOLATE, prev)))
    request = f.expect(lambda m: m.kind == "request")
    for node in request.targets:
        f.send(SyncMessage("model", node=node, step=step, request=request.request, delta=int8_delta(prev, prev)))
    full = f.expect(lambda m: m.kind == "send" and m.reason == "sync")
    r = reconstruct(full.delta, prev)
    # node 2 violates against the reference before this last one (it had not applied it yet)
    f.send(SyncMessage("report", node=2, step=step + 1, delta=int8_delta(prev - W_VIOLATE, prev)))
    request = f.expect(lambda m: m.kind == "request")
    assert request.targets == (0, 1, 3)
    wait_until(lambda: f.service.status()["stale_deltas"] == 1, "the stale delta counted")
    assert f.service.status()["rejected_models"] == len(HOSTILE_DELTAS)


def test_a_delta_on_a_join_or_garbage_after_the_delta_flag_is_refused_as_malformed(nodes):
    f = nodes()
    f.join_all()
    # a join must carry its reference whole: a delta there is refused, and the node told why
    data = encode_sync(SyncMessage("join", node=3, d=D, n_params=P, layout="L", model=R0))
    hlen = _HEAD.unpack_from(data, 0)[3]
    f.send(raw=_HEAD.pack(SYNC_MAGIC, 1, FLAG_DELTA, hlen) + data[_HEAD.size:_HEAD.size + hlen] + int8_delta(R0))
    reject = f.expect(lambda m: m.kind == "reject" and m.targets == (3,))
    assert "malformed" in reject.reason
    # a violation whose delta is no delta at all: refused, nothing requested
    f.send(raw=raw_delta(SyncMessage("report", node=1, step=1), b"not a delta"))
    wait_until(lambda: f.service.status()["rejected_models"] == 2, "the refusals")
    st = f.service.status()
    assert st["rejected_models_by_reason"]["malformed"] == 2 and st["violations"] == 0 and st["bad_records"] == 0
    assert not any(m is not None and m.kind == "request" for m in f.down)


def test_a_node_with_another_codec_is_rejected_at_its_join_other_server_steps_are_fine(nodes):
    f = nodes(spec="periodic:b=2,codec=sign,server_lr=2")
    f.send(SyncMessage("join", node=0, d=D, n_params=P, layout="L", spec="periodic:b=2,codec=int8", model=R0))
    reject = f.expect(lambda m: m.kind == "reject" and m.targets == (0,))
    assert "codec=int8" in reject.reason and "codec=sign" in reject.reason and "same codec" in reject.reason
    f.send(SyncMessage("join", node=1, d=D, n_params=P, layout="L", spec="periodic:b=2", model=R0))
    assert "codec=fp32" in f.expect(lambda m: m.kind == "reject" and m.targets == (1,)).reason
    # the server step is the service's alone: a node spec without it (or with another) joins
    f.send(SyncMessage("join", node=2, d=D, n_params=P, layout="L", spec="periodic:b=2,codec=sign", model=R0))
    assert f.expect(lambda m: m.kind == "send" and m.targets == (2,)).reason == "join"
    wait_until(lambda: f.service.status().get("nodes_alive") == 1, "one node alive")
    assert f.service.status()["rejects"] == 2


def test_a_node_that_gets_a_delta_to_another_reference_registers_again_and_takes_the_reference_whole(
        broker, settings, prefix):
    """The test plays the sync service for one real node service."""
    spec = "periodic:b=1000000,codec=sign"  # the node never sends a model of its own here
    ensure_topics(broker.bootstrap, prefix, [0], settings=settings)
    producer = KafkaProducer(**settings.producer_kwargs())
    up = KafkaConsumer(**settings.consumer_kwargs(fetch_max_wait_ms=20))
    tp = TopicPartition(sync_up_topic(prefix), 0)
    up.assign([tp])
    up.seek_to_beginning(tp)
    svc = NodeService(NodeConfig(node=0, features=FEATURES, classes=CLASSES, learner="logreg", learner_params=LEARNER,
                                 protocol=spec, device="cpu", status_interval=0.1, detector=None,
                                 bootstrap=broker.bootstrap, prefix=prefix, settings=settings))
    thread = threading.Thread(target=svc.run, daemon=True)
    thread.start()
    seen: list = []

    def next_up(kind):
        def got():
            for batch in up.poll(timeout_ms=100).values():
                seen.extend(decode_sync(r.value) for r in batch)
            for i, m in enumerate(seen):
                if m is not None and m.kind == kind:
                    seen[i] = None
                    return m
        return wait_until(got, f"a {kind} on sync.up")

    def down(msg):
        producer.send(sync_down_topic(prefix), encode_sync(msg), partition=0)
        producer.flush()

    try:
        join = next_up("join")
        w0 = torch.from_numpy(np.array(join.model))
        assert join.spec == spec and join.n_params == 8 and join.d == 15
        down(SyncMessage("send", targets=(0,), epoch="e1", reference=True, reason="join", model=w0))
        wait_until(lambda: svc.status().get("joined"), "the join reply applied")
        # a full sync against a reference the node holds: applied as model and reference
        r1 = w0.clone()
        r1[:8] += 0.25
        down(SyncMessage("send", targets=(0,), epoch="e1", reference=True, reason="sync",
                         delta=delta("sign", r1, w0, 8)))
        want1 = reconstruct(delta("sign", r1, w0, 8), w0)
        wait_until(lambda: svc.status().get("reference_hash") == model_hash(want1), "the delta applied")
        assert svc.status()["model_hash"] == model_hash(want1) and svc.status()["last_sync_kind"] == "full"
        # one against a reference it never got (it missed a full sync): not applied; it registers again
        other = torch.full((15,), 3.0)
        down(SyncMessage("send", targets=(0,), epoch="e1", reference=True, reason="sync",
                         delta=delta("sign", other + 1, other, 8)))
        again = next_up("join")
        assert np.array_equal(again.model, want1)  # with the reference it holds
        wait_until(lambda: svc.status()["reference_mismatches"] == 1, "the mismatch counted")
        assert svc.status()["reference_hash"] == model_hash(want1)
        # a damaged delta is a bad record, nothing else
        bad = bytearray(delta("sign", r1, torch.from_numpy(want1), 8))
        bad[-1] ^= 1
        down(SyncMessage("send", targets=(0,), epoch="e1", reason="sync", delta=bytes(bad)))
        wait_until(lambda: svc.status()["bad_sync_records"] == 1, "the bad delta counted")
        # the sync service answers the join with its reference whole: taken as model and reference
        down(SyncMessage("send", targets=(0,), epoch="e1", reference=True, reason="join", model=other))
        wait_until(lambda: svc.status().get("reference_hash") == model_hash(other), "the reference taken whole")
        assert svc.status()["model_hash"] == model_hash(other) and svc.status()["reference_mismatches"] == 1
    finally:
        svc.stop()
        thread.join(timeout=20)
        producer.close()
        up.close()
    assert not thread.is_alive()


def test_a_node_sends_its_model_as_a_delta_with_error_feedback(broker, settings, prefix):
    """The uplink of a real node: each model message is the sign delta of w + memory - r, and what it did not
    carry stays in the memory (sent + kept = delta), reset when the node registers again."""
    spec = "periodic:b=1000000,codec=sign"
    ensure_topics(broker.bootstrap, prefix, [0], settings=settings)
    svc = NodeService(NodeConfig(node=0, features=FEATURES, classes=CLASSES, learner="logreg", learner_params=LEARNER,
                                 protocol=spec, device="cpu", status_interval=0.1, detector=None,
                                 bootstrap=broker.bootstrap, prefix=prefix, settings=settings))
    producer = KafkaProducer(**settings.producer_kwargs())
    up = KafkaConsumer(**settings.consumer_kwargs(fetch_max_wait_ms=20))
    tp = TopicPartition(sync_up_topic(prefix), 0)
    up.assign([tp])
    up.seek_to_beginning(tp)
    thread = threading.Thread(target=svc.run, daemon=True)
    thread.start()
    got: list = []

    def models(k):
        def enough():
            for batch in up.poll(timeout_ms=100).values():
                got.extend(m for m in (decode_sync(r.value) for r in batch) if m.kind == "model")
            return len(got) >= k
        wait_until(enough, f"{k} model answers")
        return got[:k]

    try:
        wait_until(lambda: svc.status().get("state") == "running", "the node running")
        for record in sea_records(0, 40):
            producer.send(samples_topic(prefix, 0), record, partition=0)
        producer.flush()
        wait_until(lambda: svc.status().get("samples") == 40, "40 samples learned")
        r = svc._r.clone()
        w = svc.learner_.get_flat().float()
        for k in (1, 2):
            producer.send(sync_down_topic(prefix), encode_sync(SyncMessage("request", targets=(0,), epoch="e",
                                                                           request=k)), partition=0)
            producer.flush()
            [*_, answer] = models(k)
            assert answer.delta is not None and len(answer.delta) == message_bytes(make_codec("sign"), 15, 8)
        first, second = got
        E = torch.zeros(1, 8)
        for msg in (first, second):  # what the node sends, step by step, as the simulator's Uplink computes it
            _, parts, E = compress_rows(make_codec("sign"), w[None], r[None], E, 8)
            assert msg.delta == pack_delta(make_codec("sign"), parts, w[8:], r, 8)
        assert torch.equal(svc._uplink.memory, E)  # error feedback kept across sends
        assert first.delta != second.delta  # the same model, sent twice: the memory changed the second
        svc._join()  # registering again starts the memory clean
        assert not svc._uplink.memory.any()
    finally:
        svc.stop()
        thread.join(timeout=20)
        producer.close()
        up.close()


# ---------------------------------------------------------------------------- restart: kept state

@pytest.mark.parametrize("spec", ["periodic:b=1,codec=int8,server_lr=2,server_momentum=0.9",
                                  "dynamic:delta=0.5,codec=sign,server_momentum=0.5"])
def test_a_restarted_sync_service_goes_on_with_the_same_momentum_and_downlink_memory(spec, tmp_path):
    """protocol_state keeps get_arrays(): a protocol restored from it sends exactly what the one that went on
    sends (the same server momentum and error-feedback memory), a fresh one does not."""
    from streamlearn.kafka.checkpoint import CheckpointStore
    from streamlearn.sync.driver import lockstep
    from streamlearn.sync.codec import Uplink

    m, d, p = 3, 10, 8
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(d, generator=gen)

    def make():
        return make_protocol(spec, m=m, d=d, w0=w0, seed=0, device="cpu", n_params=p)

    proto = make()
    W, R = w0.repeat(m, 1), w0.repeat(m, 1)
    up = Uplink(proto.codec, m, d, p)
    for step in range(1, 6):
        W += 0.3 * torch.randn(m, d, generator=gen)
        lockstep(proto, step, W, R, uplink=up)
    assert proto.stats.full_syncs >= 1
    arrays, meta = protocol_state(proto)
    assert "protocol.downlink_memory" in arrays and "protocol.server_velocity" in arrays
    store = CheckpointStore(str(tmp_path), "sync")  # through the disk, as --state-dir keeps it
    store.save(arrays, {"protocol": meta})
    kept = store.latest()
    restored, fresh = make(), make()
    restore_protocol_state(restored, kept.arrays, kept.meta["protocol"])
    restore_protocol_state(fresh, {k: v for k, v in kept.arrays.items() if not k.startswith("protocol.")},
                           {**kept.meta["protocol"], "arrays": []})
    for name, t in proto.get_arrays().items():
        assert torch.equal(restored.get_arrays()[name], t), name
    W2 = W + 0.3 * torch.randn(m, d, generator=gen)
    outs = {}
    for name, q in (("on", proto), ("restored", restored), ("fresh", fresh)):
        Wq, Rq = W2.clone(), R.clone()
        lockstep(q, 6, Wq, Rq, uplink=None)
        outs[name] = Wq
    assert torch.equal(outs["restored"], outs["on"])
    assert not torch.equal(outs["fresh"], outs["on"])
    # a state that says it kept arrays it does not hold is refused, not half loaded
    with pytest.raises(CheckpointError, match="lacks"):
        restore_protocol_state(make(), {k: v for k, v in kept.arrays.items() if k != "protocol.downlink_memory"},
                               kept.meta["protocol"])


# ---------------------------------------------------------------------------- fuzz

_CODECS = ["fp16", "int8", "sign", "top10", "top100"]


@hsettings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_bad_record_error(data):
    for blob in (data, b"SZ" + data, b"SZ\x01" + data):
        for ref in (None, torch.zeros(6)):
            try:
                unpack_delta(blob, reference=ref, expected_d=None if ref is None else 6)
            except BadRecordError:
                pass


@hsettings(max_examples=300, deadline=None)
@given(st.sampled_from(_CODECS), st.integers(1, 40), st.integers(0, 5), st.integers(0, 2 ** 31),
       st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 7)), max_size=4), st.integers(0, 400),
       st.booleans())
def test_valid_deltas_flipped_or_truncated_only_raise_bad_record_error(codec, n, t, seed, flips, cut, fix_crc):
    gen = torch.Generator().manual_seed(seed)
    w, r = torch.randn(n + t, generator=gen), torch.randn(n + t, generator=gen)
    data = bytearray(delta(codec, w, r, n))
    unpack_delta(bytes(data), reference=r, expected_d=n + t)  # the valid one decodes
    for at, bit in flips:
        data[at % len(data)] ^= 1 << bit
    data = bytes(data[:len(data) - cut % (len(data) + 1)]) if cut % 3 else bytes(data)
    if fix_crc and len(data) >= HEADER_BYTES:  # past the checksum: the decoder's own checks must hold
        data = with_crc(data)
    try:
        unpack_delta(data, reference=r, expected_d=n + t)
    except BadRecordError:
        pass
    try:
        unpack_delta(data)
    except BadRecordError:
        pass


@hsettings(max_examples=300, deadline=None)
@given(st.sampled_from(["report", "model", "send", "join", "leave"]), st.sampled_from(_CODECS),
       st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 7)), max_size=3), st.integers(0, 300))
def test_sync_messages_with_a_delta_flipped_or_truncated_only_raise_decode_error(kind, codec, flips, cut):
    fields = {"report": dict(node=1, step=3), "model": dict(node=1, request=2),
              "send": dict(targets=(0, 1), epoch="e", reason="sync", reference=True),
              "join": dict(node=1, d=6, layout="L"), "leave": dict(node=1)}[kind]
    payload = delta(codec, torch.ones(6), torch.zeros(6), 4)
    if kind in ("report", "model", "send"):
        data = bytearray(encode_sync(SyncMessage(kind, delta=payload, **fields)))
        msg = decode_sync(bytes(data), expected_d=6)
        assert msg.delta == payload and msg.model is None and msg.carries_model
    else:
        with pytest.raises(EncodeError):
            encode_sync(SyncMessage(kind, delta=payload, **fields))
        head = encode_sync(SyncMessage(kind, **fields, **({"model": np.zeros(6, np.float32)} if kind == "join"
                                                           else {})))
        hlen = _HEAD.unpack_from(head, 0)[3]
        data = bytearray(_HEAD.pack(SYNC_MAGIC, 1, FLAG_DELTA, hlen) + head[_HEAD.size:_HEAD.size + hlen] + payload)
        with pytest.raises(DecodeError, match="may carry a delta"):
            decode_sync(bytes(data))
    for at, bit in flips:
        data[at % len(data)] ^= 1 << bit
    data = bytes(data[:len(data) - cut % (len(data) + 1)])
    for expected_d in (None, 6, 7):
        try:
            msg = decode_sync(data, expected_d=expected_d)
        except DecodeError:
            continue
        if msg.delta is not None:
            try:
                unpack_delta(msg.delta, reference=torch.zeros(6), expected_d=6)
            except BadRecordError:
                pass
    fault = _model_fault(data)  # the service's fallback classifies, never raises
    assert fault is None or fault[0] in REJECT_REASONS


@hsettings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 70_000), st.integers(0, 3))
def test_model_fault_never_raises(data, hlen, flags):
    for blob in (data, _HEAD.pack(SYNC_MAGIC, 1, flags, hlen) + data,
                 _HEAD.pack(SYNC_MAGIC, 1, flags, len(data)) + data + b"SZ",
                 _HEAD.pack(SYNC_MAGIC, 1, flags, 40) + b"[" * 40 + b"x" * 30,
                 _HEAD.pack(SYNC_MAGIC, 1, flags, 30_000) + b"[" * 30_000):
        fault = _model_fault(blob)
        assert fault is None or fault[0] in REJECT_REASONS


def test_encode_sync_refuses_a_delta_where_it_does_not_belong():
    payload = delta("sign", torch.ones(6), torch.zeros(6), 4)
    with pytest.raises(EncodeError, match="not both"):
        encode_sync(SyncMessage("report", node=0, step=1, model=np.zeros(6, np.float32), delta=payload))
    with pytest.raises(EncodeError, match="bad magic"):
        encode_sync(SyncMessage("report", node=0, step=1, delta=b"XX" + payload[2:]))
    with pytest.raises(EncodeError, match="may carry"):
        encode_sync(SyncMessage("pull", targets=(0,), epoch="e", strength=0.5, delta=payload))
    with pytest.raises(DecodeError, match="6 entries|7 entries") as info:
        decode_sync(encode_sync(SyncMessage("report", node=0, step=1, delta=payload)), expected_d=7)
    assert info.value.field == "shape"


def test_wire_bytes_per_model_message_on_sea(capsys):
    """The bytes of one model message on the SEA logreg (d = 15, 8 parameters) and MLP (d = 201, 194), whole
    and under each codec, as the services put them on the wire (model part; the envelope adds 12 bytes plus
    its JSON header)."""
    from streamlearn.learners import make_learner

    rows = []
    for name in ("logreg", "mlp"):
        learner = make_learner(name, features=FEATURES, classes=CLASSES, seed=0, device="cpu", scale=True)
        w = learner.get_flat().float()
        d, p = w.numel(), learner.n_params
        whole = len(encode_model(w, node=0, version=1))
        assert whole == message_bytes(make_codec("fp32"), d, p)
        for codec in ("fp16", "int8", "sign", "top10"):
            size = len(delta(codec, w + 0.1, w, p))
            assert size == message_bytes(make_codec(codec), d, p)
            rows.append((name, d, p, codec, size, whole / size))
        rows.append((name, d, p, "fp32", whole, 1.0))
    with capsys.disabled():
        for row in rows:
            print("{:6} d={:3} n_params={:3} {:5} {:4} B  x{:.2f}".format(*row))


def test_buffers_every_sends_the_scaler_statistics_with_every_fourth_model_only(broker, settings, prefix):
    spec = "periodic:b=1,codec=sign,buffers_every=4"
    got = run_sea(broker, settings, prefix, spec)
    st = got["sync"]
    codec, d, p = make_codec("sign"), 15, 8
    whole, lean = message_bytes(codec, d, p), message_bytes(codec, d, p, buffers=False)
    assert (whole, lean) == (53, 25)  # the 7 scaler statistics are 28 of the 53 bytes
    for s in got["learned"].values():
        assert s["accuracy"] > 0.85, s["accuracy"]
        assert s["reference_mismatches"] == 0 and s["bad_sync_records"] == 0
    assert st["rejected_models"] == 0 and st["bad_records"] == 0 and st["full_syncs"] >= 20
    # every node: its 1st, 5th, 9th ... model carried its buffers; the sync's 1st, 5th ... full sync too
    up = [m for m in (decode_sync(r.value) for r in got["up"]) if m.kind in ("report", "model") and m.carries_model]
    for node in range(3):
        sizes = [len(m.delta) for m in up if m.node == node]
        assert sizes == [whole if i % 4 == 0 else lean for i in range(len(sizes))]
    assert st["bytes_up"] == sum(len(m.delta) for m in up)
    sends = [m for m in (decode_sync(r.value) for r in got["down"]) if m.kind == "send"]
    syncs = [m for m in sends if m.reason == "sync"]
    assert [len(m.delta) for m in syncs] == [whole if i % 4 == 0 else lean for i in range(len(syncs))]
    joins = [m for m in sends if m.reason == "join"]  # the reference whole: 52 + 4 d bytes to each joiner
    assert st["bytes_down"] == sum(len(m.targets) * len(m.delta) for m in syncs) + \
        sum(len(m.targets) for m in joins) * (52 + 4 * d)
