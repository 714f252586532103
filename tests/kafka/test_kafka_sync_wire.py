"""The node <-> sync message envelope (streamlearn.kafka.wire): round trips, rejections, fuzz."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from streamlearn.errors import ConfigError
from streamlearn.kafka.codecs import DecodeError, EncodeError, encode_model
from streamlearn.kafka.wire import (BINARY_KINDS, REQUIRED, SYNC_MAGIC, SyncMessage, decode_sync, encode_sync,
                                    envelope_bytes, positive, split_envelope)

W = np.array([0.5, -1.0, 2.0], dtype=np.float32)

EXAMPLES = [
    SyncMessage("join", node=3, d=3, layout="ab12", spec="dynamic:delta=0.5,b=1", model=W),
    SyncMessage("leave", node=3, step=17),
    SyncMessage("report", node=1, step=40, n_samples=400, loss=0.25),
    SyncMessage("report", node=1, step=41, n_samples=410, loss=0.5, model=W),
    SyncMessage("model", node=2, step=9, request=5, model=W),
    SyncMessage("hello", epoch="e1"),
    SyncMessage("hello", targets=(4,), epoch="e1"),
    SyncMessage("request", targets=(0, 2), epoch="e1", request=5),
    SyncMessage("send", targets=(0, 1, 2), epoch="e1", reference=True, reason="sync", model=W),
    SyncMessage("send", targets=(3,), epoch="e1", reference=True, reason="alone", model=W),  # a group of one
    SyncMessage("pull", targets=(1,), epoch="e1", strength=0.5, model=W),
    SyncMessage("reject", targets=(9,), reason="layout differs"),
]


@pytest.mark.parametrize("msg", EXAMPLES, ids=lambda m: m.kind)
def test_every_kind_round_trips(msg):
    data = encode_sync(msg)
    assert data[:4] == SYNC_MAGIC
    got = decode_sync(data)
    for name in ("kind", "node", "targets", "epoch", "step", "n_samples", "loss", "request", "reference", "strength",
                 "reason", "d", "layout", "spec"):
        assert getattr(got, name) == getattr(msg, name), name
    if msg.model is None:
        assert got.model is None
    else:
        assert got.model.tolist() == W.tolist() and got.model.dtype == np.float32


def test_torch_models_encode_and_addressing():
    msg = decode_sync(encode_sync(SyncMessage("send", targets=(1, 3), epoch="e", model=torch.arange(4.0))))
    assert msg.model.tolist() == [0.0, 1.0, 2.0, 3.0]
    assert msg.addressed_to(3) and not msg.addressed_to(2)
    assert SyncMessage("hello", epoch="e").addressed_to(7)  # no targets: everyone


def test_an_unknown_loss_is_left_out():
    msg = decode_sync(encode_sync(SyncMessage("report", node=0, step=1, loss=float("nan"))))
    assert msg.loss is None


@pytest.mark.parametrize("msg, field", [
    (SyncMessage("join", node=0, d=3, layout="x"), "model"),  # a join carries its reference
    (SyncMessage("send", targets=(0,), epoch="e"), "model"),
    (SyncMessage("request", epoch="e"), "targets"),
    (SyncMessage("pull", targets=(0,), epoch="e", model=W), "strength"),
    (SyncMessage("pull", targets=(0,), epoch="e", strength=1.5, model=W), "strength"),
    (SyncMessage("report", node=-1, step=1), "node"),
    (SyncMessage("gossip", node=0), "kind"),
    (SyncMessage("report", node=0, step=1, model=np.array([np.nan], dtype=np.float32)), "tensor"),
])
def test_encoding_refuses_incomplete_or_bad_messages(msg, field):
    with pytest.raises(EncodeError) as info:
        encode_sync(msg)
    assert info.value.field == field


def _envelope(header: dict, model: bytes = b"", version=1, flags=0) -> bytes:
    body = json.dumps(header).encode()
    return struct.pack("<4sHHI", SYNC_MAGIC, version, flags, len(body)) + body + model


@pytest.mark.parametrize("data, field", [
    (b"SLS", "<payload>"),
    (b"XXXX" + bytes(8), "magic"),
    (_envelope({"kind": "leave", "node": 0}, version=3), "version"),  # 1 is JSON, 2 binary
    (_envelope({"kind": "leave", "node": 0}, flags=1), "flags"),
    (struct.pack("<4sHHI", SYNC_MAGIC, 1, 0, 100) + b"{}", "header_len"),
    (_envelope([{"kind": "leave", "node": 0}]), "<header>"),
    (_envelope({"kind": ["leave"], "node": 0}), "kind"),
    (_envelope({"kind": "leave"}), "node"),
    (_envelope({"kind": "leave", "node": 0, "colour": "red"}), "colour"),
    (_envelope({"kind": "report", "node": 0, "step": -1}), "step"),
    (_envelope({"kind": "model", "node": 0}), "model"),
    (_envelope({"kind": "request", "targets": "0,1", "epoch": "e"}), "targets"),
    (_envelope({"kind": "send", "targets": [0], "epoch": "e", "reference": 1}, encode_model(W, 0, 1)), "reference"),
    (_envelope({"kind": "model", "node": 0}, encode_model(W, 0, 1)[:-1]), "<payload>"),
    (_envelope({"kind": "model", "node": 0}, encode_model(W.reshape(1, 3), 0, 1)), "shape"),
])
def test_decoding_names_what_is_wrong(data, field):
    with pytest.raises(DecodeError) as info:
        decode_sync(data)
    assert info.value.field == field


def test_expected_model_length_is_checked():
    data = encode_sync(SyncMessage("model", node=0, model=W))
    assert decode_sync(data, expected_d=3).model.shape == (3,)
    with pytest.raises(DecodeError, match="3 entries|4 entries"):
        decode_sync(data, expected_d=4)


def test_required_fields_cover_every_kind():
    assert set(REQUIRED) == {"join", "leave", "report", "model", "hello", "request", "send", "pull", "reject",
                             "claim", "assign", "decline"}


def _report_head() -> bytes:
    from streamlearn.kafka.wire import envelope_bytes

    data = encode_sync(SyncMessage("report", node=0, step=1, model=np.zeros(2, dtype=np.float32)))
    return data[:envelope_bytes(data)]


# Records that once killed the sync service (issue 14): a sound header before 20 KB of nested JSON arrays, whose
# fallback parse raised RecursionError; and deep nesting in a JSON header.
_HOSTILE = [_report_head() + b"[" * 20_000, SYNC_MAGIC + b"\x01\x00" + b"[" * 10_000, b"[" * 100_000,
            SYNC_MAGIC + b"\x01\x00" + b'{"kind":' + b"[" * 5_000]


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.sampled_from(_HOSTILE)))
def test_arbitrary_bytes_only_raise_decode_error_and_the_fallback_never_raises(data):
    from streamlearn.kafka.sync_models import _model_fault

    for record in (SYNC_MAGIC + data, data):
        try:
            decode_sync(record)
        except DecodeError:
            pass
        fault = _model_fault(record)  # the sync service's second look at a record decode_sync refused
        assert fault is None or fault[0] in ("malformed", "shape", "checksum", "dtype", "nonfinite", "norm")


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                  max_size=3), max_leaves=8)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(["kind", "node", "targets", "epoch", "step", "loss", "request", "reference",
                                        "strength", "reason", "d", "layout", "spec", "x"]),
                       _json | st.sampled_from(list(REQUIRED)), max_size=6),
       st.booleans())
def test_arbitrary_headers_only_raise_decode_error(header, with_model):
    data = _envelope(header, encode_model(W, 0, 1) if with_model else b"")
    try:
        decode_sync(data)
    except DecodeError:
        pass


def test_positive_checks_settings():
    assert positive("x", 2, integer=True) == 2 and positive("x", None, allow_none=True) is None
    for bad in (0, -1, True, float("inf"), "1"):
        with pytest.raises(ConfigError, match="x must be"):
            positive("x", bad)
    with pytest.raises(ConfigError):
        positive("n", 1.5, integer=True)


# ------------------------------------------------------------------ version 2: the binary header of report, model, send
EPOCH = "5f0c2a9e13d4"  # as the sync service makes them: uuid4().hex[:12]
_FIELDS = ("kind", "node", "targets", "epoch", "step", "n_samples", "loss", "request", "reference", "strength",
           "reason", "d", "n_params", "layout", "spec", "token")


def same(got: SyncMessage, msg: SyncMessage) -> None:
    """Every field of ``got`` is the one of ``msg`` (loss bit for bit; targets as a tuple)."""
    for name in _FIELDS:
        want = getattr(msg, name)
        if name == "targets" and want is not None:
            want = tuple(want)
        if name == "loss" and want is not None and not np.isfinite(want):
            want = None
        assert getattr(got, name) == want, name
        assert type(getattr(got, name)) is type(want), name


def json_version(msg: SyncMessage) -> bytes:
    """``msg`` with the JSON header (version 1), as encode_sync wrote every kind before version 2."""
    from streamlearn.kafka import wire

    saved, wire._binary_header = wire._binary_header, lambda clean, flags: None
    try:
        return encode_sync(msg)
    finally:
        wire._binary_header = saved


def sign_delta(d: int = 201, n_params: int = 194) -> bytes:
    """A sign-compressed delta of a ``d``-entry model (the SEA MLP: 77 bytes)."""
    from streamlearn.sync.codec import compress_rows, make_codec, pack_delta

    codec = make_codec("sign")
    w, r = torch.linspace(-1, 1, d), torch.zeros(d)
    _, parts, _ = compress_rows(codec, w[None], r[None], None, n_params)
    return pack_delta(codec, parts, tail=w[n_params:], reference=r, n_params=n_params)


LEAN = [
    SyncMessage("report", node=1, step=41, n_samples=410, loss=0.5, model=W),
    SyncMessage("report", node=1, step=40, n_samples=400, loss=0.1 + 0.2),  # loss not a float32: f64
    SyncMessage("report", node=70_000, step=1 << 40, n_samples=3, loss=-0.0),  # u32 ids, u64 counts
    SyncMessage("model", node=2, step=9, request=5, model=W),
    SyncMessage("model", node=2, step=9, request=0, n_samples=1, loss=1e300, model=W),  # loss beyond float32
    SyncMessage("send", targets=(0, 1, 2), epoch=EPOCH, reference=True, reason="sync", model=W),
    SyncMessage("send", targets=(3,), epoch=EPOCH, reference=True, reason="join", model=W),
    SyncMessage("send", targets=(), epoch=EPOCH, model=W),
    SyncMessage("send", targets=tuple(range(4096)), epoch=EPOCH, model=W),
    SyncMessage("send", targets=(0, 65_536), epoch=EPOCH, reason="sync", model=W),
]


@pytest.mark.parametrize("msg", LEAN, ids=lambda m: m.kind)
def test_report_model_and_send_take_the_binary_header_and_come_out_the_same(msg):
    data = encode_sync(msg)
    assert data[:6] == SYNC_MAGIC + b"\x02\x00"
    for got in (decode_sync(data), decode_sync(json_version(msg))):  # either version: the same message
        same(got, msg)
        assert got.model.tolist() == W.tolist() if msg.model is not None else got.model is None
    assert envelope_bytes(data) < envelope_bytes(json_version(msg))


@pytest.mark.parametrize("msg", [
    SyncMessage("send", targets=(0,), epoch="e1", reason="sync", model=W),       # epoch not 12 hex digits
    SyncMessage("send", targets=(0,), epoch=EPOCH.upper(), reason="sync", model=W),
    SyncMessage("send", targets=(0,), epoch=EPOCH, reason="rebalance", model=W),  # reason not a code
    SyncMessage("report", node=1, step=3, token="9f2c"),                        # a field v2 has no place for
    SyncMessage("model", node=1, step=3, spec="periodic:b=1", model=W),
    *[m for m in EXAMPLES if m.kind not in ("report", "model", "send")],
], ids=lambda m: m.kind)
def test_what_does_not_fit_the_binary_header_falls_back_to_json(msg):
    data = encode_sync(msg)
    assert data[4:6] == b"\x01\x00" and data == json_version(msg)
    same(decode_sync(data), msg)


def test_envelope_sizes_of_the_hot_path():
    """The acceptance numbers: a report with a compressed delta <= 30 bytes, a send to k targets <= 30 + 2k."""
    payload = sign_delta()
    assert len(payload) == 77  # the SEA MLP's sign message
    loss32 = float(np.float32(0.3125))
    sizes = {
        "report, loss f32": SyncMessage("report", node=3, step=1200, n_samples=10, loss=loss32, delta=payload),
        "report, loss f64": SyncMessage("report", node=3, step=1200, n_samples=10, loss=0.31, delta=payload),
        "report, no loss": SyncMessage("report", node=3, step=1200, n_samples=10, delta=payload),
        "model answer": SyncMessage("model", node=3, step=1200, n_samples=10, loss=0.31, request=17, delta=payload),
    }
    got = {name: len(encode_sync(m)) - len(payload) for name, m in sizes.items()}
    # 9 fixed (magic, version, flags, kind) + node u16 + step u32 + n_samples u32 + loss f32|f64 (+ request u32)
    assert got == {"report, loss f32": 23, "report, loss f64": 27, "report, no loss": 19, "model answer": 31}
    for k in (1, 3, 16, 4096):
        send = SyncMessage("send", targets=tuple(range(k)), epoch=EPOCH, reference=True, reason="sync",
                           delta=payload)
        assert len(encode_sync(send)) - len(payload) == 17 + 2 * k  # 9 + count u16 + k u16 ids + epoch 6
        wide = SyncMessage("send", targets=(1 << 20,) + tuple(range(k - 1)), epoch=EPOCH, delta=payload)
        assert len(encode_sync(wide)) - len(payload) == 17 + 4 * k  # an id above 65535: u32 ids
    # the JSON version of the same report, for the record
    assert envelope_bytes(json_version(sizes["report, loss f64"])) == 12 + len(
        b'{"kind":"report","node":3,"step":1200,"n_samples":10,"loss":0.31}')


def _v2(kind_code: int, flags: int, body: bytes = b"", model: bytes = b"") -> bytes:
    return struct.pack("<4sHHB", SYNC_MAGIC, 2, flags, kind_code) + body + model


_NODE, _TARGETS, _EPOCH, _STEP, _LOSS, _REF, _IDS32, _LOSS64 = 2, 4, 8, 16, 64, 256, 2048, 1024


@pytest.mark.parametrize("data, field", [
    (_v2(1, _NODE | _STEP)[:8], "<payload>"),                               # shorter than 9 bytes
    (_v2(0, _NODE | _STEP, struct.pack("<HI", 1, 2)), "kind"),              # kind codes are 1 to 3
    (_v2(4, _NODE | _STEP, struct.pack("<HI", 1, 2)), "kind"),
    (_v2(1, _NODE | _STEP | 1 << 14, struct.pack("<HI", 1, 2)), "flags"),  # bits 14, 15 are 0
    (_v2(1, _NODE | _STEP, struct.pack("<H", 1)), "<payload>"),             # step cut off
    (_v2(1, _NODE, struct.pack("<H", 1)), "step"),                          # a report needs its step
    (_v2(1, _NODE | _STEP | _IDS32, struct.pack("<II", 1 << 31, 2)), "node"),  # node < 2^31
    (_v2(1, _NODE | _STEP | _LOSS, struct.pack("<HIf", 1, 2, float("nan"))), "loss"),
    (_v2(1, _NODE | _STEP | _LOSS | _LOSS64, struct.pack("<HId", 1, 2, float("inf"))), "loss"),
    (_v2(2, _NODE, struct.pack("<H", 1)), "model"),                         # an answer carries a model
    (_v2(3, _TARGETS | _EPOCH, struct.pack("<HH", 1, 0) + bytes(6)), "model"),
    (_v2(3, _TARGETS | _EPOCH, struct.pack("<H", 4097) + bytes(8194 + 6)), "targets"),  # > MAX_TARGETS
    (_v2(3, _TARGETS | _EPOCH, struct.pack("<H", 4000) + bytes(100)), "targets"),  # count beyond the record
    (_v2(3, _TARGETS | _EPOCH, struct.pack("<HH", 1, 0) + bytes(5)), "epoch"),      # epoch cut off
    (_v2(3, _TARGETS | _EPOCH, struct.pack("<HH", 1, 0) + bytes(6), encode_model(W, 0, 1)[:-1]), "<payload>"),
    (_v2(1, _NODE | _STEP | 1, struct.pack("<HI", 1, 2), b"XX" + bytes(30)), "delta"),  # not a delta
    (_v2(3, _NODE, struct.pack("<H", 1), encode_model(W, 0, 1)), "targets"),  # a send needs targets and epoch
])
def test_binary_headers_name_what_is_wrong(data, field):
    with pytest.raises(DecodeError) as info:
        decode_sync(data)
    assert info.value.field == field


# ---- hypothesis: valid binary messages, then flipped, truncated or with counts beyond the record
_ids = st.integers(0, (1 << 31) - 1) | st.integers(0, 70)
_counts = st.integers(0, (1 << 63) - 1) | st.integers(0, 1000)
_losses = st.none() | st.floats(allow_nan=True, allow_infinity=True) | st.floats(-10, 10, width=32)
_hex12 = st.text("0123456789abcdef", min_size=12, max_size=12)


@st.composite
def lean_messages(draw):
    kind = draw(st.sampled_from(BINARY_KINDS))
    body = draw(st.sampled_from(["model", "delta", "none"] if kind == "report" else ["model", "delta"]))
    carry = {"model": {"model": W}, "delta": {"delta": SIGN_SMALL}, "none": {}}[body]
    common = dict(step=draw(_counts), n_samples=draw(_counts), loss=draw(_losses),
                  request=draw(st.none() | _counts))
    if kind == "send":
        return SyncMessage("send", targets=draw(st.lists(_ids, max_size=20).map(tuple)),
                           epoch=draw(_hex12), reference=draw(st.booleans()),
                           reason=draw(st.sampled_from([None, "sync", "join"])), node=draw(st.none() | _ids),
                           **common, **carry)
    return SyncMessage(kind, node=draw(_ids), **{**common, "step": draw(st.integers(1, (1 << 63) - 1))}, **carry)


SIGN_SMALL = sign_delta(3, 3)


@settings(max_examples=400, deadline=None)
@given(lean_messages(), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 7)), max_size=4),
       st.integers(0, 400), st.sampled_from([None, 3, 4]))
def test_binary_messages_round_trip_and_their_damage_only_raises_decode_error(msg, flips, cut, expected_d):
    data = encode_sync(msg)
    assert data[4] == 2
    got = decode_sync(data)
    same(got, msg)
    assert got.delta == msg.delta and (got.model is None) == (msg.model is None)
    assert split_envelope(data)[2].nbytes == len(data) - envelope_bytes(data)
    damaged = bytearray(data)
    for at, bit in flips:
        damaged[at % len(damaged)] ^= 1 << bit
    for blob in (bytes(damaged), bytes(damaged[:len(damaged) - cut % (len(damaged) + 1)]),
                 data[:envelope_bytes(data)] + bytes(cut)):
        try:
            decode_sync(blob, expected_d=expected_d)
        except DecodeError:
            pass


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 0xFFFF), st.integers(0, 255), st.binary(max_size=300), st.integers(0, 0xFFFF))
def test_arbitrary_binary_headers_only_raise_decode_error(flags, kind, body, count):
    for blob in (_v2(kind, flags, body), _v2(kind % 4, flags & 0x3FFF, body),
                 _v2(3, (flags & 0x3FFF) | _TARGETS, struct.pack("<H", count) + body)):
        try:
            decode_sync(blob)
        except DecodeError:
            pass
        try:
            decode_sync(blob, expected_d=3)
        except DecodeError:
            pass


def test_the_binary_examples_in_docs_schemas_are_what_encode_sync_writes():
    from pathlib import Path

    text = " ".join((Path(__file__).parents[2] / "docs" / "schemas.md").read_text().split())
    report = encode_sync(SyncMessage("report", node=2, step=40, n_samples=400, loss=0.3))
    send = encode_sync(SyncMessage("send", targets=(0, 1, 2), epoch=EPOCH, reference=True, reason="sync", model=W))
    for data in (report, send[:envelope_bytes(send)]):
        h = data.hex()
        assert " ".join(h[i:i + 8] for i in range(0, len(h), 8)) in text
    assert (len(report), envelope_bytes(send)) == (27, 23)
    same(decode_sync(report), SyncMessage("report", node=2, step=40, n_samples=400, loss=0.3))
