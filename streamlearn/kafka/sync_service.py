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

Hostile models. A model that arrives (in a ``join``, a violation ``report`` or a ``model``
answer) is refused when it holds NaN or inf, is not float32, has the wrong length (or is not
flat), has an L2 norm above ``max_norm``, fails its CRC32 or is otherwise malformed. A refused
model is counted (``rejected_models`` and ``rejected_models_by_reason`` in the status, the
metric ``streamlearn_sync_rejected_models_total{reason}`` with the reasons of
:data:`~streamlearn.metrics.REJECT_REASONS`), goes to the dead-letter topic and never reaches
the model bank: for the protocol it is a model that did not come, so an awaited node is given
up on at once (``on_timeout``, also counted in ``timeouts``) and the sync goes on without it. A
refused ``join`` is answered with a ``reject``.

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
"""

from __future__ import annotations

import logging
import struct
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import numpy as np
import torch

from streamlearn.errors import BadRecordError, ConfigError
from streamlearn.kafka.codecs import DecodeError, EncodeError, deadletter_headers
from streamlearn.kafka.config import KafkaSettings, default_fetch_wait_ms
from streamlearn.kafka.service import Service
from streamlearn.kafka.status import encode_status, model_hash
from streamlearn.kafka.topics import deadletter_topic, status_topic, sync_down_topic, sync_up_topic
from streamlearn.kafka.wire import ID_RENEW_EVERY, SyncMessage, connect, decode_sync, encode_sync, positive
from streamlearn.metrics import REJECT_REASONS
from streamlearn.sync.codec import pack_delta, reference_tag, unpack_delta
from streamlearn.sync.messages import PullToward, Report, RequestModels, SendModel

__all__ = ["SyncConfig", "SyncService", "sync_config_from_options", "run_sync", "KEEP_REFERENCES"]

log = logging.getLogger(__name__)

_HELLO_EVERY = 2.0  # seconds between two hellos to one unknown node
# Longest wait for one broker answer, as the node's (kafka-python waits forever on some calls without one).
_BROKER_WAIT_MS = 10_000
#: References (the current one and those before it) a delta from a node may be taken from.
KEEP_REFERENCES = 4


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
    state_dir
        Where the reference and protocol state are kept across restarts (None: not kept).
    prefix, bootstrap, settings
        As for :class:`~streamlearn.kafka.node.NodeConfig`.

    Examples
    --------
    >>> SyncConfig(protocol="dynamic", params={"delta": 0.5, "b": 1}).spec
    'dynamic:delta=0.5,b=1'
    >>> SyncConfig(protocol="dynamic", params={"tau": 3})
    Traceback (most recent call last):
    ...
    streamlearn.errors.ConfigError: protocol 'dynamic' has no parameter 'tau' (parameters: delta, b, extrapolate, server_lr, server_momentum, codec, buffers_every, split)
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
    state_dir: str | None = None
    prefix: str | None = None
    bootstrap: str | None = None
    settings: KafkaSettings | None = None

    def __post_init__(self):
        from streamlearn.sync.spec import make_protocol

        object.__setattr__(self, "params", dict(self.params or {}))
        positive("max_nodes", self.max_nodes, integer=True)
        if self.fetch_wait_ms is None:
            object.__setattr__(self, "fetch_wait_ms", default_fetch_wait_ms())
        positive("fetch_wait_ms", self.fetch_wait_ms, integer=True)
        positive("timeout", self.timeout)
        positive("status_interval", self.status_interval)
        positive("id_grace", self.id_grace)
        positive("max_norm", self.max_norm)
        if self.state_dir is not None and (not isinstance(self.state_dir, str) or not self.state_dir):
            raise ConfigError(f"state_dir must be a directory path, got {self.state_dir!r}")
        if positive("id_lease", self.id_lease) < 2 * ID_RENEW_EVERY:
            raise ConfigError(f"id_lease must be at least {2 * ID_RENEW_EVERY:g} s (twice the renewal period), "
                              f"got {self.id_lease!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        if self.settings is not None and not isinstance(self.settings, KafkaSettings):
            raise ConfigError(f"settings must be a KafkaSettings, got {type(self.settings).__name__}")
        make_protocol(self.protocol, m=1, d=1, seed=0, device="cpu", **self.params)  # checks names and values

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

    # ---- setup and loop ------------------------------------------------------------------------

    def _setup(self) -> None:
        from kafka import KafkaConsumer, KafkaProducer, TopicPartition

        cfg = self.config
        self._d: int | None = None
        self._layout: str | None = None
        self._spec_warned: set = set()
        self._since: dict[int, float] = {}
        self._hello_sent: dict[int, float] = {}
        self._request_id = 0
        self._leases: dict[int, list] = {}  # assigned node id -> [token, monotonic time of the last renewal]
        self._early_claims: dict[str, None] = {}  # tokens that claimed during id_grace, in order
        self._counts = dict(bad_records=0, joins=0, leaves=0, rejects=0, unknown_reports=0, send_errors=0,
                            messages_down=0, bytes_down_wire=0, bytes_up_wire=0, ids_assigned=0, ids_expired=0,
                            id_conflicts=0, rejected_models=0, state_saves=0, state_errors=0, topic_resets=0,
                            deltas_up=0, stale_deltas=0)
        self._rejected_by = dict.fromkeys(REJECT_REASONS, 0)
        self._refs: OrderedDict = OrderedDict()  # reference tag -> reference (cpu float32), newest last
        self._records: dict = {}  # id of a decoded message of this poll -> its record (to refuse it)
        self._resumed: int | None = None
        self._store = None
        if cfg.state_dir is not None:
            from streamlearn.kafka.checkpoint import CheckpointStore

            self._store = CheckpointStore(cfg.state_dir, "sync")
            self._resume()
        self._state = "starting"
        self._t0 = time.monotonic()
        self.settings_, self.bootstrap_, self.prefix_ = connect(cfg.settings, cfg.bootstrap, cfg.prefix, [])
        s = self.settings_
        self._topics = {"up": sync_up_topic(self.prefix_), "down": sync_down_topic(self.prefix_),
                        "dead": deadletter_topic(self.prefix_), "status": status_topic(self.prefix_)}
        self._producer = KafkaProducer(**s.producer_kwargs(self.bootstrap_, max_block_ms=_BROKER_WAIT_MS))
        self._consumer = KafkaConsumer(**s.consumer_kwargs(self.bootstrap_, fetch_max_wait_ms=cfg.fetch_wait_ms))
        tp = self._up_tp = TopicPartition(self._topics["up"], 0)
        self._consumer.assign([tp])
        # A new epoch: what nodes sent to an earlier instance is not for this protocol.
        self._consumer.seek(tp, self._consumer.end_offsets([tp], timeout_ms=_BROKER_WAIT_MS)[tp])
        self._send(SyncMessage("hello", epoch=self.epoch_))
        self._grace_t0 = time.monotonic()  # connecting can be slow on a busy machine: it must not eat the grace
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
            for records in self._consumer.poll(timeout_ms=50).values():
                for rec in records:
                    self._counts["bytes_up_wire"] += len(rec.value)
                    try:
                        msg = decode_sync(rec.value)
                    except DecodeError as exc:
                        fault = _model_fault(rec.value)
                        if fault is None:
                            self._deadletter(rec, str(exc))
                        else:
                            self._refuse(rec, fault[0], fault[1], fault[2], str(exc))
                        continue
                    refused = self._screen(msg)
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
                self._on_claim(msg)
            self._check_topic_reset()
            self._check_timeouts()
            self._check_ids()
            if time.monotonic() >= next_status:
                self._publish_status()
                next_status = time.monotonic() + cfg.status_interval

    def _shutdown(self) -> None:
        running = getattr(self, "_state", None) == "running"
        self._state = "stopped"
        try:
            if running:
                self._save_state()
                self._publish_status()
                self._producer.flush(timeout=_BROKER_WAIT_MS / 1000)
        except Exception as exc:
            log.warning("sync %s: unclean shutdown: %s", self.epoch_, exc)
        finally:
            for name in ("_producer", "_consumer"):
                client = getattr(self, name, None)
                if client is not None:
                    client.close(**({"timeout": 5} if name == "_producer" else {"timeout_ms": 5_000}))
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
        for msg in by_kind["join"]:
            self._on_join(msg)
        p = self.protocol_
        # a delta is decoded once its sender is known, against the reference it names
        reports = [e for e in (self._expand(m) for m in by_kind["report"] if self._known(m)) if e is not None]
        if reports:
            self._act(p.on_reports([
                Report(node=m.node, step=m.step, loss=float("nan") if m.loss is None else m.loss,
                       n_samples=m.n_samples, model=None if m.model is None else _tensor(m.model))
                for m in reports]))
        models = {m.node: _tensor(m.model) for m in (self._expand(m) for m in by_kind["model"] if self._known(m))
                  if m is not None}
        if models:
            self._act(p.on_models(models))
        declined = [m.node for m in by_kind["decline"] if self._known(m)]
        if declined:  # guarded nodes kept their own model (counted in the status as `declines`)
            self._act(p.on_declined(declined))
        for msg in by_kind["leave"]:
            held = self._leases.get(msg.node)
            if held is not None and msg.token is not None and held[0] != msg.token:
                continue  # an earlier holder of an id that expired and was given out again
            if held is not None:
                del self._leases[msg.node]
                if p is None or msg.node not in p.alive:  # a holder that never registered (local-only learner)
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

    def _on_join(self, msg: SyncMessage) -> None:
        from streamlearn.sync.spec import make_protocol

        cfg = self.config
        node = msg.node
        if node >= cfg.max_nodes:
            return self._reject(node, f"node id {node} is not below --max-nodes {cfg.max_nodes}")
        differs = False
        if msg.spec is not None:  # before anything of the node is taken (its w0 may start the protocol)
            ours = self.protocol_ if self.protocol_ is not None else make_protocol(cfg.protocol, m=1, d=1, seed=0,
                                                                                   device="cpu", **cfg.params)
            conflict, differs = _node_spec_conflict(msg.spec, ours)
            if conflict is not None:
                return self._reject(node, conflict)
        if self.protocol_ is None:
            self.protocol_ = make_protocol(cfg.protocol, m=cfg.max_nodes, d=msg.d, w0=_tensor(msg.model),
                                           seed=cfg.seed, initial_nodes=[], device=cfg.device,
                                           n_params=msg.n_params, **cfg.params)
            self._d, self._layout = msg.d, msg.layout
            self._note_reference()
            log.info("sync %s: %r on %s, d=%d, w0 from node %d", self.epoch_, self.protocol_,
                     self.protocol_.bank.device, msg.d, node)
        elif msg.d != self._d or msg.layout != self._layout or (msg.n_params or msg.d) != self.protocol_.n_params:
            return self._reject(node, f"model layout {msg.layout} (d={msg.d}, n_params={msg.n_params or msg.d}) "
                                      f"differs from the other nodes' {self._layout} (d={self._d}, "
                                      f"n_params={self.protocol_.n_params}): same learner, features and classes needed")
        if differs and node not in self._spec_warned:
            self._spec_warned.add(node)
            log.warning("sync %s: node %d runs the node rule of %r, this service runs %r", self.epoch_, node,
                        msg.spec, self.protocol_)
        self._counts["joins"] += 1
        log.info("sync %s: node %d joined", self.epoch_, node)
        self._act(self.protocol_.on_join(node), joining=node)

    def _on_claim(self, msg: SyncMessage) -> None:
        cfg = self.config
        if msg.node is not None:  # a renewal of an id this service or an earlier one gave out
            if msg.node >= cfg.max_nodes:
                self._counts["bad_records"] += 1
                return
            held = self._leases.get(msg.node)
            if held is None or held[0] == msg.token:
                self._leases[msg.node] = [msg.token, time.monotonic()]
            else:
                self._counts["id_conflicts"] += 1
                log.warning("sync %s: node id %d is renewed by two nodes; the later one is told", self.epoch_, msg.node)
                self._send(SyncMessage("assign", token=msg.token, epoch=self.epoch_,
                                       reason=f"node id {msg.node} is held by another node (its hold expired)"))
            return
        if time.monotonic() - self._grace_t0 < cfg.id_grace:
            self._early_claims[msg.token] = None  # answered once running nodes had time to re-register
            return
        self._assign(msg.token)

    def _assign(self, token: str) -> None:
        """Answer a claim: the id this token already holds, else the lowest id no live node holds."""
        now = time.monotonic()
        node = next((n for n, (t, _) in self._leases.items() if t == token), None)
        if node is None:
            held = set(self._leases) | (set(self.protocol_.alive) if self.protocol_ is not None else set())
            node = next((n for n in range(self.config.max_nodes) if n not in held), None)
            if node is None:
                log.warning("sync %s: a node asks for an id, but all %d are held", self.epoch_, self.config.max_nodes)
                self._send(SyncMessage("assign", token=token, epoch=self.epoch_,
                                       reason=f"all {self.config.max_nodes} node ids are held (--max-nodes)"))
                return
            self._counts["ids_assigned"] += 1
            log.info("sync %s: node id %d assigned", self.epoch_, node)
        self._leases[node] = [token, now]
        self._send(SyncMessage("assign", token=token, node=node, epoch=self.epoch_))

    def _check_ids(self) -> None:
        """Answer the claims of the grace period once it is over; expire ids not renewed in time."""
        now = time.monotonic()
        if self._early_claims and now - self._grace_t0 >= self.config.id_grace:
            for token in self._early_claims:
                self._assign(token)
            self._early_claims.clear()
        expired = [n for n, (_, t) in self._leases.items() if now - t > self.config.id_lease]
        for node in expired:
            del self._leases[node]
            self._counts["ids_expired"] += 1
            log.warning("sync %s: node %d did not renew its id within %.3g s; the id is free", self.epoch_, node,
                        self.config.id_lease)
            p = self.protocol_
            if p is not None and node in p.alive:
                self._counts["leaves"] += 1
                self._act(p.on_leave(node))

    def _reject(self, node: int, reason: str) -> None:
        self._counts["rejects"] += 1
        log.warning("sync %s: rejecting node %d: %s", self.epoch_, node, reason)
        self._send(SyncMessage("reject", targets=(node,), reason=reason, epoch=self.epoch_))

    def _check_topic_reset(self) -> None:
        """sync.up with fewer records than our position: the broker lost its data (a memory-only broker
        restarted) and counts offsets from 0 again; what is there now is new, so read it from the start."""
        hw = self._consumer.highwater(self._up_tp)
        # a position is known locally, unless an offset reset is in flight: wait for it a little only
        position = None if hw is None else self._consumer.position(self._up_tp, timeout_ms=1_000)
        if position is not None and hw < position:
            self._counts["topic_resets"] += 1
            log.warning("sync %s: %s holds fewer records than were read (the broker lost its data?); "
                        "reading it from its start", self.epoch_, self._topics["up"])
            self._consumer.seek(self._up_tp, 0)

    def _check_timeouts(self) -> None:
        p = self.protocol_
        if p is None:
            return
        awaited = p.pending | p.waiting_reports
        now = time.monotonic()
        for node in list(self._since):
            if node not in awaited:
                del self._since[node]
        for node in awaited:
            self._since.setdefault(node, now)
        for node in [n for n, t in self._since.items() if now - t > self.config.timeout]:
            del self._since[node]
            log.info("sync %s: node %d did not answer within %.3g s", self.epoch_, node, self.config.timeout)
            self._act(p.on_timeout(node))

    # ---- actions -------------------------------------------------------------------------------

    def _act(self, actions: list, joining: int | None = None) -> None:
        if self.metrics is not None:
            self.metrics.observe_actions(actions, joining=joining)
        if self._store is not None and any(isinstance(a, SendModel) and a.reference and not (
                i == 0 and joining is not None and a.nodes == (joining,)) for i, a in enumerate(actions)):
            self._save_state()  # a full sync: kept before any node holds the new reference
        if any(isinstance(a, SendModel) and a.reference for a in actions):
            self._note_reference()
        for i, action in enumerate(actions):
            if isinstance(action, RequestModels):
                self._request_id += 1
                self._send(SyncMessage("request", targets=tuple(action.nodes), epoch=self.epoch_,
                                       request=self._request_id))
            elif isinstance(action, SendModel):
                # on_join answers the joining node first, with the reference.
                reason = "join" if (i == 0 and joining is not None and action.nodes == (joining,)) else "sync"
                self._send(SyncMessage("send", targets=tuple(action.nodes), epoch=self.epoch_,
                                       reference=action.reference, reason=reason, **self._model_body(action)))
            elif isinstance(action, PullToward):
                self._send(SyncMessage("pull", targets=tuple(action.nodes), epoch=self.epoch_,
                                       strength=action.strength, model=action.model.cpu()))

    def _model_body(self, action: SendModel) -> dict:
        """What a ``send`` carries: the model whole, or the delta the protocol compressed (to ``base``,
        the reference every target holds), its buffers as float32 after the parameters."""
        c = action.compressed
        if c is None:
            return {"model": action.model.cpu()}
        p = self.protocol_.n_params
        return {"delta": pack_delta(c.codec, c.parts, tail=action.model[p:], reference=c.base, n_params=p)}

    def _send(self, msg: SyncMessage) -> None:
        try:
            data = encode_sync(msg)
            self._producer.send(self._topics["down"], data, partition=0)
        except (EncodeError, BadRecordError) as exc:
            self._counts["send_errors"] += 1
            log.error("sync %s: cannot encode %s: %s", self.epoch_, msg.kind, exc)
            return
        except Exception as exc:  # KafkaError, buffer full
            self._counts["send_errors"] += 1
            log.warning("sync %s: cannot send %s: %s", self.epoch_, msg.kind, exc)
            return
        self._counts["messages_down"] += 1
        self._counts["bytes_down_wire"] += len(data)

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

    def _screen(self, msg: SyncMessage) -> tuple | None:
        """``(reason, detail)`` when the decoded model of ``msg`` must not be used, else None."""
        w = msg.model
        if w is None:
            return None
        if w.dtype != np.float32:
            return "dtype", f"model dtype is {w.dtype}, not float32"
        lean = self.protocol_ is not None and w.shape[0] == self.protocol_.n_params  # sent without its buffers
        if msg.kind != "join" and self._d is not None and w.shape[0] != self._d and not lean:
            return "shape", f"model must have {self._d} entries, got {w.shape[0]}"
        # NaN and inf were refused by the decoder. The limit is on the parameters: buffers after them
        # (scaler statistics) are in the data's units.
        span = msg.n_params if msg.kind == "join" else (self.protocol_.n_params if self.protocol_ else None)
        norm = float(np.linalg.norm(w[:span]))  # float32 overflow gives inf, refused too
        if not norm <= self.config.max_norm:
            return "norm", f"model norm {norm:.4g} is above --max-norm {self.config.max_norm:g}"
        return None

    def _note_reference(self) -> None:
        """Remember the protocol's current reference by its tag (the last :data:`KEEP_REFERENCES`)."""
        references = self.protocol_.references  # one per group of nodes (split=N), the whole's last
        for g in sorted(references, reverse=True):
            r = references[g].detach().to("cpu", torch.float32).clone()
            tag = reference_tag(r, self.protocol_.n_params)
            self._refs.pop(tag, None)
            self._refs[tag] = r
        while len(self._refs) > KEEP_REFERENCES * len(references):
            self._refs.popitem(last=False)

    def _expand(self, msg: SyncMessage) -> SyncMessage | None:
        """``msg`` with the dense model its delta stands for (None: refused, counted and dead-lettered)."""
        if msg.delta is None:
            return msg
        p = self.protocol_
        try:
            codec, parts, tail, n, tag = unpack_delta(msg.delta, expected_d=p.d)
            if n != p.n_params:
                raise BadRecordError(f"delta of {n} parameters, the model has {p.n_params}", column="n_params",
                                     value=n)
            ref = self._refs.get(tag)
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
            return self._refuse_delta(msg, _delta_fault(exc), str(exc))
        except (ValueError, TypeError, IndexError, RuntimeError, struct.error, RecursionError, MemoryError,
                OverflowError) as exc:  # hostile bytes must never stop the service
            return self._refuse_delta(msg, "malformed", f"{type(exc).__name__}: {exc}")
        out = replace(msg, model=w.numpy(), delta=None)
        refused = self._screen(out)
        if refused is not None:
            return self._refuse_delta(msg, *refused)
        self._counts["deltas_up"] += 1
        self._counts["stale_deltas"] += tag != next(reversed(self._refs))
        return out

    def _refuse_delta(self, msg: SyncMessage, reason: str, detail: str) -> None:
        self._refuse(self._records.get(id(msg)), reason, msg.node, msg.kind, detail)
        return None

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
        from streamlearn.kafka.checkpoint import restore_protocol_state
        from streamlearn.sync.spec import make_protocol

        cfg = self.config
        ck = self._store.latest()
        if ck is None:
            return
        meta = ck.meta
        ours = make_protocol(cfg.protocol, m=1, d=1, seed=0, device="cpu", **cfg.params)
        if not isinstance(meta.get("spec"), str) or not _same_spec(meta["spec"], ours) \
                or meta.get("max_nodes") != cfg.max_nodes:
            raise ConfigError(f"state_dir {cfg.state_dir!r} holds the state of a sync service running "
                              f"{meta.get('spec')} with {meta.get('max_nodes')} node slots, this one runs {cfg.spec} "
                              f"with {cfg.max_nodes}: give the same settings or another directory")
        d = int(meta["d"])
        self.protocol_ = make_protocol(cfg.protocol, m=cfg.max_nodes, d=d, w0=_tensor(ck.arrays["reference"]),
                                       seed=cfg.seed, initial_nodes=[], device=cfg.device,
                                       n_params=meta.get("n_params"), **cfg.params)
        restore_protocol_state(self.protocol_, ck.arrays, meta["protocol"])
        self._note_reference()
        self._d, self._layout = d, meta.get("layout")
        self._counts.update({k: int(v) for k, v in dict(meta.get("counts") or {}).items() if k in self._counts})
        self._rejected_by.update({k: int(v) for k, v in dict(meta.get("rejected_models_by_reason") or {}).items()
                                  if k in self._rejected_by})
        self._resumed = ck.seq
        log.info("sync %s: resumed from %s (reference %s, %d full syncs so far)", self.epoch_, ck.path,
                 model_hash(self.protocol_.reference), self.protocol_.stats.full_syncs)

    def _save_state(self) -> None:
        """Keep the reference and protocol state in ``state_dir`` (atomically); errors are logged, not fatal."""
        from streamlearn.kafka.checkpoint import CheckpointError, protocol_state

        if self._store is None or self.protocol_ is None:
            return
        arrays, pmeta = protocol_state(self.protocol_)
        self._counts["state_saves"] += 1
        meta = {"spec": self.config.spec, "max_nodes": self.config.max_nodes, "d": self._d,
                "n_params": self.protocol_.n_params, "layout": self._layout,
                "epoch": self.epoch_, "protocol": pmeta, "counts": dict(self._counts),
                "rejected_models_by_reason": dict(self._rejected_by)}
        try:
            self._store.save(arrays, meta)
        except (OSError, CheckpointError) as exc:
            self._counts["state_saves"] -= 1
            self._counts["state_errors"] += 1
            log.error("sync %s: cannot keep its state in %s: %s", self.epoch_, self.config.state_dir, exc)

    # ---- status --------------------------------------------------------------------------------

    def _snapshot(self) -> dict:
        p = self.protocol_
        status = {"role": "sync", "ts": time.time(), "state": self._state, "epoch": self.epoch_,
                  "uptime": time.monotonic() - self._t0, "protocol": self.config.spec,
                  "max_nodes": self.config.max_nodes, "d": self._d, "assigned_ids": sorted(self._leases),
                  **self._counts, "rejected_models_by_reason": dict(self._rejected_by),
                  "state_dir": self.config.state_dir, "resumed_from": self._resumed}
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

    def _publish_status(self) -> None:
        status = self._snapshot()
        self._set_status(status)
        if self.metrics is not None:
            self.metrics.update_from_status(status)
        try:
            self._producer.send(self._topics["status"], encode_status(status), key=b"sync", partition=0)
        except Exception as exc:
            self._counts["send_errors"] += 1
            log.warning("sync %s: cannot publish its status: %s", self.epoch_, exc)


def _tensor(model) -> torch.Tensor:
    """A decoded (read-only) model as a torch tensor of its own."""
    return torch.from_numpy(np.array(model, dtype=np.float32))


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


#: Settings only the sync service uses: a node's spec may differ there without changing anything.
_SERVICE_ONLY = ("server_lr", "server_momentum")


def _node_spec_conflict(spec: str, protocol) -> tuple[str | None, bool]:
    """``(reason to reject, node rule differs)`` of a joining node's protocol spec against the service's.

    Both ends must send models the same way (``codec``): a node with another codec is rejected.
    Another node rule (protocol or its thresholds) is only warned about, and settings of the
    service alone (the server step) are not compared.
    """
    from streamlearn.sync.spec import make_protocol

    try:
        other = make_protocol(spec, m=1, d=1, seed=0, device="cpu")
    except ConfigError:
        return None, True
    ours, theirs = getattr(protocol, "codec", None), getattr(other, "codec", None)
    if ours is not None and theirs is not None and ours != theirs:
        return (f"its protocol sends models as codec={theirs.spec} ({spec}), this sync service as codec={ours.spec} "
                f"({protocol.name}): give the nodes and the service the same codec"), True
    same = type(other) is type(protocol) and all(getattr(other, k) == getattr(protocol, k) for k in protocol.params
                                                 if k not in _SERVICE_ONLY)
    return None, not same


def _same_spec(spec: str, protocol) -> bool:
    from streamlearn.sync.spec import make_protocol

    try:
        other = make_protocol(spec, m=1, d=1, seed=0, device="cpu")
    except ConfigError:
        return False
    return type(other) is type(protocol) and all(getattr(other, k) == getattr(protocol, k) for k in protocol.params)


# ---- options (CLI-like) -------------------------------------------------------------------------

_HYPER = ("delta", "b", "C", "tau", "strength")
_SYNC_OPTIONS = {"protocol", *_HYPER, "max_nodes", "timeout", "seed", "device", "status_interval", "fetch_wait_ms",
                 "id_lease", "id_grace", "max_norm", "state_dir", "prefix", "bootstrap", "max_seconds", "params"}


def sync_config_from_options(options: Mapping[str, Any]) -> SyncConfig:
    """A :class:`SyncConfig` from CLI-like options: ``protocol``, ``delta``, ``b``, ``C``, ``tau``,
    ``strength``, ``max_nodes``, ``timeout``, ``seed``, ``device``, ``status_interval``, ``id_lease``,
    ``id_grace``, ``max_norm``, ``state_dir``, ``prefix``, ``bootstrap`` (``--max-nodes`` or ``max_nodes``
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
    for key, kind in (("max_nodes", int), ("seed", int), ("fetch_wait_ms", int), ("timeout", float),
                      ("status_interval", float), ("id_lease", float), ("id_grace", float), ("max_norm", float)):
        if key in opts and isinstance(opts[key], str):
            try:
                opts[key] = kind(opts[key])
            except ValueError:
                raise ConfigError(f"{key} must be a {kind.__name__}, got {opts[key]!r}") from None
    return SyncConfig(params=params, **opts)


def run_sync(options: Mapping[str, Any], stop_event: threading.Event | None = None) -> dict:
    """Build the sync service from CLI-like ``options`` and run it; ``max_seconds`` bounds the run."""
    max_seconds = options.get("max_seconds", options.get("max-seconds"))
    try:
        max_seconds = None if max_seconds is None else float(max_seconds)
    except (TypeError, ValueError):
        raise ConfigError(f"max_seconds must be a number > 0, got {max_seconds!r}") from None
    return SyncService(sync_config_from_options(options)).run(stop_event=stop_event, max_seconds=max_seconds)
