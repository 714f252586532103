"""A shard's sync service and the root of a sharded sync layer, over Kafka.

With a protocol spec ``shards=S,root=R`` (:mod:`streamlearn.sync.hierarchy`) and one sync service
per shard (``streamlearn sync --shard K``, or services sharing the shards through a consumer group,
:mod:`streamlearn.kafka.sync_group`), the root's exchange (:mod:`streamlearn.sync.root`) travels on
two topics of one partition each:

- ``<prefix>.sync.root.up``: after each of its full syncs, a shard's service sends a ``report``
  (``node`` = the shard, ``step`` = its full syncs so far, ``n_samples`` = its alive nodes, ``model`` =
  its new reference).
- ``<prefix>.sync.root.down``: the root (the service of shard 0: who owns shard 0 hosts the root)
  reads the reports and, when due (:class:`~streamlearn.sync.root.RootAverager`), sends a ``send``
  with reason ``"root"`` and the average. Every shard's service adopts it
  (:func:`~streamlearn.sync.root.adopt_root`) once no sync of its own is in progress: its reference,
  sent to its alive nodes as a full sync.

Both are signed like ``sync.down`` when the services have a key (sender ``shard-K``; a node never
accepts that sender). A record that does not decode, has the wrong model size or shard, or is not
finite is dead-lettered and counted in ``root_bad``. With a ``--state-dir`` the root's state (the shards'
latest references and its counts) is kept with shard 0's state at each of its full syncs, and a restarted
root goes on from there; reports that came after that save are not read again (a new instance starts at
the end of the root topics), so the root counts from the next ones.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from streamlearn.kafka.codecs import DecodeError
from streamlearn.kafka.wire import SyncMessage, decode_sync, encode_sync
from streamlearn.sync.root import RootAverager, adopt_root

__all__ = ["RootLink"]

log = logging.getLogger(__name__)


class RootLink:
    """The root side of one shard's :class:`~streamlearn.kafka.sync_service.SyncService` (see the module doc)."""

    def __init__(self, svc):
        from streamlearn.kafka.signing import SyncSigner, SyncVerifier, load_key

        self.svc = svc
        cfg = svc.config
        self.shard, self.shards = cfg.shard, cfg.shards
        self.sender = f"shard-{self.shard}"
        self.averager = RootAverager(cfg.shards, cfg.root) if cfg.shard == 0 else None
        self.pending: np.ndarray | None = None  # the root's latest average, adopted once no sync is in progress
        self._adopting = False
        self._counts = dict(root_reports=0, root_adopted=0, root_bad=0)
        key = load_key(cfg.sync_key_file)
        self._signer = None if key is None else SyncSigner(key, "down")
        self._verifier = None if key is None else SyncVerifier(key, "down", allowed=lambda s: s.startswith("shard-"))

    def partitions(self) -> list:
        """What this service reads besides its shard of ``sync.up``: the root's averages (and, at shard 0, the
        shards' reports)."""
        from kafka import TopicPartition

        t = self.svc._topics
        return [TopicPartition(t["root_down"], 0)] + ([] if self.averager is None else
                                                      [TopicPartition(t["root_up"], 0)])

    def counts(self) -> dict:
        out = dict(self._counts)
        if self.averager is not None:
            out["root_syncs"] = self.averager.root_syncs  # the averages this service made as the root
        return out

    # ---- out ---------------------------------------------------------------------------------------

    def report(self) -> None:
        """This shard made a full sync: tell the root (not for the full sync that adopts the root's average)."""
        if self._adopting:
            return
        p = self.svc.protocol_
        msg = SyncMessage("report", node=self.shard, step=int(p.stats.full_syncs), n_samples=len(p.alive),
                          model=p.reference.detach().to("cpu", torch.float32).numpy(), epoch=self.svc.epoch_)
        if self._send("root_up", msg):
            self._counts["root_reports"] += 1

    def _send(self, topic: str, msg: SyncMessage) -> bool:
        svc = self.svc
        try:
            data = encode_sync(msg)
            headers = None if self._signer is None else self._signer.sign(data, sender=self.sender)
            svc._producer.send(svc._topics[topic], data, partition=0, headers=headers)
        except Exception as exc:  # EncodeError, KafkaError, buffer full
            svc._counts["send_errors"] += 1
            log.warning("sync %s: cannot send to %s: %s", svc.epoch_, svc._topics[topic], exc)
            return False
        return True

    # ---- in ----------------------------------------------------------------------------------------

    def on_records(self, topic: str, records) -> None:
        t = self.svc._topics
        for rec in records:
            msg = self._decode(rec)
            if msg is None:
                continue
            if topic == t["root_up"] and self.averager is not None and msg.kind == "report":
                self._on_report(rec, msg)
            elif topic == t["root_down"] and msg.kind == "send" and msg.reason == "root":
                self.pending = np.array(msg.model, dtype=np.float32)  # a copy: writable, its own
            else:
                self._bad(rec, f"a {msg.kind} on {topic}")

    def _decode(self, rec) -> SyncMessage | None:
        if self._verifier is not None:
            verdict = self._verifier.verify(rec.headers, rec.key, rec.value)
            if not verdict.ok:
                self._bad(rec, f"unauthenticated ({verdict.reason}): {verdict.detail}")
                return None
        try:
            msg = decode_sync(rec.value)
        except DecodeError as exc:  # all decode_sync raises for a hostile record (fuzzed: issue 14)
            self._bad(rec, f"does not decode: {exc}")
            return None
        d = self.svc._d
        model = None if msg.model is None else np.asarray(msg.model)
        if model is None or model.ndim != 1 or (d is not None and model.size != d) or not np.isfinite(model).all():
            self._bad(rec, f"a {msg.kind} without a finite flat model of d={d} entries")
            return None
        return msg

    def _on_report(self, rec, msg: SyncMessage) -> None:
        if not isinstance(msg.node, int) or not 0 <= msg.node < self.shards:
            return self._bad(rec, f"shard {msg.node!r} is not in [0, {self.shards - 1}]")
        avg = self.averager.on_shard(msg.node, int(msg.step), int(msg.n_samples),
                                     torch.from_numpy(np.array(msg.model, dtype=np.float32)))
        if avg is not None:
            log.info("sync %s: root average %d of %d shards", self.svc.epoch_, self.averager.root_syncs, self.shards)
            self._send("root_down", SyncMessage("send", targets=tuple(range(self.shards)), reference=True,
                                                reason="root", model=avg.numpy(), epoch=self.svc.epoch_))

    def _bad(self, rec, reason: str) -> None:
        self._counts["root_bad"] += 1
        self.svc._deadletter(rec, f"root: {reason}", count=False)

    def adopt_if_free(self) -> None:
        """Adopt the root's latest average once this shard is not in the middle of a sync of its own."""
        p = self.svc.protocol_
        if self.pending is None or p is None or p.pending or p.waiting_reports:
            return
        model, self.pending = self.pending, None
        if model.size != self.svc._d:
            self._counts["root_bad"] += 1
            return
        action = adopt_root(p, torch.from_numpy(model))
        self._counts["root_adopted"] += 1
        self._adopting = True
        try:
            self.svc._act([] if action is None else [action])
        finally:
            self._adopting = False
