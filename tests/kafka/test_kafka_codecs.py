"""Codecs: round trips, every rejection path, and fuzzing that only DecodeError ever escapes."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamlearn.errors import StreamlearnError
from streamlearn.kafka import codecs
from streamlearn.kafka.codecs import (
    MAX_SAMPLE_JSON_BYTES,
    ControlCommand,
    DecodeError,
    DriftEvent,
    EncodeError,
    Report,
    Sample,
    SampleBatch,
    decode_message,
    decode_model,
    decode_sample_batch,
    decode_sample_json,
    encode_message,
    encode_model,
    encode_sample_batch,
    encode_sample_json,
    record_kind,
)
from streamlearn.kafka.labels import decode_node_record
from streamlearn.kafka.status import decode_status

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------ sample JSON
def test_sample_json_round_trip_all_fields():
    s = Sample(seq=12, x={"temp": 21.25, "load": -3.0, "é": 1e-300}, y="UP", node=4, key="sensor-7", ts=1.7e9)
    assert decode_sample_json(encode_sample_json(s)) == s


@pytest.mark.parametrize("y", [None, True, 3, -1, 2.5, "class A"])
def test_sample_json_round_trip_labels(y):
    s = Sample(seq=0, x={"a": 1.0}, y=y)
    back = decode_sample_json(encode_sample_json(s))
    assert back.y == y and type(back.y) is type(y)


def test_sample_json_accepts_numpy_scalars_and_writes_floats():
    s = Sample(seq=np.int64(3), x={"a": np.float32(0.5), "b": np.int64(2)}, y=np.int64(1))
    obj = json.loads(encode_sample_json(s))
    assert obj == {"seq": 3, "x": {"a": 0.5, "b": 2.0}, "y": 1}
    assert json.loads(encode_sample_json(Sample(seq=0, x={"a": 1}, y=np.bool_(True))))["y"] is True


def test_sample_json_leaves_out_unset_optionals_but_keeps_null_label():
    assert json.loads(encode_sample_json(Sample(seq=1, x={"a": 1.0}))) == {"seq": 1, "x": {"a": 1.0}, "y": None}


@pytest.mark.parametrize(
    "payload, field, value",
    [
        (b'{"seq": 0, "x": {"a": NaN}, "y": 1}', "<json>", "NaN"),
        (b'{"seq": 0, "x": {"a": Infinity}, "y": 1}', "<json>", "Infinity"),
        (b'{"seq": 0, "x": {"a": 1e999}, "y": 1}', "x['a']", "inf"),
        (b'{"seq": 0, "x": {"a": 1}}', "y", None),
        (b'{"x": {"a": 1}, "y": 1}', "seq", None),
        (b'{"seq": 0, "y": 1}', "x", None),
        (b'{"seq": 0, "x": {"a": 1}, "y": 1, "extra": 2}', "extra", "2"),
        (b'{"seq": "0", "x": {"a": 1}, "y": 1}', "seq", "'0'"),
        (b'{"seq": -1, "x": {"a": 1}, "y": 1}', "seq", "-1"),
        (b'{"seq": 1.5, "x": {"a": 1}, "y": 1}', "seq", "1.5"),
        (b'{"seq": true, "x": {"a": 1}, "y": 1}', "seq", "True"),
        (b'{"seq": 0, "x": {"a": "1"}, "y": 1}', "x['a']", "'1'"),
        (b'{"seq": 0, "x": {"a": true}, "y": 1}', "x['a']", "True"),
        (b'{"seq": 0, "x": {}, "y": 1}', "x", "0 features"),
        (b'{"seq": 0, "x": [1, 2], "y": 1}', "x", "[1, 2]"),
        (b'{"seq": 0, "x": {"a": 1}, "y": [1]}', "y", "[1]"),
        (b'{"seq": 0, "x": {"a": 1}, "y": {"c": 1}}', "y", "{'c': 1}"),
        (b'{"seq": 0, "x": {"a": 1}, "y": 1, "node": -2}', "node", "-2"),
        (b'{"seq": 0, "x": {"a": 1}, "y": 1, "ts": "now"}', "ts", "'now'"),
        (b'{"seq": 0, "x": {"a": 1}, "y": 1, "key": 5}', "key", "5"),
        (b'{"seq": 0, "x": {"a": 1, "a": 2}, "y": 1}', "a", "2"),
        (b'[1, 2]', "<root>", "[1, 2]"),
        (b'{"seq": 0, ', "<payload>", None),
        (b'\xff\xfe{}', "<payload>", None),
        (b"", "<payload>", None),
    ],
)
def test_sample_json_rejects_naming_field_and_value(payload, field, value):
    with pytest.raises(DecodeError) as info:
        decode_sample_json(payload)
    assert info.value.field == field
    assert repr(field) in str(info.value)
    if value is not None:
        assert value in str(info.value)


def test_sample_json_rejects_oversized_payload_before_parsing():
    big = b'{"seq": 0, "x": {"a": 1}, "y": "' + b"z" * MAX_SAMPLE_JSON_BYTES + b'"}'
    with pytest.raises(DecodeError, match="too large"):
        decode_sample_json(big)


def test_sample_json_rejects_deep_nesting_and_huge_integers():
    with pytest.raises(DecodeError):
        decode_sample_json(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(DecodeError, match="x\\['a'\\]"):
        decode_sample_json(b'{"seq": 0, "x": {"a": 1' + b"0" * 400 + b'}, "y": 1}')
    with pytest.raises(DecodeError):  # beyond Python's int digit limit
        decode_sample_json(b'{"seq": 1' + b"0" * 5000 + b', "x": {"a": 1}, "y": 1}')


def test_sample_json_encode_rejects_bad_values():
    with pytest.raises(EncodeError, match="x\\['a'\\]"):  # a NaN is a missing value (null); inf is not data
        encode_sample_json(Sample(seq=0, x={"a": float("inf")}))
    with pytest.raises(EncodeError, match="seq"):
        encode_sample_json(Sample(seq=-1, x={"a": 1.0}))
    with pytest.raises(EncodeError):
        encode_sample_json({"seq": 0, "x": {"a": 1.0}})


def test_codec_errors_are_streamlearn_value_errors():
    assert issubclass(DecodeError, StreamlearnError) and issubclass(DecodeError, ValueError)
    assert issubclass(EncodeError, StreamlearnError)


# ---------------------------------------------------------- binary sample batch
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
@pytest.mark.parametrize("labels", ["none", "index", "value"])
def test_sample_batch_round_trip(dtype, labels):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(37, 5))
    y = {"none": None, "index": rng.integers(0, 3, 37), "value": rng.normal(size=37)}[labels]
    names = [f"f{j}" for j in range(5)]
    data = encode_sample_batch(X, y, first_seq=1000, node=2, names=names, dtype=dtype)
    batch = decode_sample_batch(data, expected_names=names)
    np.testing.assert_array_equal(batch.X, X.astype(dtype))
    assert batch.X.dtype == np.dtype(dtype) and batch.X.shape == (37, 5)
    if y is None:
        assert batch.y is None
    elif labels == "index":
        assert batch.y.dtype == np.int32 and batch.y.tolist() == y.tolist()
    else:
        np.testing.assert_array_equal(batch.y, y.astype(np.float32))
    assert batch.first_seq == 1000 and batch.node == 2 and batch.names == tuple(names)
    assert batch.seqs.tolist() == list(range(1000, 1037))


@pytest.mark.parametrize("n", [0, 1, 65536, 65537])
def test_sample_batch_seqs_number_every_row_from_first_seq_whatever_the_size(n):
    batch = SampleBatch(X=np.zeros((n, 1), np.float32), y=None, first_seq=2**40)
    seqs = batch.seqs
    assert seqs.dtype == np.int64 and len(seqs) == n
    np.testing.assert_array_equal(seqs, np.arange(2**40, 2**40 + n))
    seqs[:] = 0  # a fresh array each time: the caller may write to it
    np.testing.assert_array_equal(batch.seqs, np.arange(2**40, 2**40 + n))


def test_sample_batch_layout_is_documented_size_and_zero_copy():
    X = np.arange(12, dtype=np.float32).reshape(4, 3)
    data = encode_sample_batch(X, [0, 1, 0, 1])
    assert len(data) == 48 + 4 * 3 * 4 + 4 * 4 + 4  # header(44)+pad(4), X, int32 labels, CRC32
    batch = decode_sample_batch(data)
    assert not batch.X.flags.writeable and not batch.X.flags.owndata  # a view of the record bytes
    writable = decode_sample_batch(bytearray(data))
    assert writable.X.flags.writeable and writable.X.ctypes.data % 8 == 0
    assert batch.names is None and batch.node is None


def test_sample_batch_names_can_be_left_out_but_hash_still_checked():
    X = np.ones((2, 2))
    data = encode_sample_batch(X, names=["a", "b"], include_names=False)
    batch = decode_sample_batch(data, expected_names=["a", "b"])
    assert batch.names is None
    with pytest.raises(DecodeError, match="differ from the expected"):
        decode_sample_batch(data, expected_names=["b", "a"])
    with pytest.raises(DecodeError, match="names_hash"):
        decode_sample_batch(encode_sample_batch(X), expected_names=["a", "b"])


def test_sample_batch_samples_bridge_to_river_dicts():
    data = encode_sample_batch([[1.0, 2.0], [3.0, 4.0]], [1, 0], first_seq=5, node=1, names=["a", "b"])
    rows = decode_sample_batch(data).samples(classes=["DOWN", "UP"])
    assert rows == [Sample(seq=5, x={"a": 1.0, "b": 2.0}, y="UP", node=1),
                    Sample(seq=6, x={"a": 3.0, "b": 4.0}, y="DOWN", node=1)]


def _valid_batch() -> bytes:
    return encode_sample_batch(np.ones((3, 2)), [0, 1, 2], names=["a", "b"])


def _patch(data: bytes, offset: int, fmt: str, value) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: b"XXXX" + d[4:], "bad magic"),
        (lambda d: _patch(d, 4, "<H", 9), "version"),
        (lambda d: _patch(d, 6, "<H", 6), "flags"),
        (lambda d: _patch(d, 8, "<B", 9), "dtype"),
        (lambda d: _patch(d, 9, "<B", 7), "label kind"),
        (lambda d: _patch(d, 16, "<I", 4), "size does not match"),
        (lambda d: _patch(d, 20, "<I", 0), "feature count"),
        (lambda d: d[:-1], "size does not match"),
        (lambda d: d[:20], "truncated"),
        (lambda d: d + b"\0", "size does not match"),
        (lambda d: d[:-8] + bytes([d[-8] ^ 1]) + d[-7:], "checksum"),
    ],
)
def test_sample_batch_rejects_corruption(mutate, match):
    with pytest.raises(DecodeError, match=match):
        decode_sample_batch(mutate(_valid_batch()))


def test_sample_batch_nonfinite_rejected_unless_allowed():
    X = np.array([[1.0, np.nan]])
    with pytest.raises(EncodeError, match="NaN"):
        encode_sample_batch(X)
    data = encode_sample_batch(X, allow_nonfinite=True)
    with pytest.raises(DecodeError, match="NaN or inf"):
        decode_sample_batch(data)
    assert np.isnan(decode_sample_batch(data, allow_nonfinite=True).X[0, 1])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(X=np.ones(3)), "2-D"),
        (dict(X=np.ones((2, 2)), y=[1, 2, 3]), "shape"),
        (dict(X=np.ones((2, 2)), y=["a", "b"]), "class indices"),
        (dict(X=np.ones((1, 2)), y=[2**40]), "int32"),
        (dict(X=np.ones((1, 2)), names=["a"]), "2 feature names"),
        (dict(X=np.ones((1, 2)), names=["a", "a"]), "unique"),
        (dict(X=np.ones((1, 2)), names=["a", "b\nc"]), "newline"),
        (dict(X=np.ones((1, 2)), dtype="int8"), "dtype"),
        (dict(X=np.array([["a", "b"]])), "numeric"),
    ],
)
def test_sample_batch_encode_rejects_bad_input(kwargs, match):
    with pytest.raises(EncodeError, match=match):
        encode_sample_batch(**kwargs)


# -------------------------------------------------------------- model message
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("shape", [(), (7,), (3, 4), (2, 1, 3)])
def test_model_round_trip_torch(dtype, shape):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    msg = decode_model(encode_model(w, node=5, version=99, is_reference=True, samples=1234))
    assert (msg.node, msg.version, msg.is_reference, msg.samples) == (5, 99, True, 1234)
    assert msg.shape == tuple(shape) and msg.dtype == np.dtype(str(dtype).replace("torch.", ""))
    t = msg.tensor("cpu")
    assert t.dtype == dtype and torch.equal(t, w)


def test_model_round_trip_numpy_and_broadcast_node():
    w = np.random.default_rng(0).normal(size=100).astype(">f8")  # big-endian input is written little-endian
    msg = decode_model(encode_model(w, node=None, version=0))
    assert msg.node is None and not msg.is_reference and msg.samples == 0
    np.testing.assert_array_equal(msg.array, w)
    assert msg.array.dtype == np.dtype("<f8")


def test_model_decode_is_zero_copy_and_tensor_default_device():
    encoded = encode_model(torch.arange(4.0), node=1, version=1)
    data = bytearray(encoded)
    msg = decode_model(data)
    t = msg.tensor("cpu")
    t[0] = 42.0  # shares memory with the writable record buffer
    assert msg.array[0] == 42.0
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert msg.tensor().device.type == expected
    ro = decode_model(encoded)
    t = ro.tensor("cpu")  # read-only bytes: copied, so writing is safe
    t[0] = 7.0
    assert not ro.array.flags.writeable and ro.array.tolist() == [0.0, 1.0, 2.0, 3.0]


def _valid_model() -> bytes:
    return encode_model(torch.arange(6.0).reshape(2, 3), node=1, version=2)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: b"SLSB" + d[4:], "bad magic"),
        (lambda d: _patch(d, 4, "<H", 2), "version"),
        (lambda d: _patch(d, 6, "<H", 2), "flags"),
        (lambda d: _patch(d, 8, "<B", 0), "dtype"),
        (lambda d: _patch(d, 9, "<B", 9), "dimensions"),
        (lambda d: _patch(d, 9, "<B", 3), "truncated inside its shape|disagrees"),
        (lambda d: _patch(d, 32, "<Q", 25), "disagrees"),  # payload length
        (lambda d: _patch(d, 40, "<Q", 3), "disagrees"),  # shape[0]
        (lambda d: d[:-5], "truncated"),
        (lambda d: d + b"\0\0\0\0", "longer"),
        (lambda d: d[:10], "truncated"),
        (lambda d: d[:70] + bytes([d[70] ^ 0x10]) + d[71:], "checksum"),
        (lambda d: _patch(d, 12, "<i", 7), "checksum"),  # header fields are covered too
    ],
)
def test_model_rejects_corruption(mutate, match):
    with pytest.raises(DecodeError, match=match):
        decode_model(mutate(_valid_model()))


def test_model_rejects_dtype_shape_mismatch_and_nonfinite():
    data = _valid_model()
    assert decode_model(data, expected_dtype="float32", expected_shape=(2, 3)).shape == (2, 3)
    with pytest.raises(DecodeError, match="dtype"):
        decode_model(data, expected_dtype=torch.float64)
    with pytest.raises(DecodeError, match="shape"):
        decode_model(data, expected_shape=(6,))
    with pytest.raises(EncodeError, match="NaN"):
        encode_model(torch.tensor([1.0, float("inf")]), node=0, version=0)
    bad = encode_model(torch.tensor([1.0, float("nan")]), node=0, version=0, allow_nonfinite=True)
    with pytest.raises(DecodeError, match="NaN or inf"):
        decode_model(bad)
    assert np.isnan(decode_model(bad, allow_nonfinite=True).array[1])


@pytest.mark.parametrize(
    "tensor, kwargs, match",
    [
        (torch.zeros(2, dtype=torch.int64), {}, "dtype"),
        (torch.zeros(2, dtype=torch.bfloat16), {}, "dtype"),
        (torch.zeros(2), {"node": -1}, "node"),
        (torch.zeros(2), {"version": -3}, "version"),
        (torch.zeros([1] * 9), {}, "dimensions"),
        ("weights", {}, "dtype"),
    ],
)
def test_model_encode_rejects_bad_input(tensor, kwargs, match):
    kw = {"node": 0, "version": 0, **kwargs}
    with pytest.raises(EncodeError, match=match):
        encode_model(tensor, **kw)


def test_model_encode_refuses_payload_over_limit(monkeypatch):
    monkeypatch.setattr(codecs, "MAX_MODEL_PAYLOAD_BYTES", 1000)
    with pytest.raises(EncodeError, match="larger than 1000"):
        encode_model(torch.zeros(251), node=0, version=0)


# --------------------------------------------------------- small JSON messages
@pytest.mark.parametrize(
    "msg",
    [
        DriftEvent(kind="sudden", ts=1.5, node=3, seq=100, params={"from": 0, "to": 1, "rate": 0.5}),
        DriftEvent(kind="gradual", ts=2.0),
        ControlCommand(command="inject_drift", target=2, args={"kind": "sudden", "nested": {"w": [1, 2.5, None]}},
                       id="c-1", ts=3.0),
        ControlCommand(command="stop"),
        Report(ts=4.0, step=10, metrics={"accuracy": 0.9, "bytes_sent": 1024}, node=0),
    ],
)
def test_message_round_trip(msg):
    data = encode_message(msg)
    assert decode_message(data) == msg
    assert decode_message(data, expect=msg.type) == msg
    assert record_kind(data) == "json"


@pytest.mark.parametrize(
    "payload, field",
    [
        (b'{"type": "drift", "kind": "sudden"}', "ts"),
        (b'{"type": "drift", "kind": "sudden", "ts": 1, "color": 1}', "color"),
        (b'{"type": "drift", "kind": "", "ts": 1}', "kind"),
        (b'{"type": "drift", "kind": "s", "ts": 1, "params": [1]}', "params"),
        (b'{"type": "drift", "kind": "s", "ts": 1, "params": {"a": {"b": 1e999}}}', "params.a.b"),
        (b'{"type": "control", "command": "Drop Tables"}', "command"),
        (b'{"type": "control", "command": "stop", "target": "all"}', "target"),
        (b'{"type": "report", "ts": 1, "step": 0, "metrics": {"acc": "high"}}', "metrics['acc']"),
        (b'{"type": "report", "ts": 1, "step": -1, "metrics": {}}', "step"),
        (b'{"type": "gossip"}', "type"),
        (b'{"kind": "sudden", "ts": 1}', "type"),
    ],
)
def test_message_rejects_naming_field(payload, field):
    with pytest.raises(DecodeError) as info:
        decode_message(payload)
    assert info.value.field == field


def test_message_expect_type_and_depth_limit():
    with pytest.raises(DecodeError, match="expected a 'drift'"):
        decode_message(b'{"type": "control", "command": "stop"}', expect="drift")
    deep = {"a": 1}
    for _ in range(10):
        deep = {"a": deep}
    with pytest.raises(DecodeError, match="nested deeper"):
        decode_message(json.dumps({"type": "control", "command": "x", "args": deep}).encode())
    with pytest.raises(EncodeError):
        encode_message(ControlCommand(command="x", args={"f": float("nan")}))


def test_record_kind_and_deadletter_headers():
    assert record_kind(_valid_batch()) == "sample_batch"
    assert record_kind(_valid_model()) == "model"
    assert record_kind(b'  \n{"seq": 1}') == "json"
    with pytest.raises(DecodeError, match="unknown record format"):
        record_kind(b"hello")
    headers = dict(codecs.deadletter_headers("bad", topic="t", partition=0, offset=9))
    assert headers == {"sl-error": b"bad", "sl-source-topic": b"t", "sl-source-partition": b"0",
                       "sl-source-offset": b"9"}


# ------------------------------------------------------------------- fuzzing
DECODERS = {
    "sample_json": decode_sample_json,
    "sample_batch": decode_sample_batch,
    "model": decode_model,
    "message": decode_message,
    "record_kind": record_kind,
    "status": decode_status,
}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


def _only_decode_error(decode, data):
    try:
        decode(data)
    except DecodeError:
        pass  # the only exception a decoder may raise


@pytest.mark.parametrize("name", DECODERS)
@FUZZ
@given(data=st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(name, data):
    _only_decode_error(DECODERS[name], data)


@pytest.mark.parametrize("name", DECODERS)
@FUZZ
@given(value=json_values)
def test_fuzz_arbitrary_json(name, value):
    _only_decode_error(DECODERS[name], json.dumps(value).encode())


# Valid records with one field replaced by arbitrary JSON: reaches the field checks.
@pytest.mark.parametrize("name", ["sample_json", "message", "status"])
@FUZZ
@given(field=st.sampled_from(["seq", "x", "y", "node", "key", "ts", "type", "kind", "params", "args", "metrics",
                              "step", "command", "target", "role"]), value=json_values, base=st.integers(0, 3))
def test_fuzz_near_valid_json(name, field, value, base):
    bases = [
        {"seq": 1, "x": {"a": 1.0}, "y": 1, "node": 0},
        {"type": "drift", "kind": "sudden", "ts": 1.0, "params": {}},
        {"type": "report", "ts": 1.0, "step": 1, "metrics": {"acc": 1.0}},
        {"type": "status", "role": "node", "ts": 1.0, "node": 0, "samples": 10},
    ]
    obj = dict(bases[base])
    obj[field] = value
    _only_decode_error(DECODERS[name], json.dumps(obj).encode())


# Valid binary records, truncated and with bytes overwritten: reaches the size and checksum checks.
@pytest.mark.parametrize("name", ["sample_batch", "model"])
@FUZZ
@given(cut=st.integers(0, 400), edits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=4),
       fix_crc=st.booleans())
def test_fuzz_mutated_binary(name, cut, edits, fix_crc):
    import zlib

    data = bytearray(_valid_batch() if name == "sample_batch" else _valid_model())
    for pos, byte in edits:
        if pos < len(data):
            data[pos] = byte
    data = data[: len(data) - cut % len(data)] if cut else data
    if fix_crc and len(data) > 4:  # a correct checksum forces the header checks to do the work
        struct.pack_into("<I", data, len(data) - 4, zlib.crc32(bytes(data[:-4])))
    _only_decode_error(DECODERS[name], bytes(data))


# ------------------------------------------------------- docs stay truthful
def test_examples_in_docs_schemas_decode():
    import re
    from pathlib import Path

    text = (Path(__file__).parents[2] / "docs" / "schemas.md").read_text()
    blocks = re.findall(r"```(json)?\n(.*?)```", text, flags=re.S)
    decoded = []
    for lang, body in blocks:
        if lang:
            data = body.strip().encode()
            if b'"type":"predictions"' in data.replace(b" ", b""):  # the nodes' predictions (kafka/predictions.py)
                from streamlearn.kafka.predictions import decode_predictions

                assert decode_predictions(data)["predictions"]
                continue
            if b'"who"' in data:  # a layout announcement (kafka/layout.py)
                from streamlearn.kafka.layout import Layout

                assert Layout.from_json(data).classes == ("ok", "fault")
                continue
            decoded.append(decode_message(data) if b'"type"' in data else decode_node_record(data))
        else:
            data = bytes.fromhex(body.replace("\n", " "))
            if data[:2] == b"SZ":  # the compressed delta example: sign, 4 parameters against a zero reference
                from streamlearn.sync.codec import unpack_delta

                codec, parts, tail, n, _ = unpack_delta(data, reference=torch.zeros(6), expected_d=6)
                assert codec.dequantize(parts, n)[0].tolist() == [0.75, -0.75, 0.75, 0.75]
                assert tail.tolist() == [2.0, 3.0]
                continue
            decoded.append(decode_sample_batch(data) if record_kind(data) == "sample_batch" else decode_model(data))
    kinds = [type(d).__name__ for d in decoded]
    assert kinds == ["Sample", "LabelRecord", "SampleBatch", "ModelMessage", "DriftEvent", "ControlCommand", "Report",
                     "ControlCommand"]
    assert decoded[1].key == "meter-7/2024-05-01T10:30" and decoded[1].y == "UP"
    assert decoded[2].X.tolist() == [[1.0, 2.0], [3.0, 4.0]] and decoded[2].names == ("a", "b")
    assert decoded[3].array.tolist() == [0.5, -1.0, 2.0] and (decoded[3].node, decoded[3].version) == (3, 12)
