"""Prediction rows as JSON text written by compiled code (numba): :func:`prediction_rows`.

Predictions out writes every reading's prediction as ``{"seq":..,"prediction":..,"proba":[..],..}``
with each probability at 6 significant digits (``%.6g``); in Python the text takes about 0.5 µs a
prediction, most of what a fast node spends per sample. :func:`prediction_rows` writes the same
bytes: per probability, the six digits of ``x * 10**k`` rounded and ``%g``'s layout (fixed or exponent
form, trailing zeros dropped). A number the writer does not cover (negative, -0.0, subnormal) or whose
product lies within 1e-8 of a rounding tie (its float error is below 1e-9) is left to Python's ``%``,
row by row, so the text equals Python's everywhere (tests/kafka/test_kafka_proba_text.py).
"""

from __future__ import annotations

import math

import numpy as np

from streamlearn.compiled import AVAILABLE
from streamlearn.compiled import jit as _jit

__all__ = ["AVAILABLE", "prediction_rows", "warm_up"]

_TIE = 1e-8  # a product this close to a rounding tie goes to Python's formatting
# 10**k for k in [-310, 310], each the double nearest to it (a table: pow() costs more than the rest of a number)
_POW10 = np.array([float(f"1e{k}") for k in range(-310, 311)])


@_jit
def _put_int(out, pos, v):
    """Write the decimal digits of ``v`` (>= 0) at ``out[pos:]``; the new position."""
    n, t = 1, v
    while t >= 10:
        t //= 10
        n += 1
    for i in range(n - 1, -1, -1):
        out[pos + i] = 48 + v % 10
        v //= 10
    return pos + n


@_jit
def _put_g6(out, pos, x):
    """Write ``'%.6g' % x`` (x > 0 finite, or +0.0) at ``out[pos:]``; the new position, or -1 (for Python)."""
    if x == 0.0:
        if math.copysign(1.0, x) < 0:
            return -1
        out[pos] = 48
        return pos + 1
    if not (x > 0.0) or x > 1e300 or x < 1e-300:
        return -1
    e = int(math.floor(math.log10(x)))
    d = -1
    for _ in range(3):  # log10's floor may be one off near a power of ten
        y = x * _POW10[5 - e + 310]
        f = math.floor(y)
        frac = y - f
        if abs(frac - 0.5) < _TIE:
            return -1  # (near) a tie: the float product cannot tell the side
        d = int(f) + (1 if frac > 0.5 else 0)
        if d >= 1000000:
            e += 1
        elif d < 100000:
            e -= 1
        else:
            break
    if d < 100000 or d >= 1000000:
        return -1
    sig = 6
    while sig > 1 and d % 10 == 0:  # %g drops trailing zeros
        d //= 10
        sig -= 1
    scale = 10 ** (sig - 1)  # d's digits, first to last: (d // scale) % 10, scale /= 10
    if -4 <= e < 6:  # fixed form
        if e < 0:
            out[pos] = 48
            out[pos + 1] = 46
            pos += 2
            for _ in range(-e - 1):
                out[pos] = 48
                pos += 1
            return _put_int(out, pos, d)
        for i in range(sig):
            if i == e + 1:
                out[pos] = 46
                pos += 1
            out[pos] = 48 + (d // scale) % 10
            scale //= 10
            pos += 1
        for _ in range(sig, e + 1):  # (an integer part longer than the significant digits: zeros)
            out[pos] = 48
            pos += 1
        return pos
    out[pos] = 48 + (d // scale) % 10  # exponent form: d[.ddddd]e-XX
    pos += 1
    scale //= 10
    if sig > 1:
        out[pos] = 46
        pos += 1
        while scale:
            out[pos] = 48 + (d // scale) % 10
            scale //= 10
            pos += 1
    out[pos] = 101
    out[pos + 1] = 45 if e < 0 else 43
    pos += 2
    a = -e if e < 0 else e
    if a < 10:
        out[pos] = 48
        pos += 1
    return _put_int(out, pos, a)


@_jit
def _put_bytes(out, pos, src, lo, hi):
    for i in range(lo, hi):
        out[pos] = src[i]
        pos += 1
    return pos


@_jit
def _write_rows(seqs, P, labels, label_at, tails, tail_at, tail_of, out, ends, holes):
    """Every row ``{"seq":S,"prediction":L,"proba":[..]`` + its tail, then a comma; ``ends[i]``: the end of
    row i (before its comma). A row with a number left to Python gets ``[]``, and ``holes[i]`` says where
    (else -1). Returns the number of such rows."""
    n, k = P.shape
    pos, flagged = 0, 0
    head = np.array([123, 34, 115, 101, 113, 34, 58], dtype=np.uint8)  # {"seq":
    mid = np.array([44, 34, 112, 114, 101, 100, 105, 99, 116, 105, 111, 110, 34, 58], dtype=np.uint8)  # ,"prediction":
    prob = np.array([44, 34, 112, 114, 111, 98, 97, 34, 58], dtype=np.uint8)  # ,"proba":
    for i in range(n):
        pos = _put_bytes(out, pos, head, 0, len(head))
        pos = _put_int(out, pos, seqs[i])
        pos = _put_bytes(out, pos, mid, 0, len(mid))
        finite = True
        best = 0
        for c in range(k):
            if not math.isfinite(P[i, c]):
                finite = False
            elif P[i, c] > P[i, best]:
                best = c
        if finite and k:
            pos = _put_bytes(out, pos, labels, label_at[best], label_at[best + 1])
            pos = _put_bytes(out, pos, prob, 0, len(prob))
            start = pos
            out[pos] = 91
            pos += 1
            for c in range(k):
                if c:
                    out[pos] = 44
                    pos += 1
                pos = _put_g6(out, pos, P[i, c])
                if pos < 0:
                    break
            if pos < 0:
                holes[i] = start
                flagged += 1
                pos = start
                out[pos] = 91
                pos += 1
            out[pos] = 93
            pos += 1
        else:  # no prediction possible: null for both
            for b in (110, 117, 108, 108):
                out[pos] = b
                pos += 1
            pos = _put_bytes(out, pos, prob, 0, len(prob))
            for b in (110, 117, 108, 108):
                out[pos] = b
                pos += 1
        t = tail_of[i]
        pos = _put_bytes(out, pos, tails, tail_at[t], tail_at[t + 1])
        ends[i] = pos
        out[pos] = 44
        pos += 1
    return flagged


def _packed(texts: list) -> tuple:
    """UTF-8 texts as one byte array and the offsets of each (n + 1)."""
    data = [t.encode("utf-8") for t in texts]
    at = np.zeros(len(data) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in data], out=at[1:])
    return np.frombuffer(b"".join(data) or b"\0", dtype=np.uint8), at


def prediction_rows(seqs: np.ndarray, P: np.ndarray, labels: list, tails: list, tail_of: np.ndarray,
                    proba_format: str) -> tuple | None:
    """JSON rows of a classifier's predictions, as ``(text, ends)``: the UTF-8 bytes of every row followed by
    a comma, and where each row ends (before its comma). ``labels``: the JSON text of each class; ``tails``:
    the texts that close rows (``,"syncs":..,"step":..}``), ``tail_of`` the one of each row. A row whose NaN
    means no prediction gets null for both. None: numba is missing, or a negative ``seq`` (the caller writes
    them in Python)."""
    if not AVAILABLE or (len(seqs) and np.minimum.reduce(seqs) < 0):  # (readings number from 0: the codecs say so)
        return None
    n, k = P.shape
    P = np.ascontiguousarray(P, dtype=np.float64)
    label_bytes, label_at = _packed(labels)
    tail_bytes, tail_at = _packed(tails)
    longest = int(np.diff(label_at).max(initial=0) + np.diff(tail_at).max(initial=0))
    out = np.empty(n * (60 + longest + 13 * k), dtype=np.uint8)  # %.6g: at most 12 characters
    ends = np.empty(n, dtype=np.int64)
    holes = np.full(n, -1, dtype=np.int64)
    flagged = _write_rows(np.ascontiguousarray(seqs, dtype=np.int64), P, label_bytes, label_at, tail_bytes,
                          tail_at, np.ascontiguousarray(tail_of, dtype=np.int64), out, ends, holes)
    text = out[:ends[-1] + 1].tobytes() if n else b""
    if flagged:  # those rows' probabilities in Python's formatting, spliced in
        text, ends = _splice(text, ends, holes, P, proba_format)
    return text, ends


def _splice(text: bytes, ends: np.ndarray, holes: np.ndarray, P: np.ndarray, proba_format: str) -> tuple:
    """``text`` with the ``[]`` at ``holes`` filled with the rows' probabilities in Python's formatting, and the
    rows' new ends."""
    fmt = "[" + ",".join([proba_format] * P.shape[1]) + "]"
    parts, at, growth = [], 0, np.zeros(len(ends), dtype=np.int64)
    for i in np.flatnonzero(holes >= 0).tolist():
        hole = int(holes[i])
        filled = (fmt % tuple(P[i].tolist())).encode("ascii")
        parts += [text[at:hole], filled]
        at = hole + 2
        growth[i] = len(filled) - 2
    parts.append(text[at:])
    return b"".join(parts), ends + np.cumsum(growth)


def warm_up() -> None:
    """Compile the writer now, or load it from numba's cache: a node does it while it starts."""
    if AVAILABLE:
        prediction_rows(np.zeros(1, dtype=np.int64), np.full((1, 2), 0.5), ["0", "1"], ["}"],
                        np.zeros(1, dtype=np.int64), "%.6g")
