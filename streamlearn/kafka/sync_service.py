"""The sync service: the coordinator of the pipeline, driving a protocol object over Kafka.

It reads ``<prefix>.sync.up`` and drives the SAME protocol objects as the simulator
(:mod:`streamlearn.sync`): the protocol is built on the first ``join`` (``d`` and ``w0``
from it; ``max_nodes`` node slots; its model bank on cuda when available, else cpu), then

- ``join`` -> ``on_join`` (the node gets the reference), ``leave`` -> ``on_leave``;
- all ``report`` records of one poll -> one ``on_reports`` call;
- all ``model`` answers of one poll -> one ``on_models`` call;
- all ``decline`` records of one poll (guarded nodes that kept their own model,
  :mod:`streamlearn.sync.guard`) -> one ``on_declined`` call, counted in ``declines``;
- a node awaited (``pending``, or ``waiting_reports`` of round protocols) for more than
  ``timeout`` seconds -> ``on_timeout``;

and publishes the actions on ``<prefix>.sync.down``: ``RequestModels`` as one ``request``,
``SendModel`` as one ``send`` and ``PullToward`` as one ``pull`` carrying the target list
(the protocol counts one transfer per target). Records it cannot use go to the dead-letter
topic. Its status (the protocol's communication counts, nodes alive, reference hash) goes
to ``<prefix>.status`` every ``status_interval`` seconds.

Every start is a new *epoch*: the service reads ``sync.up`` from its end (a report addressed
to an earlier instance means nothing to a fresh protocol) and says ``hello``; nodes that
hear it register again with their reference, so a restarted service picks up the running
nodes. Nodes it does not know that report anyway get a ``hello`` of their own.

It also gives out node ids (``streamlearn node --id auto``, so ``docker compose --scale
node=8`` needs no id per container): a ``claim`` with a new token is answered by an
``assign`` carrying the lowest id in ``0..max_nodes-1`` that no live node holds. An id is
held by a registered node (joined, not left) and by an assigned id whose holder renews it
(a ``claim`` with its id and token every :data:`~streamlearn.kafka.wire.ID_RENEW_EVERY`
seconds) within ``id_lease`` seconds; a ``leave`` frees it, and an assigned id that is not
renewed expires (a registered holder is then treated as having left). A repeated claim gets
the same answer. For ``id_grace`` seconds after its start the service only collects claims:
the running nodes re-register (and renew their ids) on its ``hello`` first, so a restarted
service never hands out an id that is still in use. Explicit ids of nodes that never
register (local-only learners) are unknown to it: do not mix them with ``auto`` ids.

Signed records. With a shared secret (``sync_key_file`` or ``STREAMLEARN_SYNC_KEY``) every record the
service writes on ``sync.down`` is signed as sender ``sync`` and every record read on ``sync.up`` is
verified (:mod:`streamlearn.kafka.signing`) before it is decoded: a forged, replayed or wrongly
attributed record (its signer is not the node it names) is never processed, goes to the dead-letter
topic and is counted (``unauthenticated_by_reason`` in the status, the metric
``streamlearn_sync_unauthenticated_total{reason}``). Without a key it warns once at start.

Hostile models. A model that arrives (in a ``join``, a violation ``report`` or a ``model``
answer) is refused when it holds NaN or inf, is not float32, has the wrong length (or is not
flat), has an L2 norm above ``max_norm``, fails its CRC32 or is otherwise malformed. A refused
model is counted (``rejected_models`` and ``rejected_models_by_reason`` in the status, the
metric ``streamlearn_sync_rejected_models_total{reason}`` with the reasons of
:data:`~streamlearn.metrics.REJECT_REASONS`), goes to the dead-letter topic and never reaches
the model bank: for the protocol it is a model that did not come, so an awaited node is given
up on at once (``on_timeout``, also counted in ``timeouts``) and the sync goes on without it. A
refused ``join`` is answered with a ``reject``.

Robust aggregation (:mod:`streamlearn.sync.robust`). A model that passes those checks but moved
far from its node's reference (``||w - r||`` above ``clip`` times the nodes' typical long move) is
clipped toward the reference before the protocol sees it (centered clipping), counted in
``clipped_models``; the bound is in the status as ``clip_bound``. Each node id may send
``max_reports_per_second`` records (``report_burst`` at once) on ``sync.up``; the excess, and a
node's records for a second after a move far beyond the bound, are dropped unread and counted
in ``rate_limited``.

Compressed transfer. Under a protocol whose ``codec`` is not fp32 (``periodic:b=1,codec=sign``),
nodes send their models as compressed deltas to their reference (flag bit 0 of the sync
envelope, :mod:`streamlearn.sync.codec`). The service decodes each against the reference it
names by its tag: the current one or one of the last :data:`KEEP_REFERENCES` it held (a report
sent just before its node applied the latest full sync; counted in ``stale_deltas``), and hands
the dense model to the protocol as it would a whole one. A delta that does not decode, or names
a reference the service does not hold, is a refused model as above (reasons ``malformed``,
``checksum``, ``nonfinite``, ``shape``, ``reference``). Its syncs go down the same way: a
``SendModel`` the protocol compressed is a ``send`` carrying the delta to the reference every
target holds; a joining node gets the reference whole. A node whose spec names another codec is
rejected at its join (it learns alone): both ends must agree on what crosses the wire.

State. With ``state_dir`` the service keeps its reference model (float32 ``.npy``) and its
protocol state (communication counts, per-node model versions, the violation counter, the
random generator, the server momentum and the downlink's error-feedback memory) and its own
counters in a :class:`~streamlearn.kafka.checkpoint.CheckpointStore`,
written atomically before every full sync is sent and at shutdown. A service that starts with
a state there resumes from it: the same reference (the nodes, registering again, get it), the
counts going on. The sync in progress at a crash is not kept: its requests are lost, the
nodes' own timeouts let them ask again.

Broker restart. Every record goes to partition 0 (a broker that auto-creates a lost topic may
give it several partitions). A memory-only broker (the embedded Tansu) that restarts has lost
every topic and counts offsets from 0 again: when ``sync.up`` holds fewer records than the
service has read, it reads the topic from its start (``topic_resets`` in the status).

Shards. With a sharded spec (``shards=S,root=R``, :mod:`streamlearn.sync.hierarchy`) each sync
service runs one shard K (``shard``): partition K of ``sync.up`` and ``sync.down`` (the topics have S
partitions), the protocol over the nodes n with ``n % S == K`` only (a join of another node is rejected,
naming both shards), exactly as the simulator's shard K (its seed ``seed + SEED_STRIDE * K``), its state
in ``state_dir/shard-K``. With ``root`` >= 1 it reports each full sync to the root and adopts the root's
averages (:mod:`~streamlearn.kafka.sync_root`; shard 0's service is the root). Which service runs which
shard is fixed (``--shard K``) or left to a Kafka consumer group (``--shard group``,
:mod:`~streamlearn.kafka.sync_group`), which moves a stopped member's shards to the others.

The service does the I/O and drives the protocol; the parts with a job of their own are apart:
:mod:`~streamlearn.kafka.sync_models` (which models are refused, deltas expanded against the kept
references), :mod:`~streamlearn.kafka.sync_ids` (the node-id leases),
:mod:`~streamlearn.kafka.sync_state` (the state kept in ``state_dir``) and
:mod:`~streamlearn.kafka.sync_actions` (protocol actions as ``sync.down`` messages).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from streamlearn.errors import BadRecordError, ConfigError
from streamlearn.kafka.codecs import DecodeError, EncodeError, deadletter_headers
from streamlearn.kafka.config import MAX_MESSAGE_BYTES, KafkaSettings, default_fetch_wait_ms
from streamlearn.kafka.service import Service
from streamlearn.kafka.signing import Refusals, SyncSigner, SyncVerifier, load_key, unsigned_warning, up_sender
from streamlearn.kafka.status import MAX_STATUS_BYTES, encode_status, model_hash
from streamlearn.kafka.sync_actions import ActionWriter, answers_join, is_full_sync
from streamlearn.kafka.sync_ids import IdLeases
from streamlearn.kafka.sync_root import RootLink
from streamlearn.kafka.sync_models import KEEP_REFERENCES, ModelRefused, ModelScreen, _model_fault
from streamlearn.kafka.topics import (deadletter_topic, status_topic, sync_down_topic, sync_root_down_topic,
                                     sync_root_up_topic, sync_up_topic)
from streamlearn.kafka.wire import ID_RENEW_EVERY, SyncMessage, connect, decode_sync, encode_sync_many, positive
from streamlearn.metrics import REJECT_REASONS
from streamlearn.sync.messages import Report, SendModel
from streamlearn.sync.robust import (CLIP_COOLDOWN, CLIP_FACTOR, REPORT_BURST, REPORT_RATE, SILENCE_BEYOND, NormBound,
                                     TokenBucket, check_clip, check_rate, clip_to_references)

__all__ = ["SyncConfig", "SyncService", "sync_config_from_options", "run_sync", "KEEP_REFERENCES"]

log = logging.getLogger(__name__)

_HELLO_EVERY = 2.0  # seconds between two hellos to one unknown node
# Longest wait for one broker answer, as the node's (kafka-python waits forever on some calls without one).
_BROKER_WAIT_MS = 10_000


@dataclass(frozen=True)
class SyncConfig:
    """Validated settings of the sync service.

    Parameters
    ----------
    protocol
        Protocol name or spec (``"dynamic"``, ``"dynamic:delta=0.5,b=1"``).
    params
        Hyperparameters given apart from the spec (``{"delta": 0.5, "b": 1}``); a key in
        both is a ConfigError.
    max_nodes
        Node slots m of the protocol (node ids 0..max_nodes-1).
    timeout
        Seconds an awaited model (or report) may take before ``on_timeout`` gives up on it.
    seed
        Seed of the protocol's random choices.
    device
        Where the model bank lives; None: cuda when available, else cpu.
    status_interval
        Seconds between status messages.
    fetch_wait_ms
        Longest time the broker may hold a fetch (see :class:`~streamlearn.kafka.node.NodeConfig`).
    id_lease
        Seconds an assigned node id stays held without a renewal (at least twice
        :data:`~streamlearn.kafka.wire.ID_RENEW_EVERY`).
    id_grace
        Seconds after the start during which claims for new ids wait, so that running nodes
        re-register first.
    max_norm
        A model whose L2 norm exceeds this is refused (see "Hostile models" in the module doc).
    max_params
        The largest model (entries of the flat vector) a join may announce: the first join sizes the model
        bank (``max_nodes`` rows of ``d``), so a larger one is rejected instead of allocated.
    state_dir
        Where the reference and protocol state are kept across restarts (None: not kept).
    clip
        Robust aggregation (:mod:`streamlearn.sync.robust`): a model whose move from the reference,
        ``||w - r||``, is longer than ``clip`` times the median over nodes of each node's longest recent
        move is clipped to that length (centered clipping) and counted in ``clipped_models``; None: no
        clipping.
    max_reports_per_second, report_burst
        Records a node id may send on ``sync.up`` per second (token bucket, ``report_burst`` at once);
        the excess is dropped unread and counted in ``rate_limited``, and so are the records of a node
        id whose move was clipped to less than a tenth, for :data:`~streamlearn.sync.robust.CLIP_COOLDOWN`
        seconds. None: no limit.
    sync_key_file
        A file holding the shared secret that signs and verifies sync records
        (:mod:`streamlearn.kafka.signing`); None: the ``STREAMLEARN_SYNC_KEY`` environment variable, else unsigned.
    shard
        With a sharded protocol spec (``"periodic:b=8,shards=3,root=2"``, :mod:`streamlearn.sync.hierarchy`):
        the one shard this service runs (see "Shards" in the module doc). The spec's ``shards`` and ``root``
        then move to the fields of the same name, ``protocol`` and ``params`` keep the shard's own protocol,
        and ``state_dir`` becomes its ``shard-<k>`` subfolder. None: one service for every node.
    prefix, bootstrap, settings
        As for :class:`~streamlearn.kafka.node.NodeConfig`.

    Examples
    --------
    >>> SyncConfig(protocol="dynamic", params={"delta": 0.5, "b": 1}).spec
    'dynamic:delta=0.5,b=1'
    >>> SyncConfig(protocol="dynamic", params={"tau": 3})
    Traceback (most recent call last):
    ...
    streamlearn.errors.ConfigError: protocol 'dynamic' has no parameter 'tau' (parameters: delta, b, extrapolate, server_lr, server_momentum, codec, buffers_every, split, shards, root)
    """

    protocol: str = "dynamic"
    params: Mapping = field(default_factory=dict)
    max_nodes: int = 64
    timeout: float = 5.0
    seed: int = 0
    device: str | None = None
    status_interval: float = 1.0
    fetch_wait_ms: int | None = None  # None: default_fetch_wait_ms()
    id_lease: float = 10.0
    id_grace: float = 3.0  # several id renewals (one a second), so a busy machine still makes it
    max_norm: float = 1e6
    max_params: int = 10_000_000  # 40 MB per model in float32
    state_dir: str | None = None
    clip: float | None = CLIP_FACTOR
    max_reports_per_second: float | None = REPORT_RATE
    report_burst: int = REPORT_BURST
    sync_key_file: str | None = None
    shard: int | None = None
    shards: int = 1  # set from the spec when ``shard`` is given
    root: int = 0  # idem: the root averages after root * shards full syncs of the shards
    prefix: str | None = None
    bootstrap: str | None = None
    settings: KafkaSettings | None = None

    def __post_init__(self):
        from streamlearn.sync.spec import make_protocol

        object.__setattr__(self, "params", dict(self.params or {}))
        if self.shard is not None:
            self._take_shard()
        else:
            from streamlearn.sync.spec import shard_layout

            shards = shard_layout(self.spec)[1]
            if shards != 1:
                raise ConfigError(f"protocol {self.protocol!r} has shards={shards}: run one sync service per shard "
                                  f"(--shard K, K in 0..{shards - 1}) or services that share the shards "
                                  f"(--shard group)")
        positive("max_nodes", self.max_nodes, integer=True)
        if self.fetch_wait_ms is None:
            object.__setattr__(self, "fetch_wait_ms", default_fetch_wait_ms())
        positive("fetch_wait_ms", self.fetch_wait_ms, integer=True)
        positive("timeout", self.timeout)
        positive("status_interval", self.status_interval)
        positive("id_grace", self.id_grace)
        positive("max_norm", self.max_norm)
        positive("max_params", self.max_params, integer=True)
        # The caps of the wire, checked here rather than met at the first big sync (issue 18): node ids are
        # 31-bit, and a model must fit in one Kafka record with its envelope. Target lists have no cap: a sync
        # to more nodes than a record names goes as several records (wire.encode_sync_many).
        if self.max_nodes > _MAX_NODES:
            raise ConfigError(f"max_nodes must be at most {_MAX_NODES} (node ids are 31-bit on the wire), "
                              f"got {self.max_nodes!r}")
        if self.max_params > _MAX_PARAMS:
            raise ConfigError(f"max_params must be at most {_MAX_PARAMS}: a float32 model of {self.max_params} "
                              f"entries does not fit in a Kafka record of {MAX_MESSAGE_BYTES} bytes with its envelope")
        if self.state_dir is not None and (not isinstance(self.state_dir, str) or not self.state_dir):
            raise ConfigError(f"state_dir must be a directory path, got {self.state_dir!r}")
        object.__setattr__(self, "clip", check_clip(self.clip))
        rate, burst = check_rate(self.max_reports_per_second, self.report_burst)
        object.__setattr__(self, "max_reports_per_second", rate)
        object.__setattr__(self, "report_burst", burst)
        load_key(self.sync_key_file)  # a short or unreadable key fails here, at the edge
        if positive("id_lease", self.id_lease) < 2 * ID_RENEW_EVERY:
            raise ConfigError(f"id_lease must be at least {2 * ID_RENEW_EVERY:g} s (twice the renewal period), "
                              f"got {self.id_lease!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        if self.settings is not None and not isinstance(self.settings, KafkaSettings):
            raise ConfigError(f"settings must be a KafkaSettings, got {type(self.settings).__name__}")
        make_protocol(self.protocol, m=1, d=1, seed=0, device="cpu", **self.params)  # checks names and values

    def _take_shard(self) -> None:
        """One shard of a sharded spec: the shard's own protocol here, ``shards`` and ``root`` apart."""
        from streamlearn.sync.hierarchy import SEED_STRIDE
        from streamlearn.sync.spec import make_protocol, parse_spec, shard_layout

        name, parsed = parse_spec(self.spec)
        if "shards" not in parsed:
            raise ConfigError(f"shard={self.shard!r}: the protocol {self.protocol!r} names no shards "
                              f"(e.g. {name}:shards=2,root=1)")
        base, shards, root = shard_layout(self.spec)
        if isinstance(self.shard, bool) or not isinstance(self.shard, int) or not 0 <= self.shard < shards:
            raise ConfigError(f"shard must be an integer in [0, {shards - 1}] (shards={shards}), got {self.shard!r}")
        if shards > self.max_nodes:
            raise ConfigError(f"shards={shards} is more than max_nodes={self.max_nodes}: every shard needs a node")
        make_protocol(self.spec, m=shards, d=1, seed=0, device="cpu")  # what the hierarchy refuses (split=, ...)
        name, params = parse_spec(base)
        object.__setattr__(self, "protocol", name)
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "shards", shards)
        object.__setattr__(self, "root", root)
        if isinstance(self.seed, int) and not isinstance(self.seed, bool) and self.shard:
            object.__setattr__(self, "seed", self.seed + SEED_STRIDE * self.shard)  # as the simulator's shard
        if isinstance(self.state_dir, str) and self.state_dir:
            object.__setattr__(self, "state_dir", os.path.join(self.state_dir, f"shard-{self.shard}"))

    @property
    def spec(self) -> str:
        """The protocol spec with every hyperparameter, e.g. ``"dynamic:delta=0.5,b=1"``."""
        from streamlearn.sync.spec import parse_spec

        name, parsed = parse_spec(self.protocol)
        parsed.update(self.params)
        return name + (":" + ",".join(f"{k}={v}" for k, v in parsed.items()) if parsed else "")


class SyncService(Service):
    """The coordinator: protocol events from ``sync.up``, actions to ``sync.down``, status out.

    Call :meth:`run` (blocking); :meth:`stop`, the ``stop_event``, SIGINT/SIGTERM (main
    thread) or ``max_seconds`` end it cleanly.

    Examples
    --------
    >>> svc = SyncService(SyncConfig(protocol="dynamic:delta=0.5", device="cpu"))
    >>> svc.protocol_ is None, svc.status()
    (True, {})
    """

    def __init__(self, config: SyncConfig, metrics=None):
        if not isinstance(config, SyncConfig):
            raise ConfigError(f"config must be a SyncConfig, got {type(config).__name__}")
        super().__init__(config, metrics)  # metrics: a streamlearn.metrics.SyncMetrics, or None
        self.protocol_ = None
        self.epoch_ = uuid.uuid4().hex[:12]
        self._root: RootLink | None = None  # with a root of shards: its side of this service (set up in _setup)

    # ---- setup and loop ------------------------------------------------------------------------

    def _setup(self) -> None:
        from kafka import KafkaConsumer, KafkaProducer, TopicPartition

        cfg = self.config
        self._d: int | None = None
        self._layout: str | None = None
        self._spec_warned: set = set()
        self._awaited = _Overdue(cfg.timeout)
        self._since = self._awaited.since  # awaited node -> monotonic time it has been awaited since
        self._hello_sent: dict[int, float] = {}
        self._writer = ActionWriter(self.epoch_)  # numbers the requests of this epoch
        self._counts = dict(bad_records=0, joins=0, leaves=0, rejects=0, unknown_reports=0, send_errors=0,
                            messages_down=0, bytes_down_wire=0, bytes_up_wire=0, ids_assigned=0, ids_expired=0,
                            id_conflicts=0, rejected_models=0, state_saves=0, state_errors=0, topic_resets=0,
                            deltas_up=0, stale_deltas=0, clipped_models=0, rate_limited=0)
        self._rejected_by = dict.fromkeys(REJECT_REASONS, 0)
        # Robust aggregation (streamlearn.sync.robust): far models clipped, floods of one node id dropped.
        self._bound = NormBound(cfg.max_nodes, cfg.clip)
        self._limiter = TokenBucket(cfg.max_reports_per_second, cfg.report_burst)
        # Signed sync records (streamlearn.kafka.signing): without a key, unsigned as before, said once here.
        key = load_key(cfg.sync_key_file)
        self._signer = None if key is None else SyncSigner(key, "down")
        self._verifier = None if key is None else SyncVerifier(key, "up")
        self._unauth = Refusals()
        if key is None:
            log.warning(unsigned_warning(f"sync {self.epoch_}"))
        # The parts with one job each: hostile-model screening (with the references a delta may name),
        # the book of node ids, the state kept across restarts. Their tables stay reachable from here.
        self._models = ModelScreen(cfg.max_norm)
        self._refs = self._models.refs  # reference tag -> reference (cpu float32), newest last
        self._ids = IdLeases(cfg.max_nodes, cfg.id_lease, cfg.id_grace, self.epoch_, self._send, self._counts)
        self._leases = self._ids.leases  # assigned node id -> [token, monotonic time of the last renewal]
        self._records: dict = {}  # id of a decoded message of this poll -> its record (to refuse it)
        self._resumed: int | None = None
        self._resumed_root: tuple | None = None  # the root's state kept by an earlier instance (shard 0)
        self._store = None
        if cfg.state_dir is not None:
            from streamlearn.kafka.sync_state import SyncStateStore

            self._store = SyncStateStore(cfg)
            self._resume()
        self._state = "starting"
        self._t0 = time.monotonic()
        self.settings_, self.bootstrap_, self.prefix_ = connect(cfg.settings, cfg.bootstrap, cfg.prefix, [],
                                                                stop=self._stop, shards=cfg.shards)
        s = self.settings_
        self._topics = {"up": sync_up_topic(self.prefix_), "down": sync_down_topic(self.prefix_),
                        "dead": deadletter_topic(self.prefix_), "status": status_topic(self.prefix_),
                        "root_up": sync_root_up_topic(self.prefix_), "root_down": sync_root_down_topic(self.prefix_)}
        self._part = cfg.shard or 0  # this shard's partition of sync.up and sync.down
        self._producer = KafkaProducer(**s.producer_kwargs(self.bootstrap_, max_block_ms=_BROKER_WAIT_MS))
        self._consumer = KafkaConsumer(**s.consumer_kwargs(self.bootstrap_, fetch_max_wait_ms=cfg.fetch_wait_ms))
        tp = self._up_tp = TopicPartition(self._topics["up"], self._part)
        # A root of shards (protocol root=R): every shard reads the root's averages; shard 0 is the root.
        self._root = RootLink(self) if cfg.root else None
        if self._root is not None and self._root.averager is not None and self._resumed_root is not None:
            self._root.averager.set_state(*self._resumed_root)  # the root counts on where it was
        tps = [tp] + ([] if self._root is None else self._root.partitions())
        self._consumer.assign(tps)
        # A new epoch: what nodes sent to an earlier instance is not for this protocol.
        ends = self._consumer.end_offsets(tps, timeout_ms=_BROKER_WAIT_MS)
        for t in tps:
            self._consumer.seek(t, ends[t])
        self._send(SyncMessage("hello", epoch=self.epoch_))
        self._ids.start_grace()  # connecting can be slow on a busy machine: it must not eat the grace
        self._state = "running"
        log.info("sync %s: %s, up to %d nodes, timeout %.3g s, broker %s", self.epoch_, cfg.spec, cfg.max_nodes,
                 cfg.timeout, self.bootstrap_)
        self._publish_status()

    def _loop(self, stop_event, max_seconds) -> None:
        cfg = self.config
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        next_status = time.monotonic() + cfg.status_interval
        while not self._stop.is_set() and not (stop_event is not None and stop_event.is_set()):
            if deadline is not None and time.monotonic() >= deadline:
                break
            messages = []
            for part, records in self._consumer.poll(timeout_ms=50).items():
                if part.topic != self._topics["up"]:
                    self._root.on_records(part.topic, records)
                    continue
                for rec in records:
                    self._counts["bytes_up_wire"] += len(rec.value)
                    sender = self._authentic(rec)  # None: unsigned service; False: refused
                    if sender is False:
                        continue
                    try:
                        msg = decode_sync(rec.value)
                    except DecodeError as exc:
                        fault = _model_fault(rec.value)
                        if fault is None:
                            self._deadletter(rec, str(exc))
                        else:
                            self._refuse(rec, fault[0], fault[1], fault[2], str(exc))
                        continue
                    if sender is not None and sender != up_sender(msg.node, msg.token):
                        self._unauthenticated(rec, "unknown_sender", f"signed by {sender!r}, the {msg.kind} is of "
                                                                     f"node {msg.node}")
                        continue
                    if not self._within_rate(msg):
                        continue
                    refused = self._models.screen(msg, self.protocol_, self._d)
                    if refused is not None:
                        self._refuse(rec, refused[0], msg.node, msg.kind, refused[1])
                        continue
                    if msg.delta is not None:
                        self._records[id(msg)] = rec  # decoded in _handle, after the joins of this poll
                    messages.append(msg)
            # Id bookkeeping, not timed as averaging. Renewals first: a late first fetch can bring a new
            # node's claim in the same batch as the renewals of the ids that are still held.
            claims = sorted((m for m in messages if m.kind == "claim"), key=lambda m: m.node is None)
            messages = [m for m in messages if m.kind != "claim"]
            if messages:
                t0 = time.perf_counter()
                try:
                    self._handle(messages)
                finally:
                    self._records.clear()
                if self.metrics is not None:
                    self.metrics.observe_averaging(time.perf_counter() - t0)
            for msg in claims:  # after the leaves of this poll: an id freed there can be given out
                self._ids.on_claim(msg, self._alive())
            if self._root is not None:
                self._root.adopt_if_free()
            self._check_topic_reset()
            self._check_timeouts()
            self._check_ids()
            if time.monotonic() >= next_status:
                self._publish_status()
                next_status = time.monotonic() + cfg.status_interval

    def _shutdown(self) -> None:
        from kafka.errors import KafkaTimeoutError

        from streamlearn.kafka.broker import close_producer

        running = getattr(self, "_state", None) == "running"
        self._state = "stopped"
        gone = False
        try:
            if running:
                self._save_state()
                self._publish_status()
                self._producer.flush(timeout=_BROKER_WAIT_MS / 1000)
        except KafkaTimeoutError:
            gone = True  # the broker does not answer: what is not delivered is counted below, in one line
        except Exception as exc:
            log.warning("sync %s: unclean shutdown: %s", self.epoch_, exc)
        finally:
            lost = 0
            producer, consumer = getattr(self, "_producer", None), getattr(self, "_consumer", None)
            if producer is not None:  # never raises: a broker that went away costs a count, not a trace
                lost = close_producer(producer, 0.5 if gone else 5)
            if consumer is not None:
                consumer.close(timeout_ms=5_000)
            if gone or lost:
                log.warning("sync %s: the broker %s did not answer at shutdown: %d records not delivered",
                            getattr(self, "epoch_", None), getattr(self, "bootstrap_", "?"), lost)
        if not running:
            return
        stats = self.protocol_.stats.as_dict() if self.protocol_ is not None else {}
        log.info("sync %s: stopped; %s", self.epoch_, stats)

    # ---- events --------------------------------------------------------------------------------

    def _handle(self, messages: list) -> None:
        by_kind: dict[str, list] = {"join": [], "report": [], "model": [], "leave": [], "decline": []}
        for msg in messages:
            if msg.kind not in by_kind:  # a down kind on the up topic
                self._counts["bad_records"] += 1
                continue
            by_kind[msg.kind].append(msg)
        self._join_all(by_kind["join"])
        p = self.protocol_
        # a delta is decoded once its sender is known, against the reference it names
        reports = [e for e in (self._expand(m) for m in by_kind["report"] if self._known(m)) if e is not None]
        if reports:
            carried = self._clip([(m.node, None if m.model is None else _tensor(m.model)) for m in reports])
            self._act(p.on_reports([
                Report(node=m.node, step=m.step, loss=float("nan") if m.loss is None else m.loss,
                       n_samples=m.n_samples, model=w)
                for m, w in zip(reports, carried)]))
        # One on_models call per run of answers from distinct nodes: a node that answered twice in one poll (a
        # request repeated after a timeout) sent two models, and both count as transfers, as on the wire.
        runs: list[dict] = [{}]
        for m in (self._expand(m) for m in by_kind["model"] if self._known(m)):
            if m is not None:
                if m.node in runs[-1]:
                    runs.append({})
                runs[-1][m.node] = _tensor(m.model)
        for models in filter(None, runs):
            self._act(p.on_models(dict(zip(models, self._clip(list(models.items()))))))
        declined = [m.node for m in by_kind["decline"] if self._known(m)]
        if declined:  # guarded nodes kept their own model (counted in the status as `declines`)
            self._act(p.on_declined(declined))
        for msg in by_kind["leave"]:
            freed = self._ids.release(msg.node, msg.token)
            if freed is None:
                continue  # an earlier holder of an id that expired and was given out again
            if freed and (p is None or msg.node not in p.alive):  # a holder that never registered (local-only)
                log.info("sync %s: node %d left; its id is free", self.epoch_, msg.node)
                continue
            if self._known(msg, hello=False):
                self._counts["leaves"] += 1
                log.info("sync %s: node %d left", self.epoch_, msg.node)
                self._act(p.on_leave(msg.node))

    def _known(self, msg: SyncMessage, hello: bool = True) -> bool:
        """Whether ``msg`` comes from a node the protocol knows; an unknown one is asked to register."""
        p = self.protocol_
        if p is not None and msg.node < p.m and msg.node in p.alive:
            return True
        if msg.node >= self.config.max_nodes:
            self._counts["bad_records"] += 1
            return False
        self._counts["unknown_reports"] += 1
        now = time.monotonic()
        if hello and now - self._hello_sent.get(msg.node, -1e9) >= _HELLO_EVERY:
            self._hello_sent[msg.node] = now
            self._send(SyncMessage("hello", targets=(msg.node,), epoch=self.epoch_))
        return False

    def _on_join(self, msg: SyncMessage) -> list | None:
        from streamlearn.sync.spec import make_protocol

        cfg = self.config
        node = msg.node
        # before anything of the node is taken (its w0 may start the protocol)
        refusal, differs = _join_refusal(msg, self.protocol_, cfg, self._d, self._layout)
        if refusal is None and cfg.shard is not None and msg.node % cfg.shards != cfg.shard:
            refusal = (f"node {node} is in shard {msg.node % cfg.shards} of {cfg.shards} (node % shards); this "
                       f"sync service runs shard {cfg.shard}: give the node the same protocol spec (shards=)")
        if refusal is not None:
            return self._reject(node, refusal)
        if self.protocol_ is None:
            self.protocol_ = make_protocol(cfg.protocol, m=cfg.max_nodes, d=msg.d, w0=_tensor(msg.model),
                                           seed=cfg.seed, initial_nodes=[], device=cfg.device,
                                           n_params=msg.n_params, **cfg.params)
            self._d, self._layout = msg.d, msg.layout
            self._models.note_reference(self.protocol_)
            log.info("sync %s: %r on %s, d=%d, w0 from node %d", self.epoch_, self.protocol_,
                     self.protocol_.bank.device, msg.d, node)
        if differs and node not in self._spec_warned:
            self._spec_warned.add(node)
            log.warning("sync %s: node %d runs the node rule of %r, this service runs %r", self.epoch_, node,
                        msg.spec, self.protocol_)
        self._counts["joins"] += 1
        log.info("sync %s: node %d joined", self.epoch_, node)
        return self.protocol_.on_join(node)

    def _join_all(self, joins: list) -> None:
        """The joins of one poll. A join answered with the reference alone changes no reference, so consecutive
        such answers carry the same model and go as one ``send`` naming every joiner: a wave of m joins (every
        node registers again after a restart of the service) costs each reader one model per poll, not m
        (bench/sync_scale.py). A join that also completed a sync goes as it comes, after the ones before it."""
        nodes: list[int] = []
        model = None

        def flush():
            if nodes:
                self._act([SendModel(tuple(nodes), model, reference=True)], joining=tuple(nodes))
                nodes.clear()

        for msg in joins:
            actions = self._on_join(msg)
            if not actions:
                continue  # rejected
            first = actions[0]
            if len(actions) == 1 and answers_join(0, first, msg.node) and first.compressed is None:
                if msg.node in nodes:  # a node that joined twice in one poll (a start racing the hello) gets two
                    flush()            # answers, as the protocol counts two models down
                model = first.model if not nodes else model
                nodes.append(msg.node)
                continue
            flush()
            self._act(actions, joining=msg.node)
        flush()

    def _alive(self) -> frozenset:
        # the protocol's own frozenset, not a copy: this is looked at after every poll
        return self.protocol_.alive if self.protocol_ is not None else frozenset()

    def _check_ids(self) -> None:
        """Answer the claims of the grace period once it is over; a registered holder of an expired id has left."""
        for node in self._ids.check(self._alive()):
            p = self.protocol_
            if p is not None and node in p.alive:
                self._counts["leaves"] += 1
                self._act(p.on_leave(node))

    def _reject(self, node: int, reason: str) -> None:
        self._counts["rejects"] += 1
        log.warning("sync %s: rejecting node %d: %s", self.epoch_, node, reason)
        self._send(SyncMessage("reject", targets=(node,), reason=reason, epoch=self.epoch_))

    def _check_topic_reset(self) -> None:
        """sync.up made anew: the broker lost its data (a memory-only broker restarted) and counts offsets
        from 0 again; what is there now is new, so read it from the start. The rule is the node's
        (:class:`~streamlearn.kafka.node.TopicWatch`: the topic's id changed; a high-water mark that lags
        what was read, as Tansu's does, is not a loss)."""
        watch = getattr(self, "_up_watch", None)
        if watch is None:
            from streamlearn.kafka.node import TopicWatch

            watch = self._up_watch = TopicWatch(self._consumer, self._up_tp)
        if watch.lost():
            self._counts["topic_resets"] += 1
            log.warning("sync %s: %s was made anew (the broker lost its data); reading it from its start",
                        self.epoch_, self._topics["up"])
            self._consumer.seek(self._up_tp, 0)

    def _check_timeouts(self) -> None:
        p = self.protocol_
        if p is None:
            return
        # Listing the awaited nodes is O(m): done every _TIMEOUT_CHECK of the timeout (at least 50 ms apart), not
        # after every poll, so neither a poll of one message nor an open round costs O(m) often (bench/sync_scale.py
        # found it at 12 % of the service's CPU with 65,536 nodes at 50 ms). A timeout is noticed that much later.
        now = time.monotonic()
        if now < getattr(self, "_next_timeout_check", 0.0):
            return
        self._next_timeout_check = now + max(0.05, _TIMEOUT_CHECK * self.config.timeout)
        for node in self._awaited.overdue(p.pending | p.waiting_reports, time.monotonic()):
            log.info("sync %s: node %d did not answer within %.3g s", self.epoch_, node, self.config.timeout)
            self._act(p.on_timeout(node))

    # ---- actions -------------------------------------------------------------------------------

    def _act(self, actions: list, joining=None) -> None:
        if self.metrics is not None:
            self.metrics.observe_actions(actions, joining=joining)
        full = is_full_sync(actions, joining)
        if self._store is not None and full:
            self._save_state()  # a full sync: kept before any node holds the new reference
        if any(isinstance(a, SendModel) and a.reference for a in actions):
            self._models.note_reference(self.protocol_)
        for msg in self._writer.messages(actions, self.protocol_.n_params, joining=joining):
            self._send(msg)
        if full and self._root is not None:
            self._root.report()  # after the nodes' sync: the root averages references the nodes hold

    def _send(self, msg: SyncMessage) -> None:
        # More targets than a record may name (wire.MAX_TARGETS): one record per run of them, the model
        # encoded once; each node finds itself in one record and skips the others by their header.
        try:
            records = encode_sync_many(msg)
        except (EncodeError, BadRecordError) as exc:
            self._counts["send_errors"] += 1
            log.error("sync %s: cannot encode %s: %s", self.epoch_, msg.kind, exc)
            return
        for data in records:
            try:
                headers = None if self._signer is None else self._signer.sign(data)
                self._producer.send(self._topics["down"], data, partition=self._part, headers=headers)
            except Exception as exc:  # KafkaError, buffer full
                self._counts["send_errors"] += 1
                log.warning("sync %s: cannot send %s: %s", self.epoch_, msg.kind, exc)
                continue
            self._counts["messages_down"] += 1
            self._counts["bytes_down_wire"] += len(data)

    def _authentic(self, rec):
        """The signer of ``rec`` (None when the service has no key), or False: refused, counted, dead-lettered."""
        if self._verifier is None:
            return None
        verdict = self._verifier.verify(rec.headers, rec.key, rec.value)
        if verdict.ok:
            return verdict.sender
        self._unauthenticated(rec, verdict.reason, verdict.detail)
        return False

    def _unauthenticated(self, rec, reason: str, detail: str) -> None:
        """A record whose signature says it is forged, replayed or not from the node it names: never processed."""
        if self._unauth.note(reason):  # at once, then at most every few seconds: a flood must not flood the log
            log.warning("sync %s: refused a record on %s (%s): %s; %d refused so far", self.epoch_,
                        self._topics["up"], reason, detail, self._unauth.total)
        self._deadletter(rec, f"unauthenticated ({reason}): {detail}", count=False)

    def _deadletter(self, rec, reason: str, count: bool = True) -> None:
        self._counts["bad_records"] += count
        log.debug("sync %s: record at offset %d to the dead-letter topic: %s", self.epoch_, rec.offset, reason)
        try:
            headers = deadletter_headers(reason, topic=rec.topic, partition=rec.partition, offset=rec.offset)
            self._producer.send(self._topics["dead"], rec.value, key=rec.key, headers=headers, partition=0)
        except Exception as exc:
            self._counts["send_errors"] += 1
            log.warning("sync %s: cannot forward a bad record to the dead-letter topic: %s", self.epoch_, exc)

    # ---- hostile models and kept state ---------------------------------------------------------

    def _within_rate(self, msg: SyncMessage) -> bool:
        """Whether ``msg`` fits its node id's rate (``max_reports_per_second``); the excess is dropped, counted.
        Leaves and id claims are not limited: dropping one would cost an honest node its id."""
        if msg.kind in ("leave", "claim") or not isinstance(msg.node, int):
            return True
        if self._limiter.allow(msg.node, time.monotonic()):
            return True
        self._counts["rate_limited"] += 1
        if self._counts["rate_limited"] in (1, 10, 100) or self._counts["rate_limited"] % 1000 == 0:
            log.warning("sync %s: node %d sends above --max-reports-per-second %g (burst %d), or had a model clipped "
                        "far beyond the bound less than %g s ago: %d records dropped so far", self.epoch_, msg.node,
                        self.config.max_reports_per_second, self.config.report_burst, CLIP_COOLDOWN,
                        self._counts["rate_limited"])
        p = self.protocol_
        if msg.kind in ("report", "model") and p is not None and (msg.node in p.pending or
                                                                  msg.node in p.waiting_reports):
            self._act(p.on_timeout(msg.node))  # an awaited answer that will not be read: the sync goes on without it
        return False

    def _clip(self, items: list) -> list:
        """The models of ``items`` (``(node, model or None)``) clipped around their nodes' references: centered
        clipping with the bound of :class:`~streamlearn.sync.robust.NormBound`, one batch; counted."""
        out, nodes, scale = clip_to_references(self._bound, self.protocol_, items)
        clipped = scale < 1.0
        if clipped.any():
            k = int(clipped.sum())
            self._counts["clipped_models"] += k
            far = sorted({nodes[j] for j in torch.nonzero(clipped).flatten().tolist()})
            now = time.monotonic()
            for j in torch.nonzero(scale < 1.0 / SILENCE_BEYOND).flatten().tolist():
                self._limiter.penalize(nodes[j], CLIP_COOLDOWN, now)  # a flood moves the average once, not per poll
            log.warning("sync %s: clipped %d model(s) of node(s) %s to ||w - r|| = %.4g (%g x the nodes' typical "
                        "long move)", self.epoch_, k, far, self._bound.tau, self.config.clip)
        return out

    def _expand(self, msg: SyncMessage) -> SyncMessage | None:
        """``msg`` with the dense model its delta stands for (None: refused, counted and dead-lettered)."""
        if msg.delta is None:
            return msg
        try:
            out, stale = self._models.expand(msg, self.protocol_, self._d)
        except ModelRefused as exc:
            self._refuse(self._records.get(id(msg)), exc.reason, msg.node, msg.kind, exc.detail)
            return None
        self._counts["deltas_up"] += 1
        self._counts["stale_deltas"] += stale
        return out

    def _refuse(self, rec, reason: str, node: int | None, kind: str, detail: str) -> None:
        """A model that must not reach an average: counted, dead-lettered, and treated as never come."""
        self._counts["rejected_models"] += 1
        self._rejected_by[reason] += 1
        log.warning("sync %s: refused the model in a %s of node %s (%s): %s", self.epoch_, kind, node, reason, detail)
        if rec is not None:
            self._deadletter(rec, f"model refused ({reason}): {detail}", count=False)
        p = self.protocol_
        if node is None or node >= self.config.max_nodes:
            return
        if kind == "join":
            self._reject(node, f"its model was refused ({reason}): {detail}")
        elif p is not None and (node in p.pending or node in p.waiting_reports):
            self._act(p.on_timeout(node))  # the sync goes on without that node

    def _resume(self) -> None:
        """Start from the state an earlier instance kept in ``state_dir``, if there is one."""
        got = self._store.load()
        if got is None:
            return
        self.protocol_, self._d, self._layout, self._resumed = got.protocol, got.d, got.layout, got.seq
        self._resumed_root = got.root
        self._models.note_reference(self.protocol_)
        self._counts.update({k: int(v) for k, v in got.counts.items() if k in self._counts})
        self._rejected_by.update({k: int(v) for k, v in got.rejected_by.items() if k in self._rejected_by})
        log.info("sync %s: resumed from %s (reference %s, %d full syncs so far)", self.epoch_, got.path,
                 model_hash(self.protocol_.reference), self.protocol_.stats.full_syncs)

    def _save_state(self) -> None:
        """Keep the reference and protocol state in ``state_dir`` (atomically); errors are logged, not fatal."""
        from streamlearn.kafka.checkpoint import CheckpointError

        if self._store is None or self.protocol_ is None:
            return
        self._counts["state_saves"] += 1  # the state kept counts itself
        try:
            root = self._root.averager if self._root is not None else None
            self._store.save(self.protocol_, d=self._d, layout=self._layout, epoch=self.epoch_, counts=self._counts,
                             rejected_by=self._rejected_by, root=None if root is None else root.get_state())
        except (OSError, CheckpointError) as exc:
            self._counts["state_saves"] -= 1
            self._counts["state_errors"] += 1
            log.error("sync %s: cannot keep its state in %s: %s", self.epoch_, self.config.state_dir, exc)

    # ---- status --------------------------------------------------------------------------------

    def _snapshot(self) -> dict:
        return _sync_status(self)

    def _publish_status(self) -> None:
        status = self._snapshot()
        self._set_status(status)
        if self.metrics is not None:
            self.metrics.update_from_status(status)
        try:
            self._producer.send(self._topics["status"], _encode_bounded_status(status), key=b"sync", partition=0)
        except Exception as exc:
            self._counts["send_errors"] += 1
            log.warning("sync %s: cannot publish its status: %s", self.epoch_, exc)


def _sync_status(svc: SyncService) -> dict:
    """The status message of ``svc``, now (see docs/schemas.md; the field names are a contract)."""
    p = svc.protocol_
    status = {"role": "sync", "ts": time.time(), "state": svc._state, "epoch": svc.epoch_,
              "uptime": time.monotonic() - svc._t0, "protocol": svc.config.spec,
              "max_nodes": svc.config.max_nodes, "d": svc._d, "assigned_ids": sorted(svc._ids.leases),
              **svc._counts, "rejected_models_by_reason": dict(svc._rejected_by),
              "state_dir": svc.config.state_dir, "resumed_from": svc._resumed,
              # robust aggregation (streamlearn.sync.robust): the bound ||w - r|| is clipped to (None: none yet)
              "clip": svc.config.clip, "clip_bound": svc._bound.tau,
              # signed sync records (streamlearn.kafka.signing): what the signature check refused
              "sync_signed": svc._verifier is not None, "unauthenticated": svc._unauth.total,
              "unauthenticated_by_reason": dict(svc._unauth.by_reason),
              # a sharded layer (protocol shards=S,root=R): this service's shard and the root's work
              "shard": svc.config.shard, "shards": svc.config.shards, "root": svc.config.root, "pid": os.getpid(),
              **(svc._root.counts() if svc._root is not None else {})}
    if p is None:
        status.update(nodes_alive=0, alive=[], pending=[], device=None, reference_hash=None)
        return status
    stats = p.stats.as_dict()
    groups = p.node_groups
    status.update(stats, models=p.stats.models, bytes=stats["bytes_up"] + stats["bytes_down"],
                  nodes_alive=len(p.alive), alive=sorted(p.alive), pending=sorted(p.pending),
                  device=str(p.bank.device), reference_hash=model_hash(p.reference),
                  # groups of nodes averaged apart (split=N): node -> group, 0 is the whole
                  node_groups={str(n): g for n, g in groups.items()}, n_groups=len(set(groups.values())),
                  group_changes_by_kind=p.group_changes)
    return status


#: Per-node lists of the status (node ids), shortened when the whole status would not fit in one record.
_NODE_LISTS = ("alive", "pending", "assigned_ids", "node_groups")
#: How many entries of each such list a shortened status keeps.
STATUS_LIST_LIMIT = 256


def _encode_bounded_status(status: dict) -> bytes:
    """``status`` encoded; with thousands of nodes its per-node lists would pass the status size limit, so then
    they keep their first :data:`STATUS_LIST_LIMIT` entries and ``lists_truncated`` says so (the counts, such
    as ``nodes_alive`` and ``n_groups``, stay whole). :meth:`SyncService.status` keeps the whole lists.

    >>> status = {"role": "sync", "ts": 1.0, "alive": list(range(20_000)), "nodes_alive": 20_000}
    >>> from streamlearn.kafka.status import decode_status
    >>> out = decode_status(_encode_bounded_status(status))
    >>> len(out["alive"]), out["nodes_alive"], out["lists_truncated"]
    (256, 20000, True)
    """
    # Each entry of a list takes at least 3 bytes ("7, "): lists that surely do not fit are cut before the
    # first encoding (encoding 65,536 ids once a second only to find them too long cost the service 25 %).
    entries = sum(len(v) for v in (status.get(name) for name in _NODE_LISTS) if isinstance(v, (list, dict)))
    if 3 * entries <= MAX_STATUS_BYTES:
        try:
            return encode_status(status)
        except EncodeError:
            pass
    short = dict(status, lists_truncated=True)
    for name in _NODE_LISTS:
        value = short.get(name)
        if isinstance(value, list):
            short[name] = value[:STATUS_LIST_LIMIT]
        elif isinstance(value, dict):
            short[name] = dict(list(value.items())[:STATUS_LIST_LIMIT])
    return encode_status(short)


def _join_refusal(msg: SyncMessage, protocol, cfg: SyncConfig, d: int | None, layout: str | None) -> tuple:
    """``(reason to reject or None, node rule differs)`` of a ``join``: its node id, its protocol spec (see
    :func:`_node_spec_conflict`) and, once the protocol runs, its model layout against the other nodes'."""
    from streamlearn.sync.spec import make_protocol

    if msg.node >= cfg.max_nodes:
        return f"node id {msg.node} is not below --max-nodes {cfg.max_nodes}", False
    # What a join claims about its model is checked before anything is sized by it (the first join sizes the bank).
    size = None if msg.model is None else int(np.asarray(msg.model).size)
    if not isinstance(msg.d, int) or isinstance(msg.d, bool) or not 1 <= msg.d <= cfg.max_params:
        return f"model size d={msg.d!r} is not in [1, --max-params {cfg.max_params}]", False
    if size != msg.d:
        return f"the join says d={msg.d} but carries a model of {size} entries", False
    if msg.n_params is not None and not 1 <= msg.n_params <= msg.d:
        return f"n_params={msg.n_params} is not in [1, d={msg.d}]", False
    differs = False
    if msg.spec is not None:
        ours = protocol if protocol is not None else make_protocol(cfg.protocol, m=1, d=1, seed=0, device="cpu",
                                                                   **cfg.params)
        conflict, differs = _node_spec_conflict(msg.spec, ours)
        if conflict is not None:
            return conflict, differs
    if protocol is not None and (msg.d != d or msg.layout != layout or (msg.n_params or msg.d) != protocol.n_params):
        return (f"model layout {msg.layout} (d={msg.d}, n_params={msg.n_params or msg.d}) differs from the other "
                f"nodes' {layout} (d={d}, n_params={protocol.n_params}): same learner, features and classes "
                f"needed"), differs
    return None, differs


class _Overdue:
    """Since when each node the protocol awaits has been awaited, and which of them are overdue."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self.since: dict[int, float] = {}  # awaited node -> monotonic time

    def overdue(self, awaited: set, now: float) -> list[int]:
        """The nodes of ``awaited`` awaited longer than ``timeout`` (then forgotten: ``on_timeout`` gives up)."""
        for node in list(self.since):
            if node not in awaited:
                del self.since[node]
        for node in awaited:
            self.since.setdefault(node, now)
        late = [n for n, t in self.since.items() if now - t > self.timeout]
        for node in late:
            del self.since[node]
        return late


#: Largest ``max_nodes``: node ids on the wire are below 2**31.
_MAX_NODES = 1 << 31
#: Largest ``max_params``: a float32 model and its envelope (a JSON header of at most 64 KiB, the model
#: message's own header) in one record of MAX_MESSAGE_BYTES; 1 MiB is left for them.
_MAX_PARAMS = (MAX_MESSAGE_BYTES - (1 << 20)) // 4

#: Fraction of ``timeout`` between two looks for overdue nodes (at most 50 ms).
_TIMEOUT_CHECK = 0.1


def _tensor(model) -> torch.Tensor:
    """A decoded (read-only) model as a torch tensor of its own."""
    return torch.from_numpy(np.array(model, dtype=np.float32))


#: Settings only the sync service uses: a node's spec may differ there without changing anything.
_SERVICE_ONLY = ("server_lr", "server_momentum")


@functools.lru_cache(maxsize=64)
def _spec_protocol(spec: str):
    """A one-node protocol made from a joining node's spec (None: not a valid spec), for its settings only.

    Kept per spec: every join carries one, and nodes mostly share it (a protocol costs a model bank to make)."""
    from streamlearn.sync.spec import make_protocol

    try:
        return make_protocol(spec, m=1, d=1, seed=0, device="cpu")
    except ConfigError:
        return None


def _node_spec_conflict(spec: str, protocol) -> tuple[str | None, bool]:
    """``(reason to reject, node rule differs)`` of a joining node's protocol spec against the service's.

    Both ends must send models the same way (``codec``): a node with another codec is rejected.
    Another node rule (protocol or its thresholds) is only warned about, and settings of the
    service alone (the server step) are not compared.
    """
    other = _spec_protocol(spec)
    if other is None:
        return None, True
    ours, theirs = getattr(protocol, "codec", None), getattr(other, "codec", None)
    if ours is not None and theirs is not None and ours != theirs:
        return (f"its protocol sends models as codec={theirs.spec} ({spec}), this sync service as codec={ours.spec} "
                f"({protocol.name}): give the nodes and the service the same codec"), True
    same = type(other) is type(protocol) and all(getattr(other, k) == getattr(protocol, k) for k in protocol.params
                                                 if k not in _SERVICE_ONLY)
    return None, not same


# ---- options (CLI-like) -------------------------------------------------------------------------

_HYPER = ("delta", "b", "C", "tau", "strength")
_SYNC_OPTIONS = {"protocol", *_HYPER, "max_nodes", "timeout", "seed", "device", "status_interval", "fetch_wait_ms",
                 "id_lease", "id_grace", "max_norm", "max_params", "state_dir", "prefix", "bootstrap", "max_seconds",
                 "params", "sync_key_file", "clip", "max_reports_per_second", "report_burst", "shard"}


def sync_config_from_options(options: Mapping[str, Any]) -> SyncConfig:
    """A :class:`SyncConfig` from CLI-like options: ``protocol``, ``delta``, ``b``, ``C``, ``tau``,
    ``strength``, ``max_nodes``, ``timeout``, ``seed``, ``device``, ``status_interval``, ``id_lease``,
    ``id_grace``, ``max_norm``, ``state_dir``, ``sync_key_file``, ``prefix``, ``bootstrap`` (``--max-nodes`` or ``max_nodes``
    keys). ``max_seconds`` is ignored here.

    Examples
    --------
    >>> cfg = sync_config_from_options({"protocol": "dynamic", "delta": 0.5, "b": 1, "max-nodes": 8})
    >>> cfg.spec, cfg.max_nodes
    ('dynamic:delta=0.5,b=1', 8)
    """
    opts = {str(k).lstrip("-").replace("-", "_"): v for k, v in options.items() if v is not None}
    unknown = sorted(set(opts) - _SYNC_OPTIONS)
    if unknown:
        raise ConfigError(f"unknown sync option(s) {unknown}; known: {sorted(_SYNC_OPTIONS)}")
    opts.pop("max_seconds", None)
    params = dict(opts.pop("params", {}) or {})
    params.update({k: opts.pop(k) for k in _HYPER if k in opts})
    for key, kind in (("max_nodes", int), ("max_params", int), ("seed", int), ("fetch_wait_ms", int), ("shard", int),
                      ("timeout", float),
                      ("status_interval", float), ("id_lease", float), ("id_grace", float), ("max_norm", float)):
        if key in opts and isinstance(opts[key], str):
            try:
                opts[key] = kind(opts[key])
            except ValueError:
                what = "an integer" + (" (or group, on the command line)" if key == "shard" else "") \
                    if kind is int else "a number"
                raise ConfigError(f"{key} must be {what}, got {opts[key]!r}") from None
    return SyncConfig(params=params, **opts)


def run_sync(options: Mapping[str, Any], stop_event: threading.Event | None = None) -> dict:
    """Build the sync service from CLI-like ``options`` and run it; ``max_seconds`` bounds the run."""
    max_seconds = options.get("max_seconds", options.get("max-seconds"))
    try:
        max_seconds = None if max_seconds is None else float(max_seconds)
    except (TypeError, ValueError):
        raise ConfigError(f"max_seconds must be a number > 0, got {max_seconds!r}") from None
    return SyncService(sync_config_from_options(options)).run(stop_event=stop_event, max_seconds=max_seconds)
