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
from streamlearn.kafka.wire import REQUIRED, SYNC_MAGIC, SyncMessage, decode_sync, encode_sync, positive

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
    (_envelope({"kind": "leave", "node": 0}, version=2), "version"),
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
                             "claim", "assign"}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_only_raise_decode_error(data):
    try:
        decode_sync(SYNC_MAGIC + data)
        decode_sync(data)
    except DecodeError:
        pass


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
