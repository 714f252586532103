"""Compressed model transfer: what crosses the wire at a sync is the delta ``w - r``, quantised.

A codec turns the parameter part of a delta into a few small tensors (``quantize``), back into
a dense delta (``dequantize``) and into bytes (``pack``/``unpack``). The buffers after the
``n_params`` parameters (an online scaler's statistics) are not deltas and travel as float32.
Error feedback (Stich & Karimireddy 2019; Karimireddy et al. 2019, EF-SGD) keeps what a
message did not carry in a memory at the sender, added to the next delta, so nothing is lost
for good: the node keeps one per node for the uplink (:class:`Uplink`), the coordinator one for
the full syncs it broadcasts (:class:`Downlink`).

Codecs, by name (the protocol setting ``codec=...``):

========  ==============================================================  ======================
name      what is sent for n parameters                                   bytes
========  ==============================================================  ======================
fp32      the whole model, dense, today's model message                   52 + 4 d
fp16      the delta as float16 (clamped to +-65504)                       4 n / 2
int8      the delta as int8, one float32 scale per block of 256           n + 4 ceil(n / 256)
sign      the delta's signs (1 bit each), one float32 scale (mean |x|)    ceil(n / 8) + 4
top<p>    the p percent largest |x|: uint16/32 indices, float32 values    k (2 or 4 + 4) + 4
========  ==============================================================  ======================

Every compressed message adds :data:`HEADER_BYTES` and ``4 (d - n)`` bytes of buffers.
``dequantize(quantize(x))`` is computed the same way wherever it runs, so the simulator, the
node and the sync service agree on the model a message carries, bit for bit.

Examples
--------
>>> import torch
>>> c = make_codec("sign")
>>> x = torch.tensor([[0.5, -1.5, 1.0, 0.0]])
>>> c.dequantize(c.quantize(x)).tolist()
[[0.75, -0.75, 0.75, 0.75]]
>>> c.payload_bytes(4), message_bytes(c, d=6, n_params=4)
(5, 33)
>>> up = Uplink(c, m=1, d=4, n_params=4)
>>> w_hat = up.send([0], x, torch.zeros(1, 4))
>>> (w_hat + up.memory).tolist() == x.tolist()  # error feedback: sent + kept = the delta
True
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from streamlearn.errors import BadRecordError, ConfigError

__all__ = ["Codec", "CODEC_NAMES", "make_codec", "message_bytes", "Uplink", "Downlink", "compress_rows",
           "pack_delta", "unpack_delta", "reference_tag", "HEADER_BYTES", "FP32_HEADER_BYTES", "DELTA_MAGIC"]

#: Bytes of today's dense float32 model message besides its payload (header, shape, CRC).
FP32_HEADER_BYTES = 52
#: The compressed message: magic, version, codec code, parameter count, buffer count,
#: tag of the reference the delta is taken from, CRC32 of everything after the header.
_HEADER = struct.Struct("<2sBBIIII")
HEADER_BYTES = _HEADER.size
DELTA_MAGIC = b"SZ"
_VERSION = 1
_BLOCK = 256  # int8: one scale per block of this many entries
_FP16_MAX = 65504.0
CODEC_NAMES = ("fp32", "fp16", "int8", "sign", "top<percent>")
_CODES = {"fp32": 1, "fp16": 2, "int8": 3, "sign": 4, "top": 5}
#: Longest parameter vector a compressed message may claim (a hostile size must not allocate).
MAX_PARAMS = 1 << 28


@dataclass(frozen=True)
class Codec:
    """One way to send a delta: ``name`` in fp32, fp16, int8, sign, top; ``fraction`` for top-k."""

    name: str
    fraction: float = 0.0

    @property
    def code(self) -> int:
        return _CODES[self.name]

    @property
    def spec(self) -> str:
        """The name as a protocol setting takes it (``top3`` for the top 3 percent)."""
        return f"top{self.fraction * 100:g}" if self.name == "top" else self.name

    @property
    def dense(self) -> bool:
        """fp32 sends whole models, not deltas (today's message)."""
        return self.name == "fp32"

    def k(self, n: int) -> int:
        """Entries top-k sends of ``n``."""
        return max(1, min(n, math.ceil(self.fraction * n)))

    def payload_bytes(self, n: int) -> int:
        """Bytes of the encoded delta of ``n`` parameters (no header, no buffers)."""
        if self.name == "fp32":
            return 4 * n
        if self.name == "fp16":
            return 2 * n
        if self.name == "int8":
            return n + 4 * math.ceil(n / _BLOCK)
        if self.name == "sign":
            return (n + 7) // 8 + 4
        return 4 + self.k(n) * (_index_bytes(n) + 4)

    # ---- the math, batched over rows ----------------------------------------------------

    def quantize(self, X: torch.Tensor) -> dict[str, torch.Tensor]:
        """The parts a message carries for each row of ``X`` (k x n float32)."""
        X = X.to(torch.float32)
        if self.name == "fp32":
            return {"x": X.clone()}
        if self.name == "fp16":
            return {"h": X.clamp(-_FP16_MAX, _FP16_MAX).to(torch.float16)}
        if self.name == "int8":
            k, n = X.shape
            blocks = math.ceil(n / _BLOCK)
            P = torch.nn.functional.pad(X, (0, blocks * _BLOCK - n)).reshape(k, blocks, _BLOCK)
            scale = P.abs().amax(dim=-1) / 127.0
            safe = torch.where(scale > 0, scale, torch.ones_like(scale))
            q = torch.round(P / safe.unsqueeze(-1)).clamp(-127, 127).to(torch.int8)
            return {"q": q.reshape(k, -1)[:, :n].contiguous(), "scale": scale}
        if self.name == "sign":
            return {"pos": X >= 0, "scale": X.abs().mean(dim=-1)}
        kk = self.k(X.shape[1])
        _, idx = X.abs().topk(kk, dim=-1, sorted=False)
        idx, _ = idx.sort(dim=-1)
        return {"idx": idx, "val": X.gather(-1, idx)}

    def dequantize(self, parts: dict[str, torch.Tensor], n: int | None = None) -> torch.Tensor:
        """The dense deltas (k x n float32) the parts stand for."""
        if self.name == "fp32":
            return parts["x"]
        if self.name == "fp16":
            return parts["h"].to(torch.float32)
        if self.name == "int8":
            q = parts["q"].to(torch.float32)
            k, n = q.shape
            scale = parts["scale"].repeat_interleave(_BLOCK, dim=-1)[:, :n]
            return q * scale
        if self.name == "sign":
            s = parts["scale"].unsqueeze(-1)
            return torch.where(parts["pos"], s, -s)
        idx, val = parts["idx"], parts["val"]
        out = torch.zeros(idx.shape[0], n, dtype=torch.float32, device=idx.device)
        return out.scatter_(-1, idx, val)

    def roundtrip(self, X: torch.Tensor) -> torch.Tensor:
        """``dequantize(quantize(X))``: what the receiver gets for each row of ``X``."""
        return self.dequantize(self.quantize(X), X.shape[-1])

    # ---- bytes (one row) ----------------------------------------------------------------

    def pack(self, parts: dict[str, torch.Tensor], n: int) -> bytes:
        """The payload bytes of one row's parts (as :meth:`quantize` gives for a 1 x ``n`` input)."""
        p = {k: v[0].detach().cpu().numpy() for k, v in parts.items()}
        if self.name == "fp32":
            return p["x"].astype("<f4").tobytes()
        if self.name == "fp16":
            return p["h"].astype("<f2").tobytes()
        if self.name == "int8":
            return p["q"].astype(np.int8).tobytes() + p["scale"].astype("<f4").tobytes()
        if self.name == "sign":
            return np.packbits(p["pos"], bitorder="little").tobytes() + p["scale"].astype("<f4").reshape(1).tobytes()
        idx_dtype = "<u2" if _index_bytes(n) == 2 else "<u4"
        return (struct.pack("<I", len(p["idx"])) + p["idx"].astype(idx_dtype).tobytes()
                + p["val"].astype("<f4").tobytes())

    def unpack(self, data, n: int) -> dict[str, torch.Tensor]:
        """Parts (one row) from payload bytes of ``n`` parameters; BadRecordError on anything malformed."""
        view = memoryview(data)
        if self.name == "top":
            if len(view) < 4:
                raise BadRecordError("top-k payload truncated", column="payload", value=len(view))
            (k,) = struct.unpack_from("<I", view, 0)
            if not 1 <= k <= n:
                raise BadRecordError(f"top-k count must be in [1, {n}]", column="k", value=k)
            ib = _index_bytes(n)
            want = 4 + k * (ib + 4)
        else:
            want = self.payload_bytes(n)
        if len(view) != want:
            raise BadRecordError(f"{self.name} payload of {n} parameters must be {want} bytes", column="payload",
                                 value=len(view))
        buf = bytes(view)
        if self.name == "fp32":
            x = np.frombuffer(buf, "<f4", n)
            return {"x": _finite(torch.from_numpy(x.astype(np.float32)))[None]}
        if self.name == "fp16":
            h = np.frombuffer(buf, "<f2", n).astype(np.float16)
            return {"h": _finite(torch.from_numpy(h))[None]}
        if self.name == "int8":
            q = np.frombuffer(buf, np.int8, n)
            scale = np.frombuffer(buf, "<f4", math.ceil(n / _BLOCK), offset=n).astype(np.float32)
            if (q == -128).any():
                raise BadRecordError("int8 delta holds -128 (codes are in [-127, 127])", column="q", value=-128)
            return {"q": torch.from_numpy(q.copy())[None], "scale": _finite(torch.from_numpy(scale), scale=True)[None]}
        if self.name == "sign":
            nb = (n + 7) // 8
            bits = np.unpackbits(np.frombuffer(buf, np.uint8, nb), count=n, bitorder="little").astype(bool)
            scale = np.frombuffer(buf, "<f4", 1, offset=nb).astype(np.float32)
            return {"pos": torch.from_numpy(bits)[None], "scale": _finite(torch.from_numpy(scale), scale=True)}
        idx = np.frombuffer(buf, "<u2" if ib == 2 else "<u4", k, offset=4).astype(np.int64)
        val = np.frombuffer(buf, "<f4", k, offset=4 + k * ib).astype(np.float32)
        if (idx >= n).any() or (np.diff(idx) <= 0).any():
            raise BadRecordError("top-k indices must be increasing and below n", column="idx",
                                 value=idx[:3].tolist())
        return {"idx": torch.from_numpy(idx)[None], "val": _finite(torch.from_numpy(val))[None]}


def _index_bytes(n: int) -> int:
    return 2 if n <= 1 << 16 else 4


def _finite(t: torch.Tensor, scale: bool = False) -> torch.Tensor:
    if not bool(torch.isfinite(t).all()) or (scale and bool((t < 0).any())):
        raise BadRecordError("compressed delta holds NaN, inf or a negative scale", column="payload",
                             value=t[~torch.isfinite(t)][:3].tolist())
    return t


def make_codec(spec) -> Codec:
    """A :class:`Codec` from its name: ``fp32``, ``fp16``, ``int8``, ``sign`` or ``top<percent>`` (``top3``).

    Examples
    --------
    >>> make_codec("top3").fraction, make_codec("int8").payload_bytes(512)
    (0.03, 520)
    """
    if isinstance(spec, Codec):
        return spec
    name = str(spec).strip().lower()
    if name in ("fp32", "fp16", "int8", "sign"):
        return Codec(name)
    if name.startswith("top"):
        try:
            pct = float(name[3:].rstrip("%"))
        except ValueError:
            pct = float("nan")
        if not 0 < pct <= 100:
            raise ConfigError(f"codec: top<percent> needs a percent in (0, 100], got {spec!r}")
        return Codec("top", pct / 100.0)
    raise ConfigError(f"codec: one of fp32, fp16, int8, sign, top<percent> (e.g. top3), got {spec!r}")


def message_bytes(codec: Codec, d: int, n_params: int | None = None, buffers: bool = True) -> int:
    """Bytes of one model message of a ``d``-entry model (``n_params`` parameters, the rest buffers,
    sent along unless ``buffers`` is False)."""
    p = d if n_params is None else n_params
    if codec.dense:
        return FP32_HEADER_BYTES + 4 * d
    return HEADER_BYTES + codec.payload_bytes(p) + (4 * (d - p) if buffers else 0)


def reference_tag(r: torch.Tensor, n_params: int | None = None) -> int:
    """A 32-bit tag of a reference model's parameters (its first ``n_params`` entries): a delta is only
    meaningful against the reference it was taken from. Buffers are not deltas, so they are not tagged."""
    r = r if n_params is None else r[:n_params]
    return zlib.crc32(r.detach().to(torch.float32).cpu().contiguous().numpy().tobytes())


def compress_rows(codec: Codec, W: torch.Tensor, R: torch.Tensor, E: torch.Tensor | None, n_params: int):
    """Error-feedback compression of rows ``W`` against references ``R``.

    Returns ``(W_hat, parts, E_new)``: what the receiver reconstructs (``R + dequantize(parts)`` on
    the parameters, the buffers as they are), the quantised parts, and the new memory
    ``delta - sent`` (None when ``E`` is None: no error feedback).
    """
    p = n_params
    delta = W[:, :p] - R[:, :p]
    if E is not None:
        delta = delta + E
    parts = codec.quantize(delta)
    sent = codec.dequantize(parts, p)
    W_hat = W.clone()
    W_hat[:, :p] = R[:, :p] + sent
    return W_hat, parts, (None if E is None else delta - sent)


def pack_delta(codec: Codec, parts: dict, tail: torch.Tensor, reference: torch.Tensor, n_params: int) -> bytes:
    """The compressed message of one row: header, codec payload, buffers as float32."""
    payload = codec.pack(parts, n_params)
    tail_b = tail.detach().to(torch.float32).cpu().numpy().astype("<f4").tobytes()
    body = payload + tail_b
    return _HEADER.pack(DELTA_MAGIC, _VERSION, codec.code, n_params, tail.numel(), reference_tag(reference, n_params),
                        zlib.crc32(body)) + body


def unpack_delta(data, *, reference: torch.Tensor | None = None, expected_d: int | None = None,
                 fraction: float = 0.0):
    """``(codec, parts, tail, n_params, tag)`` of a compressed message; BadRecordError on anything wrong.

    With ``reference``, its tag must match the message's (``column="reference"`` otherwise); with
    ``expected_d``, parameters plus buffers must come to it, or the message carries no buffers
    (``buffers_every``). Every size is checked against the bytes present before anything is allocated.
    """
    view = memoryview(data)
    if len(view) < HEADER_BYTES:
        raise BadRecordError("compressed model truncated: shorter than its header", column="payload",
                             value=len(view))
    magic, version, code, n, t, tag, crc = _HEADER.unpack_from(view, 0)
    if magic != DELTA_MAGIC:
        raise BadRecordError("not a compressed model: bad magic", column="magic", value=bytes(magic))
    if version != _VERSION:
        raise BadRecordError("unsupported compressed model version", column="version", value=version)
    names = {v: k for k, v in _CODES.items()}
    if code not in names or code == _CODES["fp32"]:
        raise BadRecordError("unknown codec code", column="codec", value=code)
    if not 1 <= n <= MAX_PARAMS or t > MAX_PARAMS or (expected_d is not None and n + t != expected_d and
                                                       not (t == 0 and n < expected_d)):
        raise BadRecordError(f"parameter/buffer counts do not fit the model (d={expected_d})", column="n_params",
                             value=(n, t))
    body = view[HEADER_BYTES:]
    if zlib.crc32(body) != crc:
        raise BadRecordError("checksum mismatch: compressed model corrupted", column="crc32", value=crc)
    if len(body) < 4 * t:
        raise BadRecordError("compressed model truncated", column="payload", value=len(view))
    if reference is not None and reference_tag(reference, n) != tag:
        raise BadRecordError("delta taken from another reference model", column="reference", value=tag)
    codec = Codec(names[code], fraction)
    split = len(body) - 4 * t
    parts = codec.unpack(body[:split], n)
    tail = np.frombuffer(bytes(body[split:]), "<f4", t).astype(np.float32)
    tail_t = _finite(torch.from_numpy(tail))
    return codec, parts, tail_t, n, tag


class Uplink:
    """The nodes' side: one error-feedback memory per node; ``send`` gives what the coordinator receives.

    Parameters
    ----------
    codec
        A :class:`Codec` (or its name).
    m, d, n_params
        Nodes, model length, leading parameter entries (the rest are buffers, sent as they are).
    error_feedback
        Keep what a message did not carry and add it to the next delta (default True).
    buffers_every
        Each node sends its buffers with every ``buffers_every``-th model only (:meth:`with_buffers`).
    """

    def __init__(self, codec, m: int, d: int, n_params: int | None = None, device=None, error_feedback: bool = True,
                 buffers_every: int = 1):
        self.codec = make_codec(codec)
        self.n_params = d if n_params is None else int(n_params)
        self.memory = torch.zeros(m, self.n_params, dtype=torch.float32, device=device) if error_feedback else None
        self.buffers_every = int(buffers_every)
        self.sends = torch.zeros(m, dtype=torch.int64)  # models each node sent

    def with_buffers(self, nodes) -> list[bool]:
        """Whether the next model of each of ``nodes`` carries its buffers; counts the sends."""
        idx = list(nodes)
        due = (self.sends[idx] % self.buffers_every == 0).tolist()
        self.sends[idx] += 1
        return due

    def send(self, nodes, W: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
        """Rows ``W`` of ``nodes`` (against their references ``R``) as the coordinator reconstructs them."""
        if self.codec.dense:
            return W.clone()
        idx = list(nodes)
        E = None if self.memory is None else self.memory[idx]
        W_hat, _, E_new = compress_rows(self.codec, W, R, E, self.n_params)
        if E_new is not None:
            self.memory[idx] = E_new
        return W_hat

    def reset(self, nodes) -> None:
        """Forget the memory of ``nodes`` (a node that joined again starts clean; its next model carries
        its buffers)."""
        if self.memory is not None:
            self.memory[list(nodes)] = 0
        self.sends[list(nodes)] = 0


class Downlink:
    """The coordinator's side: one error-feedback memory for the models it broadcasts as full syncs.

    ``send(model, r, memory=True)`` gives ``(model_hat, parts)``: what every target reconstructs
    from the message and the parts to pack. Partial syncs (a subset balanced by dynamic averaging)
    pass ``memory=False``: the memory belongs to the broadcast stream every node follows.
    """

    def __init__(self, codec, d: int, n_params: int | None = None, device=None, error_feedback: bool = True):
        self.codec = make_codec(codec)
        self.n_params = d if n_params is None else int(n_params)
        self.memory = torch.zeros(1, self.n_params, dtype=torch.float32, device=device) if error_feedback else None

    def send(self, model: torch.Tensor, r: torch.Tensor, memory: bool = True):
        if self.codec.dense:
            return model, None
        E = self.memory if (memory and self.memory is not None) else None
        W_hat, parts, E_new = compress_rows(self.codec, model[None].to(torch.float32), r[None].to(torch.float32),
                                            E, self.n_params)
        if E_new is not None:
            self.memory.copy_(E_new)
        return W_hat[0].to(model.dtype), parts
