"""Compressed transfer: every codec's math, bytes and error feedback, and its refusals."""

from __future__ import annotations

import pytest
import torch

from streamlearn.errors import BadRecordError, ConfigError
from streamlearn.sync.codec import (
    HEADER_BYTES, Downlink, Uplink, compress_rows, make_codec, message_bytes, pack_delta, unpack_delta,
)

CODECS = ["fp16", "int8", "sign", "top3", "top50"]


@pytest.mark.parametrize("name", CODECS)
@pytest.mark.parametrize("n", [1, 9, 257, 70_000])
def test_the_bytes_carry_exactly_what_the_simulator_reconstructs(name, n):
    codec = make_codec(name)
    gen = torch.Generator().manual_seed(n)
    r = torch.randn(n + 3, generator=gen)
    w = r + 0.1 * torch.randn(n + 3, generator=gen)
    w_hat, parts, _ = compress_rows(codec, w[None], r[None], None, n)
    data = pack_delta(codec, parts, w[n:], r, n)
    assert len(data) == message_bytes(codec, n + 3, n) == HEADER_BYTES + codec.payload_bytes(n) + 12
    got_codec, got_parts, tail, n_params, _ = unpack_delta(data, reference=r, expected_d=n + 3)
    rebuilt = torch.cat([r[:n] + got_codec.dequantize(got_parts, n)[0], tail])
    assert torch.equal(rebuilt, w_hat[0])  # bit for bit: node, sync service and simulator agree
    assert torch.equal(w_hat[0, n:], w[n:])  # buffers travel as they are


@pytest.mark.parametrize("name", CODECS)
def test_error_feedback_loses_nothing_for_good(name):
    """What was sent plus what is kept equals everything the node had to send, over many rounds."""
    up = Uplink(name, m=2, d=50)
    gen = torch.Generator().manual_seed(1)
    R = torch.zeros(2, 50)
    total = torch.zeros(2, 50)
    sent = torch.zeros(2, 50)
    for _ in range(30):
        step = torch.randn(2, 50, generator=gen)
        total += step
        sent += up.send([0, 1], step, R)  # each round sends that round's move (R = 0)
    assert torch.allclose(sent + up.memory, total, atol=1e-4)


def test_compression_shrinks_messages_as_documented():
    fp32 = message_bytes(make_codec("fp32"), d=1000)
    assert fp32 == 52 + 4000
    sign = message_bytes(make_codec("sign"), d=1000)
    assert sign == HEADER_BYTES + 125 + 4 and fp32 / sign > 25
    assert message_bytes(make_codec("int8"), d=1000) == HEADER_BYTES + 1000 + 4 * 4


def test_a_full_sync_downlink_keeps_its_memory_a_partial_one_does_not():
    down = Downlink("sign", d=4)
    r = torch.zeros(4)
    model = torch.tensor([1.0, -3.0, 0.5, 0.0])
    down.send(model, r, memory=False)
    assert down.memory.abs().sum() == 0
    hat, _ = down.send(model, r, memory=True)
    assert torch.allclose(hat + down.memory[0], model)


@pytest.mark.parametrize("bad", ["fp8", "top0", "top101", "topx", ""])
def test_a_bad_codec_name_is_a_config_error_naming_it(bad):
    with pytest.raises(ConfigError, match="codec"):
        make_codec(bad)


def _message(name="sign", n=40, t=2):
    codec = make_codec(name)
    r = torch.linspace(-1, 1, n + t)
    w = r + 0.3
    _, parts, _ = compress_rows(codec, w[None], r[None], None, n)
    return pack_delta(codec, parts, w[n:], r, n), r


def test_a_delta_against_another_reference_is_refused():
    data, r = _message()
    with pytest.raises(BadRecordError, match="reference") as e:
        unpack_delta(data, reference=r + 1)
    assert e.value.column == "reference"


@pytest.mark.parametrize("name", CODECS)
def test_every_truncation_and_bit_flip_is_refused_cleanly(name):
    data, r = _message(name)
    for cut in range(0, len(data) - 1, 3):
        with pytest.raises(BadRecordError):
            unpack_delta(data[:cut], reference=r, expected_d=42)
    for pos in range(len(data)):
        flipped = bytearray(data)
        flipped[pos] ^= 0x10
        try:
            unpack_delta(bytes(flipped), reference=r, expected_d=42)
        except BadRecordError:
            continue
        raise AssertionError(f"a flipped bit at byte {pos} went through")


def test_a_hostile_claimed_size_allocates_nothing():
    data, r = _message("top3")
    import struct

    huge = bytearray(data)
    struct.pack_into("<I", huge, 4, 1 << 30)  # n_params
    with pytest.raises(BadRecordError, match="counts"):
        unpack_delta(bytes(huge))
