"""Wire formats of streamlearn's Kafka records: samples, models and small JSON messages.

Pure functions from objects to bytes and back; no Kafka import, never pickle.
Every decoder validates what it reads and raises :class:`DecodeError` (naming
the field and the value) for anything it cannot use, and nothing else.
The formats are documented, with examples, in ``docs/schemas.md``.

Four formats:

* sample JSON, one reading per record (:func:`encode_sample_json`,
  :func:`decode_sample_json`), for people and connectors;
* binary sample batch (:func:`encode_sample_batch`, :func:`decode_sample_batch`):
  a header, raw little-endian float X, int32 or float32 labels, CRC32;
* model message (:func:`encode_model`, :func:`decode_model`): a header and the
  raw little-endian tensor bytes, CRC32;
* small JSON messages (:func:`encode_message`, :func:`decode_message`):
  drift events, control commands and reports.

Binary formats begin with a 4-byte magic (``SLSB``, ``SLMD``), JSON with
``{``, so one topic may carry both: :func:`record_kind` tells them apart.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import re
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence, Union

import numpy as np

from streamlearn.errors import StreamlearnError

__all__ = [
    "CodecError",
    "DecodeError",
    "EncodeError",
    "Sample",
    "SampleBatch",
    "ModelMessage",
    "DriftEvent",
    "ControlCommand",
    "Report",
    "encode_sample_json",
    "decode_sample_json",
    "encode_sample_batch",
    "decode_sample_batch",
    "encode_model",
    "decode_model",
    "encode_message",
    "decode_message",
    "record_kind",
    "deadletter_headers",
    "feature_names_hash",
    "SAMPLE_BATCH_MAGIC",
    "MODEL_MAGIC",
    "MAX_SAMPLE_JSON_BYTES",
    "MAX_SAMPLE_BATCH_BYTES",
    "MAX_MODEL_PAYLOAD_BYTES",
    "MAX_MESSAGE_JSON_BYTES",
]

# Limits. Topics are created with room for them (see topics.py).
MAX_SAMPLE_JSON_BYTES = 1 << 20  # one reading: 1 MiB is far more than any sensor sends
MAX_SAMPLE_BATCH_BYTES = 16 << 20
MAX_MODEL_PAYLOAD_BYTES = 64 << 20
MAX_MESSAGE_JSON_BYTES = 64 << 10
MAX_FEATURES = 10_000
MAX_NAME_CHARS = 256  # feature names, keys, string labels, metric names
MAX_TEXT_CHARS = 4096  # free strings inside params/args
MAX_JSON_DEPTH = 8  # nesting of params/args
MAX_MODEL_NDIM = 8

_INT64_MAX = (1 << 63) - 1
_INT32_MIN, _INT32_MAX = -(1 << 31), (1 << 31) - 1
_MISSING = object()


# --------------------------------------------------------------------- errors
class CodecError(StreamlearnError, ValueError):
    """A value cannot be encoded or decoded; names the field and the value.

    Attributes ``reason``, ``field`` and ``value`` hold the parts of the message.
    """

    def __init__(self, reason: str, *, field: str | None = None, value: Any = _MISSING):
        self.reason = reason
        self.field = field
        self.value = None if value is _MISSING else value
        where = []
        if field is not None:
            where.append(f"field {field!r}")
        if value is not _MISSING:
            where.append(f"value {_short(value)}")
        super().__init__(f"{reason} ({', '.join(where)})" if where else reason)


class DecodeError(CodecError):
    """Bytes read from a topic are not a valid record of the expected format."""


class EncodeError(CodecError):
    """An object cannot be written in a wire format (bad type, NaN, too large...)."""


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -------------------------------------------------------------- JSON plumbing
def _reject_constant(name: str):
    # json accepts NaN/Infinity literals by default; they are not JSON and not data.
    raise DecodeError("non-finite number literal is not allowed", field="<json>", value=name)


def _no_duplicate_keys(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise DecodeError("duplicate key in JSON object", field=key, value=value)
        obj[key] = value
    return obj


def _load_json(data, what: str, max_bytes: int):
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"{what} must be bytes", field="<payload>", value=type(data).__name__)
    size = memoryview(data).nbytes
    if size > max_bytes:
        raise DecodeError(f"{what} too large (limit {max_bytes} bytes)", field="<payload>", value=f"{size} bytes")
    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(f"{what} is not UTF-8: {exc.reason}", field="<payload>", value=bytes(data[:40])) from None
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicate_keys)
    except DecodeError:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, int digit limit, deep nesting
        raise DecodeError(f"{what} is not valid JSON: {exc}", field="<payload>", value=text[:40]) from None


def _dump_json(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


# ------------------------------------------------------------------ checkers
# Each checker takes the error class so encoders raise EncodeError and decoders DecodeError.
def _check_object(obj, fname: str, err, required: Iterable[str], optional: Iterable[str]) -> dict:
    if not isinstance(obj, dict):
        raise err(f"{fname} must be a JSON object", field="<root>", value=obj)
    required, optional = set(required), set(optional)
    for key in obj:
        if key not in required and key not in optional:
            raise err(f"unknown field in {fname}", field=key, value=obj[key])
    for key in sorted(required):
        if key not in obj:
            raise err(f"missing field in {fname}", field=key)
    return obj


def _check_int(v, fname: str, err, lo: int, hi: int, *, optional: bool = False) -> int | None:
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise err("must be an integer", field=fname, value=v)
    v = int(v)
    if not lo <= v <= hi:
        raise err(f"must be in [{lo}, {hi}]", field=fname, value=v)
    return v


def _check_number(v, fname: str, err, *, optional: bool = False) -> float | None:
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise err("must be a number", field=fname, value=v)
    try:
        f = float(v)
    except OverflowError:  # a JSON integer with hundreds of digits
        raise err("number out of float range", field=fname, value=v) from None
    if not math.isfinite(f):
        raise err("must be a finite number", field=fname, value=v)
    return f


def _check_str(v, fname: str, err, *, max_chars: int = MAX_NAME_CHARS, optional: bool = False) -> str | None:
    if v is None and optional:
        return None
    if not isinstance(v, str):
        raise err("must be a string", field=fname, value=v)
    if not v or len(v) > max_chars:
        raise err(f"must be a non-empty string of at most {max_chars} characters", field=fname, value=v)
    return v


def _check_label(v, fname: str, err):
    """A label: null, bool, integer class, string class or finite float target."""
    if v is None or isinstance(v, (bool, np.bool_)):
        return None if v is None else bool(v)
    if isinstance(v, numbers.Integral):
        return _check_int(v, fname, err, -_INT64_MAX - 1, _INT64_MAX)
    if isinstance(v, numbers.Real):
        return _check_number(v, fname, err)
    if isinstance(v, str):
        return _check_str(v, fname, err)
    raise err("label must be null, a boolean, a number or a string", field=fname, value=v)


def _check_tree(v, fname: str, err, depth: int = 0):
    """A small JSON value (params/args): finite numbers, bounded strings and nesting."""
    if depth > MAX_JSON_DEPTH:
        raise err(f"nested deeper than {MAX_JSON_DEPTH} levels", field=fname)
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, numbers.Integral):
        return _check_int(v, fname, err, -_INT64_MAX - 1, _INT64_MAX)
    if isinstance(v, numbers.Real):
        return _check_number(v, fname, err)
    if isinstance(v, str):
        if len(v) > MAX_TEXT_CHARS:
            raise err(f"string longer than {MAX_TEXT_CHARS} characters", field=fname, value=v)
        return v
    if isinstance(v, (list, tuple)):
        return [_check_tree(item, f"{fname}[{i}]", err, depth + 1) for i, item in enumerate(v)]
    if isinstance(v, dict):
        out = {}
        for key, item in v.items():
            _check_str(key, f"{fname} key", err)
            out[key] = _check_tree(item, f"{fname}.{key}", err, depth + 1)
        return out
    raise err("not a JSON value", field=fname, value=v)


# --------------------------------------------------------------- sample JSON
Label = Union[None, bool, int, float, str]


@dataclass(frozen=True)
class Sample:
    """One labelled reading of one node: river's ``(x, y)`` plus where it came from.

    Parameters
    ----------
    seq
        Position of the reading in its node's stream (0, 1, 2, ...).
    x
        Feature name to finite number, or None for a missing value (``null`` in JSON; a NaN is written so).
    y
        The label: a class (str, int, bool), a regression target (float) or
        None when the reading is unlabelled.
    node
        The node that produced it, if known.
    key
        Free identifier of the source (sensor id, machine name); also a good Kafka key.
    ts
        Event time, Unix seconds.
    """

    seq: int
    x: dict
    y: Label = None
    node: int | None = None
    key: str | None = None
    ts: float | None = None


_SAMPLE_REQUIRED = ("seq", "x", "y")
_SAMPLE_OPTIONAL = ("node", "key", "ts")


def _sample_from_obj(obj, err) -> Sample:
    _check_object(obj, "sample", err, _SAMPLE_REQUIRED, _SAMPLE_OPTIONAL)
    x = obj["x"]
    if not isinstance(x, Mapping):
        raise err("must be an object of feature name to number", field="x", value=x)
    if not 1 <= len(x) <= MAX_FEATURES:
        raise err(f"must hold 1 to {MAX_FEATURES} features", field="x", value=f"{len(x)} features")
    clean = {}
    for name, value in x.items():
        _check_str(name, "x key", err)
        if isinstance(value, float) and math.isnan(value):
            value = None  # a missing value (encoding a NaN): null in JSON
        clean[name] = _check_number(value, f"x[{name!r}]", err, optional=True)
    return Sample(
        seq=_check_int(obj["seq"], "seq", err, 0, _INT64_MAX),
        x=clean,
        y=_check_label(obj["y"], "y", err),
        node=_check_int(obj.get("node"), "node", err, 0, _INT32_MAX, optional=True),
        key=_check_str(obj.get("key"), "key", err, optional=True),
        ts=_check_number(obj.get("ts"), "ts", err, optional=True),
    )


def encode_sample_json(sample: Sample) -> bytes:
    """Encode one reading as compact UTF-8 JSON (schema in docs/schemas.md).

    Optional fields that are None are left out; ``y`` is always written.

    Examples
    --------
    >>> data = encode_sample_json(Sample(seq=7, x={"temp": 21.5, "load": 1}, y="UP", node=2))
    >>> data
    b'{"node":2,"seq":7,"x":{"temp":21.5,"load":1.0},"y":"UP"}'
    >>> decode_sample_json(data).x
    {'temp': 21.5, 'load': 1.0}
    """
    if not isinstance(sample, Sample):
        raise EncodeError("expected a Sample", field="<root>", value=type(sample).__name__)
    obj = {"node": sample.node, "seq": sample.seq, "ts": sample.ts, "key": sample.key, "x": sample.x, "y": sample.y}
    obj = {k: v for k, v in obj.items() if v is not None or k == "y"}
    clean = _sample_from_obj(obj, EncodeError)
    out = {k: getattr(clean, k) for k in obj}
    data = _dump_json(out)
    if len(data) > MAX_SAMPLE_JSON_BYTES:
        raise EncodeError("sample too large", field="<payload>", value=f"{len(data)} bytes")
    return data


def decode_sample_json(data: bytes) -> Sample:
    """Decode and validate one JSON reading; raise :class:`DecodeError` if it is unusable.

    Examples
    --------
    >>> decode_sample_json(b'{"seq": 0, "x": {"a": 1.5}, "y": null}')
    Sample(seq=0, x={'a': 1.5}, y=None, node=None, key=None, ts=None)
    >>> decode_sample_json(b'{"seq": 0, "x": {"a": NaN}, "y": 1}')
    Traceback (most recent call last):
    ...
    streamlearn.kafka.codecs.DecodeError: non-finite number literal is not allowed (field '<json>', value 'NaN')
    """
    return _sample_from_obj(_load_json(data, "sample", MAX_SAMPLE_JSON_BYTES), DecodeError)


# ----------------------------------------------------- dtypes of binary formats
_DTYPE_CODES = {1: np.dtype("<f4"), 2: np.dtype("<f8"), 3: np.dtype("<f2")}
_CODE_OF_DTYPE = {dt.name: code for code, dt in _DTYPE_CODES.items()}


def _dtype_code(dtype, err, fname: str) -> int:
    name = str(dtype).replace("torch.", "")
    try:
        name = np.dtype(name).name
    except TypeError:
        pass
    if name not in _CODE_OF_DTYPE:
        raise err("dtype must be float16, float32 or float64", field=fname, value=str(dtype))
    return _CODE_OF_DTYPE[name]


def _as_bytes_view(data, what: str) -> memoryview:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"{what} must be bytes", field="<payload>", value=type(data).__name__)
    view = memoryview(data)
    if not view.c_contiguous:
        raise DecodeError(f"{what} buffer must be contiguous", field="<payload>")
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return view


# ------------------------------------------------------- binary sample batch
SAMPLE_BATCH_MAGIC = b"SLSB"
SAMPLE_BATCH_VERSION = 1
# magic, version, flags, dtype code, label kind, reserved, node, n, f, first seq,
# feature-names hash, names block length
_BATCH_HEADER = struct.Struct("<4sHHBBHiIIQ8sI")
_FLAG_NAMES = 1
_LABEL_NONE, _LABEL_INDEX, _LABEL_VALUE = 0, 1, 2
_LABEL_DTYPES = {_LABEL_INDEX: np.dtype("<i4"), _LABEL_VALUE: np.dtype("<f4")}
_CRC = struct.Struct("<I")


def feature_names_hash(names: Sequence[str]) -> bytes:
    """8-byte BLAKE2b digest of the feature names, in order (the batch's schema id).

    Examples
    --------
    >>> feature_names_hash(["temp", "load"]).hex()
    'ef8b57e009d2d1cb'
    """
    return hashlib.blake2b("\n".join(names).encode("utf-8"), digest_size=8).digest()


def _check_names(names, f: int, err) -> tuple:
    if isinstance(names, str) or not isinstance(names, Sequence):
        raise err("feature names must be a sequence of strings", field="names", value=names)
    names = tuple(names)
    if len(names) != f:
        raise err(f"expected {f} feature names", field="names", value=f"{len(names)} names")
    for i, name in enumerate(names):
        _check_str(name, f"names[{i}]", err)
        if "\n" in name:
            raise err("feature name must not contain a newline", field=f"names[{i}]", value=name)
    if len(set(names)) != len(names):
        raise err("feature names must be unique", field="names", value=names)
    return names


_COUNT = np.arange(1 << 16, dtype=np.int64)  # 0, 1, 2, ...: SampleBatch.seqs


@dataclass(frozen=True, eq=False)
class SampleBatch:
    """n readings of one node with the same f features, as arrays.

    ``X`` (n, f) and ``y`` (n,) are zero-copy, read-only views of the record
    bytes when decoded; copy them before writing. ``y`` holds int32 class
    indices or float32 targets, or is None for unlabelled readings. The class
    index to label mapping is part of the stream's schema, like the feature names.
    """

    X: np.ndarray
    y: np.ndarray | None
    first_seq: int
    node: int | None = None
    names: tuple | None = None
    names_hash: bytes = bytes(8)

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @property
    def f(self) -> int:
        return int(self.X.shape[1])

    @property
    def seqs(self) -> np.ndarray:
        """Sequence number of every row."""
        # a slice plus an offset, not np.arange: arange lets go of the GIL, and getting it back from kafka-python's
        # I/O thread costs the node more than the arange itself
        n = self.n
        if n > len(_COUNT):
            return np.arange(self.first_seq, self.first_seq + n, dtype=np.int64)
        return _COUNT[:n] + self.first_seq

    def samples(self, classes: Sequence | None = None) -> list:
        """The rows as :class:`Sample` objects (river-style dicts), e.g. for a river learner.

        ``classes`` maps class indices to labels; features are named ``x0, x1, ...``
        when the batch carries no names.
        """
        names = self.names or tuple(f"x{j}" for j in range(self.f))
        rows = self.X.tolist()
        ys = [None] * self.n if self.y is None else self.y.tolist()
        if classes is not None and self.y is not None and self.y.dtype.kind == "i":
            ys = [classes[i] for i in ys]
        return [
            Sample(seq=self.first_seq + i, x=dict(zip(names, row)), y=ys[i], node=self.node)
            for i, row in enumerate(rows)
        ]


def encode_sample_batch(
    X,
    y=None,
    *,
    first_seq: int = 0,
    node: int | None = None,
    names: Sequence[str] | None = None,
    include_names: bool = True,
    dtype: str = "float32",
    allow_nonfinite: bool = False,
    allow_missing: bool = False,
) -> bytes:
    """Encode n readings as one binary record (layout in docs/schemas.md).

    Parameters
    ----------
    X
        (n, f) array-like of numbers; written as little-endian ``dtype``.
    y
        None, n integer class indices (written as int32) or n float targets (float32).
    first_seq
        Sequence number of the first row; row i has ``first_seq + i``.
    node
        The node the readings belong to, if known.
    names
        The f feature names. Their hash is always written when given; the names
        themselves only when ``include_names`` (leave them out to save bytes once
        the receiver knows the schema).
    dtype
        float32 (default), float64 or float16.
    allow_nonfinite
        Accept NaN/inf in X and y (e.g. missing sensor values).
    allow_missing
        Accept NaN in X as a missing value (inf still refused).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> data = encode_sample_batch(rng.normal(size=(4, 2)), [0, 1, 1, 0], first_seq=100, names=["a", "b"])
    >>> batch = decode_sample_batch(data, expected_names=["a", "b"])
    >>> batch.X.shape, batch.y.tolist(), batch.seqs.tolist()
    ((4, 2), [0, 1, 1, 0], [100, 101, 102, 103])
    """
    err = EncodeError
    code = _dtype_code(dtype, err, "dtype")
    xdt = _DTYPE_CODES[code]
    try:
        X = np.asarray(X)
    except Exception as exc:  # ragged lists and the like
        raise err(f"X is not an array: {exc}", field="X") from None
    if X.ndim != 2 or X.shape[1] < 1:
        raise err("X must be 2-D with at least one feature", field="X", value=X.shape)
    if X.dtype.kind not in "biuf":
        raise err("X must be numeric", field="X", value=str(X.dtype))
    n, f = X.shape
    if f > MAX_FEATURES:
        raise err(f"more than {MAX_FEATURES} features", field="X", value=X.shape)
    X = np.ascontiguousarray(X, dtype=xdt)
    if not allow_nonfinite and not np.isfinite(X).all():
        if not allow_missing or np.isinf(X).any():
            raise err("X holds NaN or inf", field="X", value=X[~np.isfinite(X)][:3].tolist())

    kind, ybytes = _LABEL_NONE, b""
    if y is not None:
        y = np.asarray(y)
        if y.shape != (n,):
            raise err(f"y must have shape ({n},)", field="y", value=y.shape)
        if y.dtype.kind in "biu":
            if n and (y.min() < _INT32_MIN or y.max() > _INT32_MAX):
                raise err("class index out of int32 range", field="y", value=[int(y.min()), int(y.max())])
            kind = _LABEL_INDEX
        elif y.dtype.kind == "f":
            kind = _LABEL_VALUE
        else:
            raise err("y must hold integer class indices or float targets", field="y", value=str(y.dtype))
        y = np.ascontiguousarray(y, dtype=_LABEL_DTYPES[kind])
        if kind == _LABEL_VALUE and not allow_nonfinite and not np.isfinite(y).all():
            raise err("y holds NaN or inf", field="y", value=y[~np.isfinite(y)][:3].tolist())
        ybytes = y.tobytes()

    flags, block, digest = 0, b"", bytes(8)
    if names is not None:
        names = _check_names(names, f, err)
        digest = feature_names_hash(names)
        if include_names:
            flags |= _FLAG_NAMES
            block = "\n".join(names).encode("utf-8")
    node_field = -1 if node is None else _check_int(node, "node", err, 0, _INT32_MAX)
    first_seq = _check_int(first_seq, "first_seq", err, 0, _INT64_MAX - max(n, 1))
    header = _BATCH_HEADER.pack(
        SAMPLE_BATCH_MAGIC, SAMPLE_BATCH_VERSION, flags, code, kind, 0, node_field, n, f, first_seq, digest, len(block)
    )
    pad = b"\0" * (-(len(header) + len(block)) % 8)  # X starts 8-byte aligned
    body = b"".join((header, block, pad, memoryview(X).cast("B"), ybytes))
    if len(body) + _CRC.size > MAX_SAMPLE_BATCH_BYTES:
        raise err(f"batch larger than {MAX_SAMPLE_BATCH_BYTES} bytes; split it", field="X", value=X.shape)
    return body + _CRC.pack(zlib.crc32(body))


def decode_sample_batch(
    data: bytes, *, expected_names: Sequence[str] | None = None, allow_nonfinite: bool = False,
    allow_missing: bool = False,
) -> SampleBatch:
    """Decode a binary sample batch; X and y are zero-copy views of ``data``.

    Checks magic, version, flags, dtype, sizes, the feature names and their hash
    (against ``expected_names`` when given), the CRC32 and, unless
    ``allow_nonfinite``, that every value is finite. Raises :class:`DecodeError`.
    """
    err = DecodeError
    view = _as_bytes_view(data, "sample batch")
    size = view.nbytes
    if size < _BATCH_HEADER.size + _CRC.size:
        raise err("sample batch truncated: shorter than its header", field="<payload>", value=f"{size} bytes")
    magic, version, flags, code, kind, reserved, node, n, f, first_seq, digest, names_len = _BATCH_HEADER.unpack_from(
        view, 0
    )
    if magic != SAMPLE_BATCH_MAGIC:
        raise err("not a sample batch: bad magic", field="magic", value=bytes(magic))
    if version != SAMPLE_BATCH_VERSION:
        raise err("unsupported sample batch version", field="version", value=version)
    if flags & ~_FLAG_NAMES or reserved:
        raise err("unknown flags set", field="flags", value=flags)
    if code not in _DTYPE_CODES:
        raise err("unknown dtype code", field="dtype", value=code)
    if kind not in (_LABEL_NONE, _LABEL_INDEX, _LABEL_VALUE):
        raise err("unknown label kind", field="label_kind", value=kind)
    if not 1 <= f <= MAX_FEATURES:
        raise err(f"feature count must be in [1, {MAX_FEATURES}]", field="f", value=f)
    if node != -1 and node < 0:
        raise err("node must be >= 0 or -1 (unknown)", field="node", value=node)
    if first_seq > _INT64_MAX - n:
        raise err("first seq out of int64 range", field="first_seq", value=first_seq)
    if bool(flags & _FLAG_NAMES) != (names_len > 0):
        raise err("names flag and names length disagree", field="names_len", value=names_len)
    xdt = _DTYPE_CODES[code]
    ydt = _LABEL_DTYPES.get(kind)
    x_off = _BATCH_HEADER.size + names_len
    x_off += -x_off % 8
    x_len = n * f * xdt.itemsize
    y_len = n * ydt.itemsize if ydt is not None else 0
    expected = x_off + x_len + y_len + _CRC.size
    if size != expected:
        raise err(f"sample batch size does not match its header (expected {expected} bytes)", field="<payload>",
                  value=f"{size} bytes")
    (crc,) = _CRC.unpack_from(view, size - _CRC.size)
    if zlib.crc32(view[: size - _CRC.size]) != crc:
        raise err("checksum mismatch: sample batch corrupted", field="crc32", value=crc)

    names = None
    if names_len:
        try:
            text = bytes(view[_BATCH_HEADER.size: _BATCH_HEADER.size + names_len]).decode("utf-8")
        except UnicodeDecodeError:
            raise err("feature names are not UTF-8", field="names") from None
        names = _check_names(text.split("\n"), f, err)
        if feature_names_hash(names) != digest:
            raise err("feature names do not match their hash", field="names_hash", value=digest.hex())
    if expected_names is not None:
        want = feature_names_hash(list(expected_names))
        if digest != want:
            raise err(f"feature names differ from the expected ones (hash {want.hex()})", field="names_hash",
                      value=digest.hex())

    X = np.frombuffer(view, dtype=xdt, count=n * f, offset=x_off).reshape(n, f)
    y = np.frombuffer(view, dtype=ydt, count=n, offset=x_off + x_len) if ydt is not None else None
    if not allow_nonfinite:
        # allow_missing: NaN in X is a missing value (the node imputes or skips it); inf is never data
        if not (np.isfinite(X) | np.isnan(X) if allow_missing else np.isfinite(X)).all():
            bad = np.isinf(X) if allow_missing else ~np.isfinite(X)
            raise err("X holds NaN or inf" if not allow_missing else "X holds inf", field="X",
                      value=X[bad][:3].tolist())
        if y is not None and kind == _LABEL_VALUE and not np.isfinite(y).all():
            raise err("y holds NaN or inf", field="y", value=y[~np.isfinite(y)][:3].tolist())
    return SampleBatch(X=X, y=y, first_seq=first_seq, node=None if node == -1 else node, names=names,
                       names_hash=digest)


# -------------------------------------------------------------- model message
MODEL_MAGIC = b"SLMD"
MODEL_VERSION = 1
# magic, format version, flags, dtype code, ndim, reserved, node, model version,
# samples seen, payload length
_MODEL_HEADER = struct.Struct("<4sHHBBHiQQQ")
_FLAG_REFERENCE = 1


@dataclass(frozen=True, eq=False)
class ModelMessage:
    """A model (flat parameter vector or any tensor) with who sent it and which version.

    ``array`` is a zero-copy numpy view of the record bytes (read-only when
    decoded from ``bytes``); :meth:`tensor` gives a torch tensor.

    ``node`` is the sender on ``sync.up`` and the addressee on ``sync.down``
    (None: every node). ``version`` is the sender's model version or step,
    ``samples`` the number of samples the model has learned from (FedAvg weights),
    ``is_reference`` marks a full-sync result every node takes as its reference.
    """

    array: np.ndarray
    node: int | None
    version: int
    is_reference: bool = False
    samples: int = 0

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    @property
    def shape(self) -> tuple:
        return self.array.shape

    def tensor(self, device=None):
        """The model as a torch tensor on ``device`` (None: cuda when available, else cpu).

        Zero-copy on cpu when the record buffer is writable (``bytearray``);
        a read-only buffer (``bytes``) is copied, since torch tensors must be writable.
        """
        import torch

        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        t = torch.from_numpy(self.array) if self.array.flags.writeable else torch.tensor(self.array)
        return t.to(device)


def _to_numpy(tensor) -> np.ndarray:
    if hasattr(tensor, "detach") and hasattr(tensor, "cpu"):  # torch.Tensor, without importing torch
        tensor = tensor.detach().cpu()
        if str(tensor.dtype) == "torch.bfloat16":
            raise EncodeError("dtype must be float16, float32 or float64", field="dtype", value=str(tensor.dtype))
        return tensor.contiguous().numpy()
    return np.asarray(tensor)


def encode_model(
    tensor,
    node: int | None,
    version: int,
    *,
    is_reference: bool = False,
    samples: int = 0,
    allow_nonfinite: bool = False,
) -> bytes:
    """Encode a model tensor (torch or numpy, float16/32/64, any device) with its header.

    Layout: header, shape (ndim x uint64), raw little-endian tensor bytes, CRC32
    of everything before it (docs/schemas.md). Payloads above
    ``MAX_MODEL_PAYLOAD_BYTES`` (64 MiB) are refused.

    Examples
    --------
    >>> import torch
    >>> w = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    >>> msg = decode_model(encode_model(w, node=3, version=10, samples=500))
    >>> msg.node, msg.version, msg.samples, msg.shape
    (3, 10, 500, (2, 3))
    >>> msg.tensor("cpu").sum().item()
    15.0
    """
    err = EncodeError
    try:
        arr = _to_numpy(tensor)
    except EncodeError:
        raise
    except Exception as exc:
        raise err(f"not a tensor: {exc}", field="tensor", value=type(tensor).__name__) from None
    code = _dtype_code(arr.dtype, err, "dtype")
    if arr.ndim > MAX_MODEL_NDIM:
        raise err(f"more than {MAX_MODEL_NDIM} dimensions", field="shape", value=arr.shape)
    arr = arr.astype(_DTYPE_CODES[code], order="C", copy=False)  # keeps 0-d, unlike ascontiguousarray
    if arr.nbytes > MAX_MODEL_PAYLOAD_BYTES:
        raise err(f"model larger than {MAX_MODEL_PAYLOAD_BYTES} bytes", field="tensor", value=f"{arr.nbytes} bytes")
    if not allow_nonfinite and not np.isfinite(arr).all():
        raise err("model holds NaN or inf", field="tensor", value=arr[~np.isfinite(arr)][:3].tolist())
    node_field = -1 if node is None else _check_int(node, "node", err, 0, _INT32_MAX)
    version = _check_int(version, "version", err, 0, _INT64_MAX)
    samples = _check_int(samples, "samples", err, 0, _INT64_MAX)
    flags = _FLAG_REFERENCE if is_reference else 0
    header = _MODEL_HEADER.pack(MODEL_MAGIC, MODEL_VERSION, flags, code, arr.ndim, 0, node_field, version, samples,
                                arr.nbytes)
    header += struct.pack(f"<{arr.ndim}Q", *arr.shape)
    payload = memoryview(arr.reshape(-1)).cast("B")
    crc = zlib.crc32(payload, zlib.crc32(header))
    return b"".join((header, payload, _CRC.pack(crc)))


def decode_model(
    data: bytes,
    *,
    expected_dtype=None,
    expected_shape: Sequence[int] | None = None,
    allow_nonfinite: bool = False,
) -> ModelMessage:
    """Decode a model message; the tensor is a zero-copy view of ``data``.

    Rejects, with :class:`DecodeError`: bad magic or version, unknown flags or
    dtype, a truncated or overlong record, a payload whose size disagrees with
    dtype x shape, a checksum mismatch, a dtype or shape other than
    ``expected_dtype``/``expected_shape``, and NaN/inf unless ``allow_nonfinite``.
    """
    err = DecodeError
    view = _as_bytes_view(data, "model message")
    size = view.nbytes
    if size < _MODEL_HEADER.size + _CRC.size:
        raise err("model message truncated: shorter than its header", field="<payload>", value=f"{size} bytes")
    magic, fmt, flags, code, ndim, reserved, node, version, samples, payload_len = _MODEL_HEADER.unpack_from(view, 0)
    if magic != MODEL_MAGIC:
        raise err("not a model message: bad magic", field="magic", value=bytes(magic))
    if fmt != MODEL_VERSION:
        raise err("unsupported model message version", field="format_version", value=fmt)
    if flags & ~_FLAG_REFERENCE or reserved:
        raise err("unknown flags set", field="flags", value=flags)
    if code not in _DTYPE_CODES:
        raise err("unknown dtype code", field="dtype", value=code)
    if ndim > MAX_MODEL_NDIM:
        raise err(f"more than {MAX_MODEL_NDIM} dimensions", field="ndim", value=ndim)
    if node != -1 and node < 0:
        raise err("node must be >= 0 or -1 (all)", field="node", value=node)
    if version > _INT64_MAX or samples > _INT64_MAX:
        raise err("version/samples out of int64 range", field="version", value=version)
    off = _MODEL_HEADER.size + 8 * ndim
    if size < off + _CRC.size:
        raise err("model message truncated inside its shape", field="<payload>", value=f"{size} bytes")
    shape = struct.unpack_from(f"<{ndim}Q", view, _MODEL_HEADER.size)
    dt = _DTYPE_CODES[code]
    if math.prod(shape) * dt.itemsize != payload_len:
        raise err(f"payload length disagrees with dtype {dt.name} and shape {shape}", field="payload_len",
                  value=payload_len)
    if size != off + payload_len + _CRC.size:
        what = "truncated" if size < off + payload_len + _CRC.size else "longer than its header says"
        raise err(f"model message {what}", field="<payload>", value=f"{size} bytes")
    (crc,) = _CRC.unpack_from(view, size - _CRC.size)
    if zlib.crc32(view[: size - _CRC.size]) != crc:
        raise err("checksum mismatch: model message corrupted", field="crc32", value=crc)
    if expected_dtype is not None and _dtype_code(expected_dtype, err, "expected_dtype") != code:
        raise err(f"dtype is not {expected_dtype}", field="dtype", value=dt.name)
    if expected_shape is not None and tuple(expected_shape) != shape:
        raise err(f"shape is not {tuple(expected_shape)}", field="shape", value=shape)
    arr = np.frombuffer(view, dtype=dt, count=math.prod(shape), offset=off).reshape(shape)
    if not allow_nonfinite and not np.isfinite(arr).all():
        raise err("model holds NaN or inf", field="tensor", value=arr[~np.isfinite(arr)][:3].tolist())
    return ModelMessage(array=arr, node=None if node == -1 else node, version=version,
                        is_reference=bool(flags & _FLAG_REFERENCE), samples=samples)


# ------------------------------------------------------ small JSON messages
_COMMAND_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@dataclass(frozen=True)
class DriftEvent:
    """Ground truth of one injected drift: when, where, what kind, with which parameters.

    ``node`` None means every node; ``seq`` is the first sample of the node's
    stream drawn from the new concept, when known.
    """

    kind: str
    ts: float
    node: int | None = None
    seq: int | None = None
    params: dict = field(default_factory=dict)

    type = "drift"


@dataclass(frozen=True)
class ControlCommand:
    """A command to the running services, e.g. ``inject_drift`` or ``stop``.

    ``target`` None means every node; ``args`` holds the command's arguments;
    ``id`` lets an answer or a log line refer to the command.
    """

    command: str
    target: int | None = None
    args: dict = field(default_factory=dict)
    id: str | None = None
    ts: float | None = None

    type = "control"


@dataclass(frozen=True)
class Report:
    """Numbers a node or service reports at a step, e.g. accuracy, divergence, bytes sent."""

    ts: float
    step: int
    metrics: dict
    node: int | None = None

    type = "report"


Message = Union[DriftEvent, ControlCommand, Report]
_MESSAGE_TYPES = {cls.type: cls for cls in (DriftEvent, ControlCommand, Report)}


def _message_from_obj(obj, err, expect: str | None) -> Message:
    if not isinstance(obj, dict):
        raise err("message must be a JSON object", field="<root>", value=obj)
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in _MESSAGE_TYPES:
        raise err(f"type must be one of {sorted(_MESSAGE_TYPES)}", field="type", value=kind)
    if expect is not None and kind != expect:
        raise err(f"expected a {expect!r} message", field="type", value=kind)
    if kind == "drift":
        _check_object(obj, "drift event", err, ("type", "kind", "ts"), ("node", "seq", "params"))
        return DriftEvent(
            kind=_check_str(obj["kind"], "kind", err),
            ts=_check_number(obj["ts"], "ts", err),
            node=_check_int(obj.get("node"), "node", err, 0, _INT32_MAX, optional=True),
            seq=_check_int(obj.get("seq"), "seq", err, 0, _INT64_MAX, optional=True),
            params=_check_params(obj.get("params", {}), "params", err),
        )
    if kind == "control":
        _check_object(obj, "control command", err, ("type", "command"), ("target", "args", "id", "ts"))
        command = _check_str(obj["command"], "command", err)
        if not _COMMAND_RE.match(command):
            raise err("command must be a lower_snake_case name", field="command", value=command)
        return ControlCommand(
            command=command,
            target=_check_int(obj.get("target"), "target", err, 0, _INT32_MAX, optional=True),
            args=_check_params(obj.get("args", {}), "args", err),
            id=_check_str(obj.get("id"), "id", err, optional=True),
            ts=_check_number(obj.get("ts"), "ts", err, optional=True),
        )
    _check_object(obj, "report", err, ("type", "ts", "step", "metrics"), ("node",))
    metrics = obj["metrics"]
    if not isinstance(metrics, Mapping):
        raise err("must be an object of metric name to number", field="metrics", value=metrics)
    return Report(
        ts=_check_number(obj["ts"], "ts", err),
        step=_check_int(obj["step"], "step", err, 0, _INT64_MAX),
        metrics={_check_str(k, "metrics key", err): _check_number(v, f"metrics[{k!r}]", err)
                 for k, v in metrics.items()},
        node=_check_int(obj.get("node"), "node", err, 0, _INT32_MAX, optional=True),
    )


def _check_params(v, fname: str, err) -> dict:
    if not isinstance(v, Mapping):
        raise err("must be a JSON object", field=fname, value=v)
    return _check_tree(dict(v), fname, err)


def encode_message(msg: Message) -> bytes:
    """Encode a :class:`DriftEvent`, :class:`ControlCommand` or :class:`Report` as JSON.

    Examples
    --------
    >>> data = encode_message(DriftEvent(kind="sudden", ts=1700000000.0, node=1, seq=5000, params={"to": 2}))
    >>> data
    b'{"type":"drift","kind":"sudden","ts":1700000000.0,"node":1,"seq":5000,"params":{"to":2}}'
    >>> decode_message(data, expect="drift").seq
    5000
    """
    if not isinstance(msg, tuple(_MESSAGE_TYPES.values())):
        raise EncodeError("expected a DriftEvent, ControlCommand or Report", field="<root>", value=type(msg).__name__)
    obj = {"type": msg.type}
    obj.update((k, v) for k, v in vars(msg).items() if v is not None)
    clean = _message_from_obj(obj, EncodeError, None)
    data = _dump_json({"type": msg.type, **{k: v for k, v in vars(clean).items() if v is not None}})
    if len(data) > MAX_MESSAGE_JSON_BYTES:
        raise EncodeError("message too large", field="<payload>", value=f"{len(data)} bytes")
    return data


def decode_message(data: bytes, *, expect: str | None = None) -> Message:
    """Decode a drift event, control command or report; ``expect`` requires one ``type``.

    Examples
    --------
    >>> decode_message(b'{"type": "control", "command": "stop"}')
    ControlCommand(command='stop', target=None, args={}, id=None, ts=None)
    """
    if expect is not None and expect not in _MESSAGE_TYPES:
        raise ValueError(f"expect must be one of {sorted(_MESSAGE_TYPES)}, not {expect!r}")
    return _message_from_obj(_load_json(data, "message", MAX_MESSAGE_JSON_BYTES), DecodeError, expect)


# ------------------------------------------------------------------ helpers
def record_kind(data: bytes) -> str:
    """Which format a record is in: ``"sample_batch"``, ``"model"`` or ``"json"``.

    Only looks at the first bytes; the matching decoder still validates the rest.

    Examples
    --------
    >>> record_kind(b'{"seq": 0, "x": {"a": 1}, "y": 1}'), record_kind(b"SLSB...")
    ('json', 'sample_batch')
    """
    view = _as_bytes_view(data, "record")
    head = bytes(view[:4])
    if head == SAMPLE_BATCH_MAGIC:
        return "sample_batch"
    if head == MODEL_MAGIC:
        return "model"
    if bytes(view[:64]).lstrip(b" \t\r\n").startswith(b"{"):
        return "json"
    raise DecodeError("unknown record format", field="<payload>", value=head)


def deadletter_headers(reason: str, *, topic: str, partition: int, offset: int) -> list:
    """Kafka headers for a record forwarded unchanged to the deadletter topic.

    Examples
    --------
    >>> deadletter_headers("bad magic", topic="streamlearn.samples.0", partition=0, offset=12)[0]
    ('sl-error', b'bad magic')
    """
    return [
        ("sl-error", reason.encode("utf-8")[:1024]),
        ("sl-source-topic", topic.encode("utf-8")),
        ("sl-source-partition", str(int(partition)).encode()),
        ("sl-source-offset", str(int(offset)).encode()),
    ]
