"""Addressing on sync.down (issue 18): messages to more nodes than a record may name go as chunked records
sharing one model part; a node tells from the header alone whether a record may be for it."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from streamlearn.kafka.codecs import EncodeError
from streamlearn.kafka.signing import SyncSigner, SyncVerifier
from streamlearn.kafka.wire import (
    MAX_TARGETS,
    SyncMessage,
    addressed_to,
    decode_sync,
    encode_sync,
    encode_sync_many,
    envelope_bytes,
)
from streamlearn.sync.codec import make_codec, pack_delta

EPOCH = "5f0c2a9e13d4"
W = np.arange(5, dtype=np.float32)


def send(targets, **kw):
    body = {"model": W} if "delta" not in kw else {}
    return SyncMessage("send", targets=tuple(targets), epoch=EPOCH, reference=True, reason="sync", **body, **kw)


def delta_payload():
    sign, r = make_codec("sign"), torch.zeros(5)
    return pack_delta(sign, sign.quantize(torch.tensor([[0.5, -1.0, 2.0, 0.0, 1.0]])), torch.zeros(0), r, 5)


@pytest.mark.parametrize("make", [
    lambda t: send(t),                                                         # binary header, whole model
    lambda t: send(t, delta=delta_payload()),                                  # binary header, delta
    lambda t: SyncMessage("request", targets=tuple(t), epoch="e1", request=9),  # JSON header, no model
    lambda t: SyncMessage("pull", targets=tuple(t), epoch="e1", strength=0.5, model=W),  # JSON header, model
])
def test_a_message_to_more_than_max_targets_nodes_goes_as_chunks_that_each_decode(make):
    targets = list(range(0, 2 * 10_000, 2))  # 10,000 nodes, ids up to 19,998
    msg = make(targets)
    with pytest.raises(EncodeError, match="targets"):
        encode_sync(msg)  # one record may not name them all (every reader's limit) ...
    records = encode_sync_many(msg)  # ... several do
    decoded = [decode_sync(r, expected_d=5) for r in records]
    assert [len(m.targets) for m in decoded] == [MAX_TARGETS, MAX_TARGETS, 10_000 - 2 * MAX_TARGETS]
    assert [t for m in decoded for t in m.targets] == targets  # disjoint runs, in order, covering all
    for m in decoded:
        assert (m.kind, m.epoch, m.reference, m.request, m.strength) == (msg.kind, msg.epoch, msg.reference,
                                                                         msg.request, msg.strength)
        assert (m.delta == msg.delta) if msg.delta is not None else (msg.model is None or
                                                                     m.model.tolist() == W.tolist())
    bodies = {bytes(memoryview(r)[envelope_bytes(r):]) for r in records}
    assert len(bodies) == 1  # the same model part, encoded once


def test_few_targets_or_none_are_one_record_as_before():
    msg = send(range(MAX_TARGETS))
    assert encode_sync_many(msg) == [encode_sync(msg)]
    hello = SyncMessage("hello", epoch="e1")
    assert encode_sync_many(hello) == [encode_sync(hello)]
    assert len(encode_sync_many(send(range(10)), max_targets=3)) == 4


@pytest.mark.parametrize("bad", [0, -1, MAX_TARGETS + 1, 2.0, True, None])
def test_max_targets_outside_what_readers_accept_is_an_encode_error_naming_it(bad):
    with pytest.raises(EncodeError, match="max_targets"):
        encode_sync_many(send([1, 2]), max_targets=bad)


def test_every_chunk_is_signed_and_verifies():
    """The targets are in the record value, which the HMAC covers: a chunk whose list is changed is forged."""
    key = b"a secret of at least sixteen bytes"
    signer, verifier = SyncSigner(key, "down", epoch=1), SyncVerifier(key, "down")
    records = encode_sync_many(send(range(9000)))
    for data in records:
        assert verifier.verify(signer.sign(data), None, data).ok
    data = records[0]
    headers = signer.sign(data)
    off = data.index(struct.pack("<H", MAX_TARGETS))  # the count, then the ids (u16)
    tampered = data[:off + 2] + struct.pack("<H", 9999) + data[off + 4:]  # node 0 replaced by 9999
    assert not addressed_to(tampered, 0)
    assert verifier.verify(headers, None, tampered).reason == "forged"


@hsettings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 70_000), max_size=40, unique=True) | st.none(), st.integers(0, 70_000),
       st.sampled_from(["send", "request", "pull", "reject", "hello"]))
def test_addressed_to_agrees_with_the_decoded_message(targets, node, kind):
    extra = {"send": {"reference": True, "reason": "sync", "model": W}, "request": {"request": 3},
             "pull": {"strength": 0.5, "model": W}, "reject": {"reason": "why"}, "hello": {}}[kind]
    if kind != "hello" and targets is None:
        targets = []
    if kind == "hello":
        targets = None
    data = encode_sync(SyncMessage(kind, targets=None if targets is None else tuple(targets), epoch=EPOCH, **extra))
    assert addressed_to(data, node) == decode_sync(data).addressed_to(node)


@pytest.mark.parametrize("data", [b"", b"SLSY", b"XXXX" + bytes(20), encode_sync(send([1, 2]))[:12],
                                  encode_sync(send([1, 2]))[:4] + b"\x09\x00" + encode_sync(send([1, 2]))[6:]])
def test_a_record_it_cannot_read_is_left_to_the_full_decode(data):
    assert addressed_to(data, 5)  # "may be for it": decode_sync then counts it as bad


def test_the_check_does_not_touch_the_model_part():
    """A record addressed to others is judged on its header: a broken model after it does not matter."""
    data = bytearray(encode_sync(send([1, 2])))
    data[-1] ^= 0xFF  # the model's CRC no longer holds
    assert not addressed_to(bytes(data), 3)
    assert addressed_to(bytes(data), 2)
