"""Atomic on-disk checkpoints of the services: numpy arrays plus a JSON manifest, one directory each.

A checkpoint is a directory ``<store>/<kind>-<seq>`` (``seq`` grows by one per save) holding
one ``<name>.npy`` per array, written with ``np.save(..., allow_pickle=False)``, and
``manifest.json``: the format, the kind, each array's dtype, shape and CRC32, and the
caller's metadata (plain JSON, no NaN). It is written under a temporary name, every file
fsynced, then renamed into place and the store directory fsynced, so a reader sees a whole
checkpoint or none; the newest ``keep`` are kept, older ones removed. :meth:`CheckpointStore.latest`
returns the newest checkpoint that verifies (manifest readable, every file there with its
CRC, arrays loaded with ``allow_pickle=False``); one that does not is skipped with a warning,
so a damaged newest checkpoint falls back to the one before it. Nothing is ever pickled.

The node service keeps its model, optimizer state, reference, evaluator arrays and consumer
position here (``--checkpoint-dir``), the sync service its reference and protocol state
(``--state-dir``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from streamlearn.errors import ConfigError, StreamlearnError

__all__ = ["CheckpointError", "Checkpoint", "CheckpointStore", "FORMAT_VERSION"]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_MANIFEST = "manifest.json"
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool")


class CheckpointError(StreamlearnError):
    """A checkpoint cannot be written, or one that was asked for cannot be read."""


@dataclass(frozen=True, eq=False)
class Checkpoint:
    """One checkpoint read back: its directory, sequence number, arrays and metadata."""

    path: str
    seq: int
    arrays: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open a directory; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _crc(path: str) -> int:
    crc = 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            crc = zlib.crc32(chunk, crc)
    return crc


def _check_json(value, where: str):
    """``value`` if it is plain JSON without NaN/inf (which JSON cannot hold), else CheckpointError."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise CheckpointError(f"checkpoint metadata {where} is {value!r}: store NaN/inf in an array, not JSON")
        return value
    if isinstance(value, (list, tuple)):
        return [_check_json(v, f"{where}[]") for v in value]
    if isinstance(value, Mapping):
        return {str(k): _check_json(v, f"{where}.{k}") for k, v in value.items()}
    raise CheckpointError(f"checkpoint metadata {where} must be JSON (numbers, strings, lists, objects), "
                          f"got {type(value).__name__}")


class CheckpointStore:
    """A directory of checkpoints of one ``kind`` (e.g. ``"node"``, ``"sync"``).

    Parameters
    ----------
    directory
        Where the checkpoints go (created when missing).
    kind
        What they hold; also the prefix of every checkpoint directory. A checkpoint of another
        kind is never read.
    keep
        How many of the newest checkpoints are kept (>= 1; 2 leaves a fallback).
    readonly
        Only read (``streamlearn export`` reading a running service's store): the directory must
        exist, and a save in progress (a temporary directory) is left alone, not taken for the
        remains of a writer killed mid-save.

    Examples
    --------
    >>> import tempfile
    >>> store = CheckpointStore(tempfile.mkdtemp(), "node")
    >>> ck = store.save({"w": np.arange(3, dtype=np.float32)}, {"offset": 42})
    >>> back = store.latest()
    >>> back.seq, back.arrays["w"].tolist(), back.meta["offset"]
    (1, [0.0, 1.0, 2.0], 42)
    """

    def __init__(self, directory: str, kind: str, keep: int = 2, readonly: bool = False):
        if not isinstance(directory, (str, os.PathLike)) or not str(directory):
            raise ConfigError(f"checkpoint directory must be a path, got {directory!r}")
        if not isinstance(kind, str) or not re.match(r"^[a-z][a-z0-9]{0,15}$", kind):
            raise ConfigError(f"kind must be a short lowercase word, got {kind!r}")
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise ConfigError(f"keep must be an integer >= 1, got {keep!r}")
        self.directory = os.fspath(directory)
        self.kind = kind
        self.keep = keep
        self._re = re.compile(rf"^{kind}-(\d{{12}})$")
        self.readonly = readonly
        if readonly:
            if not os.path.isdir(self.directory):
                raise ConfigError(f"checkpoint directory {self.directory!r} does not exist")
            return
        try:
            os.makedirs(self.directory, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the checkpoint directory {self.directory!r}: {exc}") from None
        for name in os.listdir(self.directory):  # what a writer killed mid-save left behind
            if name.startswith(f".tmp-{kind}-"):
                shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

    # ---- listing -------------------------------------------------------------------------------

    def sequence(self) -> list[int]:
        """Sequence numbers of the complete checkpoints here, oldest first."""
        seqs = []
        for name in os.listdir(self.directory):
            m = self._re.match(name)
            if m and os.path.isdir(os.path.join(self.directory, name)):
                seqs.append(int(m.group(1)))
        return sorted(seqs)

    def _path(self, seq: int) -> str:
        return os.path.join(self.directory, f"{self.kind}-{seq:012d}")

    # ---- writing -------------------------------------------------------------------------------

    def save(self, arrays: Mapping[str, Any], meta: Mapping[str, Any] | None = None) -> str:
        """Write a new checkpoint atomically; return its directory.

        ``arrays`` maps names to numpy arrays (or torch tensors, copied to cpu) of plain numeric
        dtypes; ``meta`` is JSON metadata (NaN/inf are refused: keep them in arrays).
        """
        if self.readonly:
            raise CheckpointError(f"{self.directory}: opened read-only")
        meta = _check_json(dict(meta or {}), "meta")
        entries = {}
        prepared = {}
        for name, arr in arrays.items():
            if not isinstance(name, str) or not _NAME_RE.match(name) or name == "manifest":
                raise CheckpointError(f"array name must be a simple file name, got {name!r}")
            if hasattr(arr, "detach") and hasattr(arr, "cpu"):  # torch.Tensor
                arr = arr.detach().cpu().numpy()
            arr = np.ascontiguousarray(arr)
            if arr.dtype.name not in _DTYPES:
                raise CheckpointError(f"array {name!r} has dtype {arr.dtype}; one of {_DTYPES} is needed")
            prepared[name] = arr
        seqs = self.sequence()
        seq = (seqs[-1] if seqs else 0) + 1
        final = self._path(seq)
        tmp = os.path.join(self.directory, f".tmp-{self.kind}-{seq:012d}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        try:
            for name, arr in prepared.items():
                path = os.path.join(tmp, f"{name}.npy")
                with open(path, "wb") as fh:
                    np.save(fh, arr, allow_pickle=False)
                    fh.flush()
                    os.fsync(fh.fileno())
                entries[name] = {"dtype": arr.dtype.str, "shape": list(arr.shape), "crc32": _crc(path)}
            manifest = {"format": FORMAT_VERSION, "kind": self.kind, "seq": seq, "created": time.time(),
                        "arrays": entries, "meta": meta}
            with open(os.path.join(tmp, _MANIFEST), "w") as fh:
                json.dump(manifest, fh, allow_nan=False, separators=(",", ":"))
                fh.flush()
                os.fsync(fh.fileno())
            _fsync_dir(tmp)
            os.replace(tmp, final)
            _fsync_dir(self.directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        for old in self.sequence()[:-self.keep]:
            shutil.rmtree(self._path(old), ignore_errors=True)
        return final

    # ---- reading -------------------------------------------------------------------------------

    def load(self, seq: int) -> Checkpoint:
        """Read and verify checkpoint ``seq``; CheckpointError when it is damaged or missing."""
        path = self._path(seq)
        try:
            with open(os.path.join(path, _MANIFEST)) as fh:
                manifest = json.load(fh)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: no readable manifest ({exc})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION \
                or manifest.get("kind") != self.kind or not isinstance(manifest.get("arrays"), dict):
            raise CheckpointError(f"{path}: not a format-{FORMAT_VERSION} {self.kind} checkpoint")
        arrays = {}
        for name, entry in manifest["arrays"].items():
            file = os.path.join(path, f"{name}.npy")
            if not _NAME_RE.match(str(name)) or not os.path.isfile(file):
                raise CheckpointError(f"{path}: array {name!r} is missing")
            if _crc(file) != entry.get("crc32"):
                raise CheckpointError(f"{path}: array {name!r} fails its checksum")
            try:
                arr = np.load(file, allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise CheckpointError(f"{path}: array {name!r} cannot be read ({exc})") from None
            if arr.dtype.str != entry.get("dtype") or list(arr.shape) != entry.get("shape"):
                raise CheckpointError(f"{path}: array {name!r} is not the {entry.get('dtype')} "
                                      f"{entry.get('shape')} its manifest says")
            arrays[name] = arr
        return Checkpoint(path=path, seq=seq, arrays=arrays, meta=dict(manifest.get("meta") or {}))

    def latest(self) -> Checkpoint | None:
        """The newest checkpoint that verifies, or None when there is none."""
        for seq in reversed(self.sequence()):
            try:
                return self.load(seq)
            except CheckpointError as exc:
                log.warning("skipping a damaged checkpoint: %s", exc)
        return None

    def __repr__(self) -> str:
        return f"CheckpointStore({self.directory!r}, {self.kind!r}, keep={self.keep})"


# ---- what the sync service keeps of its protocol ------------------------------------------------

def protocol_state(protocol) -> tuple[dict, dict]:
    """``(arrays, meta)`` of a protocol that outlive a restart of the sync service.

    Kept: the reference ``r``, the per-node model versions, the communication counts
    (:class:`~streamlearn.sync.messages.CommStats`), the random generator's state, for
    dynamic averaging the violation counter ``v``, and the tensors of ``get_arrays()``: the
    server momentum (``server_momentum``) and the downlink's error-feedback memory (a codec
    other than fp32), as arrays ``protocol.<name>``, so a restarted service goes on with the
    same momentum and memory. Not kept: the sync in progress (requests in flight die with the
    process; the nodes register again and ask again) and who is alive (every node registers
    with the new instance).

    Examples
    --------
    >>> import torch
    >>> from streamlearn.sync.spec import make_protocol
    >>> p = make_protocol("dynamic:delta=1", m=2, d=3, w0=torch.ones(3), seed=0, device="cpu")
    >>> p.stats.full_syncs = 4
    >>> arrays, meta = protocol_state(p)
    >>> q = make_protocol("dynamic:delta=1", m=2, d=3, seed=0, device="cpu")
    >>> restore_protocol_state(q, arrays, meta)
    >>> q.reference.tolist(), q.stats.full_syncs
    ([1.0, 1.0, 1.0], 4)
    """
    arrays = {"reference": protocol.reference.detach().cpu().numpy().astype(np.float32),
              "version": protocol.bank.version.detach().cpu().numpy().astype(np.int64)}
    extra = {_PROTOCOL_ARRAY + name: t.detach().cpu().numpy().astype(np.float32)
             for name, t in protocol.get_arrays().items()}
    arrays.update(extra)
    meta = {"m": protocol.m, "d": protocol.d, "stats": protocol.stats.as_dict(), **protocol.get_state(),
            "arrays": sorted(extra)}
    return arrays, meta


def restore_protocol_state(protocol, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
    """Put what :func:`protocol_state` kept into a fresh protocol of the same spec, m and d."""
    import torch

    from streamlearn.sync.messages import CommStats

    if meta.get("m") != protocol.m or meta.get("d") != protocol.d:
        raise CheckpointError(f"the saved protocol state is for m={meta.get('m')}, d={meta.get('d')}; "
                              f"this protocol has m={protocol.m}, d={protocol.d}")
    ref = np.asarray(arrays["reference"])
    if ref.shape != (protocol.d,) or not np.isfinite(ref).all():
        raise CheckpointError("the saved reference is not a finite vector of length d")
    protocol.bank.set_reference(torch.from_numpy(ref.astype(np.float32)))
    protocol.bank.version.copy_(torch.from_numpy(np.asarray(arrays["version"], dtype=np.int64)))
    protocol.stats = CommStats(**{k: int(v) for k, v in dict(meta.get("stats") or {}).items()})
    protocol.set_state(meta)
    missing = [name for name in meta.get("arrays") or [] if name not in arrays]
    if missing:
        raise CheckpointError(f"the saved protocol state lacks the arrays {missing}")
    try:  # server momentum, downlink memory (a state without them: fresh ones)
        protocol.set_arrays({name[len(_PROTOCOL_ARRAY):]: np.asarray(a) for name, a in arrays.items()
                             if name.startswith(_PROTOCOL_ARRAY)})
    except ConfigError as exc:
        raise CheckpointError(f"the saved protocol state does not fit this protocol: {exc}") from None


#: Prefix of the names of a protocol's state tensors (``Protocol.get_arrays``) in a checkpoint.
_PROTOCOL_ARRAY = "protocol."


# ---- what the node service keeps of its learner and evaluator ----------------------------------

def learner_state(learner, prefix: str = "learner.") -> tuple[dict, dict]:
    """``(arrays, meta)`` of an averageable learner: its flat parameters, its optimizer's state
    tensors (momentum, Adam moments and step), its online scaler's statistics and the clock of
    its step-size schedule (a TorchLearner's ``n_steps_`` and ``t_reset_``, see ``lr_decay``).

    A river linear learner keeps its weights as the float32 flat vector (river holds float64)
    and its optimizer's iteration count. Learners that are not averageable cannot be saved
    without pickle: the node service refuses checkpoints for them.

    Examples
    --------
    >>> import numpy as np
    >>> from streamlearn.learners import make_learner
    >>> a = make_learner("logreg", features=["x", "y"], classes=[0, 1], seed=0, device="cpu", optimizer="adam")
    >>> a.learn_many(np.array([[1.0, 2.0], [0.0, -1.0]], dtype=np.float32), np.array([1, 0]))
    >>> arrays, meta = learner_state(a)
    >>> b = make_learner("logreg", features=["x", "y"], classes=[0, 1], seed=1, device="cpu", optimizer="adam")
    >>> restore_learner_state(b, arrays, meta)
    >>> X = np.array([[0.5, 0.5]], dtype=np.float32)
    >>> for m in (a, b):
    ...     m.learn_many(X, np.array([1]))
    >>> bool((a.get_flat() == b.get_flat()).all())
    True
    """
    import torch

    arrays = {prefix + "flat": learner.get_flat().detach().cpu().float()}
    meta: dict = {"type": type(learner).__name__, "optimizer": None, "scaler_n": None}
    opt = getattr(learner, "optimizer_", None)
    if opt is not None and hasattr(opt, "state_dict"):
        entries = []
        for pid, st in opt.state_dict()["state"].items():
            for key, value in st.items():
                if torch.is_tensor(value):
                    arrays[f"{prefix}opt.{pid}.{key}"] = value
                    entries.append([int(pid), key, "tensor"])
                else:
                    entries.append([int(pid), key, value if value is None or isinstance(value, (int, float)) else
                                    str(value)])
        meta["optimizer"] = entries
    scaler = getattr(learner, "scaler_", None)
    if scaler is not None and scaler.mean_ is not None:
        state = scaler.get_state()
        arrays[prefix + "scaler.mean"], arrays[prefix + "scaler.m2"] = state["mean"], state["m2"]
        meta["scaler_n"] = state["n"]
    river_opt = getattr(getattr(learner, "model", None), "optimizer", None)
    if river_opt is not None and isinstance(getattr(river_opt, "n_iterations", None), int):
        meta["river_iterations"] = river_opt.n_iterations
    if hasattr(learner, "restart_schedule"):  # the step-size schedule's clock: [steps, step of the last restart]
        meta["schedule"] = [int(learner.n_steps_), int(learner.t_reset_)]
    return arrays, meta


def restore_learner_state(learner, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any],
                          prefix: str = "learner.") -> None:
    """Put what :func:`learner_state` kept into a learner built with the same settings."""
    import torch

    if meta.get("type") != type(learner).__name__:
        raise CheckpointError(f"the checkpoint holds a {meta.get('type')}, this learner is a {type(learner).__name__}")
    flat = np.asarray(arrays[prefix + "flat"])
    d = int(learner.get_flat().numel())
    if flat.shape != (d,):
        raise CheckpointError(f"the checkpoint's model has {flat.size} parameters, this learner {d}")
    learner.set_flat(torch.from_numpy(flat.astype(np.float32)))
    opt = getattr(learner, "optimizer_", None)
    if meta.get("optimizer") is not None and opt is not None:
        device = learner.get_flat().device
        state: dict = {}
        for pid, key, value in meta["optimizer"]:
            if value == "tensor":
                value = torch.from_numpy(np.array(arrays[f"{prefix}opt.{pid}.{key}"])).to(device)
            state.setdefault(int(pid), {})[key] = value
        sd = opt.state_dict()
        sd["state"] = state
        try:
            opt.load_state_dict(sd)
        except (ValueError, KeyError, TypeError) as exc:  # e.g. momentum kept for a learner with plain SGD
            raise CheckpointError(f"the checkpoint's optimizer state does not fit this learner's optimizer: "
                                  f"{exc}") from None
    scaler = getattr(learner, "scaler_", None)
    if meta.get("scaler_n") is not None and scaler is not None:
        scaler.set_state({"n": meta["scaler_n"], "mean": arrays[prefix + "scaler.mean"],
                          "m2": arrays[prefix + "scaler.m2"]})
    river_opt = getattr(getattr(learner, "model", None), "optimizer", None)
    if meta.get("river_iterations") is not None and river_opt is not None:
        river_opt.n_iterations = int(meta["river_iterations"])
    if meta.get("schedule") is not None and hasattr(learner, "restart_schedule"):
        clock = meta["schedule"]
        if (not isinstance(clock, (list, tuple)) or len(clock) != 2 or not all(type(v) is int for v in clock)
                or not 0 <= clock[1] <= clock[0]):
            raise CheckpointError(f"the checkpoint's schedule clock is not [steps, t_reset] with 0 <= t_reset <= steps: "
                                  f"{clock!r}")
        learner.n_steps_, learner.t_reset_ = clock


def prequential_state(preq, prefix: str = "preq.") -> tuple[dict, dict]:
    """``(arrays, meta)`` of a :class:`~streamlearn.evaluation.Prequential`: counts, sums and the
    rolling window (its history points are not kept)."""
    arrays, meta = preq.get_state()
    return {prefix + name: a for name, a in arrays.items()}, meta


def restore_prequential_state(preq, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any],
                              prefix: str = "preq.") -> bool:
    """Put what :func:`prequential_state` kept into ``preq``; False (and nothing changed) when the
    window differs, so the evaluator restarts fresh."""
    own = {name[len(prefix):]: a for name, a in arrays.items() if name.startswith(prefix)}
    if "buf" not in own:
        return False
    return preq.set_state(own, dict(meta))
