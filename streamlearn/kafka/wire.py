"""The node <-> sync service message layer: one binary envelope for every record on the sync topics.

A sync message is a small header, optionally followed by a model message
(:func:`~streamlearn.kafka.codecs.encode_model`, with its own CRC32) or, when flag bit 0
(:data:`FLAG_DELTA`) is set, by a compressed delta to the receiver's reference
(:func:`~streamlearn.sync.codec.pack_delta`: its own magic ``SZ``, version, tag of the reference
and CRC32). The header comes in two versions, told apart by the version field::

    v1: magic "SLSY" | version u16 = 1 | flags u16 | header length u32 | header JSON | [model | delta]
    v2: magic "SLSY" | version u16 = 2 | flags u16 | kind u8 | fields the flags name | [model | delta]

Version 2 (:data:`SYNC_VERSION_BINARY`) is a fixed little-endian binary header for the kinds that
carry models on the hot path (:data:`BINARY_KINDS`: ``report``, ``model``, ``send``): 9 bytes, then
only the fields that are set (node, step, n_samples, request, loss, targets, epoch), their widths
chosen by flag bits; ``reference`` and ``reason`` (``sync``/``join``/``alone``) are flag bits. A node's
report takes a 27-byte envelope instead of 87-105 with JSON (23 when its loss is exactly a
float32: the loss goes as float32 when that is lossless, else float64), a ``send`` to k nodes
17 + 2k bytes instead of about 100. :func:`encode_sync` picks it whenever every field fits and
falls back to the JSON version otherwise (another kind, a field version 2 has no place for, a
``reason`` other than ``sync``/``join``/``alone``, an ``epoch`` that is not 12 lowercase hex digits);
:func:`decode_sync` reads both and gives the same :class:`SyncMessage` for either.
docs/schemas.md has both layouts.

A delta travels in ``report`` and ``model`` (a node whose protocol has a codec other than fp32)
and in ``send`` (the sync service's syncs under such a codec; a joining node's reference always
goes whole). It stays bytes in :attr:`SyncMessage.delta`: the receiver decodes it against its
reference with :func:`~streamlearn.sync.codec.unpack_delta`, which checks the tag.

Nodes write ``join``, ``leave``, ``report``, ``model`` (an answer to a request) and ``decline``
(a guarded node kept its own model instead of a ``send`` or ``pull``: :mod:`streamlearn.sync.guard`) on
``<prefix>.sync.up``; the sync service writes ``hello``, ``request``, ``send``, ``pull`` and
``reject`` on ``<prefix>.sync.down``, addressed to ``targets`` (None: every node). The
fields each kind needs are in :data:`REQUIRED`; docs/schemas.md has the table.

Addressing: a record names at most :data:`MAX_TARGETS` nodes (what every reader accepts). A message to
more (a full sync to thousands of nodes) goes as several records, each naming a disjoint run of the
targets and carrying the same model part (:func:`encode_sync_many`); the model part is encoded once.
A node looks at :func:`addressed_to` first: it reads the header only, so a record for other nodes
costs it no decode, no CRC and no signature check. The targets are in the record value, which the
HMAC of :mod:`~streamlearn.kafka.signing` covers.

Node ids can be given out by the sync service (``streamlearn node --id auto``): a node
without an id writes ``claim`` with a random ``token``; the service answers ``assign`` with
that token and the lowest free id in ``node`` (or no ``node`` and a ``reason`` when every id
is held). The node then renews its hold every :data:`ID_RENEW_EVERY` seconds with a
``claim`` that carries its ``node`` and token, and its ``leave`` carries the token. The codec
is pure (no Kafka import at module level, never pickle); decoding raises only
:class:`DecodeError`. The plumbing both services share (:func:`connect`,
:class:`StopSignals`) closes the module.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from streamlearn.kafka.codecs import (
    DecodeError,
    EncodeError,
    _check_int,
    _check_number,
    _check_object,
    _as_bytes_view,
    _check_str,
    _dump_json,
    _load_json,
    decode_model,
    encode_model,
)

__all__ = [
    "SYNC_MAGIC",
    "SYNC_VERSION",
    "SYNC_VERSION_BINARY",
    "BINARY_KINDS",
    "FLAG_DELTA",
    "DELTA_KINDS",
    "ENVELOPE_FIXED_BYTES",
    "UP_KINDS",
    "DOWN_KINDS",
    "REQUIRED",
    "SyncMessage",
    "encode_sync",
    "encode_sync_many",
    "decode_sync",
    "addressed_to",
    "split_envelope",
    "envelope_bytes",
    "MAX_SYNC_HEADER_BYTES",
    "MAX_TARGETS",
    "ID_RENEW_EVERY",
    "connect",
    "positive",
]

SYNC_MAGIC = b"SLSY"
#: Version of the JSON header (every kind).
SYNC_VERSION = 1
#: Version of the fixed binary header (the kinds in :data:`BINARY_KINDS`, when every field fits).
SYNC_VERSION_BINARY = 2
_HEAD = struct.Struct("<4sHHI")  # magic, version, flags, header JSON length
#: Bytes of every version-1 sync record before its JSON header (magic, version, flags, header length).
ENVELOPE_FIXED_BYTES = _HEAD.size
#: Flag bit (both versions): what follows the header is a compressed delta (``SyncMessage.delta``),
#: not a model message.
FLAG_DELTA = 1

# ---- version 2: magic, version, flags, kind code; then the fields the flags name, in this order:
# node, step, n_samples, request, loss, targets (u16 count, then the ids), epoch (6 bytes).
_HEAD2 = struct.Struct("<4sHHB")
#: Kinds a version-2 (binary) header can carry, by their code.
BINARY_KINDS = ("report", "model", "send")
_KIND_CODES = {kind: code for code, kind in enumerate(BINARY_KINDS, start=1)}
_F_NODE = 1 << 1         # node: u16, or u32 with _F_IDS32
_F_TARGETS = 1 << 2      # targets: u16 count, then count ids (u16, or u32 with _F_IDS32)
_F_EPOCH = 1 << 3        # epoch: 6 bytes, the 12 lowercase hex digits of the sync service's epoch
_F_STEP = 1 << 4         # step: u32, or u64 with _F_WIDE (absent: 0)
_F_SAMPLES = 1 << 5      # n_samples: as step
_F_LOSS = 1 << 6         # loss: f32, or f64 with _F_LOSS64 (absent: unknown)
_F_REQUEST = 1 << 7      # request: as step
_F_REFERENCE = 1 << 8    # reference: true (no bytes)
_F_WIDE = 1 << 9         # step, n_samples and request are u64
_F_LOSS64 = 1 << 10      # loss is f64: it is not exactly a float32
_F_IDS32 = 1 << 11       # node and target ids are u32: one of them is above 65535
_REASON_SHIFT = 12       # bits 12-13: reason code (0 none, 1 "sync", 2 "join", 3 "alone")
_REASON_MASK = 3 << _REASON_SHIFT
_REASONS = (None, "sync", "join", "alone")
_FLAGS2 = (1 << 14) - 1  # bits 14 and 15 are 0
_V2_FIELDS = frozenset(("kind", "node", "targets", "epoch", "step", "n_samples", "loss", "request", "reference",
                        "reason"))
_EPOCH_BYTES = 6
_HEX = frozenset("0123456789abcdef")
_U16, _U32 = 0xFFFF, 0xFFFF_FFFF
#: Kinds that may carry a compressed delta instead of a whole model.
DELTA_KINDS = ("report", "model", "send")
MAX_SYNC_HEADER_BYTES = 64 << 10
MAX_TARGETS = 4096
_INT32_MAX = (1 << 31) - 1
_INT64_MAX = (1 << 63) - 1
_MAX_TOKEN_CHARS = 64

#: Seconds between two renewals of an assigned node id (the sync service's ``id_lease`` is longer).
ID_RENEW_EVERY = 1.0

UP_KINDS = ("join", "leave", "report", "model", "claim", "decline")
DOWN_KINDS = ("hello", "request", "send", "pull", "reject", "assign")

#: Fields each kind must carry ("model" means the envelope carries a model).
REQUIRED = {
    "join": ("node", "d", "layout", "model"),  # model: the node's reference (w0 on a first start)
    "leave": ("node",),
    "report": ("node", "step"),                # model only when the node rule said "model"
    "model": ("node", "model"),                # answer to a request
    "hello": ("epoch",),
    "request": ("targets", "epoch"),
    "send": ("targets", "model", "epoch"),
    "pull": ("targets", "model", "strength", "epoch"),
    "reject": ("targets", "reason"),
    "claim": ("token",),                       # node: the id it holds (a renewal); none: asks for one
    "decline": ("node",),                      # a guarded node kept its own model (step: its local step)
    "assign": ("token", "epoch"),              # node: the id given; none (with a reason): no id free
}
_OPTIONAL_JSON = ("node", "targets", "epoch", "step", "n_samples", "loss", "request", "reference", "strength",
                  "reason", "d", "n_params", "layout", "spec", "token")


@dataclass(frozen=True, eq=False)
class SyncMessage:
    """One message between a node and the sync service.

    Parameters
    ----------
    kind
        One of :data:`UP_KINDS` (node -> sync) or :data:`DOWN_KINDS` (sync -> nodes).
    node
        The sender (up kinds).
    targets
        The addressees (down kinds); None means every node.
    epoch
        Id of the sync service instance that sent it (down kinds); a node that sees a new
        epoch in a ``hello`` registers again.
    step, n_samples, loss
        The sender's local step, samples learned since its last sync and last batch loss.
    request
        Id of a ``request``, echoed by the ``model`` answers.
    reference
        ``send``: the model is also the new reference (a full sync).
    strength
        ``pull``: ``w <- w - strength * (w - model)``.
    reason
        ``send``: ``"join"`` for the reference a joining node gets, else ``"sync"``;
        ``reject``: why.
    d, layout, spec
        ``join``: model length, a fingerprint of the learner layout (features, classes,
        learner) and the node's protocol spec.
    n_params
        ``join``: how many leading model entries are trainable parameters (divergences and the
        norm limit span them; buffers such as scaler statistics follow). None: all ``d``.
    token
        ``claim``, ``assign`` and an auto-id node's ``leave``: the random token of the node
        that asked for an id (``node`` is then the id asked about or given).
    model
        The flat model (numpy, float), or None.
    delta
        Instead of ``model`` (kinds in :data:`DELTA_KINDS`): the compressed delta to the
        receiver's reference, as bytes (:func:`~streamlearn.sync.codec.pack_delta`); the receiver
        decodes it with :func:`~streamlearn.sync.codec.unpack_delta`. None: no delta.
    """

    kind: str
    node: int | None = None
    targets: tuple | None = None
    epoch: str | None = None
    step: int = 0
    n_samples: int = 0
    loss: float | None = None
    request: int | None = None
    reference: bool = False
    strength: float | None = None
    reason: str | None = None
    d: int | None = None
    n_params: int | None = None
    layout: str | None = None
    spec: str | None = None
    token: str | None = None
    model: Any = None
    delta: bytes | None = None

    @property
    def carries_model(self) -> bool:
        """Whether the message carries a model, whole or as a delta."""
        return self.model is not None or self.delta is not None

    def addressed_to(self, node: int) -> bool:
        """Whether ``node`` is one of the targets (every node when ``targets`` is None)."""
        return self.targets is None or node in self.targets


def _validate(obj: dict, has_model: bool, err) -> dict:
    if not isinstance(obj, dict):
        raise err("sync message header must be a JSON object", field="<header>", value=obj)
    kind = obj.get("kind")
    if not isinstance(kind, str) or kind not in REQUIRED:
        raise err(f"kind must be one of {sorted(REQUIRED)}", field="kind", value=kind)
    _check_object(obj, f"{kind} message", err, ("kind",), _OPTIONAL_JSON)
    for name in REQUIRED[kind]:
        if name == "model":
            if not has_model:
                raise err(f"a {kind} message must carry a model", field="model")
        elif name not in obj or obj[name] is None:
            raise err(f"missing field in {kind} message", field=name)
    out: dict = {"kind": kind}
    if obj.get("node") is not None:
        out["node"] = _check_int(obj["node"], "node", err, 0, _INT32_MAX)
    if obj.get("targets") is not None:
        targets = obj["targets"]
        if not isinstance(targets, (list, tuple)) or len(targets) > MAX_TARGETS:
            raise err(f"targets must be a list of at most {MAX_TARGETS} node ids", field="targets", value=targets)
        out["targets"] = tuple(_check_int(t, "targets[]", err, 0, _INT32_MAX) for t in targets)
    for name in ("epoch", "layout", "spec"):
        if obj.get(name) is not None:
            out[name] = _check_str(obj[name], name, err)
    if obj.get("token") is not None:
        out["token"] = _check_str(obj["token"], "token", err, max_chars=_MAX_TOKEN_CHARS)
    if obj.get("reason") is not None:
        out["reason"] = _check_str(obj["reason"], "reason", err, max_chars=1024)
    for name in ("step", "n_samples"):
        if obj.get(name) is not None:
            out[name] = _check_int(obj[name], name, err, 0, _INT64_MAX)
    if obj.get("request") is not None:
        out["request"] = _check_int(obj["request"], "request", err, 0, _INT64_MAX)
    if obj.get("d") is not None:
        out["d"] = _check_int(obj["d"], "d", err, 1, _INT64_MAX)
    if obj.get("n_params") is not None:
        out["n_params"] = _check_int(obj["n_params"], "n_params", err, 1, out.get("d", _INT64_MAX))
    if obj.get("loss") is not None:
        out["loss"] = _check_number(obj["loss"], "loss", err)
    if obj.get("strength") is not None:
        s = _check_number(obj["strength"], "strength", err)
        if not 0.0 < s <= 1.0:
            raise err("strength must be in (0, 1]", field="strength", value=s)
        out["strength"] = s
    if obj.get("reference") is not None:
        if not isinstance(obj["reference"], bool):
            raise err("must be a boolean", field="reference", value=obj["reference"])
        out["reference"] = obj["reference"]
    return out


def encode_sync(msg: SyncMessage) -> bytes:
    """Encode a :class:`SyncMessage`: header, JSON, then the model message when there is a model.

    Examples
    --------
    >>> import numpy as np
    >>> data = encode_sync(SyncMessage("report", node=2, step=40, n_samples=400, loss=0.3,
    ...                                model=np.array([0.5, -1.0], dtype=np.float32)))
    >>> msg = decode_sync(data)
    >>> msg.kind, msg.node, msg.step, msg.model.tolist()
    ('report', 2, 40, [0.5, -1.0])
    >>> decode_sync(encode_sync(SyncMessage("request", targets=(0, 3), epoch="e1", request=7))).targets
    (0, 3)
    >>> answer = decode_sync(encode_sync(SyncMessage("assign", token="9f2c", node=2, epoch="e1")))
    >>> answer.kind, answer.token, answer.node
    ('assign', '9f2c', 2)

    A compressed delta (:func:`~streamlearn.sync.codec.pack_delta`) instead of a model:

    >>> import torch
    >>> from streamlearn.sync.codec import make_codec, pack_delta, unpack_delta
    >>> sign, r = make_codec("sign"), torch.zeros(3)
    >>> payload = pack_delta(sign, sign.quantize(torch.tensor([[0.5, -1.0, 2.0]])), torch.zeros(0), r, 3)
    >>> data = encode_sync(SyncMessage("report", node=2, step=41, delta=payload))
    >>> msg = decode_sync(data, expected_d=3)
    >>> msg.model is None, msg.delta == payload, len(payload), data[6] & FLAG_DELTA  # a delta follows
    (True, True, 25, 1)
    >>> codec, parts, tail, n, tag = unpack_delta(msg.delta, reference=r)
    >>> codec.dequantize(parts, n).tolist()
    [[1.1666666269302368, -1.1666666269302368, 1.1666666269302368]]

    ``report``, ``model`` and ``send`` take the binary header (version 2) when every field fits,
    the other kinds (and a ``send`` whose ``epoch`` is not 12 hex digits) the JSON one (version 1):

    >>> len(data) - len(payload), data[4], decode_sync(data).step  # 9 fixed bytes, node u16, step u32
    (15, 2, 41)
    >>> send = encode_sync(SyncMessage("send", targets=(0, 1, 2), epoch="5f0c2a9e13d4", reference=True,
    ...                                reason="sync", delta=payload))
    >>> len(send) - len(payload), send[4], decode_sync(send).targets  # 9 + 2 + 3 * 2 + 6
    (23, 2, (0, 1, 2))
    >>> data = encode_sync(SyncMessage("request", targets=(0, 3), epoch="e1", request=7))
    >>> len(data), data[4]
    (71, 1)
    """
    head, delta = _encode_head(msg)
    parts = [head]
    if delta is not None:
        parts.append(delta)
    elif msg.model is not None:
        parts.append(encode_model(msg.model, node=msg.node, version=msg.step, is_reference=msg.reference,
                                  samples=msg.n_samples))
    return b"".join(parts)


def encode_sync_many(msg: SyncMessage, max_targets: int = MAX_TARGETS) -> list[bytes]:
    """``msg`` as records of at most ``max_targets`` targets each: one record, or one per chunk of its targets.

    A message to more nodes than a record may name (:data:`MAX_TARGETS`, what every reader accepts)
    goes as several records, each naming a disjoint run of the targets and carrying the same model
    part, encoded once; every target is in exactly one of them. A message to every node
    (``targets`` None) or to few is one record, the bytes :func:`encode_sync` gives.

    Examples
    --------
    >>> import numpy as np
    >>> msg = SyncMessage("send", targets=tuple(range(10_000)), epoch="5f0c2a9e13d4", reference=True,
    ...                   reason="sync", model=np.ones(3, np.float32))
    >>> records = encode_sync_many(msg)
    >>> [len(decode_sync(r).targets) for r in records]
    [4096, 4096, 1808]
    >>> sorted(t for r in records for t in decode_sync(r).targets) == list(range(10_000))
    True
    >>> encode_sync_many(SyncMessage("request", targets=(0, 3), epoch="e1", request=7)) == [
    ...     encode_sync(SyncMessage("request", targets=(0, 3), epoch="e1", request=7))]
    True
    """
    if isinstance(max_targets, bool) or not isinstance(max_targets, int) or not 1 <= max_targets <= MAX_TARGETS:
        raise EncodeError(f"max_targets must be an integer in [1, {MAX_TARGETS}]", field="max_targets",
                          value=max_targets)
    targets = msg.targets if isinstance(msg, SyncMessage) else None
    if targets is None or len(targets) <= max_targets:
        return [encode_sync(msg)]
    targets = tuple(targets)
    chunks = [targets[i:i + max_targets] for i in range(0, len(targets), max_targets)]
    first = encode_sync(replace(msg, targets=chunks[0]))
    body = memoryview(first)[envelope_bytes(first):]  # the model part, shared by every chunk
    return [first] + [_encode_head(replace(msg, targets=chunk))[0] + body for chunk in chunks[1:]]


def _encode_head(msg: SyncMessage) -> tuple[bytes, bytes | None]:
    """The envelope of ``msg`` (validated) and its delta bytes (None: no delta)."""
    if not isinstance(msg, SyncMessage):
        raise EncodeError("expected a SyncMessage", field="<root>", value=type(msg).__name__)
    delta = None
    if msg.delta is not None:
        if msg.model is not None:
            raise EncodeError("a sync message carries a model or a delta, not both", field="delta")
        if msg.kind not in DELTA_KINDS:
            raise EncodeError(f"only {', '.join(DELTA_KINDS)} may carry a delta", field="delta", value=msg.kind)
        delta = _check_delta(msg.delta, None, EncodeError)
    obj = {f.name: getattr(msg, f.name) for f in fields(msg) if f.name not in ("model", "delta")}
    obj = {k: (list(v) if k == "targets" and v is not None else v) for k, v in obj.items()
           if v is not None and not (k in ("step", "n_samples") and v == 0) and not (k == "reference" and not v)}
    if obj.get("loss") is not None and not math.isfinite(obj["loss"]):
        del obj["loss"]  # an unknown loss is simply left out
    clean = _validate(obj, msg.carries_model, EncodeError)
    head = _binary_header(clean, 0 if delta is None else FLAG_DELTA)
    if head is None:  # a kind or a field version 2 has no place for: the JSON header
        header = _dump_json(clean)
        if len(header) > MAX_SYNC_HEADER_BYTES:
            raise EncodeError("sync message header too large", field="<header>", value=f"{len(header)} bytes")
        head = _HEAD.pack(SYNC_MAGIC, SYNC_VERSION, 0 if delta is None else FLAG_DELTA, len(header)) + header
    return head, delta


def decode_sync(data: bytes, *, expected_d: int | None = None) -> SyncMessage:
    """Decode and validate a sync message of either version; ``expected_d`` also checks the model's length.

    The model comes back as a read-only zero-copy numpy view of ``data`` (1-D). A delta
    (flag :data:`FLAG_DELTA`) comes back as bytes in ``delta``, its fixed header checked (magic,
    and with ``expected_d`` its parameter and buffer counts); the rest (version, codec, CRC32,
    payload, reference tag) is checked by :func:`~streamlearn.sync.codec.unpack_delta` where it
    is decoded. Raises :class:`DecodeError` for anything it cannot use.
    """
    flags, obj, rest = split_envelope(data)
    clean = _validate(obj, rest.nbytes > 0, DecodeError)
    if flags & FLAG_DELTA:
        if clean["kind"] not in DELTA_KINDS:
            raise DecodeError(f"only {', '.join(DELTA_KINDS)} may carry a delta", field="flags", value=flags)
        return SyncMessage(delta=_check_delta(rest, expected_d, DecodeError), **clean)
    model = None
    if rest.nbytes:
        mm = decode_model(rest)
        if mm.array.ndim != 1:
            raise DecodeError("model must be a flat vector", field="shape", value=mm.shape)
        if expected_d is not None and mm.array.shape[0] != expected_d:
            raise DecodeError(f"model must have {expected_d} entries", field="shape", value=mm.shape)
        model = mm.array
    return SyncMessage(model=model, **clean)


def addressed_to(data, node: int) -> bool:
    """Whether the sync record ``data`` may be for ``node``, from its envelope alone: False only when it names
    targets and ``node`` is not one of them.

    Reads the header and nothing after it: the model part is neither decoded nor CRC-checked, so a node
    skips a record addressed to others at the cost of its header (a version-2 target list is compared
    without building a tuple). A record it cannot read is "may be" (True): the full decode says why. The
    targets are in the record value, which the HMAC signature covers (:mod:`~streamlearn.kafka.signing`).

    >>> import numpy as np
    >>> data = encode_sync(SyncMessage("send", targets=(1, 4), epoch="5f0c2a9e13d4", reference=True,
    ...                                reason="sync", model=np.ones(3, np.float32)))
    >>> addressed_to(data, 4), addressed_to(data, 2), addressed_to(data[:12], 2)  # cut in its targets
    (True, False, True)
    >>> addressed_to(encode_sync(SyncMessage("hello", epoch="e1")), 2)  # no targets: every node
    True
    """
    try:
        view = _as_bytes_view(data, "sync message")
        if view.nbytes >= _HEAD2.size and bytes(view[:4]) == SYNC_MAGIC:
            version, flags = struct.unpack_from("<HH", view, 4)
            if version == SYNC_VERSION_BINARY and not flags & ~_FLAGS2:
                if not flags & _F_TARGETS:
                    return True
                cc = "Q" if flags & _F_WIDE else "I"
                fmt = "<" + "".join(c for bit, c in (
                    (_F_NODE, "I" if flags & _F_IDS32 else "H"), (_F_STEP, cc), (_F_SAMPLES, cc), (_F_REQUEST, cc),
                    (_F_LOSS, "d" if flags & _F_LOSS64 else "f")) if flags & bit)
                off = _HEAD2.size + struct.calcsize(fmt)
                (count,) = struct.unpack_from("<H", view, off)
                if count > MAX_TARGETS or not 0 <= node <= _U32:
                    return True  # unsound, or a node no list can name: the full decode judges
                ids = np.frombuffer(view, dtype="<u4" if flags & _F_IDS32 else "<u2", count=count, offset=off + 2)
                return bool((ids == node).any())
        _, obj, _ = split_envelope(view)
        targets = obj.get("targets") if isinstance(obj, dict) else None
        if not isinstance(targets, list):
            return True
        return node in targets
    except (DecodeError, struct.error, ValueError, TypeError):
        return True


def split_envelope(data) -> tuple[int, dict, memoryview]:
    """``(flags, header, rest)`` of a sync record of either version, the header not yet validated.

    ``header`` is the JSON object of a version-1 record, or the fields of a version-2 one as a
    dict of the same names; ``rest`` is the model part (a model message, a delta or nothing).
    Bounded: nothing is read or allocated beyond the bytes present. Raises :class:`DecodeError`
    when the envelope itself is unsound (magic, version, flags, lengths, JSON, codes).

    >>> flags, header, rest = split_envelope(encode_sync(SyncMessage("report", node=2, step=40, loss=0.5)))
    >>> flags & FLAG_DELTA, header, rest.nbytes
    (0, {'kind': 'report', 'node': 2, 'step': 40, 'loss': 0.5}, 0)
    """
    view = _as_bytes_view(data, "sync message")
    if view.nbytes < _HEAD2.size:
        raise DecodeError("sync message truncated: shorter than its header", field="<payload>",
                          value=f"{view.nbytes} bytes")
    magic, version, flags = struct.unpack_from("<4sHH", view, 0)
    if magic != SYNC_MAGIC:
        raise DecodeError("not a sync message: bad magic", field="magic", value=bytes(magic))
    if version == SYNC_VERSION_BINARY:
        obj, end = _read_binary(view, flags)
        return flags, obj, view[end:]
    if version != SYNC_VERSION:
        raise DecodeError("unsupported sync message version", field="version", value=version)
    if view.nbytes < _HEAD.size:
        raise DecodeError("sync message truncated: shorter than its header", field="<payload>",
                          value=f"{view.nbytes} bytes")
    hlen = _HEAD.unpack_from(view, 0)[3]
    if flags & ~FLAG_DELTA:
        raise DecodeError("unknown flags set", field="flags", value=flags)
    if hlen > MAX_SYNC_HEADER_BYTES or _HEAD.size + hlen > view.nbytes:
        raise DecodeError("sync message header length out of range", field="header_len", value=hlen)
    obj = _load_json(view[_HEAD.size:_HEAD.size + hlen], "sync message header", MAX_SYNC_HEADER_BYTES)
    return flags, obj, view[_HEAD.size + hlen:]


def envelope_bytes(data) -> int:
    """Bytes of a sync record before its model part (the envelope), either version; DecodeError if unsound.

    >>> import numpy as np
    >>> envelope_bytes(encode_sync(SyncMessage("model", node=1, step=9, request=5, model=np.zeros(2, np.float32))))
    19
    """
    flags, obj, rest = split_envelope(data)
    return memoryview(data).nbytes - rest.nbytes


def _binary_header(clean: dict, flags: int) -> bytes | None:
    """The version-2 header of a validated message, or None when it does not fit one (then: JSON)."""
    kind = clean["kind"]
    if kind not in _KIND_CODES or not _V2_FIELDS.issuperset(clean):
        return None
    reason = clean.get("reason")
    if reason is not None and reason not in _REASONS:
        return None
    epoch = clean.get("epoch")
    if epoch is not None and (len(epoch) != 2 * _EPOCH_BYTES or not _HEX.issuperset(epoch)):
        return None
    targets = clean.get("targets")
    if targets is not None and len(targets) > _U16:
        return None
    flags |= _REASONS.index(reason) << _REASON_SHIFT
    ids = ([clean["node"]] if "node" in clean else []) + list(targets or ())
    flags |= _F_IDS32 if any(i > _U16 for i in ids) else 0
    idc = "I" if flags & _F_IDS32 else "H"
    counts = [clean.get(name, 0) for name in ("step", "n_samples", "request")]
    flags |= _F_WIDE if any(c > _U32 for c in counts) else 0
    cc = "Q" if flags & _F_WIDE else "I"
    fmt, values = "<", []
    if "node" in clean:
        flags |= _F_NODE
        fmt, values = fmt + idc, values + [clean["node"]]
    for bit, name in ((_F_STEP, "step"), (_F_SAMPLES, "n_samples"), (_F_REQUEST, "request")):
        if name in clean:
            flags |= bit
            fmt, values = fmt + cc, values + [clean[name]]
    if "loss" in clean:
        flags |= _F_LOSS
        loss = clean["loss"]
        try:
            exact = struct.unpack("<f", struct.pack("<f", loss))[0] == loss
        except OverflowError:  # beyond float32's range
            exact = False
        flags |= 0 if exact else _F_LOSS64
        fmt, values = fmt + ("f" if exact else "d"), values + [loss]
    if targets is not None:
        flags |= _F_TARGETS
        fmt, values = fmt + f"H{len(targets)}{idc}", values + [len(targets), *targets]
    if epoch is not None:
        flags |= _F_EPOCH
        fmt, values = fmt + f"{_EPOCH_BYTES}s", values + [bytes.fromhex(epoch)]
    if clean.get("reference"):
        flags |= _F_REFERENCE
    return _HEAD2.pack(SYNC_MAGIC, SYNC_VERSION_BINARY, flags, _KIND_CODES[kind]) + struct.pack(fmt, *values)


def _read_binary(view: memoryview, flags: int) -> tuple[dict, int]:
    """The fields of a version-2 header (a dict as the JSON header would hold them) and where it ends.

    Every length is checked against the bytes present before it is read; DecodeError otherwise.
    """
    if flags & ~_FLAGS2:
        raise DecodeError("unknown flags set", field="flags", value=flags)
    code = view[_HEAD2.size - 1]
    if not 1 <= code <= len(BINARY_KINDS):
        raise DecodeError(f"kind code must be 1 to {len(BINARY_KINDS)} ({', '.join(BINARY_KINDS)})", field="kind",
                          value=code)
    reason = (flags & _REASON_MASK) >> _REASON_SHIFT
    if reason >= len(_REASONS):
        raise DecodeError("unknown reason code", field="reason", value=reason)
    obj: dict = {"kind": BINARY_KINDS[code - 1]}
    if reason:
        obj["reason"] = _REASONS[reason]
    if flags & _F_REFERENCE:
        obj["reference"] = True
    idc = "I" if flags & _F_IDS32 else "H"
    cc = "Q" if flags & _F_WIDE else "I"
    fixed = [(_F_NODE, "node", idc), (_F_STEP, "step", cc), (_F_SAMPLES, "n_samples", cc),
             (_F_REQUEST, "request", cc), (_F_LOSS, "loss", "d" if flags & _F_LOSS64 else "f")]
    fixed = [(name, c) for bit, name, c in fixed if flags & bit]
    fmt = "<" + "".join(c for _, c in fixed)
    off = _HEAD2.size
    _need(view, off, struct.calcsize(fmt), "header")
    obj.update(zip((name for name, _ in fixed), struct.unpack_from(fmt, view, off)))
    off += struct.calcsize(fmt)
    if flags & _F_TARGETS:
        _need(view, off, 2, "targets")
        (count,) = struct.unpack_from("<H", view, off)
        off += 2
        if count > MAX_TARGETS:
            raise DecodeError(f"targets must be a list of at most {MAX_TARGETS} node ids", field="targets",
                              value=f"{count} ids")
        fmt = f"<{count}{idc}"
        _need(view, off, struct.calcsize(fmt), "targets")
        obj["targets"] = struct.unpack_from(fmt, view, off)
        off += struct.calcsize(fmt)
    if flags & _F_EPOCH:
        _need(view, off, _EPOCH_BYTES, "epoch")
        obj["epoch"] = bytes(view[off:off + _EPOCH_BYTES]).hex()
        off += _EPOCH_BYTES
    return obj, off


def _need(view: memoryview, off: int, size: int, what: str) -> None:
    if off + size > view.nbytes:
        raise DecodeError(f"sync message truncated: its {what} needs {size} bytes at offset {off}",
                          field="<payload>" if what == "header" else what, value=f"{view.nbytes} bytes")


def _check_delta(data, expected_d: int | None, err) -> bytes:
    """The bytes of a compressed delta whose fixed header is sound (magic, counts); ``err`` otherwise.

    Cheap and bounded: nothing is allocated beyond a copy of the bytes present.
    """
    from streamlearn.sync.codec import DELTA_MAGIC, HEADER_BYTES

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise err("a delta must be bytes", field="delta", value=type(data).__name__)
    view = memoryview(data)
    if view.nbytes < HEADER_BYTES:
        raise err("delta truncated: shorter than its header", field="delta", value=f"{view.nbytes} bytes")
    if bytes(view[:2]) != DELTA_MAGIC:
        raise err("not a compressed delta: bad magic", field="delta", value=bytes(view[:2]))
    if expected_d is not None:
        n, t = struct.unpack_from("<II", view, 4)
        if n + t != expected_d and not (t == 0 and n < expected_d):  # t = 0: sent without its buffers
            raise err(f"delta of {n} parameters and {t} buffers, the model has {expected_d} entries", field="shape",
                      value=(n, t))
    return bytes(view)


# ------------------------------------------------- plumbing both services share
def connect(settings=None, bootstrap: str | None = None, prefix: str | None = None, nodes=(), *,
            timeout_ms: int = 30_000, stop=None, shards: int = 1) -> tuple:
    """``(settings, bootstrap, prefix)`` of a service, with its topics created.

    ``settings`` defaults to :meth:`KafkaSettings.from_env`; ``bootstrap`` to
    ``KAFKA_BOOTSTRAP_SERVERS``, else the broker on 127.0.0.1:9092 (:func:`ensure_broker`: waited
    for, never started; a set ``stop`` event ends the wait); ``prefix`` to ``settings.topic_prefix``. The topics of ``nodes`` and the
    shared ones are created before any client touches them (Tansu would auto-create them
    with 4 partitions). A cluster that does not answer raises
    :class:`~streamlearn.kafka.broker.BrokerError` (a StreamlearnError).
    """
    from streamlearn.kafka.broker import ensure_broker
    from streamlearn.kafka.config import KafkaSettings, validate_bootstrap, validate_topic_prefix
    from streamlearn.kafka.topics import ensure_topics

    settings = KafkaSettings.from_env() if settings is None else settings
    if bootstrap is None:
        bootstrap = settings.bootstrap_servers or ensure_broker(stop=stop).bootstrap
    bootstrap = validate_bootstrap(bootstrap, "bootstrap")
    prefix = validate_topic_prefix(settings.topic_prefix if prefix is None else prefix, "prefix")
    from kafka.errors import KafkaError

    from streamlearn.kafka.broker import BrokerError

    try:
        ensure_topics(bootstrap, prefix, list(nodes), settings=settings, timeout_ms=timeout_ms, shards=shards)
    except KafkaError as exc:
        raise BrokerError(f"cannot reach Kafka at {bootstrap}: {exc!r}") from None
    return settings, bootstrap, prefix


def positive(name: str, value, *, integer: bool = False, allow_none: bool = False):
    """``value`` checked to be a finite number > 0 (an int when ``integer``), else ConfigError."""
    from streamlearn.errors import ConfigError

    if value is None and allow_none:
        return None
    ok = not isinstance(value, bool) and isinstance(value, (int, float) if not integer else int)
    if ok and not integer:
        ok = math.isfinite(value)
    if not ok or value <= 0:
        kind = "an integer >= 1" if integer else "a number > 0"
        raise ConfigError(f"{name} must be {kind}, got {value!r}")
    return value
