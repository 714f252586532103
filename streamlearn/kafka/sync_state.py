"""The sync service's state kept across restarts (``state_dir``): what is written and how it is read back.

See "State" in :mod:`streamlearn.kafka.sync_service`. :class:`SyncStateStore` knows the
checkpoint's layout (the reference and protocol state as arrays, the settings and counters
as metadata) and refuses a state written under other settings; when to save, and what the
service does with a resumed state, stay with the service.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from streamlearn.errors import ConfigError
from streamlearn.kafka.checkpoint import (
    CheckpointStore,
    protocol_state,
    restore_protocol_state,
)

__all__ = ["ResumedSync", "SyncStateStore"]

_ROOT = "root."  # the hosted root's arrays, beside the protocol's


@dataclass
class ResumedSync:
    """A state read back: the protocol rebuilt from it and what the service kept beside it."""

    protocol: object
    d: int
    layout: str | None
    counts: dict
    rejected_by: dict
    seq: int
    path: str
    root: tuple | None = None  # (arrays, meta) of the root this service hosted (shard 0), or None


class SyncStateStore:
    """The sync service's reference, protocol state and counters in ``config.state_dir``.

    ``config`` is the service's :class:`~streamlearn.kafka.sync_service.SyncConfig`.
    """

    def __init__(self, config):
        self.config = config
        self.store = CheckpointStore(config.state_dir, "sync")

    def load(self) -> ResumedSync | None:
        """The latest state kept, with its protocol rebuilt; None when there is none.

        Raises ConfigError for a state of a service with another protocol spec or slot count."""
        from streamlearn.sync.spec import make_protocol

        cfg = self.config
        ck = self.store.latest()
        if ck is None:
            return None
        meta = ck.meta
        ours = make_protocol(cfg.protocol, m=1, d=1, seed=0, device="cpu", **cfg.params)
        if not isinstance(meta.get("spec"), str) or not _same_spec(meta["spec"], ours) \
                or meta.get("max_nodes") != cfg.max_nodes:
            raise ConfigError(f"state_dir {cfg.state_dir!r} holds the state of a sync service running "
                              f"{meta.get('spec')} with {meta.get('max_nodes')} node slots, this one runs {cfg.spec} "
                              f"with {cfg.max_nodes}: give the same settings or another directory")
        d = int(meta["d"])
        w0 = torch.from_numpy(np.array(ck.arrays["reference"], dtype=np.float32))
        protocol = make_protocol(cfg.protocol, m=cfg.max_nodes, d=d, w0=w0,
                                 seed=cfg.seed, initial_nodes=[], device=cfg.device,
                                 n_params=meta.get("n_params"), **cfg.params)
        restore_protocol_state(protocol, ck.arrays, meta["protocol"])
        root = None
        if isinstance(meta.get("root"), dict):
            root = ({k[len(_ROOT):]: v for k, v in ck.arrays.items() if k.startswith(_ROOT)}, meta["root"])
        return ResumedSync(protocol=protocol, d=d, layout=meta.get("layout"),
                           counts=dict(meta.get("counts") or {}),
                           rejected_by=dict(meta.get("rejected_models_by_reason") or {}), seq=ck.seq, path=ck.path,
                           root=root)

    def save(self, protocol, *, d: int | None, layout: str | None, epoch: str, counts: dict,
             rejected_by: dict, root: tuple | None = None) -> None:
        """Keep ``protocol``'s state and the service's counters (atomically); ``root``: the ``(arrays, meta)``
        of the root this service hosts (:meth:`RootAverager.get_state <streamlearn.sync.root.RootAverager.get_state>`).

        Raises OSError or :class:`~streamlearn.kafka.checkpoint.CheckpointError` when it cannot."""
        arrays, pmeta = protocol_state(protocol)
        meta = {"spec": self.config.spec, "max_nodes": self.config.max_nodes, "d": d,
                "n_params": protocol.n_params, "layout": layout,
                "epoch": epoch, "protocol": pmeta, "counts": dict(counts),
                "rejected_models_by_reason": dict(rejected_by)}
        if root is not None:
            arrays = {**arrays, **{_ROOT + k: v for k, v in root[0].items()}}
            meta["root"] = root[1]
        self.store.save(arrays, meta)


def _same_spec(spec: str, protocol) -> bool:
    from streamlearn.sync.spec import make_protocol

    try:
        other = make_protocol(spec, m=1, d=1, seed=0, device="cpu")
    except ConfigError:
        return False
    return type(other) is type(protocol) and all(getattr(other, k) == getattr(protocol, k) for k in protocol.params)
