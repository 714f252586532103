"""The node service: one node of the pipeline, learning its own Kafka stream and syncing its model.

One poll loop multiplexes the node's samples topic and ``<prefix>.sync.down`` (a consumer
for each, assigned, no group join), and never blocks on the sync service:

1. records of ``<prefix>.samples.<node>`` (sample JSON or binary batches) are decoded and
   checked against the declared layout (features, classes); a record that cannot be used
   goes to ``<prefix>.deadletter`` with the reason in its headers and is counted;
2. the samples are learned test-then-train in mini-batches: predict, score (prequential
   accuracy, drift detector on the error stream), learn; a partial batch is learned once the
   stream has been idle for ``linger`` seconds;
3. after every local update the node side of the protocol runs,
   ``node_rule(node, step, ||w - r||^2)``, and a ``report`` (with the model on "model") goes
   up; learning goes on while the sync service decides. The divergence is computed only at the
   steps the rule checks it (every ``check_every`` of the protocol, e.g. ``b``) and after a sync
   was applied; the status shows the last value. While the answer to a model it sent
   is awaited (at most ``sync_timeout`` seconds) the node does not send its model again: the
   non-blocking form of "a violating learner waits for the averaged model" (the authors'
   dlplatform blocks there). Without it a node ahead of the sync round trip would send a
   model at every step until the answer arrives;
4. messages from the sync service are applied as they come: ``request`` -> answer with the
   current model; ``send`` -> set the model (and the reference when flagged); ``pull`` ->
   ``w <- w - s (w - model)``; ``hello`` (a sync service started) -> register again.

Every wait on the broker is bounded (:data:`BROKER_WAIT_MS`: offsets, commits, flushes,
closing), so a broker that stops answering makes a call fail, not hang.

The position in the samples topic is committed (consumer group ``<prefix>.node.<id>``,
without joining it) only up to the last record whose samples were all learned, about every
``commit_interval`` seconds and at shutdown: a restart resumes there, so samples are learned
at least once, and exactly once without crashes. A status message goes to
``<prefix>.status`` every ``status_interval`` seconds.

Late labels (README, "Late labels"; docs/schemas.md, "Label record"): a JSON record without ``x`` and ``seq`` is a
label record (:func:`streamlearn.kafka.labels.decode_node_record`). A reading with a ``key`` and
``"y": null`` is predicted as soon as it is consumed (counted; logged at debug level, the
last one is in the status) and held in a :class:`streamlearn.kafka.labels.PendingByKey`, at most
``max_pending`` readings for at most ``label_ttl`` seconds. Its label record puts it into
the learning buffer with the prediction made on arrival, which is what prequential
accuracy and the drift detector score. A label that matches no held reading is counted
and dead-lettered; a reading whose label never comes (evicted or expired) is counted.
Delivery: a held reading counts as processed (it is not consumer lag), but the committed
position never passes the oldest held reading, so a restart after a stop or a crash reads
it again and it still gets its label; what came after it is then learned again (at least
once). The group ``<prefix>.node.<id>.seen`` keeps how far the node had read, so a label
re-read after a restart that matches nothing (it was used or dead-lettered before) is
counted as replayed, not dead-lettered twice. With keys that repeat (labels in order per
sensor), a label re-read after a restart may pair with a later reading of its key.

Checkpoints (``checkpoint_dir``, ``checkpoint_every``): every ``checkpoint_every`` learned
samples and at shutdown the node writes, in one atomic step
(:class:`~streamlearn.kafka.checkpoint.CheckpointStore`: numpy ``.npy`` files plus JSON, no
pickle), its flat model, its optimizer's state tensors and scaler statistics, its reference,
its evaluator's counts and rolling window, its counters and its position: the first offset not
fully learned (never past a held reading) and, for a batch record a mini-batch cut in two, the
last sequence number of it already learned. On start it resumes from the newest checkpoint and
reads from that position, even when the group's committed offset is further on; without a
checkpoint yet its model is fresh, so it reads the topic from its start. Delivery
guarantee: learning is exactly once with respect to the restored model (no sample skipped,
none learned twice into it); the samples learned between the last checkpoint and a crash are
lost with the crashed process's model and learned again from Kafka, counted in the status as
``relearned`` (those below the committed offset; the ones learned after the last commit are
not known). Held late-label readings and what follows them are read again as described above
(at least once). Not kept: the drift detector (river's detectors cannot be saved without
pickle; it restarts fresh, with the sample count going on) and the sync in progress (the
node registers again and asks again). Learners that are not averageable cannot be checkpointed.

Broker restart: every record goes to partition 0 (a broker that auto-creates a lost topic may
give it several partitions). A memory-only broker (the embedded Tansu) that restarts has lost
every topic and counts offsets from 0 again: a topic holding fewer records than the node has
read is read again from its start (``topic_resets`` in the status); what the broker lost is
lost, what is produced after the restart is learned.

With ``node="auto"`` (``streamlearn node --id auto``, e.g. for ``docker compose --scale
node=8``) the node first asks the sync service for an id: a ``claim`` with a random token,
sent again every second (and at once when a sync service says ``hello``) and logged while
it waits, at most ``id_timeout`` seconds; the service answers with the lowest id that no
live node holds (:mod:`streamlearn.kafka.sync_service`). The node then starts as that id,
renews its hold on it while it runs, and frees it with its ``leave``.

On start the node registers (``join``, carrying its reference: ``w0`` on a first start);
the sync service answers with its reference. A node whose reference differs (it joined late)
takes it as model and reference; one that already holds it keeps its model, so the few
batches it learned while the answer travelled are not thrown away.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

import numpy as np
import torch

from streamlearn.errors import BadRecordError, ConfigError, StreamlearnError
from streamlearn.kafka.codecs import (
    DecodeError,
    EncodeError,
    deadletter_headers,
    decode_sample_batch,
    feature_names_hash,
    record_kind,
)
from streamlearn.kafka.config import KafkaSettings, default_fetch_wait_ms
from streamlearn.kafka.labels import LabelRecord, PendingByKey, decode_node_record
from streamlearn.kafka.service import Service
from streamlearn.kafka.status import encode_status, model_hash
from streamlearn.kafka.topics import (
    deadletter_topic,
    samples_topic,
    status_topic,
    sync_down_topic,
    sync_up_topic,
)
from streamlearn.kafka.wire import (
    ID_RENEW_EVERY,
    SyncMessage,
    connect,
    decode_sync,
    encode_sync,
    positive,
)
from streamlearn.sync.codec import Uplink, compress_rows, pack_delta, unpack_delta

__all__ = ["NodeConfig", "NodeService", "node_config_from_options", "run_node", "TORCH_LEARNERS"]

log = logging.getLogger(__name__)

TORCH_LEARNERS = ("logreg", "mlp", "cnn")
_RIVER_LINEAR = ("river-logreg", "river-perceptron", "river-pa")
_ZERO_HASH = bytes(8)
_KEEP = 100  # drift and sync positions kept for the status message
_CLAIM_RETRY = 1.0  # seconds between two claims of a node waiting for its id
# Longest wait for one broker answer (offsets, commits, flush, close): kafka-python waits forever
# on some calls without a timeout (committed(), for one) when the broker stops answering.
BROKER_WAIT_MS = 10_000
#: Longest wait of a commit inside the learning loop (at shutdown: BROKER_WAIT_MS).
COMMIT_WAIT_MS = 1_000
_POSITION_WAIT_MS = 1_000  # in the loop: a position is known locally, unless a reset is in flight


@dataclass(frozen=True)
class NodeConfig:
    """Validated settings of a node service.

    Parameters
    ----------
    node
        Node id: the service reads ``<prefix>.samples.<node>``; ``"auto"``: the sync service
        assigns one at start (see the module doc).
    source, source_params
        A source name (``streamlearn streams``) whose feature names and classes declare the
        learner layout; or give ``features`` and ``classes``.
    features, classes
        The layout, explicitly: feature names in order and the labels in order (binary
        batches carry labels as indices into ``classes``). Explicit values override the source's.
    learner, learner_params
        Learner name (``streamlearn.learners.LEARNERS``) and its parameters (lr, hidden,
        optimizer, scale, ...). Torch learners are seeded with ``seed`` unless the params
        say otherwise, so every node starts from the same w0.
    protocol
        Protocol spec for the node rule, e.g. ``"dynamic:delta=0.5,b=1"``; use the sync
        service's protocol and hyperparameters.
    batch_size
        Samples per local update (mini-batch).
    seed
        Seed of the learner's initial parameters (same on every node).
    window
        Rolling accuracy window, in samples.
    detector
        Drift detector on the error stream (``"adwin"``, ``"page_hinkley"``, ...), or None.
    sync_timeout
        Seconds the node waits for the answer to a model it sent (a violation) before the
        node rule may send its model again; meanwhile it keeps learning (see the module doc).
    status_interval, commit_interval
        Seconds between status messages, and between position commits.
    linger
        Seconds of an idle stream after which a partial mini-batch is learned.
    max_poll_records
        Records per poll (bounds the work between two looks at the sync topic).
    max_pending, label_ttl
        Keyed readings held for their late label: at most ``max_pending`` (the oldest is
        dropped beyond), each for at most ``label_ttl`` seconds (None: no limit).
    id_timeout
        With ``node="auto"``: seconds to wait for the sync service to assign an id.
    checkpoint_dir, checkpoint_every
        Where the node keeps checkpoints (in ``<checkpoint_dir>/node-<id>``; None: none) and
        every how many learned samples it writes one (also at shutdown); see "Checkpoints"
        in the module doc. Only averageable learners can be checkpointed (the others cannot
        be saved without pickle).
    fetch_wait_ms
        Longest time the broker may hold a fetch: the latency of a sync message. Tansu holds a
        fetch for about that long even when records arrive (kafka-python's default, 500 ms,
        made a sync round trip take 250 ms), so it is short here: None means
        :func:`~streamlearn.kafka.config.default_fetch_wait_ms` (20 ms; 500 ms on durable storage).
    guard, guard_margin
        Guarded averaging (:mod:`streamlearn.sync.guard`): the node keeps its last ``guard``
        learned samples and declines a model from the sync (a ``send`` other than its join's
        reference, or a ``pull``) whose mean log loss on them is above its own model's by more
        than ``guard_margin`` nats: it keeps its own model, takes the reference of a full sync
        all the same, and tells the sync service (a ``decline``). None (default): no guard.
    device
        Torch device of the learner; None: cuda when available, else cpu.
    prefix, bootstrap, settings
        Topic prefix (default ``settings.topic_prefix``), ``host:port`` (default
        KAFKA_BOOTSTRAP_SERVERS, else the embedded broker) and
        :class:`~streamlearn.kafka.config.KafkaSettings` (default from the environment).

    Examples
    --------
    >>> cfg = NodeConfig(node=3, source="sea", protocol="dynamic:delta=0.5,b=1")
    >>> cfg.layout()
    (['x0', 'x1', 'x2'], [False, True])
    >>> NodeConfig(node="auto", source="sea").node
    'auto'
    >>> NodeConfig(node=0, features=("a", "b"))
    Traceback (most recent call last):
    ...
    streamlearn.errors.ConfigError: classes: declare the labels (classes=...) or a source that has them
    """

    node: int | str
    source: str | None = None
    source_params: Mapping = field(default_factory=dict)
    features: tuple | None = None
    classes: tuple | None = None
    learner: str = "logreg"
    learner_params: Mapping = field(default_factory=dict)
    protocol: str = "dynamic:delta=0.5,b=1"
    batch_size: int = 10
    seed: int = 0
    window: int = 1000
    detector: str | None = "adwin"
    sync_timeout: float = 5.0
    status_interval: float = 0.5
    commit_interval: float = 1.0
    linger: float = 0.2
    max_poll_records: int = 100
    fetch_wait_ms: int | None = None  # None: default_fetch_wait_ms()
    max_pending: int = 100_000
    label_ttl: float | None = None
    id_timeout: float = 60.0
    checkpoint_dir: str | None = None
    checkpoint_every: int = 10_000
    guard: int | None = None
    guard_margin: float = 0.05
    device: str | None = None
    prefix: str | None = None
    bootstrap: str | None = None
    settings: KafkaSettings | None = None

    def __post_init__(self):
        from streamlearn.evaluation.detectors import make_detector
        from streamlearn.learners import LEARNERS
        from streamlearn.sync.spec import parse_spec

        if self.node != "auto" and (isinstance(self.node, bool) or not isinstance(self.node, int) or self.node < 0):
            raise ConfigError(f"node must be an integer >= 0 or 'auto', got {self.node!r}")
        if self.learner not in LEARNERS:
            raise ConfigError(f"learner: one of {sorted(LEARNERS)}, got {self.learner!r}")
        parse_spec(self.protocol)
        if self.fetch_wait_ms is None:
            object.__setattr__(self, "fetch_wait_ms", default_fetch_wait_ms())
        for name in ("batch_size", "window", "max_poll_records", "fetch_wait_ms", "max_pending"):
            positive(name, getattr(self, name), integer=True)
        for name in ("sync_timeout", "status_interval", "commit_interval", "linger", "id_timeout"):
            positive(name, getattr(self, name))
        positive("label_ttl", self.label_ttl, allow_none=True)
        positive("checkpoint_every", self.checkpoint_every, integer=True)
        from streamlearn.sync.guard import check_guard

        _, margin = check_guard(10 if self.guard is None else self.guard, self.guard_margin)  # the margin too
        object.__setattr__(self, "guard_margin", margin)
        check_guard(self.guard, margin)
        if self.checkpoint_dir is not None:
            if not isinstance(self.checkpoint_dir, str) or not self.checkpoint_dir:
                raise ConfigError(f"checkpoint_dir must be a directory path, got {self.checkpoint_dir!r}")
            if self.learner not in TORCH_LEARNERS + _RIVER_LINEAR:
                raise ConfigError(f"checkpoint_dir: learner {self.learner!r} cannot be saved without pickle; "
                                  f"checkpoints need an averageable learner ({', '.join(TORCH_LEARNERS + _RIVER_LINEAR)})")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        if self.detector is not None:
            make_detector(self.detector)
        if self.settings is not None and not isinstance(self.settings, KafkaSettings):
            raise ConfigError(f"settings must be a KafkaSettings, got {type(self.settings).__name__}")
        for name in ("source_params", "learner_params"):
            object.__setattr__(self, name, dict(getattr(self, name) or {}))
        for name in ("features", "classes"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, str):
                    raise ConfigError(f"{name} must be a sequence, got the string {value!r} (split it first)")
                object.__setattr__(self, name, tuple(value))
        features, classes = self.layout()
        if not features or len(set(features)) != len(features) or not all(isinstance(f, str) and f for f in features):
            raise ConfigError(f"features must be distinct non-empty names, got {features!r}")
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise ConfigError(f"classes must be at least 2 distinct labels, got {classes!r}")

    def layout(self) -> tuple[list, list]:
        """The declared ``(features, classes)``: explicit values, else the source's."""
        features, classes = self.features, self.classes
        if self.source is not None and (features is None or classes is None):
            from streamlearn.streams import make_source

            src = make_source(self.source, seed=self.seed, **self.source_params)
            features = list(src.feature_names) if features is None else features
            classes = src.classes if classes is None else classes
        if features is None:
            raise ConfigError("features: declare the feature names (features=...) or a source (source=...)")
        if classes is None:
            raise ConfigError("classes: declare the labels (classes=...) or a source that has them")
        return list(features), list(classes)


class NodeService(Service):
    """A node of the pipeline: consume, test-then-train, run the node rule, apply syncs, report status.

    Call :meth:`run` (blocking; in a thread or a process); :meth:`stop` or the ``stop_event``
    ends it cleanly: a ``leave`` goes to the sync service, the position is committed, the
    producer flushed. SIGINT/SIGTERM do the same when ``run`` is called in the main thread.

    Parameters
    ----------
    config
        A :class:`NodeConfig`.
    metrics
        A :class:`streamlearn.metrics.NodeMetrics`, a callable ``node id -> NodeMetrics``
        (called once the id is known: with ``node="auto"``, after the sync service assigned
        it), or None.

    Examples
    --------
    >>> svc = NodeService(NodeConfig(node=0, source="sea", protocol="nosync", device="cpu"))
    >>> svc.status()
    {}
    """

    def __init__(self, config: NodeConfig, metrics=None):
        if not isinstance(config, NodeConfig):
            raise ConfigError(f"config must be a NodeConfig, got {type(config).__name__}")
        super().__init__(config, metrics)  # metrics: a streamlearn.metrics.NodeMetrics, or None

    # ---- setup ---------------------------------------------------------------------------------

    def _make_learner(self):
        from streamlearn.learners import make_learner

        cfg = self.config
        params = dict(cfg.learner_params)
        params.setdefault("features", list(self.features_))
        if cfg.learner in TORCH_LEARNERS:
            params.setdefault("classes", list(self.classes_))
            params.setdefault("seed", cfg.seed)
            params.setdefault("device", cfg.device)
        elif cfg.learner in _RIVER_LINEAR:
            params.setdefault("classes", list(self.classes_))
        return make_learner(cfg.learner, **params)

    def _setup(self) -> None:
        from kafka import KafkaConsumer, KafkaProducer, TopicPartition

        from streamlearn.evaluation import DriftMonitor, Prequential, clipped_log_loss
        from streamlearn.learners import is_averageable
        from streamlearn.learners.base import labels_array
        from streamlearn.sync.driver import ReferenceMotion
        from streamlearn.sync.spec import make_protocol

        cfg = self.config
        node = cfg.node
        self.features_, self.classes_ = cfg.layout()
        self._class_index = {c: i for i, c in enumerate(self.classes_)}
        self._labels = labels_array(self.classes_)
        self._names_hash = feature_names_hash(self.features_)
        self.learner_ = self._make_learner()
        self.averageable_ = is_averageable(self.learner_)
        self.protocol_ = None
        self._d = None
        self._motion = None
        if self.averageable_:
            w0 = self.learner_.get_flat().float()
            self._d = int(w0.numel())
            # the parameters lead the flat vector; buffers after them (scaler statistics) are not in ||w - r||^2
            self._n_params = int(getattr(self.learner_, "n_params", self._d))
            self._r = w0.clone()
            self._w0_hash = model_hash(w0)
            self.protocol_ = make_protocol(cfg.protocol, m=1, d=self._d, w0=w0.cpu(), seed=cfg.seed, device="cpu",
                                           n_params=self._n_params)
            self._check_every = self.protocol_.check_every
            # dynamic averaging against an extrapolated reference: the reference's velocity between the
            # last two full syncs this node received, and the step of the last one
            self._motion = ReferenceMotion(1, self._n_params, device=self._r.device) \
                if getattr(self.protocol_, "extrapolate", 0) else None
        self._layout = hashlib.blake2b(json.dumps(
            {"learner": cfg.learner, "features": self.features_, "classes": [repr(c) for c in self.classes_],
             "d": self._d}).encode(), digest_size=8).hexdigest()
        self._preq = Prequential(window=cfg.window, every=1 << 62)
        self._log_loss = clipped_log_loss  # imported here, not at the module's import (it pulls in river)
        self._monitor = None if cfg.detector is None else DriftMonitor(cfg.detector)
        # A learner with a step-size schedule (TorchLearner's lr_decay) restarts it at a detection: the
        # monitor is one-sided, it reports only firings where the error rose (detectors also fire while
        # the error drops).
        self._restarts = self._monitor is not None and getattr(self.learner_, "lr_decay", None) is not None \
            and hasattr(self.learner_, "restart_schedule")

        # counters and state
        self._step_no = 0
        self._samples = 0
        self._since_sync = 0
        self._unlabelled = 0
        self._deadletters = 0
        self._bad_down = 0
        self._send_errors = 0
        self._seq_gaps = 0
        self._last_seq: int | None = None
        self._seen_seq: int | None = None  # last seq consumed (gaps are counted as records come)
        self._drifts: deque = deque(maxlen=_KEEP)
        self._n_drifts = 0
        self._sync_positions: deque = deque(maxlen=_KEEP)
        self._syncs = 0
        self._last_sync: float | None = None
        self._last_sync_step: int | None = None
        self._synced_hash: str | None = None
        self._last_sync_kind: str | None = None
        self._join_hash: str | None = None
        self._epoch: str | None = None
        self._joined = False
        self._rejected: str | None = None
        self._divergence = 0.0
        self._step_loss: np.ndarray | None = None  # per-sample losses of the last mini-batch
        self._models_sent = self._models_received = 0
        self._bytes_sent = self._bytes_received = 0
        self._reports_sent = self._violations = self._suppressed = 0
        self._reference_mismatches, self._rejoin_at = 0, None  # deltas to another reference; the re-join sent
        self._awaiting: float | None = None  # monotonic time the last model went up, until an answer
        self._state = "starting"
        self._t0 = time.monotonic()
        self._rate_mark = (self._t0, 0)
        self._rate = 0.0
        # buffered samples not learned yet, oldest first, with the offset of their record
        f = len(self.features_)
        self._X = np.empty((0, f), dtype=np.float32)
        self._y = np.empty(0, dtype=np.int64)
        self._seq = np.empty(0, dtype=np.int64)
        self._off = np.empty(0, dtype=np.int64)
        # per buffered sample: [late-labelled, its prediction on arrival was right, proba of the true label]
        self._early = np.empty((0, 3))
        self._late_buffered = False  # some buffered sample is late-labelled (its row of _early is set)
        # guarded averaging: the last `guard` learned samples, a ring written at _gpos (_gn of them filled)
        self._guard = cfg.guard if self.averageable_ else None
        self._gX = np.empty((self._guard or 0, f), dtype=np.float32)
        self._gy = np.empty(self._guard or 0, dtype=np.int64)
        self._gpos = self._gn = 0
        self._declines = self._guard_checks = 0
        self._guard_us: float | None = None  # microseconds of the last check (two forwards of the window)
        self._guard_losses: list | None = None  # [arriving model's, own model's] window loss at the last check
        self._head = 0
        self._last_arrival = time.monotonic()
        # keyed readings waiting for their label, and the offsets of those held (oldest first)
        self._held = PendingByKey(cfg.max_pending, cfg.label_ttl)
        self._held_offsets: deque = deque()
        self._held_gone: set = set()
        self._predicted_unlabelled = self._labels_matched = self._labels_unmatched = 0
        self._labels_missing = self._labels_replayed = 0
        self._last_prediction: dict | None = None
        self._token: str | None = None  # the claim token of an id the sync service assigned
        self._next_renew = 0.0
        # checkpoints and restarts (see "Checkpoints" in the module doc)
        self._store = None
        self._ckpt_at = 0  # samples learned at the last checkpoint
        self._checkpoints = self._checkpoint_errors = self._relearned = self._topic_resets = 0
        self._relearn_until = 0  # samples of offsets below this were learned before a crash: counted as relearned
        self._skip: tuple | None = None  # (offset, seq): samples of that record up to seq are in the restored model
        self._resumed_from: int | None = None

        auto = node == "auto"
        self.settings_, self.bootstrap_, self.prefix_ = connect(cfg.settings, cfg.bootstrap, cfg.prefix,
                                                                [] if auto else [node])
        s = self.settings_
        self._topics = {
            "up": sync_up_topic(self.prefix_), "down": sync_down_topic(self.prefix_),
            "dead": deadletter_topic(self.prefix_), "status": status_topic(self.prefix_),
        }
        self._producer = KafkaProducer(**s.producer_kwargs(self.bootstrap_, max_block_ms=BROKER_WAIT_MS))
        # sync.down has a consumer of its own: with both partitions on one consumer, a paused
        # and resumed samples partition was never fetched again (kafka-python 3.0.12 on Tansu).
        self._down = KafkaConsumer(**s.consumer_kwargs(self.bootstrap_, fetch_max_wait_ms=cfg.fetch_wait_ms))
        down_tp = self._down_tp = TopicPartition(self._topics["down"], 0)
        # Only what the sync service says from now on concerns us; seek before claiming an id or
        # joining so the answer is seen.
        self._down.assign([down_tp])
        self._down.seek(down_tp, self._down.end_offsets([down_tp], timeout_ms=BROKER_WAIT_MS)[down_tp])
        if auto:
            node = self._claim_id()
            if node is None:
                return  # stopped while waiting
            self.config = cfg = replace(cfg, node=node)
            connect(s, self.bootstrap_, self.prefix_, [node])
        if callable(self.metrics) and not hasattr(self.metrics, "update_from_status"):
            self.metrics = self.metrics(node)  # a factory: with an assigned id, the node label is known only now
        self._topics["samples"] = samples_topic(self.prefix_, node)
        self._consumer = KafkaConsumer(**s.consumer_kwargs(
            self.bootstrap_, group_id=f"{self.prefix_}.node.{node}", enable_auto_commit=False,
            auto_offset_reset="earliest", max_poll_records=cfg.max_poll_records, fetch_max_wait_ms=cfg.fetch_wait_ms))
        # Only commits, in a group of its own: how far the node had read (see the module doc).
        self._seen = KafkaConsumer(**s.consumer_kwargs(
            self.bootstrap_, group_id=f"{self.prefix_}.node.{node}.seen", enable_auto_commit=False))
        self._samples_tp = TopicPartition(self._topics["samples"], 0)
        c = self._consumer
        c.assign([self._samples_tp])
        committed = self._committed_offset(c)
        start = committed if committed is not None else self._first_offset()
        if cfg.checkpoint_dir is not None:
            from streamlearn.kafka.checkpoint import CheckpointStore

            self._store = CheckpointStore(os.path.join(cfg.checkpoint_dir, f"node-{node}"), "node")
            position = self._restore()
            if position is None:  # no checkpoint yet: a fresh model, which has learned nothing of the topic
                position = self._first_offset()
            if committed is not None and committed > position:
                self._relearn_until = committed  # the model's own position, even when the group's is further
            start = position
        c.seek(self._samples_tp, start)
        self._committed = start
        self._consumed_next = start
        self._replay_until = max(start, self._committed_offset(self._seen) or 0)
        self._committed_seen = self._replay_until
        log.info("node %d: reading %s from offset %d; learner %s (d=%s), protocol %s, broker %s", node,
                 self._topics["samples"], start, cfg.learner, self._d, cfg.protocol if self.averageable_ else "local only",
                 self.bootstrap_)
        if self.averageable_:
            self._join()
        self._state = "running"
        self._publish_status()

    def _committed_offset(self, consumer) -> int | None:
        """The offset ``consumer``'s group committed for the samples partition (None: none yet)."""
        from kafka.errors import KafkaTimeoutError

        try:
            return consumer.committed(self._samples_tp, timeout_ms=BROKER_WAIT_MS)
        except KafkaTimeoutError:
            raise StreamlearnError(f"node {self.config.node}: the broker {self.bootstrap_} did not give the committed "
                                   f"offset of {self._samples_tp.topic} within {BROKER_WAIT_MS / 1000:g} s") from None

    def _first_offset(self) -> int:
        return self._consumer.beginning_offsets([self._samples_tp], timeout_ms=BROKER_WAIT_MS)[self._samples_tp]

    # ---- main loop -----------------------------------------------------------------------------

    def _buffered(self) -> int:
        return len(self._y) - self._head

    def _loop(self, stop_event, max_seconds) -> None:
        cfg = self.config
        B = cfg.batch_size
        high_water = max(4 * B, 2000)
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        next_status = time.monotonic() + cfg.status_interval
        next_commit = time.monotonic() + cfg.commit_interval
        while not self._stop.is_set() and not (stop_event is not None and stop_event.is_set()):
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            for records in self._down.poll(timeout_ms=0).values():
                for rec in records:
                    self._on_down(rec)
            got_samples = False
            if self._buffered() < high_water:  # back-pressure: fetch samples only while few are waiting
                # Idle, this poll is the loop's wait: short, so sync messages are not held up.
                polled = self._consumer.poll(timeout_ms=0 if self._buffered() >= B else 20)
                for records in polled.values():
                    got_samples = self._on_sample_records(records) or got_samples
            self._check_topic_reset()
            if self._skip is not None and self._consumed_next > self._skip[0]:
                self._drop_learned()
            budget = time.perf_counter() + 0.02  # then look at the sync topic again
            while self._buffered() >= B and time.perf_counter() < budget:
                h0 = self._head
                self._step(B)
                self._after_step(h0)
            if 0 < self._buffered() < B and not got_samples and time.monotonic() - self._last_arrival >= cfg.linger:
                h0 = self._head
                self._step(self._buffered())
                self._after_step(h0)
            self._compact()
            now = time.monotonic()
            self._housekeeping(now)
            if now >= next_commit:
                self._commit()
                next_commit = now + cfg.commit_interval
            if now >= next_status:
                self._publish_status()
                next_status = now + cfg.status_interval

    def _shutdown(self) -> None:
        running = getattr(self, "_state", None) == "running"
        self._state = "stopped"
        try:
            if running:
                if self.averageable_ or self._token is not None:  # the leave also frees an assigned id
                    self._publish_up(SyncMessage("leave", node=self.config.node, step=self._step_no,
                                                 token=self._token))
                if self._store is not None:
                    self._checkpoint()
                self._commit(BROKER_WAIT_MS)
                self._publish_status()
                self._producer.flush(timeout=BROKER_WAIT_MS / 1000)
        except Exception as exc:  # the broker may be gone; closing must still happen
            log.warning("node %d: unclean shutdown: %s", self.config.node, exc)
        finally:
            for name in ("_producer", "_consumer", "_down", "_seen"):
                client = getattr(self, name, None)
                if client is not None:
                    client.close(**({"timeout": 5} if name == "_producer" else {"timeout_ms": 5_000}))
        if not running:
            return
        log.info("node %d: stopped after %d samples, %d steps (%d dead letters, %d models sent, %d received)",
                 self.config.node, self._samples, self._step_no, self._deadletters, self._models_sent,
                 self._models_received)

    # ---- samples -------------------------------------------------------------------------------

    def _on_sample_records(self, records) -> bool:
        """Decode sample and label records into the buffer; bad ones go to the dead-letter topic.

        Keyed readings without a label are held (and predicted now); a label record moves its
        reading into the buffer. True if any sample came into the buffer.
        """
        f = len(self.features_)
        xs, ys, seqs, offs, keys = [], [], [], [], []  # keys: the offset a sample became learnable at
        batch_offs = []  # (offset, samples) of the batch records, in the order of xs
        json_rows, json_y, json_seq, json_off = [], [], [], []
        new_held, joined = [], []  # readings held now: (key, item); labelled now: (item, class index, offset)
        for rec in records:
            self._consumed_next = rec.offset + 1
            try:
                kind = record_kind(rec.value)
                if kind == "sample_batch":
                    X, y, seq = self._decode_batch(rec.value)
                    if len(y):
                        xs.append(X)
                        ys.append(y)
                        seqs.append(seq)
                        batch_offs.append((rec.offset, len(y)))
                elif kind == "json":
                    got = self._decode_json(rec.value)
                    if isinstance(got, LabelRecord):
                        self._on_label(rec, got, joined)
                        continue
                    row, yi, seq, key = got
                    if yi is not None:
                        json_rows.append(row)
                        json_y.append(yi)
                        json_seq.append(seq)
                        json_off.append(rec.offset)
                    elif key is not None:
                        item = _Held(rec.offset, seq, row)
                        self._hold(key, item)
                        new_held.append((key, item))
                    else:
                        self._unlabelled += 1
                else:
                    raise DecodeError("a model message is not a sample", field="<payload>", value=kind)
            except (DecodeError, BadRecordError) as exc:
                self._deadletter(rec, str(exc))
        if new_held:
            self._predict_held(new_held)
        if batch_offs:  # the offsets of the samples of batch records, in one call
            where, count = zip(*batch_offs)
            offs.append(np.repeat(np.asarray(where, dtype=np.int64), count))
            keys.append(offs[-1])
        if json_rows:
            # JSON and batch records may interleave: keep the offset order.
            xs.append(np.asarray(json_rows, dtype=np.float32).reshape(-1, f))
            ys.append(np.asarray(json_y, dtype=np.int64))
            seqs.append(np.asarray(json_seq, dtype=np.int64))
            offs.append(np.asarray(json_off, dtype=np.int64))
            keys.append(offs[-1])
        plain = sum(len(y) for y in ys)  # samples of batch and JSON records: labelled on arrival
        early = [np.zeros((plain, 3))] if plain else []
        if joined:
            # A late-labelled reading keeps the offset of its reading (the position is not committed
            # past it before it is learned) and is learned in the order the labels came.
            xs.append(np.asarray([item.row for item, _, _ in joined], dtype=np.float32).reshape(-1, f))
            ys.append(np.asarray([yi for _, yi, _ in joined], dtype=np.int64))
            seqs.append(np.asarray([item.seq for item, _, _ in joined], dtype=np.int64))
            offs.append(np.asarray([item.offset for item, _, _ in joined], dtype=np.int64))
            keys.append(np.asarray([off for _, _, off in joined], dtype=np.int64))
            early.append(_early_scores(np.stack([item.proba for item, _, _ in joined]), ys[-1]))
            self._late_buffered = True
        if not xs:
            return False
        order = None
        if len(keys) > 1:  # samples of several kinds of record (each kind comes in offset order)
            order = np.argsort(np.concatenate(keys), kind="stable")
        self._X = _append(self._X, self._head, np.concatenate(xs), order)
        self._y = _append(self._y, self._head, np.concatenate(ys), order)
        self._seq = _append(self._seq, self._head, np.concatenate(seqs), order)
        self._off = _append(self._off, self._head, np.concatenate(offs), order)
        self._early = _append(self._early, self._head, np.concatenate(early), order)
        self._head = 0
        self._last_arrival = time.monotonic()
        return True

    def _decode_batch(self, value) -> tuple:
        batch = decode_sample_batch(value)
        if batch.names_hash not in (_ZERO_HASH, self._names_hash):
            raise DecodeError(f"feature names differ from the declared {self.features_!r}", field="names_hash",
                              value=batch.names_hash.hex())
        if batch.f != len(self.features_):
            raise DecodeError(f"expected {len(self.features_)} features", field="f", value=batch.f)
        n = batch.n
        if batch.y is None:
            self._note_seq_run(batch.first_seq, n)
            self._unlabelled += n
            return batch.X[:0], np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        if batch.y.dtype.kind != "i":
            raise DecodeError("labels must be class indices for a classifier", field="y", value=str(batch.y.dtype))
        y = batch.y.astype(np.int64)
        # one pass for both bounds: a negative index is a huge unsigned one
        if n and y.view(np.uint64).max() >= len(self.classes_):
            raise DecodeError(f"class index out of range [0, {len(self.classes_)})", field="y",
                              value=[int(y.min()), int(y.max())])
        self._note_seq_run(batch.first_seq, n)
        return batch.X.astype(np.float32, copy=False), y, batch.seqs

    def _decode_json(self, value):
        """A reading as ``(row, class index or None, seq, key)``, or a label record with a class index as ``y``."""
        record = decode_node_record(value)
        if isinstance(record, LabelRecord):
            return replace(record, y=self._class_of(record.y))
        try:
            row = [record.x[name] for name in self.features_]
        except KeyError as exc:
            raise DecodeError("feature missing", field=f"x[{exc.args[0]!r}]") from None
        yi = None if record.y is None else self._class_of(record.y)
        self._note_seqs((record.seq,))
        return row, yi, record.seq, record.key

    def _class_of(self, label) -> int:
        try:
            return self._class_index[label]
        except (KeyError, TypeError):
            raise DecodeError(f"label is not one of the classes {self.classes_!r}", field="y", value=label) from None

    def _note_seq_run(self, first: int, n: int) -> None:
        """:meth:`_note_seqs` of ``first, first + 1, ..., first + n - 1`` (a batch record: no gap inside)."""
        if n:
            if self._seen_seq is not None:
                self._seq_gaps += first != self._seen_seq + 1
            self._seen_seq = first + n - 1

    def _note_seqs(self, seqs) -> None:
        """Count jumps in ``seq`` as readings are consumed (held ones too, so late labels make none)."""
        if len(seqs) == 0:
            return
        if self._seen_seq is not None:
            self._seq_gaps += int(seqs[0] != self._seen_seq + 1)
        if len(seqs) > 1:
            self._seq_gaps += int(np.count_nonzero(np.diff(seqs) != 1))
        self._seen_seq = int(seqs[-1])

    # ---- late labels ---------------------------------------------------------------------------

    def _hold(self, key: str, item: "_Held") -> None:
        self._held_offsets.append(item.offset)
        self._drop_held(self._held.put(key, item))

    def _drop_held(self, dropped: list) -> None:
        """Held readings evicted or expired: their label never came."""
        for key, item in dropped:
            self._held_gone.add(item.offset)
            log.debug("node %d: reading %r (seq %d) dropped before its label came", self.config.node, key, item.seq)
        self._labels_missing += len(dropped)

    def _oldest_held(self) -> int | None:
        """Offset of the oldest reading still held, or None."""
        q = self._held_offsets
        while q and q[0] in self._held_gone:
            self._held_gone.discard(q.popleft())
        return q[0] if q else None

    def _predict_held(self, held: list) -> None:
        """Predict readings that wait for their label now, in one batch; the score comes with the label."""
        X = np.asarray([item.row for _, item in held], dtype=np.float32).reshape(len(held), -1)
        P = np.asarray(self.learner_.predict_proba_many(X), dtype=np.float64)
        P = _declared_proba(P, list(getattr(self.learner_, "classes_", [])), self.classes_)
        for (_, item), p in zip(held, P):
            item.proba = p
        self._predicted_unlabelled += len(held)
        (key, item), p = held[-1], P[-1]
        predicted = self.classes_[int(p.argmax())] if np.isfinite(p).all() else None
        self._last_prediction = {"key": key, "seq": item.seq, "y_pred": predicted}
        if log.isEnabledFor(logging.DEBUG):
            for (key, item), p in zip(held, P):
                log.debug("node %d: reading %r (seq %d) predicted %r, held for its label", self.config.node, key,
                          item.seq, self.classes_[int(p.argmax())] if np.isfinite(p).all() else None)

    def _on_label(self, rec, label: LabelRecord, joined: list) -> None:
        item = self._held.pop(label.key)
        if item is not None:
            self._held_gone.add(item.offset)
            self._labels_matched += 1
            joined.append((item, label.y, rec.offset))
        elif rec.offset < self._replay_until:
            self._labels_replayed += 1  # read before this start: it was used or dead-lettered then
        else:
            self._labels_unmatched += 1
            self._deadletter(rec, f"label matches no reading waiting for it (key {label.key!r}: unknown, labelled "
                                  "already, or dropped after max_pending / label_ttl)")

    def _deadletter(self, rec, reason: str) -> None:
        self._deadletters += 1
        log.debug("node %d: record at offset %d to the dead-letter topic: %s", self.config.node, rec.offset, reason)
        try:
            headers = deadletter_headers(reason, topic=rec.topic, partition=rec.partition, offset=rec.offset)
            self._producer.send(self._topics["dead"], rec.value, key=rec.key, headers=headers, partition=0)
        except Exception as exc:  # KafkaError, buffer full: counted, not fatal
            self._send_errors += 1
            log.warning("node %d: cannot forward a bad record to the dead-letter topic: %s", self.config.node, exc)

    def _compact(self) -> None:
        if self._head:
            self._X, self._y = self._X[self._head:], self._y[self._head:]
            self._seq, self._off = self._seq[self._head:], self._off[self._head:]
            self._early = self._early[self._head:]
            self._head = 0
        if not len(self._y):
            self._late_buffered = False

    def _housekeeping(self, now: float) -> None:
        """Renew an assigned id; drop held readings past their time to live."""
        if self._token is not None and now >= self._next_renew:
            self._send_claim(self._token, self.config.node)
            self._next_renew = now + ID_RENEW_EVERY
        if self.config.label_ttl is not None:
            self._drop_held(self._held.expire())

    # ---- learning ------------------------------------------------------------------------------

    def _step(self, n: int) -> None:
        """Test-then-train on the next ``n`` buffered samples, then run the node rule.

        The hot path: called for every mini-batch, so everything here works on the whole batch
        at once (a few numpy calls), and the divergence is computed only when the rule checks it.
        """
        t0 = time.perf_counter()
        h = self._head
        X, yi, seqs = self._X[h:h + n], self._y[h:h + n], self._seq[h:h + n]
        learner = self.learner_
        # A learner that can (TorchLearner) predicts in the forward pass it then trains through:
        # the probabilities of the model before this step, one pass; others predict, learn below.
        fused = getattr(learner, "predict_proba_learn_many", None)
        P = fused(X, self._labels[yi]) if fused is not None else learner.predict_proba_many(X)
        correct, p_true, valid = _score_step(np.asarray(P, dtype=np.float64), learner, self.classes_, yi)
        if self._late_buffered:
            correct, p_true, valid = self._with_early_scores(h, n, correct, p_true, valid)
        all_valid = valid.all()
        loss = self._log_loss(p_true)
        if not all_valid:
            loss[~valid] = np.nan
        self._preq.update(correct, loss, None if all_valid else valid)
        if self._monitor is not None:
            n0 = self._monitor.n_
            errors = (~correct).astype(np.float64)
            found = self._monitor.update_many(errors, None if all_valid else valid)
            for pos in found:
                self._drifts.append(int(seqs[pos - n0]))
                self._n_drifts += 1
            if found and self._restarts:
                learner.restart_schedule()  # from the next step on: this one is taken (fused) or below
        if fused is None:
            learner.learn_many(X, self._labels[yi])
        if self._guard is not None:
            self._remember(X, yi)
        self._last_seq = int(seqs[-1])  # gaps are counted as records are consumed (_note_seqs)
        self._head = h + n
        self._samples += n
        self._since_sync += n
        self._step_no += 1
        self._step_loss = loss  # its mean is taken when a report needs it, not at every step
        if self.metrics is not None:
            self.metrics.observe_learn(time.perf_counter() - t0)
        if self.averageable_:
            if self._step_no % self._check_every == 0:  # the rule reads the divergence only then
                self._divergence = self._model_divergence()
            kind = self.protocol_.node_rule(self.config.node, self._step_no, self._divergence)
            if kind == "model" and self._awaiting is not None:
                if time.monotonic() - self._awaiting < self.config.sync_timeout:
                    self._suppressed += 1  # its model is already up there: learn on, do not send it again
                    return
                self._awaiting = None
            if kind is not None:
                with_model = kind == "model"
                if with_model:
                    self._awaiting = time.monotonic()
                self._violations += with_model
                self._reports_sent += 1
                report = dict(node=self.config.node, step=self._step_no, n_samples=self._since_sync,
                              loss=self._last_loss)
                if with_model:
                    self._publish_model("report", **report)
                else:
                    self._publish_up(SyncMessage("report", **report))

    def _remember(self, X: np.ndarray, yi: np.ndarray) -> None:
        """Put a learned mini-batch into the guard's window (a ring of the last ``guard`` samples): whole-batch copies."""
        G, n = self._guard, len(yi)
        if n >= G:
            self._gX[:] = X[n - G:]
            self._gy[:] = yi[n - G:]
            self._gpos, self._gn = 0, G
            return
        pos = self._gpos
        k = min(n, G - pos)  # up to the end of the ring, then the rest from its start
        self._gX[pos:pos + k], self._gy[pos:pos + k] = X[:k], yi[:k]
        self._gX[:n - k], self._gy[:n - k] = X[k:], yi[k:]
        self._gpos = (pos + n) % G
        self._gn = min(G, self._gn + n)

    def _window_p_true(self, flats: list) -> list:
        """The probability each model of ``flats`` gives the true class of every sample in the guard's window.

        A torch learner without a scaler: one batched forward of the models (its ``functional()``), the
        learner untouched. Otherwise each model is set in turn (``set_flat`` keeps the optimizer state),
        predicted with, and the learner's own model set back.
        """
        learner, n = self.learner_, self._gn
        X, yi = self._gX[:n], self._gy[:n]
        functional = getattr(learner, "functional", None)
        if functional is not None and getattr(learner, "scaler_", True) is None \
                and list(getattr(learner, "classes_", [])) == self.classes_:
            forward, _ = functional()
            own = _live_flat(learner)
            p = learner.n_params
            W = torch.stack([f[:p].to(own.device, own.dtype) for f in flats])
            Xt = torch.as_tensor(X, device=own.device).expand(len(flats), n, X.shape[1])
            with torch.no_grad():
                logp = torch.log_softmax(forward(W, Xt)[..., :len(self.classes_)], dim=-1)
                yt = torch.as_tensor(yi, device=own.device).expand(len(flats), n)
                return list(logp.gather(-1, yt.unsqueeze(-1)).squeeze(-1).exp().cpu())
        own = learner.get_flat()
        flats = [f.clone() for f in flats]  # a live view of the learner's parameters changes with set_flat
        out = []
        try:
            for flat in flats:
                learner.set_flat(flat)
                P = np.asarray(learner.predict_proba_many(X), dtype=np.float64)
                out.append(torch.as_tensor(_score_step(P, learner, self.classes_, yi)[1]))
        finally:
            learner.set_flat(own)
        return out

    def _guard_takes(self, candidate: torch.Tensor) -> bool:
        """Whether the guard lets the model ``candidate`` (what the sync would leave) replace the learner's."""
        from streamlearn.sync.guard import accepts, window_loss

        if self._guard is None or self._gn < 10:
            return True  # no guard, or nothing to judge by yet
        t0 = time.perf_counter()
        p_in, p_own = self._window_p_true([candidate, _live_flat(self.learner_)])
        loss_in, loss_own = window_loss(p_in.double()[None]), window_loss(p_own.double()[None])
        ok = bool(accepts(loss_in, loss_own, self.config.guard_margin)[0])
        self._guard_us = (time.perf_counter() - t0) * 1e6
        self._guard_losses = [float(loss_in[0]), float(loss_own[0])]
        self._guard_checks += 1
        return ok

    def _decline(self, msg: SyncMessage, model: torch.Tensor) -> None:
        """The guard kept the node's own model: take the reference of a full sync all the same (the node and
        the sync service keep one reference), count it and tell the sync service."""
        node = self.config.node
        if msg.kind == "send" and msg.reference:
            self._take_reference(model)
        self._declines += 1
        log.debug("node %d: declined a %s at step %d (guard)", node, msg.kind, self._step_no)
        self._publish_up(SyncMessage("decline", node=node, step=self._step_no))
        self._since_sync = 0
        self._awaiting = None  # answered: the node rule may send again
        self._divergence = self._model_divergence()

    def _take_reference(self, model: torch.Tensor, join: bool = False) -> None:
        """Make ``model`` the reference, and follow its motion (a join restarts it: no velocity known yet)."""
        if self._motion is not None:
            self._motion.on_reference([0], (model if join else self._r)[None], model, self._step_no)
        self._r = model.clone()

    @property
    def _last_loss(self) -> float:
        """Mean log loss of the last mini-batch (NaN before the first)."""
        return float("nan") if self._step_loss is None else _mean_loss(self._step_loss)

    def _model_divergence(self) -> float:
        """``||w - r||^2``: how far the learner's model is from the reference, as the node rule checks it.

        The one place the node computes it: at the node rule's checks (every ``check_every`` steps
        of the protocol) and after a model from the sync service was applied.
        """
        p = self._n_params
        # live parameters where the learner can give them (a scaled learner copies its vector once)
        r = self._r[:p] if self._motion is None else self._motion.reference([0], self._r[None], self._step_no)[0]
        x = _live_flat(self.learner_)[:p] - r
        return float(torch.dot(x, x))  # sq_dist's sum of squares in two torch calls instead of three

    def _with_early_scores(self, h: int, n: int, correct, p_true, valid) -> tuple:
        """Scores of the next ``n`` buffered samples: late-labelled ones keep the prediction made on arrival."""
        e = self._early[h:h + n]
        late = e[:, 0] > 0
        if not late.any():
            return correct, p_true, valid
        return (np.where(late, e[:, 1] > 0, correct), np.where(late, e[:, 2], p_true),
                np.where(late, np.isfinite(e[:, 2]), valid))

    # ---- sync ----------------------------------------------------------------------------------

    def _claim_id(self) -> int | None:
        """Ask the sync service for a node id until it answers; None when stopped meanwhile."""
        timeout = self.config.id_timeout
        token = secrets.token_hex(8)
        t0 = time.monotonic()
        next_claim = next_log = t0
        refused = None
        while not self._stopping():
            now = time.monotonic()
            if now - t0 > timeout:
                raise StreamlearnError(f"no node id from the sync service within {timeout:g} s: is `streamlearn sync` "
                                       f"running (prefix {self.prefix_!r}, broker {self.bootstrap_})?")
            if now >= next_log:
                log.info("node: waiting for the sync service to assign a node id (%.0f of %g s)", now - t0, timeout)
                next_log = now + 5.0
            if now >= next_claim:
                self._send_claim(token)
                next_claim = now + _CLAIM_RETRY
            for records in self._down.poll(timeout_ms=100).values():
                for rec in records:
                    try:
                        msg = decode_sync(rec.value)
                    except DecodeError:
                        continue
                    if msg.kind == "hello":
                        next_claim = 0.0  # a sync service (re)started: ask it now
                    elif msg.kind == "assign" and msg.token == token:
                        if msg.node is not None:
                            self._token = token
                            log.info("node %d: id assigned by the sync service (%s)", msg.node, msg.epoch)
                            return msg.node
                        if msg.reason != refused:
                            refused = msg.reason
                            log.warning("node: no node id yet: %s (asking again)", msg.reason)
        return None

    def _send_claim(self, token: str, node: int | None = None) -> None:
        """Ask for a node id (``node`` None) or renew the hold on ``node``."""
        try:
            self._producer.send(self._topics["up"], encode_sync(SyncMessage("claim", node=node, token=token)),
                                key=None if node is None else str(node).encode(), partition=0)
        except Exception as exc:  # KafkaError, buffer full: asked again later
            self._send_errors += 1
            log.warning("node %s: cannot send its id claim: %s", "?" if node is None else node, exc)

    def _join(self) -> None:
        """Register with the sync service, carrying the reference; the error-feedback memory starts clean."""
        codec = self.protocol_.codec
        self._uplink = None if codec.dense else Uplink(
            codec, m=1, d=self._d, n_params=self._n_params, buffers_every=self.protocol_.buffers_every)
        self._publish_up(SyncMessage("join", node=self.config.node, d=self._d, n_params=self._n_params,
                                     layout=self._layout, spec=self.config.protocol, step=self._step_no,
                                     n_samples=self._since_sync, model=self._r.cpu()))

    def _publish_up(self, msg: SyncMessage) -> bool:
        """Send ``msg`` on sync.up; whether it went (errors are counted and logged, never raised)."""
        try:
            data = encode_sync(msg)
        except EncodeError as exc:  # e.g. a model that went NaN: say so, keep learning
            self._send_errors += 1
            log.warning("node %d: cannot send %s: %s", self.config.node, msg.kind, exc)
            return False
        try:
            self._producer.send(self._topics["up"], data, key=str(self.config.node).encode(), partition=0)
        except Exception as exc:
            self._send_errors += 1
            log.warning("node %d: cannot send %s to the sync service: %s", self.config.node, msg.kind, exc)
            return False
        self._bytes_sent += len(data)
        self._models_sent += msg.carries_model
        return True

    def _publish_model(self, kind: str, **fields) -> None:
        """Send the learner's model up (a violation ``report`` or a ``model`` answer): whole, or, under a
        codec other than fp32, as the compressed delta to the reference ``self._r`` with error feedback
        (what a message does not carry stays in the memory and joins the next delta, as in the simulator)."""
        up = self._uplink
        if up is None:
            self._publish_up(SyncMessage(kind, model=self.learner_.get_flat().cpu(), **fields))
            return
        w = self.learner_.get_flat().detach().to("cpu", torch.float32)
        if not bool(torch.isfinite(w).all()):
            self._send_errors += 1
            log.warning("node %d: cannot send %s: the model holds NaN or inf", self.config.node, kind)
            return
        r = self._r.detach().to("cpu", torch.float32)
        p = up.n_params
        _, parts, memory = compress_rows(up.codec, w[None], r[None], up.memory, p)
        buffers = up.with_buffers([0])[0]  # every buffers_every-th model carries the buffers
        data = pack_delta(up.codec, parts, tail=w[p:] if buffers else w[p:p], reference=r, n_params=p)
        if self._publish_up(SyncMessage(kind, delta=data, **fields)) and memory is not None:
            up.memory.copy_(memory)  # kept only for a message that went

    def _model_from_delta(self, msg: SyncMessage) -> torch.Tensor | None:
        """The model a ``send`` with a delta carries: ``r + dequantize(parts)`` on the parameters, the buffers
        from its tail. None when it cannot be used: a damaged one is counted as a bad record; one taken from
        another reference (this node missed a full sync) is counted, and the node registers again so the
        sync service sends its reference whole."""
        node = self.config.node
        r = self._r.detach().to("cpu", torch.float32)
        try:
            codec, parts, tail, n, _ = unpack_delta(msg.delta, reference=r, expected_d=self._d)
            if n != self._n_params:
                raise BadRecordError(f"delta of {n} parameters, the model has {self._n_params}", column="n_params",
                                     value=n)
            model = r.clone()
            model[:n] += codec.dequantize(parts, n)[0]
            # without buffers (buffers_every) the node keeps its own
            model[n:] = tail if tail.numel() else self.learner_.get_flat().detach().to("cpu", torch.float32)[n:]
        except BadRecordError as exc:
            if exc.column != "reference":
                self._bad_down += 1
                log.debug("node %d: bad delta on sync.down: %s", node, exc)
                return None
            self._reference_mismatches += 1
            (log.warning if self._reference_mismatches == 1 else log.debug)(
                "node %d: a sync came as a delta to a reference this node does not hold (it missed a full sync); "
                "registering again to get the reference whole", node)
            now = time.monotonic()
            if self._rejoin_at is None or now - self._rejoin_at >= self.config.sync_timeout:
                self._rejoin_at = now
                self._join()
            return None
        except Exception as exc:  # whatever else hostile bytes may raise: counted, never fatal
            self._bad_down += 1
            log.debug("node %d: bad delta on sync.down: %r", node, exc)
            return None
        return model.to(self._r.device)

    def _on_down(self, rec) -> None:
        node = self.config.node
        try:
            msg = decode_sync(rec.value, expected_d=self._d)
        except DecodeError as exc:
            self._bad_down += 1
            log.debug("node %d: bad record on sync.down at offset %d: %s", node, rec.offset, exc)
            return
        if msg.kind == "assign":
            if msg.token == self._token and msg.node is None:  # the id was given out again: no node may share it
                log.error("node %d: %s; stopping (restart it to get a new id)", node, msg.reason)
                self._rejected = msg.reason
                self._stop.set()
            return
        if not msg.addressed_to(node):
            return
        self._bytes_received += len(rec.value)
        kind = msg.kind
        if kind == "reject":
            if self._rejected != msg.reason:
                log.error("node %d: the sync service rejected this node: %s (learning locally)", node, msg.reason)
            self._rejected, self._joined = msg.reason, False
            return
        if kind == "hello" and self._token is not None:
            self._send_claim(self._token, node)  # a (re)started sync service learns which id this node holds
        if not self.averageable_:
            return
        if kind == "hello":
            if msg.targets is not None or msg.epoch != self._epoch:
                self._awaiting = None  # a new sync service knows nothing of earlier violations
                log.info("node %d: sync service %s is up; registering", node, msg.epoch)
                self._join()
            return
        if kind == "request":
            self._publish_model("model", node=node, step=self._step_no, n_samples=self._since_sync,
                                loss=self._last_loss, request=msg.request)
            return
        if msg.delta is not None:
            model = self._model_from_delta(msg)
            if model is None:
                return
        else:
            model = torch.from_numpy(np.array(msg.model, dtype=np.float32)).to(self._r.device)
        self._models_received += 1
        if self._guard is not None and kind in ("send", "pull") and msg.reason != "join":
            candidate = model if kind == "send" else None
            if candidate is None:
                w = self.learner_.get_flat()
                candidate = w - msg.strength * (w - model.to(w.device))
            if not self._guard_takes(candidate):
                self._decline(msg, model)
                return
        if kind == "send":
            if msg.reason == "join":
                self._rejoin_at = None
                self._epoch, self._joined, self._rejected = msg.epoch, True, None
                self._join_hash = model_hash(model)
                if torch.equal(model, self._r):
                    return  # it already holds this reference: keep what it learned meanwhile
            self.learner_.set_flat(model)
            if msg.reference:
                self._take_reference(model, join=msg.reason == "join")
            self._last_sync_kind = "join" if msg.reason == "join" else ("full" if msg.reference else "partial")
        elif kind == "pull":
            w = self.learner_.get_flat()
            self.learner_.set_flat(w - msg.strength * (w - model))
            self._last_sync_kind = "pull"
        if self.metrics is not None and self._awaiting is not None:
            self.metrics.observe_sync_wait(time.monotonic() - self._awaiting)
        self._since_sync = 0
        self._awaiting = None
        self._syncs += 1
        self._last_sync = time.time()
        self._last_sync_step = self._step_no
        self._sync_positions.append(self._samples)
        self._synced_hash = model_hash(self.learner_.get_flat())
        self._divergence = self._model_divergence()  # the status shows where the sync left the model

    # ---- checkpoints and restarts --------------------------------------------------------------

    def _checkpoint(self) -> None:
        """Save model, optimizer, reference, evaluator, counters and position together (atomically)."""
        from streamlearn.kafka.checkpoint import CheckpointError, learner_state, prequential_state

        self._ckpt_at = self._samples
        position = self._commit_offset()
        h = self._head
        first = self._off[h:] == position  # samples of a batch record cut by a mini-batch: some learned
        skip = int(self._seq[h:][first].min()) - 1 if first.any() else None
        arrays, learner_meta = learner_state(self.learner_)
        preq_arrays, preq_meta = prequential_state(self._preq)
        arrays.update(preq_arrays)
        arrays["reference"] = self._r.detach().cpu().float()
        self._checkpoints += 1
        meta = {"node": self.config.node, "layout": self._layout, "learner_name": self.config.learner,
                "samples": self._samples, "position": position, "skip_seq": skip, "last_seq": self._last_seq,
                "learner": learner_meta, "preq": preq_meta, "drifts": list(self._drifts),
                "sync_positions": list(self._sync_positions),
                "counters": {name: getattr(self, "_" + name) for name in _CKPT_COUNTERS}}
        try:
            self._store.save(arrays, meta)
        except (OSError, CheckpointError) as exc:
            self._checkpoints -= 1
            self._checkpoint_errors += 1
            log.error("node %d: cannot write a checkpoint to %s: %s", self.config.node, self._store.directory, exc)

    def _restore(self) -> int | None:
        """Load the newest checkpoint (model, optimizer, reference, evaluator, counters); its position, or None."""
        from streamlearn.kafka.checkpoint import restore_learner_state, restore_prequential_state

        ck = self._store.latest()
        if ck is None:
            return None
        meta = ck.meta
        if meta.get("layout") != self._layout:
            raise ConfigError(f"{ck.path} is a checkpoint of another model (learner {meta.get('learner_name')!r}, "
                              f"other features or classes): remove it or give another --checkpoint-dir")
        restore_learner_state(self.learner_, ck.arrays, meta["learner"])
        self._r = torch.from_numpy(np.array(ck.arrays["reference"], dtype=np.float32)).to(self._r.device)
        if not restore_prequential_state(self._preq, ck.arrays, meta["preq"]):
            log.warning("node %d: the checkpoint's accuracy window differs from --window; accuracy starts afresh",
                        self.config.node)
        for name, value in dict(meta.get("counters") or {}).items():
            if name in _CKPT_COUNTERS:
                setattr(self, "_" + name, int(value))
        self._last_seq = meta.get("last_seq")
        self._drifts.extend(meta.get("drifts") or [])
        self._sync_positions.extend(meta.get("sync_positions") or [])
        if meta.get("skip_seq") is not None:
            self._skip = (int(meta["position"]), int(meta["skip_seq"]))
        self._resumed_from, self._ckpt_at = ck.seq, self._samples
        log.info("node %d: resumed from %s: %d samples learned, reading from offset %d", self.config.node, ck.path,
                 self._samples, meta["position"])
        return int(meta["position"])

    def _drop_learned(self) -> None:
        """After a restore: drop the samples of the checkpoint's first record that the model learned already."""
        off, seq = self._skip
        self._skip = None
        h = self._head
        keep = ~((self._off[h:] == off) & (self._seq[h:] <= seq))
        if not keep.all():
            for name in ("_X", "_y", "_seq", "_off", "_early"):
                setattr(self, name, getattr(self, name)[h:][keep])
            self._head = 0

    def _after_step(self, h0: int) -> None:
        """Count the samples of the step (from buffer index ``h0``) the node had learned before a crash;
        write a checkpoint when one is due."""
        if self._relearn_until:
            self._relearned += int(np.count_nonzero(self._off[h0:self._head] < self._relearn_until))
            if self._learned_offset() >= self._relearn_until:
                self._relearn_until = 0
        if self._store is not None and self._samples - self._ckpt_at >= self.config.checkpoint_every:
            self._checkpoint()

    def _check_topic_reset(self) -> None:
        """A topic with fewer records than were read: the broker lost its data (a memory-only broker restarted)
        and counts offsets from 0 again; everything in it now is new, so read it from its start."""
        for consumer, tp in ((self._consumer, self._samples_tp), (self._down, self._down_tp)):
            hw = consumer.highwater(tp)
            if hw is None:
                continue
            position = consumer.position(tp, timeout_ms=_POSITION_WAIT_MS)
            if position is None or hw >= position:
                continue
            self._topic_resets += 1
            log.warning("node %d: %s holds fewer records than were read (the broker lost its data?); reading it "
                        "from its start", self.config.node, tp.topic)
            consumer.seek(tp, 0)
            if consumer is self._consumer:  # what is still buffered came before anything in the new topic
                self._off[self._head:] = 0
                self._committed = self._consumed_next = self._committed_seen = self._replay_until = 0
                self._relearn_until, self._skip = 0, None

    # ---- position and status -------------------------------------------------------------------

    def _learned_offset(self) -> int:
        """First offset not processed: of a buffered sample not learned yet (held readings count as processed)."""
        if self._buffered():
            return int(self._off[self._head:].min())  # late-labelled samples keep their reading's older offset
        return self._consumed_next

    def _commit_offset(self) -> int:
        """What may be committed: not past a sample not learned yet, nor past a reading still held."""
        offset, held = self._learned_offset(), self._oldest_held()
        return offset if held is None else min(offset, held)

    def _commit(self, wait_ms: int = COMMIT_WAIT_MS) -> None:
        """Commit what was learned; waits at most ``wait_ms`` per broker call (short in the learning loop,
        so a broker outage slows learning by at most that much per commit interval)."""
        from kafka.structs import OffsetAndMetadata

        offset = self._commit_offset()
        # how far it read matters to a restart only when label records came
        seen = self._consumed_next if self._labels_matched + self._labels_unmatched + self._labels_replayed else 0
        if offset <= self._committed and seen <= self._committed_seen:
            return
        try:
            if self._deadletters:
                self._producer.flush(timeout=wait_ms / 1000)  # dead letters stored before their position goes
            if seen > self._committed_seen:
                self._seen.commit({self._samples_tp: OffsetAndMetadata(seen, "", -1)}, timeout_ms=wait_ms)
                self._committed_seen = seen
            if offset > self._committed:
                self._consumer.commit({self._samples_tp: OffsetAndMetadata(offset, "", -1)}, timeout_ms=wait_ms)
                self._committed = offset
        except Exception as exc:  # coordinator unavailable and the like: next time
            log.warning("node %d: cannot commit offset %d: %s", self.config.node, offset, exc)

    def _lag(self) -> int | None:
        """Records in the node's topic not learned yet (None before the first fetch)."""
        hw = self._consumer.highwater(self._samples_tp) if getattr(self, "_consumer", None) is not None else None
        return None if hw is None else max(0, hw - self._learned_offset())

    def _snapshot(self) -> dict:
        now = time.monotonic()
        t, n = self._rate_mark
        if now - t >= 0.2:
            self._rate = (self._samples - n) / (now - t)
            self._rate_mark = (now, self._samples)
        cfg = self.config
        status = {
            "role": "node", "node": cfg.node, "ts": time.time(), "state": self._state,
            "uptime": now - self._t0, "learner": cfg.learner, "averageable": self.averageable_,
            "protocol": cfg.protocol if self.averageable_ else None,
            "epoch": self._epoch, "joined": self._joined, "rejected": self._rejected,
            "samples": self._samples, "steps": self._step_no, "rate": self._rate,
            "unlabelled": self._unlabelled, "deadletters": self._deadletters, "seq_gaps": self._seq_gaps,
            "last_seq": self._last_seq, "offset": self._learned_offset(), "committed": self._committed,
            "buffered": self._buffered(),
            "accuracy": self._preq.accuracy, "rolling_accuracy": self._preq.rolling_accuracy,
            "loss": self._preq.loss, "rolling_loss": self._preq.rolling_loss, "lag": self._lag(), "drifts": list(self._drifts), "n_drifts": self._n_drifts,
            # detector firings where the error did not rise: not detections (since this process started)
            "detections_ignored": 0 if self._monitor is None else self._monitor.n_ignored_,
            "divergence": self._divergence, "delta": getattr(self.protocol_, "delta", None),
            "models_sent": self._models_sent, "models_received": self._models_received,
            "bytes_sent": self._bytes_sent, "bytes_received": self._bytes_received,
            "reports_sent": self._reports_sent, "violations": self._violations,
            "suppressed": self._suppressed, "awaiting_sync": self._awaiting is not None and now - self._awaiting < cfg.sync_timeout,
            "syncs": self._syncs, "sync_positions": list(self._sync_positions),
            "last_sync": self._last_sync, "last_sync_step": self._last_sync_step,
            "last_sync_kind": self._last_sync_kind,
            "send_errors": self._send_errors, "bad_sync_records": self._bad_down,
            "reference_mismatches": self._reference_mismatches,
            "guard": cfg.guard, "declines": self._declines, "guard_checks": self._guard_checks,
            "guard_check_us": self._guard_us, "guard_losses": self._guard_losses,
        }
        status.update(awaiting_label=len(self._held), predicted_unlabelled=self._predicted_unlabelled,
                      labels_matched=self._labels_matched, labels_unmatched=self._labels_unmatched,
                      labels_missing=self._labels_missing, labels_replayed=self._labels_replayed,
                      last_prediction=self._last_prediction, auto_id=self._token is not None)
        status.update(checkpoints=self._checkpoints, checkpoint_errors=self._checkpoint_errors,
                      resumed_from=self._resumed_from, relearned=self._relearned, topic_resets=self._topic_resets)
        if self.averageable_:
            status.update(model_hash=model_hash(self.learner_.get_flat()), reference_hash=model_hash(self._r),
                          w0_hash=self._w0_hash, synced_hash=self._synced_hash, join_hash=self._join_hash)
        return status

    def _publish_status(self) -> None:
        status = self._snapshot()
        self._set_status(status)
        if self.metrics is not None:
            self.metrics.update_from_status(status)
        try:
            self._producer.send(self._topics["status"], encode_status(status), key=str(self.config.node).encode(),
                                partition=0)
        except Exception as exc:
            self._send_errors += 1
            log.warning("node %d: cannot publish its status: %s", self.config.node, exc)


@dataclass
class _Held:
    """A reading waiting for its label: where it was read, its features and the prediction made then."""

    offset: int
    seq: int
    row: list
    proba: np.ndarray | None = None  # in the declared class order (NaN: no prediction was possible)


def _declared_proba(P: np.ndarray, learner_classes: list, classes: list) -> np.ndarray:
    """Probabilities in the declared class order (0 for a class the learner has not met; NaN rows: no prediction)."""
    n = len(P)
    if P.ndim != 2 or P.shape[1] == 0 or not learner_classes:
        return np.full((n, len(classes)), np.nan)
    if learner_classes == classes:
        return P
    index = {c: i for i, c in enumerate(learner_classes)}
    out = np.zeros((n, len(classes)))
    for j, c in enumerate(classes):
        if c in index:
            out[:, j] = P[:, index[c]]
    return out


def _early_scores(P: np.ndarray, yi: np.ndarray) -> np.ndarray:
    """Rows ``[1, correct, proba of the true label]`` of late-labelled samples from their early predictions."""
    rows = np.arange(len(yi))
    valid = np.isfinite(P).all(axis=1)
    correct = valid & (np.where(valid[:, None], P, 0.0).argmax(axis=1) == yi)
    return np.column_stack([np.ones(len(yi)), correct, np.where(valid, P[rows, yi], np.nan)])


#: Counters a checkpoint keeps (attributes ``_<name>`` of NodeService).
_CKPT_COUNTERS = ("samples", "step_no", "since_sync", "unlabelled", "deadletters", "seq_gaps", "n_drifts", "syncs",
                  "models_sent", "models_received", "bytes_sent", "bytes_received", "reports_sent", "violations",
                  "suppressed", "send_errors", "bad_down", "predicted_unlabelled", "labels_matched",
                  "labels_unmatched", "labels_missing", "labels_replayed", "checkpoints", "checkpoint_errors",
                  "relearned", "topic_resets", "declines")


def _append(buf: np.ndarray, head: int, new: np.ndarray, order) -> np.ndarray:
    new = new if order is None else new[order]
    return np.concatenate([buf[head:], new]) if len(buf) > head else np.ascontiguousarray(new)


def _score(P: np.ndarray, learner_classes: list, classes: list, yi: np.ndarray) -> tuple:
    """``(correct, proba_of_true, valid)`` of a batch, from probabilities in the learner's class order."""
    n = len(yi)
    if P.ndim != 2 or P.shape[1] == 0 or not learner_classes:
        return np.zeros(n, dtype=bool), np.full(n, np.nan), np.zeros(n, dtype=bool)
    if learner_classes == classes:
        col = np.arange(len(classes))
    else:  # a local river learner orders labels as it met them; map them to the declared ones
        index = {c: i for i, c in enumerate(learner_classes)}
        col = np.array([index.get(c, -1) for c in classes])
    pred_col = P.argmax(axis=1)
    ours = np.full(P.shape[1], -1)
    ours[col[col >= 0]] = np.flatnonzero(col >= 0)
    correct = ours[pred_col] == yi
    c = col[yi]
    p_true = np.where(c >= 0, P[np.arange(n), np.maximum(c, 0)], 0.0)
    return correct, p_true, np.ones(n, dtype=bool)


# ---- options (CLI-like) -------------------------------------------------------------------------

def _split(text) -> list | None:
    if text is None:
        return None
    if isinstance(text, str):
        return [t.strip() for t in text.split(",") if t.strip()]
    return list(text)


def _label(text: str):
    """A class label from the command line: an int when it reads as one, else the string."""
    try:
        return int(text)
    except (TypeError, ValueError):
        return text


_NODE_OPTIONS = {"id", "node", "source", "features", "classes", "learner", "lr", "lr_decay", "hidden", "optimizer",
                 "scale",
                 "protocol", "batch_size", "seed", "window", "detector", "sync_timeout", "status_interval",
                 "commit_interval", "max_poll_records", "fetch_wait_ms", "max_pending", "label_ttl", "id_timeout",
                 "checkpoint_dir", "checkpoint_every", "guard", "guard_margin",
                 "linger", "device", "prefix", "bootstrap", "max_seconds", "source_params", "learner_params"}


def node_config_from_options(options: Mapping[str, Any]) -> NodeConfig:
    """A :class:`NodeConfig` from CLI-like options (``--batch-size`` or ``batch_size`` keys).

    ``id`` (or ``node``) is the node id, or ``"auto"`` (assigned by the sync service at start);
    ``features`` and ``classes`` may be comma-separated
    strings (class labels that read as integers become ints); ``lr``, ``lr_decay``, ``hidden`` (``"32,32"``),
    ``optimizer`` and ``scale`` go to the learner; ``detector="none"`` turns drift detection
    off; ``max_seconds`` is ignored here (see :func:`run_node`). Unknown keys are a ConfigError.

    Examples
    --------
    >>> cfg = node_config_from_options({"id": 3, "features": "a,b", "classes": "0,1", "batch-size": 5})
    >>> cfg.node, cfg.features, cfg.classes, cfg.batch_size
    (3, ('a', 'b'), (0, 1), 5)
    >>> node_config_from_options({"id": "auto", "source": "sea", "label-ttl": "3600"}).node
    'auto'
    """
    opts = {str(k).lstrip("-").replace("-", "_"): v for k, v in options.items() if v is not None}
    unknown = sorted(set(opts) - _NODE_OPTIONS)
    if unknown:
        raise ConfigError(f"unknown node option(s) {unknown}; known: {sorted(_NODE_OPTIONS)}")
    if "id" in opts and "node" in opts:
        raise ConfigError("give the node id once: id or node")
    node = opts.pop("id", opts.pop("node", None))
    if node is None:
        raise ConfigError("id: the node id is required")
    if isinstance(node, str) and node.strip().lower() == "auto":
        node = "auto"
    else:
        try:
            node = int(node)
        except (TypeError, ValueError):
            raise ConfigError(f"id must be an integer >= 0 or auto, got {node!r}") from None
    opts.pop("max_seconds", None)
    learner_params = dict(opts.pop("learner_params", {}) or {})
    for key in ("lr", "lr_decay", "optimizer", "scale"):
        if key in opts:
            learner_params[key] = opts.pop(key)
    if "hidden" in opts:
        try:
            learner_params["hidden"] = tuple(int(h) for h in _split(opts.pop("hidden")))
        except ValueError:
            raise ConfigError(f"hidden: comma-separated integers, got {options.get('hidden')!r}") from None
    if "features" in opts:
        opts["features"] = tuple(_split(opts["features"]))
    if "classes" in opts:
        classes = opts["classes"]
        opts["classes"] = tuple(_label(c) for c in _split(classes)) if isinstance(classes, str) else tuple(classes)
    if isinstance(opts.get("detector"), str) and opts["detector"].lower() == "none":
        opts["detector"] = None
    elif "detector" in options and options.get("detector") is None:
        opts["detector"] = None
    for key in ("batch_size", "seed", "window", "max_poll_records", "fetch_wait_ms", "max_pending", "checkpoint_every"):
        if key in opts and isinstance(opts[key], str):
            try:
                opts[key] = int(opts[key])
            except ValueError:
                raise ConfigError(f"{key} must be an integer, got {opts[key]!r}") from None
    if isinstance(opts.get("guard"), str):
        text = opts["guard"].strip().lower()
        try:
            opts["guard"] = None if text in ("none", "off", "") else int(text)
        except ValueError:
            raise ConfigError(f"guard: the window must be an integer >= 10 samples, got {opts['guard']!r}") from None
    for key in ("sync_timeout", "status_interval", "commit_interval", "linger", "label_ttl", "id_timeout",
                "guard_margin"):
        if key in opts and isinstance(opts[key], str):
            try:
                opts[key] = float(opts[key])
            except ValueError:
                raise ConfigError(f"{key} must be a number, got {opts[key]!r}") from None
    return NodeConfig(node=node, learner_params=learner_params, **opts)


def run_node(options: Mapping[str, Any], stop_event: threading.Event | None = None) -> dict:
    """Build a node from CLI-like ``options`` (see :func:`node_config_from_options`) and run it.

    ``options["max_seconds"]`` bounds the run. Returns the final status.
    """
    max_seconds = options.get("max_seconds", options.get("max-seconds"))
    try:
        max_seconds = None if max_seconds is None else float(max_seconds)
    except (TypeError, ValueError):
        raise ConfigError(f"max_seconds must be a number > 0, got {max_seconds!r}") from None
    return NodeService(node_config_from_options(options)).run(stop_event=stop_event, max_seconds=max_seconds)


# ---- hot-path helpers of NodeService._step ------------------------------------------------------

def _score_step(P: np.ndarray, learner, classes: list, yi: np.ndarray) -> tuple:
    """:func:`_score`, with a short path when the learner's classes are the declared ones (torch learners)."""
    learner_classes = getattr(learner, "classes_", [])
    if P.ndim == 2 and P.shape[1] == len(classes) and learner_classes == classes:
        n = len(yi)
        return P.argmax(axis=1) == yi, P[np.arange(n), yi], np.ones(n, dtype=bool)
    return _score(P, list(learner_classes), classes, yi)


def _mean_loss(loss: np.ndarray) -> float:
    """``np.nanmean(loss)`` (nan when no value is finite), without its overhead when all are finite."""
    total = float(loss.sum())
    if np.isfinite(total):
        return total / len(loss)  # the same pairwise sum nanmean takes
    return float(np.nanmean(loss)) if np.isfinite(loss).any() else float("nan")


def _live_flat(learner) -> torch.Tensor:
    """The learner's flat parameters, without a copy when it can give them (read at once, never written)."""
    try:
        return learner.get_flat(copy=False)
    except TypeError:  # a get_flat() without the copy flag
        return learner.get_flat()
