"""Hostile models against the real sync service: refused, counted, never averaged, the sync goes on.

The test plays four nodes with hand-crafted records on ``sync.up`` (the pattern of
test_kafka_sync_service.py). Node 0 violates, the service asks nodes 1-3 for their models, and
node 3 answers with a damaged model: the full sync must come at once (the timeout is far
away), hold the mean of nodes 0-2 only, and the refusal must show in the status, the metric
and the dead-letter topic.
"""

from __future__ import annotations

import json
import struct
import time

import numpy as np
import pytest
from hypothesis import given, settings as hsettings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from streamlearn.kafka.codecs import DecodeError, encode_model
from streamlearn.kafka.sync_service import SyncConfig, _model_fault
from streamlearn.kafka.topics import deadletter_topic
from streamlearn.kafka.wire import SyncMessage, decode_sync, encode_sync, envelope_bytes
from streamlearn.metrics import REJECT_REASONS, SyncMetrics

from sync_wire_helpers import FakeNodes, nodes_fixture
from waiting import wait_until

D = 2
_HEAD = struct.Struct("<4sHHI")


def with_model(msg: SyncMessage, model_bytes: bytes) -> bytes:
    """``msg``'s envelope carrying ``model_bytes`` as its model message (which encode_sync would refuse)."""
    data = encode_sync(SyncMessage(**{**msg.__dict__, "model": np.zeros(D, dtype=np.float32)}))
    return data[:envelope_bytes(data)] + model_bytes  # either envelope version (report and model: binary)


def flipped(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0xFF
    return bytes(b)


# (reason, raw model message or numpy model): what node 3 answers with
HOSTILE = {
    "nan": ("nonfinite", encode_model(np.array([np.nan, 0.0], dtype=np.float32), node=3, version=1,
                                      allow_nonfinite=True)),
    "inf": ("nonfinite", encode_model(np.array([0.0, -np.inf], dtype=np.float32), node=3, version=1,
                                      allow_nonfinite=True)),
    "float64": ("dtype", np.zeros(D, dtype=np.float64)),
    "float16": ("dtype", np.zeros(D, dtype=np.float16)),
    "too long": ("shape", np.zeros(D + 1, dtype=np.float32)),
    "not flat": ("shape", encode_model(np.zeros((1, D), dtype=np.float32), node=3, version=1)),
    "absurd norm": ("norm", np.full(D, 1e7, dtype=np.float32)),
    "bad checksum": ("checksum", flipped(encode_model(np.zeros(D, dtype=np.float32), node=3, version=1), -6)),
    "truncated": ("malformed", encode_model(np.zeros(D, dtype=np.float32), node=3, version=1)[:-3]),
}


class Nodes(FakeNodes):
    """Four hand-played nodes and a sync service thread on one prefix."""

    def __init__(self, broker, settings, prefix, **kw):
        kw = {"max_nodes": 4, "timeout": 60.0, "device": "cpu", "status_interval": 0.1, **kw}
        super().__init__(broker, settings, prefix, SyncConfig(protocol="dynamic:delta=1.0,b=1",
                                                              bootstrap=broker.bootstrap, prefix=prefix,
                                                              settings=settings, **kw))

    def join_all(self) -> None:
        for node in range(4):
            self.send(SyncMessage("join", node=node, d=D, layout="L", model=np.zeros(D, dtype=np.float32)))
            self.expect(lambda m, node=node: m.kind == "send" and m.targets == (node,))


nodes = nodes_fixture(Nodes)


def test_every_kind_of_hostile_answer_is_refused_and_the_sync_goes_on_without_it(nodes, consume, prefix):
    f = nodes()
    f.join_all()
    raws = []
    for step, (name, (reason, bad)) in enumerate(HOSTILE.items(), start=1):
        w0 = 4.0 * step  # node 0's violating model this round
        f.send(SyncMessage("report", node=0, step=step, n_samples=10, model=np.array([w0, 0.0], dtype=np.float32)))
        request = f.expect(lambda m: m.kind == "request")
        assert request.targets == (1, 2, 3)
        for node in (1, 2):
            f.send(SyncMessage("model", node=node, step=step, request=request.request,
                               model=np.zeros(D, dtype=np.float32)))
        answer = SyncMessage("model", node=3, step=step, request=request.request)
        raw = with_model(answer, bad) if isinstance(bad, bytes) else encode_sync(
            SyncMessage(**{**answer.__dict__, "model": bad}))
        raws.append(raw)
        f.send(raw=raw)
        # at once (the timeout is 60 s away), without node 3, and to every node (a full sync)
        full = f.expect(lambda m: m.kind == "send" and m.reason == "sync")
        assert full.reference and full.targets == (0, 1, 2, 3), name
        assert np.allclose(full.model, [w0 / 3, 0.0]), (name, full.model)
        time.sleep(0.15)  # one status interval: the counts of this round are published
        st = f.service.status()
        assert st["rejected_models"] == step and st["timeouts"] == step, name
    assert st["bad_records"] == 0 and st["nodes_alive"] == 4 and st["pending"] == []
    by = st["rejected_models_by_reason"]
    assert set(by) == set(REJECT_REASONS)
    expected = {r: sum(1 for reason, _ in HOSTILE.values() if reason == r) for r in REJECT_REASONS}
    assert by == expected
    assert st["models_up"] == 3 * len(HOSTILE)  # the refused models never reached the bank

    registry = CollectorRegistry()
    SyncMetrics(registry, status=f.service.status)
    for reason, n in expected.items():
        assert registry.get_sample_value("streamlearn_sync_rejected_models_total", {"reason": reason}) == n

    dead = consume(deadletter_topic(prefix), len(HOSTILE))
    assert [r.value for r in dead] == raws
    assert all(b"model refused" in dict(r.headers)["sl-error"] for r in dead)


def test_a_hostile_violation_is_dropped_and_a_hostile_join_is_rejected(nodes):
    f = nodes(max_norm=100.0)
    f.join_all()
    # a violation with an absurd model: no request goes out, nothing is averaged
    f.send(SyncMessage("report", node=1, step=1, model=np.array([1e3, 0.0], dtype=np.float32)))
    nan = encode_model(np.array([np.nan, 1.0], dtype=np.float32), node=2, version=2, allow_nonfinite=True)
    f.send(raw=with_model(SyncMessage("report", node=2, step=2), nan))
    # a new node joining with a NaN model is told why it is not taken
    f.send(raw=with_model(SyncMessage("join", node=3, d=D, layout="L"), nan))
    reject = f.expect(lambda m: m.kind == "reject" and m.targets == (3,))
    assert "nonfinite" in reject.reason
    # a sound violation afterwards is handled as usual
    f.send(SyncMessage("report", node=0, step=3, model=np.array([4.0, 0.0], dtype=np.float32)))
    assert f.expect(lambda m: m.kind == "request").targets == (1, 2, 3)
    time.sleep(0.3)
    st = f.service.status()
    assert st["rejected_models"] == 3 and st["violations"] == 1 and st["models_up"] == 1
    assert st["rejected_models_by_reason"]["norm"] == 1 and st["rejected_models_by_reason"]["nonfinite"] == 2
    assert st["rejects"] == 1 and st["bad_records"] == 0
    assert not any(m is not None and m.kind == "request" and m.targets != (1, 2, 3) for m in f.down)


def test_buffers_after_the_parameters_are_averaged_but_not_held_to_the_norm_limit(nodes):
    """A model's buffers (a scaler's statistics, in the data's units) follow its ``n_params`` parameters:
    the norm limit and the divergence span the parameters only, and a sync averages the buffers too."""
    f = nodes(max_norm=100.0)
    d, p = 4, 2  # two parameters, then two buffers (e.g. a feature mean of a million)
    for node in range(4):
        w0 = np.array([0.0, 0.0, 1e6, 1.0], dtype=np.float32)
        f.send(SyncMessage("join", node=node, d=d, n_params=p, layout="S", model=w0))
        f.expect(lambda m, node=node: m.kind == "send" and m.targets == (node,))
    # node 0's parameters moved (||w - r||^2 = 9 > Δ = 1 over the parameters), its buffers moved a lot more
    f.send(SyncMessage("report", node=0, step=1, model=np.array([3.0, 0.0, 3e6, 5.0], dtype=np.float32)))
    request = f.expect(lambda m: m.kind == "request")
    for node in request.targets:
        f.send(SyncMessage("model", node=node, step=1, request=request.request,
                           model=np.array([-1.0, 0.0, 1e6, 1.0], dtype=np.float32)))
    sync = f.expect(lambda m: m.kind == "send" and m.reason == "sync")
    k = 1 + len(request.targets)
    expected = (np.array([3.0, 0.0, 3e6, 5.0]) + (k - 1) * np.array([-1.0, 0.0, 1e6, 1.0])) / k
    np.testing.assert_allclose(sync.model, expected, rtol=1e-6)
    st = f.service.status()
    assert st["rejected_models"] == 0 and st["rejects"] == 0
    # a node whose parameters split differently is not averaged with them
    f.send(SyncMessage("join", node=3, d=d, n_params=3, layout="S", model=np.zeros(d, dtype=np.float32)))
    reject = f.expect(lambda m: m.kind == "reject" and m.targets == (3,))
    assert "n_params" in reject.reason


# ---- without a broker: the service's fallback classifies a damaged model in either envelope version
def json_envelope(header: dict, model_bytes: bytes) -> bytes:
    """A version-1 (JSON header) record carrying ``model_bytes``."""
    body = json.dumps(header, separators=(",", ":")).encode()
    return _HEAD.pack(b"SLSY", 1, 0, len(body)) + body + model_bytes


@pytest.mark.parametrize("name", [k for k, (_, bad) in HOSTILE.items() if isinstance(bad, bytes)])
@pytest.mark.parametrize("kind", ["report", "model"])
def test_a_damaged_model_is_classified_the_same_in_both_envelope_versions(name, kind):
    reason, bad = HOSTILE[name]
    fields = {"report": dict(node=3, step=7, n_samples=10, loss=0.25), "model": dict(node=3, step=7, request=4)}[kind]
    lean = with_model(SyncMessage(kind, **fields), bad)
    assert lean[4] == 2  # report and model take the binary header
    with pytest.raises(DecodeError):
        decode_sync(lean)
    assert _model_fault(lean) == _model_fault(json_envelope({"kind": kind, **fields}, bad)) == (reason, 3, kind)


@hsettings(max_examples=300, deadline=None)
@given(st.sampled_from(["report", "model"]), st.integers(0, (1 << 31) - 1), st.integers(1, 1 << 40),
       st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 7)), min_size=1, max_size=4), st.integers(0, 200))
def test_damaged_binary_records_only_raise_decode_error_and_the_fallback_never_raises(kind, node, step, flips, cut):
    msg = SyncMessage(kind, node=node, step=step, request=step if kind == "model" else None,
                      model=np.array([1.5, -2.0], dtype=np.float32))
    data = bytearray(encode_sync(msg))
    for at, bit in flips:
        data[at % len(data)] ^= 1 << bit
    for blob in (bytes(data), bytes(data[:len(data) - cut % (len(data) + 1)])):
        try:
            decode_sync(blob, expected_d=D)
        except DecodeError:
            pass
        fault = _model_fault(blob)
        assert fault is None or (fault[0] in REJECT_REASONS and fault[2] in ("join", "report", "model"))


def test_a_join_that_claims_a_huge_or_false_model_size_is_rejected_and_the_service_goes_on(nodes):
    # The first join sizes the model bank: d = 2**40 once made the service try to allocate 16 TiB and die,
    # and a d that disagrees with the model it carries made it exit.
    n = nodes(max_params=1000)
    n.send(raw=encode_sync(SyncMessage("join", node=0, d=2 ** 40, layout="L", model=np.zeros(D, dtype=np.float32))))
    n.send(raw=encode_sync(SyncMessage("join", node=1, d=10, layout="L", model=np.zeros(8, dtype=np.float32))))
    n.send(raw=encode_sync(SyncMessage("join", node=2, d=1001, layout="L", model=np.zeros(1001, dtype=np.float32))))
    rejects = [n.expect(lambda m, k=k: m.kind == "reject" and m.targets == (k,), f"reject of {k}") for k in range(3)]
    assert "d=1099511627776 is not in [1, --max-params 1000]" in rejects[0].reason
    assert "says d=10 but carries a model of 8 entries" in rejects[1].reason
    assert "d=1001 is not in [1, --max-params 1000]" in rejects[2].reason
    n.send(SyncMessage("join", node=3, d=D, layout="L", model=np.zeros(D, dtype=np.float32)))
    n.expect(lambda m: m.kind == "send" and m.targets == (3,), "the join of an honest node answered")
    assert n.thread.is_alive()
    wait_until(lambda: n.service.status().get("rejects") == 3, "the rejects in the status")
