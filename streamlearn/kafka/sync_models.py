"""The sync service's guard on models that come from nodes: hostile-model checks and delta expansion.

A model that arrives at the sync service (see "Hostile models" and "Compressed transfer" in
:mod:`streamlearn.kafka.sync_service`) passes :class:`ModelScreen` before the protocol sees it:
the screen says why a model must be refused, and turns a compressed delta into the dense model
it stands for, against the references it keeps. It decides only; counting, dead-lettering and
telling the protocol stay with the service, which owns the broker and the protocol.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from dataclasses import replace

import numpy as np
import torch

from streamlearn.errors import BadRecordError
from streamlearn.kafka.codecs import DecodeError
from streamlearn.kafka.wire import SyncMessage
from streamlearn.sync.codec import reference_tag, unpack_delta

__all__ = ["KEEP_REFERENCES", "ModelRefused", "ModelScreen"]

#: References (the current one and those before it) a delta from a node may be taken from.
KEEP_REFERENCES = 4
_MAX_DECLARED = 4096  # joins remembered before the protocol exists (node ids of hostile joins cannot grow it)


class ModelRefused(Exception):
    """A model that must not reach an average; ``reason`` is one of :data:`~streamlearn.metrics.REJECT_REASONS`."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class ModelScreen:
    """Says which models from nodes are refused, and expands deltas against the kept references.

    ``refs`` maps a reference tag to the reference (cpu float32), newest last: the protocol's
    current references and those before them (the last :data:`KEEP_REFERENCES` per group),
    since a node may report against the one it held just before a full sync reached it.
    """

    def __init__(self, max_norm: float):
        self.max_norm = max_norm
        self.refs: OrderedDict = OrderedDict()
        # Until the first join has made the protocol, the parameter count each joining node declared: its join
        # and its first report can come in one poll (a node with samples waiting reports after its first step),
        # and the report is screened before the joins of the poll are handled.
        self._declared: dict[int, int] = {}

    def screen(self, msg: SyncMessage, protocol, d: int | None) -> tuple | None:
        """``(reason, detail)`` when the decoded model of ``msg`` must not be used, else None."""
        w = msg.model
        if w is None:
            return None
        if w.dtype != np.float32:
            return "dtype", f"model dtype is {w.dtype}, not float32"
        lean = protocol is not None and w.shape[0] == protocol.n_params  # sent without its buffers
        if msg.kind != "join" and d is not None and w.shape[0] != d and not lean:
            return "shape", f"model must have {d} entries, got {w.shape[0]}"
        # NaN and inf were refused by the decoder. The limit is on the parameters: buffers after them
        # (scaler statistics) are in the data's units.
        if msg.kind == "join":
            span = msg.n_params
            if protocol is None and msg.n_params is not None and len(self._declared) < _MAX_DECLARED:
                self._declared[msg.node] = msg.n_params
        elif protocol is not None:
            span = protocol.n_params
            self._declared.clear()
        else:  # the parameters its join declared; no join: the whole model
            span = self._declared.get(msg.node)
        norm = float(np.linalg.norm(w[:span]))  # float32 overflow gives inf, refused too
        if not norm <= self.max_norm:
            return "norm", f"model norm {norm:.4g} is above --max-norm {self.max_norm:g}"
        return None

    def note_reference(self, protocol) -> None:
        """Remember the protocol's current references by their tags (the last :data:`KEEP_REFERENCES`)."""
        references = protocol.references  # one per group of nodes (split=N), the whole's last
        for g in sorted(references, reverse=True):
            r = references[g].detach().to("cpu", torch.float32).clone()
            tag = reference_tag(r, protocol.n_params)
            self.refs.pop(tag, None)
            self.refs[tag] = r
        while len(self.refs) > KEEP_REFERENCES * len(references):
            self.refs.popitem(last=False)

    def expand(self, msg: SyncMessage, protocol, d: int | None) -> tuple[SyncMessage, bool]:
        """``(msg with the dense model its delta stands for, whether the delta names an older reference)``.

        Raises :class:`ModelRefused` for a delta that does not decode, names a reference not
        kept, or whose model :meth:`screen` refuses. ``msg`` must carry a delta.
        """
        try:
            codec, parts, tail, n, tag = unpack_delta(msg.delta, expected_d=protocol.d)
            if n != protocol.n_params:
                raise BadRecordError(f"delta of {n} parameters, the model has {protocol.n_params}",
                                     column="n_params", value=n)
            ref = self.refs.get(tag)
            if ref is None:
                raise BadRecordError("delta taken from a reference this service does not hold (the node missed a "
                                     "full sync, or another service's)", column="reference", value=tag)
            w = ref.clone()
            w[:n] += codec.dequantize(parts, n)[0]
            if tail.numel():
                w[n:] = tail
            else:  # sent without its buffers (buffers_every): the protocol takes its reference's
                w = w[:n]
            if not bool(torch.isfinite(w).all()):
                raise BadRecordError("the delta's model holds NaN or inf", column="tensor")
        except BadRecordError as exc:
            raise ModelRefused(_delta_fault(exc), str(exc)) from None
        except (ValueError, TypeError, IndexError, RuntimeError, struct.error, RecursionError, MemoryError,
                OverflowError) as exc:  # hostile bytes must never stop the service
            raise ModelRefused("malformed", f"{type(exc).__name__}: {exc}") from None
        out = replace(msg, model=w.numpy(), delta=None)
        refused = self.screen(out, protocol, d)
        if refused is not None:
            raise ModelRefused(*refused)
        return out, tag != next(reversed(self.refs))


_FAULTS = {"crc32": "checksum", "tensor": "nonfinite", "dtype": "dtype", "shape": "shape", "payload_len": "shape",
           "ndim": "shape"}


#: Refusal reasons of a compressed delta, by the field unpack_delta names.
_DELTA_FAULTS = {"crc32": "checksum", "n_params": "shape", "reference": "reference", "tensor": "nonfinite"}


def _delta_fault(exc: BadRecordError) -> str:
    if exc.column == "payload" and "NaN" in exc.reason:
        return "nonfinite"
    return _DELTA_FAULTS.get(exc.column, "malformed")


def _model_fault(data) -> tuple | None:
    """``(reason, node, kind)`` when a sync record's header is sound and its model part (a model message or
    a compressed delta) is what fails; None otherwise. Never raises, whatever the bytes."""
    from streamlearn.kafka.codecs import decode_model
    from streamlearn.kafka.wire import FLAG_DELTA, split_envelope

    try:
        flags, obj, rest = split_envelope(data)  # either envelope version; DecodeError (a ValueError) if unsound
        if not isinstance(obj, dict) or obj.get("kind") not in ("join", "report", "model") or not rest.nbytes:
            return None
        node = obj.get("node")
        node = node if isinstance(node, int) and not isinstance(node, bool) and 0 <= node < (1 << 31) else None
        if flags & FLAG_DELTA:  # a delta that decode_sync refused (bad magic, counts, or on a join)
            return "malformed", node, obj["kind"]
        try:
            mm = decode_model(rest)
        except DecodeError as exc:
            return _FAULTS.get(exc.field, "malformed"), node, obj["kind"]
        return ("shape", node, obj["kind"]) if mm.array.ndim != 1 else None
    except (ValueError, TypeError, KeyError, IndexError, struct.error, RecursionError, MemoryError, OverflowError):
        return None
