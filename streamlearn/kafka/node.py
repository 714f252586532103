"""The node service: one node of the pipeline, learning its own Kafka stream and syncing its model.

One poll loop multiplexes the node's samples topic and ``<prefix>.sync.down`` (a consumer
for each, assigned, no group join), and never blocks on the sync service:

1. records of ``<prefix>.samples.<node>`` (sample JSON or binary batches) are decoded and
   checked against the declared layout (features, classes); a record that cannot be used
   goes to ``<prefix>.deadletter`` with the reason in its headers and is counted;
2. the samples are learned test-then-train in mini-batches: predict, score (prequential
   accuracy, drift detector on the error stream), learn; a partial batch is learned once the
   stream has been idle for ``linger`` seconds. The mini-batches buffered are handed to the core
   as a run (:meth:`~streamlearn.node.NodeCore.learn_run`): a logistic regression or an MLP of
   one hidden layer on the CPU learns them in one compiled call up to the first whose node rule sends something (or a
   checkpoint is due), the same steps as one at a time (a drift detector takes the run's errors
   after it);
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
   ``w <- w - s (w - model)``; ``hello`` (a sync service started) -> register again. With a
   shared secret (``sync_key_file`` or ``STREAMLEARN_SYNC_KEY``) the node signs what it sends and
   applies only records the sync service signed and that are not replayed
   (:mod:`streamlearn.kafka.signing`); the others are counted (``unauthenticated_by_reason``).

The learning itself (steps 2 to 4: scoring, the detector, the node rule, applying syncs, the
guard, the codec's memory) is :class:`streamlearn.node.NodeCore`, which knows nothing of Kafka;
this module is its adapter: consume, decode, hand to the core, send what it gives back, commit,
checkpoint, claim an id, publish the status.

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

Predictions out (``predictions``, on by default; docs/schemas.md, "Prediction record"): every
prediction the node makes goes to ``<prefix>.predictions`` through a
:class:`~streamlearn.kafka.predictions.PredictionPublisher` (the core gives the probabilities of
each step, :meth:`NodeCore.step_predictions`; the publisher encodes and sends), a list per record,
about one record per 0.1 s. A late-labelled reading's prediction is published on arrival, not
again when it is learned. The predictions of the samples below a committed position are sent and
acknowledged before the commit, so a crash loses none of them (those after it are made again when
the samples are learned again: at least once).

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
give it several partitions; under a sharded protocol, ``shards=S``, the node's sync records go to
and come from partition ``node % S`` of ``sync.up`` and ``sync.down``, its shard's). A memory-only broker (the embedded Tansu) that restarts has lost
every topic and counts offsets from 0 again: a topic made anew (its id changed, or the broker's
end offset is below what the node has read; a high-water mark that merely lags, as Tansu's does,
is not a loss: see :class:`TopicWatch`) is read again from its start, once (``topic_resets`` in
the status); what the broker lost is lost, counted once as one sequence gap (``seq_gaps``) of
``seq_lost`` samples; what is produced after the restart is learned, each sample once.

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
import math
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
from streamlearn.kafka.layout import Layout, LayoutBoard, check_against
from streamlearn.kafka.service import Service
from streamlearn.kafka.signing import Refusals, SyncSigner, SyncVerifier, load_key, unsigned_warning, up_sender
from streamlearn.kafka.status import encode_status, model_hash
from streamlearn.kafka.topics import (
    deadletter_topic,
    predictions_topic,
    samples_topic,
    status_topic,
    sync_down_topic,
    sync_up_topic,
)
from streamlearn.kafka.wire import (
    ID_RENEW_EVERY,
    SyncMessage,
    addressed_to,
    connect,
    decode_sync,
    encode_sync,
    positive,
)
from streamlearn.node import NodeCore, Outgoing, SampleBuffer
from streamlearn.node.scoring import declared_proba, early_scores, live_flat, mean_loss, score, score_step

__all__ = ["NodeConfig", "NodeService", "node_config_from_options", "run_node", "TORCH_LEARNERS"]

log = logging.getLogger(__name__)

TORCH_LEARNERS = ("logreg", "mlp", "cnn")
_RIVER_LINEAR = ("river-logreg", "river-perceptron", "river-pa")
_ZERO_HASH = bytes(8)
# A node says at once that its records are unusable (a layout that does not fit the stream, a bad producer) when
# more than this share of what it read went to the dead-letter topic, after at least this many dead letters.
DEADLETTER_ALARM = 0.05
DEADLETTER_ALARM_MIN = 5
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
    missing
        Missing feature values (NaN in a binary batch, ``null`` in JSON): ``"impute"`` (default) with
        the mean of that feature's values this node has read so far (a row missing a feature never
        seen yet is skipped), or ``"skip"`` the row; counted in the status (``missing_imputed``,
        ``missing_skipped``). The same rule as ``simulate --missing``
        (:class:`~streamlearn.learners.preprocessing.MissingValues`).
    predictions
        Publish every test-then-train prediction to ``<prefix>.predictions``
        (:mod:`streamlearn.kafka.predictions`; docs/schemas.md, "Prediction record"). Default True.
    device
        Torch device of the learner; None: cuda when available, else cpu.
    sync_key_file
        A file holding the shared secret that signs the node's ``sync.up`` records and verifies
        ``sync.down`` (:mod:`streamlearn.kafka.signing`); None: the ``STREAMLEARN_SYNC_KEY``
        environment variable, else unsigned. Give the sync service the same key.
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
    missing: str = "impute"
    predictions: bool = True
    device: str | None = None
    sync_key_file: str | None = None
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
            from streamlearn.learners.custom import check_protocol, is_custom

            if not is_custom(self.learner):
                raise ConfigError(f"learner: one of {sorted(LEARNERS)} or package.module:factory, got {self.learner!r}")
            check_protocol(self.learner, self.protocol)  # imports the factory; a river one cannot be averaged
            from streamlearn.learners.registry import learner_family

            extra = sorted(set(self.learner_params or {}) - {"features", "n_features"})
            if learner_family(self.learner) == "river-local" and extra:
                raise ConfigError(f"learner {self.learner!r}: a river classifier takes none of {extra} "
                                  f"(set its hyperparameters in the factory)")
        parse_spec(self.protocol)
        from streamlearn.sync.spec import shard_layout

        if shard_layout(self.protocol)[1] > 1 and self.node == "auto":
            raise ConfigError(f"node 'auto': a node of a sharded sync layer ({self.protocol}) needs its id "
                              f"(--id N) to know its shard (N % shards)")
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
        from streamlearn.learners.preprocessing import check_missing_policy

        check_missing_policy(self.missing)
        load_key(self.sync_key_file)  # a short or unreadable key fails here, at the edge
        if self.checkpoint_dir is not None:
            if not isinstance(self.checkpoint_dir, str) or not self.checkpoint_dir:
                raise ConfigError(f"checkpoint_dir must be a directory path, got {self.checkpoint_dir!r}")
            from streamlearn.learners.registry import learner_family

            if learner_family(self.learner) == "river-local":  # a custom torch module checkpoints as a flat vector
                raise ConfigError(f"checkpoint_dir: learner {self.learner!r} cannot be saved without pickle; "
                                  f"checkpoints need an averageable learner ({', '.join(TORCH_LEARNERS + _RIVER_LINEAR)})")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        if not isinstance(self.predictions, bool):
            raise ConfigError(f"predictions must be true or false, got {self.predictions!r}")
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
        if not self.declares_layout:
            return  # the node takes the layout a connector announces (streamlearn.kafka.layout)
        features, classes = self.layout()
        check_layout(features, classes, self.regression)

    @property
    def regression(self) -> bool:
        """The learner has a regression loss (squared, huber): float targets, no classes."""
        from streamlearn.learners.losses import is_regression_loss

        return is_regression_loss(self.learner_params.get("loss"))

    @property
    def declares_layout(self) -> bool:
        """Whether the features and classes are given here (else a connector's announced ones are taken)."""
        return self.source is not None or self.features is not None or self.classes is not None

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
        if self.regression:
            if self.classes is not None:
                raise ConfigError(f"classes: a regression node (loss {self.learner_params.get('loss')!r}) learns "
                                  f"float targets, it takes no classes; got {list(self.classes)!r}")
            return list(features), []
        if classes is None:
            raise ConfigError("classes: declare the labels (classes=...) or a source that has them")
        return list(features), list(classes)


class NodeService(Service):
    """A node of the pipeline: consume, test-then-train, run the node rule, apply syncs, report status.

    The adapter between Kafka and a :class:`~streamlearn.node.core.NodeCore`, which does the learning:
    this class consumes and decodes (:class:`_Intake`), hands mini-batches and sync messages to the
    core, sends what it gives back (:class:`_SyncLink`), and commits, checkpoints (:class:`_Progress`)
    and publishes the status.

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

    # The core's state under the names tools and tests read (the bench polls _samples every ms).
    _samples = property(lambda self: self.core.n_samples)
    _r = property(lambda self: self.core.reference)
    _uplink = property(lambda self: self.core.uplink)
    _token = property(lambda self: self._link.token)

    # ---- setup ---------------------------------------------------------------------------------

    def _make_learner(self):
        from streamlearn.learners import LEARNERS, make_learner

        cfg = self.config
        params = dict(cfg.learner_params)
        params.setdefault("features", list(self.features_))
        from streamlearn.learners.registry import learner_family

        if learner_family(cfg.learner) == "torch":  # built-in or a custom module factory: seeded, same w0 everywhere
            if not cfg.regression:
                params.setdefault("classes", list(self.classes_))
            params.setdefault("seed", cfg.seed)
            params.setdefault("device", cfg.device)
        elif cfg.learner in _RIVER_LINEAR:
            params.setdefault("classes", list(self.classes_))
        if cfg.learner in LEARNERS:  # a built-in river model that draws random numbers (ARF) repeats its run
            params.setdefault("seed", cfg.seed)
        return make_learner(cfg.learner, **params)

    def _setup(self) -> None:
        from kafka import KafkaConsumer, KafkaProducer, TopicPartition

        cfg = self.config
        node = cfg.node
        auto = node == "auto"
        from streamlearn.sync.hierarchy import shard_of
        from streamlearn.sync.spec import shard_layout

        shards = shard_layout(cfg.protocol)[1]
        # A sharded sync layer: this node's shard is the partition of sync.up and sync.down it uses.
        self._sync_partition = 0 if auto else shard_of(node, shards)
        self.settings_, self.bootstrap_, self.prefix_ = connect(cfg.settings, cfg.bootstrap, cfg.prefix,
                                                                [] if auto else [node], stop=self._stop,
                                                                shards=shards)
        self._board = LayoutBoard(self.settings_, self.bootstrap_, self.prefix_)
        self.features_, self.classes_ = self._agreed_layout()
        if self.features_ is None:
            return  # stopped while waiting for a connector's layout
        self.core = core = NodeCore(self._make_learner(), self.classes_, cfg.protocol, node=node, seed=cfg.seed,
                                    window=cfg.window, detector=cfg.detector, guard=cfg.guard,
                                    guard_margin=cfg.guard_margin, sync_timeout=cfg.sync_timeout)
        self.learner_, self.averageable_, self.protocol_ = core.learner, core.averageable, core.protocol
        if core.runs():  # the compiled run of mini-batches, loaded now rather than in the first one
            from streamlearn.node.run_kernel import warm_up

            warm_up()
        self._w0_hash = model_hash(core.reference) if core.averageable else None
        core.layout = self._layout = hashlib.blake2b(json.dumps(
            {"learner": cfg.learner, "features": self.features_, "classes": [repr(c) for c in self.classes_],
             "d": core.d}).encode(), digest_size=8).hexdigest()
        self._synced_hash = self._join_hash = None
        self._state = "starting"
        self._t0 = time.monotonic()
        self._rate_mark, self._rate = (self._t0, 0), 0.0
        self._buf = SampleBuffer(len(self.features_))  # read, not learned yet, with the offset of its record
        self._intake = _Intake(self)
        self._link = _SyncLink(self)
        self._progress = _Progress(self)  # reads the intake's position
        self._predictions = None  # a PredictionPublisher once the node id is known (config.predictions)

        s = self.settings_
        self._topics = {
            "up": sync_up_topic(self.prefix_), "down": sync_down_topic(self.prefix_),
            "dead": deadletter_topic(self.prefix_), "status": status_topic(self.prefix_),
            "predictions": predictions_topic(self.prefix_),
        }
        self._producer = KafkaProducer(**s.producer_kwargs(self.bootstrap_, max_block_ms=BROKER_WAIT_MS))
        # sync.down has a consumer of its own: with both partitions on one consumer, a paused
        # and resumed samples partition was never fetched again (kafka-python 3.0.12 on Tansu).
        self._down = KafkaConsumer(**s.consumer_kwargs(self.bootstrap_, fetch_max_wait_ms=cfg.fetch_wait_ms))
        down_tp = self._down_tp = TopicPartition(self._topics["down"], self._sync_partition)
        # Only what the sync service says from now on concerns us; seek before claiming an id or
        # joining so the answer is seen.
        self._down.assign([down_tp])
        self._down.seek(down_tp, self._down.end_offsets([down_tp], timeout_ms=BROKER_WAIT_MS)[down_tp])
        if auto:
            node = self._link.claim_id()
            if node is None:
                return  # stopped while waiting
            self.config = cfg = replace(cfg, node=node)
            core.node = node
            connect(s, self.bootstrap_, self.prefix_, [node])
        if callable(self.metrics) and not hasattr(self.metrics, "update_from_status"):
            self.metrics = self.metrics(node)  # a factory: with an assigned id, the node label is known only now
        self._topics["samples"] = samples_topic(self.prefix_, node)
        if cfg.predictions:  # predictions out: made once the node id is known (the record key)
            from streamlearn.kafka.predictions import PredictionPublisher, producer_overrides

            # a producer of their own: gzip (without the crc32c C module), which model records do without
            self._pred_producer = KafkaProducer(**s.producer_kwargs(self.bootstrap_, max_block_ms=BROKER_WAIT_MS,
                                                                    **producer_overrides()))
            self._predictions = PredictionPublisher(self._pred_producer, self._topics["predictions"], node,
                                                    None if core.regression else self.classes_)
            if not core.regression:  # the compiled writer of prediction rows, loaded now rather than at a flush
                from streamlearn.kafka.proba_text import warm_up

                warm_up()
        self._consumer = KafkaConsumer(**s.consumer_kwargs(
            self.bootstrap_, group_id=f"{self.prefix_}.node.{node}", enable_auto_commit=False,
            auto_offset_reset="earliest", max_poll_records=cfg.max_poll_records, fetch_max_wait_ms=cfg.fetch_wait_ms))
        # Only commits, in a group of its own: how far the node had read (see the module doc).
        self._seen = KafkaConsumer(**s.consumer_kwargs(
            self.bootstrap_, group_id=f"{self.prefix_}.node.{node}.seen", enable_auto_commit=False))
        self._samples_tp = TopicPartition(self._topics["samples"], 0)
        self._consumer.assign([self._samples_tp])
        start = self._progress.open()
        log.info("node %d: reading %s from offset %d; learner %s (d=%s), protocol %s, broker %s", node,
                 self._topics["samples"], start, cfg.learner, core.d, cfg.protocol if core.averageable else "local only",
                 self.bootstrap_)
        if core.averageable:
            self._join()
        self._state = "running"
        self._publish_status()

    # ---- main loop -----------------------------------------------------------------------------

    def _loop(self, stop_event, max_seconds) -> None:
        cfg = self.config
        B = cfg.batch_size
        high_water = max(4 * B, 2000)
        buf, intake, progress = self._buf, self._intake, self._progress
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
            if len(buf) < high_water:  # back-pressure: fetch samples only while few are waiting
                # Idle, this poll is the loop's wait: short, so sync messages are not held up.
                polled = self._consumer.poll(timeout_ms=0 if len(buf) >= B else 20)
                for records in polled.values():
                    got_samples = intake.on_records(records) or got_samples
            progress.check_topic_reset()
            if progress.skip is not None and intake.consumed_next > progress.skip[0]:
                progress.drop_learned()
            budget = time.perf_counter() + 0.02  # then look at the sync topic again
            while len(buf) >= B and time.perf_counter() < budget:
                h0 = buf.head
                self._step(B, progress.batches_before_checkpoint(B, len(buf) // B))
                progress.after_step(h0)
            if 0 < len(buf) < B and not got_samples and time.monotonic() - intake.last_arrival >= cfg.linger:
                h0 = buf.head
                self._step(len(buf))
                progress.after_step(h0)
            buf.compact()
            if self._predictions is not None:  # sent per 0.1 s or max_pending predictions, not per step
                self._predictions.flush_due()
                self._predictions.forget_before(progress.learned_offset())
            now = time.monotonic()
            self._link.renew(now)
            if cfg.label_ttl is not None:
                intake.expire()
            if now >= next_commit:
                progress.commit()
                next_commit = now + cfg.commit_interval
            if now >= next_status:
                self._publish_status()
                next_status = now + cfg.status_interval

    def _step(self, n: int, batches: int = 1) -> None:
        """Test-then-train on the next ``n`` buffered samples (the core), then send what its node rule says; with
        ``batches`` > 1, up to that many mini-batches of ``n`` in one run (:meth:`NodeCore.learn_run`: one compiled
        call where the learner allows), up to the first whose node rule sends something."""
        metrics, pub, core, buf = self.metrics, self._predictions, self.core, self._buf
        t0 = time.perf_counter() if metrics is not None else 0.0
        h = buf.head
        X, yi, seqs, early = buf.take(n * batches)
        step, syncs, epoch = core.n_steps, core.syncs, core.epoch  # the model that predicts this batch
        if batches > 1 and early is None:
            done, out = core.learn_run(X, yi, seqs, n)
            buf.give_back(n * (batches - done))
            P, seqs = core.run_proba, seqs[:n * done]
            steps = step if done == 1 else np.repeat(np.arange(step, step + done), n)
        else:
            if batches > 1:  # late-labelled samples among them: one mini-batch at a time
                buf.give_back(n * (batches - 1))
                X, yi, seqs, early = X[:n], yi[:n], seqs[:n], early[:n]
            done, steps = 1, step
            core.learn_many(X, yi, seqs, early)
            P = core.step_predictions() if pub is not None else None
            out = core.node_rule()
        if metrics is not None:  # per mini-batch: a run's time shared by its mini-batches
            metrics.observe_learn((time.perf_counter() - t0) / done)
        if pub is not None:
            # late-labelled readings were published on arrival, with the prediction they are scored by
            regression = core.regression
            pub.add(seqs, None if regression else P, values=P if regression else None,
                    offsets=buf.off[h:h + n * done], step=steps, syncs=syncs, epoch=epoch,
                    skip=None if early is None else early[:, 0] > 0)
        if out is not None:
            self._link.send(out)

    def _shutdown(self) -> None:
        from kafka.errors import KafkaTimeoutError

        from streamlearn.kafka.broker import close_producer

        running = getattr(self, "_state", None) == "running"
        self._state = "stopped"
        gone = False
        try:
            if running:
                if self.averageable_ or self._link.token is not None:  # the leave also frees an assigned id
                    self._link.publish(SyncMessage("leave", node=self.config.node, step=self.core.n_steps,
                                                   token=self._link.token))
                if self._progress.store is not None:
                    self._progress.checkpoint()
                self._progress.commit(BROKER_WAIT_MS)  # sends the predictions first
                if self._predictions is not None:
                    self._predictions.flush()  # those of readings held for their labels, not committed yet
                    self._pred_producer.flush(timeout=BROKER_WAIT_MS / 1000)
                self._publish_status()
                self._producer.flush(timeout=BROKER_WAIT_MS / 1000)
        except KafkaTimeoutError:
            gone = True  # the broker does not answer: what is not delivered is counted below, in one line
        except Exception as exc:  # the broker may be gone; closing must still happen
            log.warning("node %d: unclean shutdown: %s", self.config.node, exc)
        finally:
            lost = 0
            for name in ("_producer", "_pred_producer", "_consumer", "_down", "_seen"):
                client = getattr(self, name, None)
                if client is None:
                    continue
                if name.endswith("_producer"):  # never raises: a broker that went away costs a count, not a trace
                    lost += close_producer(client, 0.5 if gone else 5)
                else:
                    client.close(timeout_ms=5_000)
            if gone or lost:
                log.warning("node %s: the broker %s did not answer at shutdown: %d records not delivered",
                            self.config.node, getattr(self, "bootstrap_", "?"), lost)
        if not running:
            return
        log.info("node %d: stopped after %d samples, %d steps (%d dead letters, %d models sent, %d received)",
                 self.config.node, self.core.n_samples, self.core.n_steps, self._intake.deadletters,
                 self._link.models_sent, self.core.models_received)

    # ---- sync ----------------------------------------------------------------------------------

    def _join(self) -> None:
        """Register with the sync service (the core's join: the reference; its codec memory starts clean)."""
        self._link.send(self.core.join())

    def _on_down(self, rec) -> None:
        node, link = self.config.node, self._link
        if self._stop.is_set():
            return  # stopping (e.g. its id went to another node): a later join answer must not undo why
        # Addressed to others: skipped on its header, before the signature check, model decode and CRC. The
        # targets are in the signed value, so a forged "not for you" can only hide a record that was forged.
        if isinstance(node, int) and not addressed_to(rec.value, node):
            link.sync_skipped += 1
            return
        if not link.authentic(rec):  # forged, replayed or not from the sync service: counted, never applied
            return
        try:
            msg = decode_sync(rec.value, expected_d=self.core.d)
        except DecodeError as exc:
            link.bad_down += 1
            log.debug("node %d: bad record on sync.down at offset %d: %s", node, rec.offset, exc)
            return
        if msg.kind == "assign":
            if msg.token == link.token and msg.node is None:  # the id was given out again: no node may share it
                log.error("node %d: %s; stopping (restart it to get a new id)", node, msg.reason)
                self.core.rejected = msg.reason
                self._stop.set()
            return
        if not msg.addressed_to(node):
            return
        link.bytes_received += len(rec.value)
        if msg.kind == "hello" and link.token is not None:
            link.claim(link.token, node)  # a (re)started sync service learns which id this node holds
        out = self.core.receive(msg)
        link.bad_down += out.bad
        for up in out.up:
            link.send(up)
        if out.model is not None and msg.kind == "send" and msg.reason == "join":
            self._join_hash = model_hash(out.model)
        if out.applied:
            if self.metrics is not None and out.waited is not None:
                self.metrics.observe_sync_wait(out.waited)
            self._synced_hash = model_hash(self.learner_.get_flat())

    # ---- status --------------------------------------------------------------------------------

    def _agreed_layout(self) -> tuple:
        """``(features, classes)``: the configured ones, checked against the layouts connectors announce; with
        none configured, the newest connector's (waiting for one). ``(None, None)``: stopped while waiting."""
        cfg = self.config
        who = f"node {cfg.node}"
        if cfg.declares_layout:
            features, classes = cfg.layout()
            check_against(Layout(who, tuple(features), None if cfg.regression else tuple(classes)),
                          self._board.recent(), mine_is_node=True)
            return features, classes
        next_log = time.monotonic()
        while not self._stopping():
            connectors = {w: lay for w, lay in self._board.recent().items() if not w.startswith("node ")}
            if connectors:
                newest = max(connectors.values(), key=lambda lay: lay.ts)
                if newest.classes is None and not cfg.regression:
                    raise ConfigError(f"classes: {newest.who} declares no classes in its schema: give --classes")
                if newest.classes is not None and cfg.regression:
                    raise ConfigError(f"a regression node learns float targets, but {newest.who} declares classes "
                                      f"{list(newest.classes)!r}")
                features, classes = list(newest.features), list(newest.classes or [])
                check_layout(features, classes, cfg.regression)
                check_against(Layout(who, newest.features, newest.classes), connectors, mine_is_node=True)
                log.info("%s: the layout of %s: features %s; classes %r", who, newest.who, ",".join(features), classes)
                return features, classes
            if time.monotonic() >= next_log:
                next_log = time.monotonic() + 10.0
                log.info("%s: waiting for a connector to announce the stream's layout on %s (or give --source, "
                         "or --features and --classes)", who, self._board.topic)
            self._stop.wait(1.0)
        return None, None

    def _publish_status(self) -> None:
        self._board.announce(self._producer, Layout(f"node {self.config.node}", tuple(self.features_),
                                                    None if self.core.regression else tuple(self.classes_)))
        status = _node_status(self)
        self._set_status(status)
        if self.metrics is not None:
            self.metrics.update_from_status(status)
        try:
            self._producer.send(self._topics["status"], encode_status(status), key=str(self.config.node).encode(),
                                partition=0)
        except Exception as exc:
            self._link.send_errors += 1
            log.warning("node %d: cannot publish its status: %s", self.config.node, exc)


def _node_status(svc: NodeService) -> dict:
    """The status message of ``svc``, now (see docs/schemas.md; the field names are a contract)."""
    now = time.monotonic()
    core, intake, link, progress, cfg = svc.core, svc._intake, svc._link, svc._progress, svc.config
    t, n = svc._rate_mark
    if now - t >= 0.2:
        svc._rate = (core.n_samples - n) / (now - t)
        svc._rate_mark = (now, core.n_samples)
    guard = core.guard
    status = {
        "role": "node", "node": cfg.node, "ts": time.time(), "state": svc._state,
        "uptime": now - svc._t0, "learner": cfg.learner, "averageable": core.averageable,
        "protocol": cfg.protocol if core.averageable else None,
        "epoch": core.epoch, "joined": core.joined, "rejected": core.rejected,
        "samples": core.n_samples, "steps": core.n_steps, "rate": svc._rate,
        "unlabelled": intake.unlabelled, "deadletters": intake.deadletters, "seq_gaps": intake.seq_gaps,
        "seq_lost": intake.seq_lost,
        "records_read": intake.records_read, "deadletter_alarm": intake.deadletter_alarm,
        "last_seq": core.last_seq, "offset": progress.learned_offset(), "committed": progress.committed,
        "buffered": len(svc._buf),
        **_scores(core), "lag": progress.lag(), "drifts": list(core.drifts),
        "n_drifts": core.n_drifts,
        # detector firings where the error did not rise: not detections (since this process started)
        "detections_ignored": 0 if core.monitor is None else core.monitor.n_ignored_,
        "divergence": core.divergence, "delta": getattr(core.protocol, "delta", None),
        "models_sent": link.models_sent, "models_received": core.models_received,
        "bytes_sent": link.bytes_sent, "bytes_received": link.bytes_received,
        "reports_sent": core.reports_sent, "violations": core.violations,
        "suppressed": core.suppressed,
        "awaiting_sync": core.awaiting is not None and now - core.awaiting < cfg.sync_timeout,
        "syncs": core.syncs, "sync_positions": list(core.sync_positions),
        "last_sync": core.last_sync, "last_sync_step": core.last_sync_step,
        "last_sync_kind": core.last_sync_kind,
        "send_errors": link.send_errors, "bad_sync_records": link.bad_down, "sync_skipped": link.sync_skipped,
        "sync_signed": link.verifier is not None, "unauthenticated": link.unauth.total,
        "unauthenticated_by_reason": dict(link.unauth.by_reason),
        "reference_mismatches": core.reference_mismatches,
        "guard": cfg.guard, "declines": core.declines, "guard_checks": 0 if guard is None else guard.checks,
        "guard_check_us": None if guard is None else guard.last_us,
        "guard_losses": None if guard is None else guard.last_losses,
    }
    # the loss guard (an averageable classifier): explosions damped, whether it stopped the learning
    lg = getattr(core, "loss_guard", None)
    status.update(lg.status() if lg is not None else
                  {"divergences": 0, "learning_stopped": False, "guard_lr": None, "last_divergence": None})
    status.update(missing_imputed=intake.missing.imputed, missing_skipped=intake.missing.skipped,
                  missing_rows=intake.missing.rows_with_missing, missing_policy=cfg.missing)
    status.update(awaiting_label=len(intake.held), predicted_unlabelled=intake.predicted_unlabelled,
                  labels_matched=intake.labels_matched, labels_unmatched=intake.labels_unmatched,
                  labels_missing=intake.labels_missing, labels_replayed=intake.labels_replayed,
                  last_prediction=intake.last_prediction, auto_id=link.token is not None)
    pub = getattr(svc, "_predictions", None)
    status.update(predictions=None if pub is None else pub.published,
                  prediction_errors=None if pub is None else pub.send_errors)
    status.update(checkpoints=progress.checkpoints, checkpoint_errors=progress.checkpoint_errors,
                  resumed_from=progress.resumed_from, relearned=progress.relearned, topic_resets=progress.topic_resets)
    if core.averageable:
        status.update(model_hash=model_hash(core.learner.get_flat()), reference_hash=model_hash(core.reference),
                      w0_hash=svc._w0_hash, synced_hash=svc._synced_hash, join_hash=svc._join_hash)
    return status


class _Intake:
    """Records of the samples topic into the node's buffer: decoded, checked against the declared layout,
    sequence gaps counted; keyed readings without a label held (and predicted now) until their label
    record comes; records that cannot be used go to the dead-letter topic (see the module doc)."""

    def __init__(self, svc: NodeService):
        cfg = svc.config
        self.svc, self.buf, self.core = svc, svc._buf, svc.core
        self.features, self.classes = svc.features_, svc.classes_
        self.class_index = {c: i for i, c in enumerate(self.classes)}
        self.regression = svc.core.regression  # float targets instead of class indices
        self.ydt = np.float64 if self.regression else np.int64
        self.names_hash = feature_names_hash(self.features)
        self.unlabelled = self.deadletters = self.seq_gaps = 0
        self.seq_lost = 0  # sequence numbers skipped by forward jumps: samples that never came (lost upstream)
        from streamlearn.learners.preprocessing import MissingValues

        self.missing = MissingValues(len(self.features), cfg.missing)  # imputes or skips in the order read
        self.records_read = 0
        self.deadletter_alarm: str | None = None  # set once the dead letters exceed DEADLETTER_ALARM of the records
        self._alarm_logged = -math.inf
        self.seen_seq: int | None = None  # last seq consumed (gaps are counted as records come)
        self.consumed_next = self.replay_until = 0  # next offset to read; below replay_until: read before this start
        self.last_arrival = time.monotonic()
        # keyed readings waiting for their label, and the offsets of those held (oldest first)
        self.held = PendingByKey(cfg.max_pending, cfg.label_ttl)
        self.held_offsets: deque = deque()
        self.held_gone: set = set()
        self.predicted_unlabelled = self.labels_matched = self.labels_unmatched = 0
        self.labels_missing = self.labels_replayed = 0
        self.last_prediction: dict | None = None

    def on_records(self, records) -> bool:
        """Decode sample and label records into the buffer; bad ones go to the dead-letter topic.

        Keyed readings without a label are held (and predicted now); a label record moves its
        reading into the buffer. True if any sample came into the buffer.
        """
        f = len(self.features)
        xs, ys, seqs, offs, keys = [], [], [], [], []  # keys: the offset a sample became learnable at
        batch_offs = []  # (offset, samples) of the batch records, in the order of xs
        json_rows, json_y, json_seq, json_off = [], [], [], []
        new_held, joined = [], []  # readings held now: (key, item); labelled now: (item, class index, offset)
        pub = getattr(self.svc, "_predictions", None)
        for rec in records:
            self.consumed_next = rec.offset + 1
            self.records_read += 1
            try:
                kind = record_kind(rec.value)
                if kind == "sample_batch":
                    X, y, seq = self._decode_batch(rec.value)
                    if pub is not None and rec.key and len(y):  # a batch has no keys of its own: the record's
                        pub.note_source(rec.offset, _text_key(rec.key), None)
                    if len(y):
                        xs.append(X)
                        ys.append(y)
                        seqs.append(seq)
                        batch_offs.append((rec.offset, len(y)))
                elif kind == "json":
                    got = self._decode_json(rec.value)
                    if got is None:  # skipped for a missing value (counted)
                        continue
                    if isinstance(got, LabelRecord):
                        self._on_label(rec, got, joined)
                        continue
                    row, yi, seq, key, ts = got
                    if pub is not None and yi is not None and (key is not None or ts is not None or rec.key):
                        pub.note_source(rec.offset, key if key is not None else _text_key(rec.key), ts)
                    if yi is not None:
                        json_rows.append(row)
                        json_y.append(yi)
                        json_seq.append(seq)
                        json_off.append(rec.offset)
                    elif key is not None:
                        item = _Held(rec.offset, seq, row, ts=ts)
                        self.held_offsets.append(item.offset)
                        self._drop_held(self.held.put(key, item))
                        new_held.append((key, item))
                    else:
                        self.unlabelled += 1
                else:
                    raise DecodeError("a model message is not a sample", field="<payload>", value=kind)
            except (DecodeError, BadRecordError) as exc:
                self.deadletter(rec, str(exc))
        if new_held:
            self._predict_held(new_held)
        if batch_offs:  # the offsets of the samples of batch records, in one call
            where, count = zip(*batch_offs)
            offs.append(np.repeat(np.asarray(where, dtype=np.int64), count))
            keys.append(offs[-1])
        if json_rows:
            # JSON and batch records may interleave: keep the offset order.
            xs.append(np.asarray(json_rows, dtype=np.float32).reshape(-1, f))
            ys.append(np.asarray(json_y, dtype=self.ydt))
            seqs.append(np.asarray(json_seq, dtype=np.int64))
            offs.append(np.asarray(json_off, dtype=np.int64))
            keys.append(offs[-1])
        plain = sum(len(y) for y in ys)  # samples of batch and JSON records: labelled on arrival
        early = [np.zeros((plain, 3))] if plain else []
        if joined:
            # A late-labelled reading keeps the offset of its reading (the position is not committed
            # past it before it is learned) and is learned in the order the labels came.
            xs.append(np.asarray([item.row for item, _, _ in joined], dtype=np.float32).reshape(-1, f))
            ys.append(np.asarray([yi for _, yi, _ in joined], dtype=self.ydt))
            seqs.append(np.asarray([item.seq for item, _, _ in joined], dtype=np.int64))
            offs.append(np.asarray([item.offset for item, _, _ in joined], dtype=np.int64))
            keys.append(np.asarray([off for _, _, off in joined], dtype=np.int64))
            if self.regression:  # [late, the prediction made on arrival, 0]: scored by that prediction
                early.append(np.column_stack([np.ones(len(joined)), [float(item.proba) for item, _, _ in joined],
                                              np.zeros(len(joined))]))
            else:
                early.append(early_scores(np.stack([item.proba for item, _, _ in joined]), ys[-1]))
            self.buf.late = True
        if not xs:
            return False
        self.buf.extend(xs, ys, seqs, offs, keys, early)
        self.last_arrival = time.monotonic()
        return True

    def _decode_batch(self, value) -> tuple:
        batch = decode_sample_batch(value, allow_missing=True)
        if batch.names_hash not in (_ZERO_HASH, self.names_hash):
            raise DecodeError(f"feature names differ from the declared {self.features!r}", field="names_hash",
                              value=batch.names_hash.hex())
        if batch.f != len(self.features):
            raise DecodeError(f"expected {len(self.features)} features", field="f", value=batch.f)
        n = batch.n
        if batch.y is None:
            self._note_seq_run(batch.first_seq, n)
            self.unlabelled += n
            return batch.X[:0], np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        if self.regression:
            y = batch.y.astype(np.float64)
            if not np.isfinite(y).all():
                raise DecodeError("a regression target must be a finite number", field="y",
                                  value=y[~np.isfinite(y)][:3].tolist())
        elif batch.y.dtype.kind != "i":
            raise DecodeError("labels must be class indices for a classifier", field="y", value=str(batch.y.dtype))
        else:
            y = batch.y.astype(np.int64)
        # one pass for both bounds: a negative index is a huge unsigned one
        if n and not self.regression and y.view(np.uint64).max() >= len(self.classes):
            raise DecodeError(f"class index out of range [0, {len(self.classes)})", field="y",
                              value=[int(y.min()), int(y.max())])
        self._note_seq_run(batch.first_seq, n)
        X, keep = self.missing.apply(batch.X.astype(np.float32, copy=False))
        if len(X) < n:  # rows with a missing value skipped
            return X, y[keep], batch.seqs[keep]
        return X, y, batch.seqs

    def _decode_json(self, value):
        """A reading as ``(row, class index or None, seq, key, ts)``, or a label record with a class index as ``y``."""
        record = decode_node_record(value)
        if isinstance(record, LabelRecord):
            return replace(record, y=self._class_of(record.y))
        try:
            row = [record.x[name] for name in self.features]
        except KeyError as exc:
            raise DecodeError("feature missing", field=f"x[{exc.args[0]!r}]") from None
        yi = None if record.y is None else self._class_of(record.y)
        self._note_seq_run(record.seq, 1)
        if None in row:  # a missing value (null): imputed, or the reading skipped (None)
            X, keep = self.missing.apply(np.array([row], dtype=np.float64))
            if not keep[0]:
                return None
            row = X[0].tolist()
        else:
            self.missing.apply(np.array([row], dtype=np.float64))  # its values count in the running means
        return row, yi, record.seq, record.key, record.ts

    def _class_of(self, label) -> int | float:
        """A label as the class index it names, or (regression) as a finite float target."""
        if self.regression:
            if isinstance(label, bool) or not isinstance(label, (int, float)) or not math.isfinite(label):
                raise DecodeError("a regression target must be a finite number", field="y", value=label)
            return float(label)
        try:
            return self.class_index[label]
        except (KeyError, TypeError):
            raise DecodeError(f"label is not one of the classes {self.classes!r}", field="y", value=label) from None

    def _note_seq_run(self, first: int, n: int) -> None:
        """Count jumps in ``seq`` as readings are consumed (held ones too, so late labels make none): a run
        ``first, first + 1, ..., first + n - 1`` (a batch record has no gap inside)."""
        if n:
            if self.seen_seq is not None:
                self.seq_gaps += first != self.seen_seq + 1
                self.seq_lost += max(0, first - self.seen_seq - 1)
            self.seen_seq = first + n - 1

    # ---- late labels ---------------------------------------------------------------------------

    def _drop_held(self, dropped: list) -> None:
        """Held readings evicted or expired: their label never came."""
        for key, item in dropped:
            self.held_gone.add(item.offset)
            log.debug("node %d: reading %r (seq %d) dropped before its label came", self.svc.config.node, key,
                      item.seq)
        self.labels_missing += len(dropped)

    def expire(self) -> None:
        """Drop held readings past their time to live."""
        self._drop_held(self.held.expire())

    def oldest_held(self) -> int | None:
        """Offset of the oldest reading still held, or None."""
        q = self.held_offsets
        while q and q[0] in self.held_gone:
            self.held_gone.discard(q.popleft())
        return q[0] if q else None

    def _predict_held(self, held: list) -> None:
        """Predict readings that wait for their label now, in one batch; the score comes with the label."""
        X = np.asarray([item.row for _, item in held], dtype=np.float32).reshape(len(held), -1)
        reg = self.regression
        P = self.core.predict_values(X) if reg else self.core.predict_proba(X)
        for (_, item), p in zip(held, P):
            item.proba = p
        self.predicted_unlabelled += len(held)
        pub, core = self.svc._predictions, self.core
        if pub is not None:  # the prediction made on arrival is the one published (and scored when the label comes)
            pub.add(np.asarray([item.seq for _, item in held], dtype=np.int64), None if reg else P,
                    values=P if reg else None, keys=[key for key, _ in held], ts=[item.ts for _, item in held],
                    step=core.n_steps, syncs=core.syncs, epoch=core.epoch, late=True)
        (key, item), p = held[-1], P[-1]
        if reg:
            self.last_prediction = {"key": key, "seq": item.seq, "y_pred": float(p) if np.isfinite(p) else None}
            return
        predicted = self.classes[int(p.argmax())] if np.isfinite(p).all() else None
        self.last_prediction = {"key": key, "seq": item.seq, "y_pred": predicted}
        if log.isEnabledFor(logging.DEBUG):
            for (key, item), p in zip(held, P):
                log.debug("node %d: reading %r (seq %d) predicted %r, held for its label", self.svc.config.node, key,
                          item.seq, self.classes[int(p.argmax())] if np.isfinite(p).all() else None)

    def _on_label(self, rec, label: LabelRecord, joined: list) -> None:
        item = self.held.pop(label.key)
        if item is not None:
            self.held_gone.add(item.offset)
            self.labels_matched += 1
            joined.append((item, label.y, rec.offset))
        elif rec.offset < self.replay_until:
            self.labels_replayed += 1  # read before this start: it was used or dead-lettered then
        else:
            self.labels_unmatched += 1
            self.deadletter(rec, f"label matches no reading waiting for it (key {label.key!r}: unknown, labelled "
                                 "already, or dropped after max_pending / label_ttl)")

    def _alarm(self, reason: str) -> None:
        """Say at once (then at most once a minute) that a large share of the records is unusable, and why."""
        self.deadletter_alarm = (f"{self.deadletters} of {self.records_read} records dead-lettered; the last: "
                                 f"{reason[:300]}")
        now = time.monotonic()
        if now - self._alarm_logged >= 60.0:
            self._alarm_logged = now
            log.warning("node %s: %s (declared features %s, classes %r)", self.svc.config.node, self.deadletter_alarm,
                        ",".join(self.features), list(self.classes))

    def deadletter(self, rec, reason: str) -> None:
        svc = self.svc
        self.deadletters += 1
        if self.deadletters >= DEADLETTER_ALARM_MIN and self.deadletters > DEADLETTER_ALARM * self.records_read:
            self._alarm(reason)
        log.debug("node %d: record at offset %d to the dead-letter topic: %s", svc.config.node, rec.offset, reason)
        try:
            headers = deadletter_headers(reason, topic=rec.topic, partition=rec.partition, offset=rec.offset)
            svc._producer.send(svc._topics["dead"], rec.value, key=rec.key, headers=headers, partition=0)
        except Exception as exc:  # KafkaError, buffer full: counted, not fatal
            svc._link.send_errors += 1
            log.warning("node %d: cannot forward a bad record to the dead-letter topic: %s", svc.config.node, exc)


class _SyncLink:
    """The node's side of ``sync.up``: the core's messages sent (errors counted and logged, never raised),
    and the claim of a node id (``node="auto"``) and its renewal."""

    def __init__(self, svc: NodeService):
        self.svc = svc
        self.token: str | None = None  # the claim token of an id the sync service assigned
        self.next_renew = 0.0
        self.models_sent = self.bytes_sent = self.bytes_received = 0
        self.send_errors = self.bad_down = 0
        self.sync_skipped = 0  # sync.down records addressed to other nodes, skipped on their header
        # Signed sync records (streamlearn.kafka.signing): without a key, unsigned as before, said once here.
        key = load_key(svc.config.sync_key_file)
        self.signer = None if key is None else SyncSigner(key, "up")
        self.verifier = None if key is None else SyncVerifier(key, "down")
        self.unauth = Refusals()
        if key is None:
            log.warning(unsigned_warning(f"node {svc.config.node}"))

    def sign(self, msg: SyncMessage, value: bytes, key: bytes | None) -> list | None:
        """The signature headers of a sync.up record (None without a key): signed as the node the message names."""
        if self.signer is None:
            return None
        return self.signer.sign(value, key=key, sender=up_sender(msg.node, msg.token) or str(self.svc.config.node))

    def authentic(self, rec) -> bool:
        """Whether a sync.down record may be used: signed by the sync service, not replayed (always, without a
        key). A refused one is counted and never processed (every node reads every sync.down record, so it is
        not dead-lettered by each of them: it stays on sync.down)."""
        if self.verifier is None:
            return True
        verdict = self.verifier.verify(rec.headers, rec.key, rec.value)
        if verdict.ok:
            return True
        if self.unauth.note(verdict.reason):  # at once, then at most every few seconds
            log.warning("node %s: refused a record on sync.down at offset %d (%s): %s; %d refused so far",
                        self.svc.config.node, rec.offset, verdict.reason, verdict.detail, self.unauth.total)
        return False

    def send(self, out: Outgoing) -> bool:
        """Send a message the core built; whether it went."""
        if out.error is not None:
            self.send_errors += 1
            log.warning("node %d: cannot send %s: %s", self.svc.config.node, out.kind, out.error)
            return False
        went = self.publish(SyncMessage(out.kind, **out.fields))
        if went and out.on_sent is not None:
            out.on_sent()
        return went

    def publish(self, msg: SyncMessage) -> bool:
        """Send ``msg`` on sync.up; whether it went (errors are counted and logged, never raised)."""
        node = self.svc.config.node
        try:
            data = encode_sync(msg)
        except EncodeError as exc:  # e.g. a model that went NaN: say so, keep learning
            self.send_errors += 1
            log.warning("node %d: cannot send %s: %s", node, msg.kind, exc)
            return False
        try:
            key = str(node).encode()
            self.svc._producer.send(self.svc._topics["up"], data, key=key, partition=self.svc._sync_partition,
                                    headers=self.sign(msg, data, key))
        except Exception as exc:
            self.send_errors += 1
            log.warning("node %d: cannot send %s to the sync service: %s", node, msg.kind, exc)
            return False
        self.bytes_sent += len(data)
        self.models_sent += msg.carries_model
        return True

    def claim_id(self) -> int | None:
        """Ask the sync service for a node id until it answers; None when stopped meanwhile."""
        svc = self.svc
        timeout = svc.config.id_timeout
        token = secrets.token_hex(8)
        t0 = time.monotonic()
        next_claim = next_log = t0
        refused = None
        while not svc._stopping():
            now = time.monotonic()
            if now - t0 > timeout:
                raise StreamlearnError(f"no node id from the sync service within {timeout:g} s: is `streamlearn sync` "
                                       f"running (prefix {svc.prefix_!r}, broker {svc.bootstrap_})?")
            if now >= next_log:
                log.info("node: waiting for the sync service to assign a node id (%.0f of %g s)", now - t0, timeout)
                next_log = now + 5.0
            if now >= next_claim:
                self.claim(token)
                next_claim = now + _CLAIM_RETRY
            for records in svc._down.poll(timeout_ms=100).values():
                for rec in records:
                    if not self.authentic(rec):
                        continue
                    try:
                        msg = decode_sync(rec.value)
                    except DecodeError:
                        continue
                    if msg.kind == "hello":
                        next_claim = 0.0  # a sync service (re)started: ask it now
                    elif msg.kind == "assign" and msg.token == token:
                        if msg.node is not None:
                            self.token = token
                            log.info("node %d: id assigned by the sync service (%s)", msg.node, msg.epoch)
                            return msg.node
                        if msg.reason != refused:
                            refused = msg.reason
                            log.warning("node: no node id yet: %s (asking again)", msg.reason)
        return None

    def claim(self, token: str, node: int | None = None) -> None:
        """Ask for a node id (``node`` None) or renew the hold on ``node``."""
        try:
            msg = SyncMessage("claim", node=node, token=token)
            data, key = encode_sync(msg), None if node is None else str(node).encode()
            self.svc._producer.send(self.svc._topics["up"], data, key=key, partition=self.svc._sync_partition,
                                    headers=self.sign(msg, data, key))
        except Exception as exc:  # KafkaError, buffer full: asked again later
            self.send_errors += 1
            log.warning("node %s: cannot send its id claim: %s", "?" if node is None else node, exc)

    def renew(self, now: float) -> None:
        """Renew an assigned id when due."""
        if self.token is not None and now >= self.next_renew:
            self.claim(self.token, self.svc.config.node)
            self.next_renew = now + ID_RENEW_EVERY


def _topic_id(consumer, topic: str):
    """The id the broker gave ``topic`` (Kafka >= 2.8, Tansu), from ``consumer``'s metadata; None if unknown."""
    try:
        tid = consumer._client.cluster.topic_id(topic)  # kafka-python keeps it, with no public accessor
    except AttributeError:
        return None
    return None if tid is None or int(tid) == 0 else tid


class TopicWatch:
    """Tells when the records a consumer has read past are gone from the broker: the topic was made anew
    (a memory-only broker restarted, or the topic was deleted and created) and counts offsets from 0 again.

    The rule, and why. A high-water mark below the position is no evidence by itself: Tansu reports
    one that lags the records it has already served (18,421 while offsets up to 18,515 were fetched),
    and reading the topic again on it learned the same samples again and again (44 resets, 111,934
    samples learned of 49,867 produced). So it is a question put to the broker, at most every
    ``ASK_EVERY`` s while the mark stays below the position: its end offset now (ListOffsets). A broker
    that served offset ``p - 1`` and still holds it answers at least ``p``: lag, no loss. One that
    answers less has lost what was read, unless it gives topic ids (Kafka >= 2.8, Tansu: an id per
    topic, new when the topic is made anew) and the topic's id, refreshed then, is still the one the
    consumer read from: then that end offset lagged too. The id alone decides nothing: the consumer's
    metadata shows a new one seconds late, and after a restart it has been seen to change twice.
    A new topic that grew past the position before the consumer fetched again is not noticed: what it
    skipped shows as one sequence gap, counted, never learned twice.

    ``lost()`` is True once per loss, and only when the consumer had read something.
    """

    ASK_EVERY = 0.2

    def __init__(self, consumer, tp):
        self.consumer, self.tp = consumer, tp
        self.topic_id = None  # the incarnation read from
        self.next_ask = 0.0
        self.lagged = 0  # marks below the position that the broker showed to be lag, not loss

    def lost(self) -> bool:
        c, tp = self.consumer, self.tp
        if self.topic_id is None:
            self.topic_id = _topic_id(c, tp.topic)
        hw = c.highwater(tp)
        if hw is None:
            return False
        position = c.position(tp, timeout_ms=_POSITION_WAIT_MS)
        now = time.monotonic()
        if not position or hw >= position or now < self.next_ask:
            return False
        self.next_ask = now + self.ASK_EVERY
        from kafka.errors import KafkaError

        try:
            end = c.end_offsets([tp], timeout_ms=_POSITION_WAIT_MS)[tp]
            if end < position and self.topic_id is not None:
                c.topics()  # fresh metadata (blocking; the broker has just answered): the topic's id now
        except KafkaError:  # no answer (the broker is down): ask again later
            return False
        tid = _topic_id(c, tp.topic)
        if end >= position or (tid is not None and tid == self.topic_id):
            self.lagged += 1
            return False
        self.topic_id = tid  # the new incarnation (None while the metadata does not show it: taken next time)
        return True


class _Progress:
    """How far the node got in its topic: the start position, commits, checkpoints, restarts and broker
    data loss (see "Checkpoints" and "Broker restart" in the module doc)."""

    def __init__(self, svc: NodeService):
        self.svc, self.core, self.buf, self.intake = svc, svc.core, svc._buf, svc._intake
        self.store = None
        self.ckpt_at = 0  # samples learned at the last checkpoint
        self.checkpoints = self.checkpoint_errors = self.relearned = self.topic_resets = 0
        self.relearn_until = 0  # samples of offsets below this were learned before a crash: counted as relearned
        self.skip: tuple | None = None  # (offset, seq): samples of that record up to seq are in the restored model
        self.resumed_from: int | None = None
        self.committed = self.committed_seen = 0

    def open(self) -> int:
        """Restore the newest checkpoint (when kept), seek the samples topic to where to read from; that offset."""
        svc, cfg, intake = self.svc, self.svc.config, self.intake
        committed = self.committed_offset(svc._consumer)
        start = committed if committed is not None else self.first_offset()
        if cfg.checkpoint_dir is not None:
            from streamlearn.kafka.checkpoint import CheckpointStore

            self.store = CheckpointStore(os.path.join(cfg.checkpoint_dir, f"node-{cfg.node}"), "node")
            position = self.restore()
            if position is None:  # no checkpoint yet: a fresh model, which has learned nothing of the topic
                position = self.first_offset()
            if committed is not None and committed > position:
                self.relearn_until = committed  # the model's own position, even when the group's is further
            start = position
        svc._consumer.seek(svc._samples_tp, start)
        self.committed = intake.consumed_next = start
        intake.replay_until = max(start, self.committed_offset(svc._seen) or 0)
        self.committed_seen = intake.replay_until
        return start

    def committed_offset(self, consumer) -> int | None:
        """The offset ``consumer``'s group committed for the samples partition (None: none yet)."""
        from kafka.errors import KafkaTimeoutError

        svc = self.svc
        try:
            return consumer.committed(svc._samples_tp, timeout_ms=BROKER_WAIT_MS)
        except KafkaTimeoutError:
            raise StreamlearnError(f"node {svc.config.node}: the broker {svc.bootstrap_} did not give the committed "
                                   f"offset of {svc._samples_tp.topic} within {BROKER_WAIT_MS / 1000:g} s") from None

    def first_offset(self) -> int:
        tp = self.svc._samples_tp
        return self.svc._consumer.beginning_offsets([tp], timeout_ms=BROKER_WAIT_MS)[tp]

    def _counters(self):
        """``(name, component, attribute)`` of every counter a checkpoint keeps."""
        homes = {"core": self.core, "intake": self.intake, "link": self.svc._link, "progress": self}
        return [(name, homes[home], attr) for name, (home, attr) in _CKPT_COUNTERS.items()]

    def checkpoint(self) -> None:
        """Save model, optimizer, reference, evaluator, counters and position together (atomically)."""
        from streamlearn.kafka.checkpoint import CheckpointError, learner_state, prequential_state

        core, cfg = self.core, self.svc.config
        self.ckpt_at = core.n_samples
        position = self.commit_offset()
        skip = self.buf.learned_of_record(position)  # a batch record cut by a mini-batch: some of it learned
        arrays, learner_meta = learner_state(core.learner)
        preq_arrays, preq_meta = prequential_state(core.preq)
        arrays.update(preq_arrays)
        arrays["reference"] = core.reference.detach().cpu().float()
        self.checkpoints += 1
        meta = {"node": cfg.node, "layout": self.svc._layout, "learner_name": cfg.learner,
                "samples": core.n_samples, "position": position, "skip_seq": skip, "last_seq": core.last_seq,
                "learner": learner_meta, "preq": preq_meta, "drifts": list(core.drifts),
                "sync_positions": list(core.sync_positions),
                "counters": {name: getattr(obj, attr) for name, obj, attr in self._counters()}}
        # what `streamlearn export` rebuilds the model from (layout, hyperparameters) and reports as its provenance
        from streamlearn.model_file import describe_for_checkpoint

        meta.update(model=describe_for_checkpoint(core.learner), protocol=cfg.protocol, epoch=core.epoch)
        # the incarnation of the topic the position is in: a restart after the broker lost it reads it anew
        tid = _topic_id(self.svc._consumer, self.svc._samples_tp.topic)
        meta["topic_id"] = None if tid is None else str(tid)
        try:
            self.store.save(arrays, meta)
        except (OSError, CheckpointError) as exc:
            self.checkpoints -= 1
            self.checkpoint_errors += 1
            log.error("node %d: cannot write a checkpoint to %s: %s", cfg.node, self.store.directory, exc)

    def restore(self) -> int | None:
        """Load the newest checkpoint (model, optimizer, reference, evaluator, counters); its position, or None."""
        from streamlearn.kafka.checkpoint import restore_learner_state, restore_prequential_state

        core, node = self.core, self.svc.config.node
        ck = self.store.latest()
        if ck is None:
            return None
        meta = ck.meta
        if meta.get("layout") != self.svc._layout:
            raise ConfigError(f"{ck.path} is a checkpoint of another model (learner {meta.get('learner_name')!r}, "
                              f"other features or classes): remove it or give another --checkpoint-dir")
        restore_learner_state(core.learner, ck.arrays, meta["learner"])
        core.reference = torch.from_numpy(np.array(ck.arrays["reference"], dtype=np.float32)).to(core.reference.device)
        if not restore_prequential_state(core.preq, ck.arrays, meta["preq"]):
            log.warning("node %d: the checkpoint's accuracy window differs from --window; accuracy starts afresh", node)
        counters = dict(meta.get("counters") or {})
        for name, obj, attr in self._counters():
            if name in counters:
                setattr(obj, attr, int(counters[name]))
        core.last_seq = meta.get("last_seq")
        core.drifts.extend(meta.get("drifts") or [])
        core.sync_positions.extend(meta.get("sync_positions") or [])
        self.ckpt_topic_id = meta.get("topic_id")
        if meta.get("skip_seq") is not None:
            self.skip = (int(meta["position"]), int(meta["skip_seq"]))
        self.resumed_from, self.ckpt_at = ck.seq, core.n_samples
        log.info("node %d: resumed from %s: %d samples learned, reading from offset %d", node, ck.path,
                 core.n_samples, meta["position"])
        return int(meta["position"])

    def drop_learned(self) -> None:
        """After a restore: drop the samples of the checkpoint's first record that the model learned already."""
        off, seq = self.skip
        self.skip = None
        self.buf.drop(off, seq)

    def after_step(self, h0: int) -> None:
        """Count the samples of the step (from buffer index ``h0``) the node had learned before a crash;
        write a checkpoint when one is due."""
        if self.relearn_until:
            self.relearned += int(np.count_nonzero(self.buf.off[h0:self.buf.head] < self.relearn_until))
            if self.learned_offset() >= self.relearn_until:
                self.relearn_until = 0
        if self.store is not None and self.core.n_samples - self.ckpt_at >= self.svc.config.checkpoint_every:
            self.checkpoint()

    def batches_before_checkpoint(self, B: int, batches: int) -> int:
        """Of ``batches`` mini-batches of ``B``, how many a run may learn before a checkpoint is due (the
        checkpoint is written after the mini-batch that makes ``checkpoint_every`` samples, as per batch)."""
        if self.store is None:
            return batches
        left = self.svc.config.checkpoint_every - (self.core.n_samples - self.ckpt_at)
        return max(1, min(batches, -(-left // B)))

    def check_topic_reset(self) -> None:
        """A topic made anew (see :class:`TopicWatch`): the broker lost its data (a memory-only broker restarted)
        and counts offsets from 0 again; everything in it now is new, so read it from its start. Counted in
        ``topic_resets`` for the samples topic (sync.down is only logged): what the loss cost shows once, as a
        sequence gap of the samples that never came (``seq_gaps``, ``seq_lost``), none learned twice."""
        svc = self.svc
        if not hasattr(self, "_watches"):
            self._watches = [TopicWatch(svc._consumer, svc._samples_tp), TopicWatch(svc._down, svc._down_tp)]
            if getattr(self, "ckpt_topic_id", None):  # the position restored is in that topic's incarnation
                import uuid

                self._watches[0].topic_id = uuid.UUID(self.ckpt_topic_id)
        for watch in self._watches:
            consumer, tp = watch.consumer, watch.tp
            if not watch.lost():
                continue
            log.warning("node %d: %s was made anew (the broker lost its data); reading it from its start",
                        svc.config.node, tp.topic)
            consumer.seek(tp, 0)
            if consumer is svc._consumer:  # what is still buffered came before anything in the new topic
                self.topic_resets += 1
                self.buf.off[self.buf.head:] = 0
                self.committed = self.committed_seen = self.intake.consumed_next = self.intake.replay_until = 0
                self.relearn_until, self.skip = 0, None

    def learned_offset(self) -> int:
        """First offset not processed: of a buffered sample not learned yet (held readings count as processed)."""
        return self.buf.learned_offset(self.intake.consumed_next)

    def commit_offset(self) -> int:
        """What may be committed: not past a sample not learned yet, nor past a reading still held."""
        offset, held = self.learned_offset(), self.intake.oldest_held()
        return offset if held is None else min(offset, held)

    def commit(self, wait_ms: int = COMMIT_WAIT_MS) -> None:
        """Commit what was learned; waits at most ``wait_ms`` per broker call (short in the learning loop,
        so a broker outage slows learning by at most that much per commit interval)."""
        from kafka.structs import OffsetAndMetadata

        svc, intake = self.svc, self.intake
        offset = self.commit_offset()
        # how far it read matters to a restart only when label records came
        labels = intake.labels_matched + intake.labels_unmatched + intake.labels_replayed
        seen = intake.consumed_next if labels else 0
        if offset <= self.committed and seen <= self.committed_seen:
            return
        try:
            if intake.deadletters:
                svc._producer.flush(timeout=wait_ms / 1000)  # dead letters stored before their position goes
            if svc._predictions is not None and offset > self.committed:
                # the predictions of what was learned are stored before its position goes: a crash after the
                # commit loses none (a flush that times out leaves the position where it was)
                svc._predictions.flush()
                svc._pred_producer.flush(timeout=wait_ms / 1000)
            if seen > self.committed_seen:
                svc._seen.commit({svc._samples_tp: OffsetAndMetadata(seen, "", -1)}, timeout_ms=wait_ms)
                self.committed_seen = seen
            if offset > self.committed:
                svc._consumer.commit({svc._samples_tp: OffsetAndMetadata(offset, "", -1)}, timeout_ms=wait_ms)
                self.committed = offset
        except Exception as exc:  # coordinator unavailable and the like: next time
            log.warning("node %d: cannot commit offset %d: %s", svc.config.node, offset, exc)

    def lag(self) -> int | None:
        """Records in the node's topic not learned yet (None before the first fetch)."""
        svc = self.svc
        hw = svc._consumer.highwater(svc._samples_tp) if getattr(svc, "_consumer", None) is not None else None
        return None if hw is None else max(0, hw - self.learned_offset())


def _text_key(key) -> str | None:
    """A Kafka record key as text (predictions out), or None."""
    return None if not key else bytes(key).decode("utf-8", errors="replace")


@dataclass
class _Held:
    """A reading waiting for its label: where it was read, its features and the prediction made then."""

    offset: int
    seq: int
    row: list
    proba: np.ndarray | None = None  # in the declared class order (NaN: no prediction was possible)
    ts: float | None = None  # event time of the reading (predictions out)


#: Counters a checkpoint keeps: name in the checkpoint -> (component, attribute) (the names are its format).
_CKPT_COUNTERS = {
    "samples": ("core", "n_samples"), "step_no": ("core", "n_steps"), "since_sync": ("core", "since_sync"),
    "unlabelled": ("intake", "unlabelled"), "deadletters": ("intake", "deadletters"),
    "seq_gaps": ("intake", "seq_gaps"), "seq_lost": ("intake", "seq_lost"), "n_drifts": ("core", "n_drifts"), "syncs": ("core", "syncs"),
    "models_sent": ("link", "models_sent"), "models_received": ("core", "models_received"),
    "bytes_sent": ("link", "bytes_sent"), "bytes_received": ("link", "bytes_received"),
    "reports_sent": ("core", "reports_sent"), "violations": ("core", "violations"),
    "suppressed": ("core", "suppressed"), "send_errors": ("link", "send_errors"), "bad_down": ("link", "bad_down"),
    "predicted_unlabelled": ("intake", "predicted_unlabelled"), "labels_matched": ("intake", "labels_matched"),
    "labels_unmatched": ("intake", "labels_unmatched"), "labels_missing": ("intake", "labels_missing"),
    "labels_replayed": ("intake", "labels_replayed"), "checkpoints": ("progress", "checkpoints"),
    "checkpoint_errors": ("progress", "checkpoint_errors"), "relearned": ("progress", "relearned"),
    "topic_resets": ("progress", "topic_resets"), "declines": ("core", "declines"),
}

# The hot-path scoring helpers live in streamlearn.node.scoring; their old names here are kept for callers.
_score, _score_step, _declared_proba, _early_scores = score, score_step, declared_proba, early_scores
_mean_loss, _live_flat = mean_loss, live_flat


# ---- options (CLI-like) -------------------------------------------------------------------------

def _split(text) -> list | None:
    if text is None:
        return None
    if isinstance(text, str):
        return [t.strip() for t in text.split(",") if t.strip()]
    return list(text)


def _scores(core) -> dict:
    """The prequential scores of the status: accuracy and log loss, or a regression node's MAE and RMSE."""
    preq = core.preq
    if core.regression:
        return {"task": "regression", "accuracy": None, "rolling_accuracy": None, "mae": preq.mae, "rmse": preq.rmse,
                "rolling_mae": preq.rolling_mae, "rolling_rmse": preq.rolling_rmse, "loss": None,
                "rolling_loss": None}
    return {"accuracy": preq.accuracy, "rolling_accuracy": preq.rolling_accuracy, "loss": preq.loss,
            "rolling_loss": preq.rolling_loss}


def check_layout(features, classes, regression: bool = False) -> None:
    """ConfigError unless ``features`` are distinct names and ``classes`` at least 2 distinct labels (none for
    a regression node)."""
    if not features or len(set(features)) != len(features) or not all(isinstance(f, str) and f for f in features):
        raise ConfigError(f"features must be distinct non-empty names, got {features!r}")
    if regression:
        return
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise ConfigError(f"classes must be at least 2 distinct labels, got {classes!r}")


def _label(text: str):
    """A class label from the command line: an int when it reads as one, else the string."""
    try:
        return int(text)
    except (TypeError, ValueError):
        return text


_NODE_OPTIONS = {"id", "node", "source", "features", "classes", "learner", "lr", "lr_decay", "hidden", "optimizer",
                 "scale", "loss",
                 "protocol", "batch_size", "seed", "window", "detector", "sync_timeout", "status_interval",
                 "commit_interval", "max_poll_records", "fetch_wait_ms", "max_pending", "label_ttl", "id_timeout",
                 "checkpoint_dir", "checkpoint_every", "guard", "guard_margin", "predictions", "sync_key_file",
                 "linger", "device", "prefix", "bootstrap", "max_seconds", "source_params", "learner_params",
                 "missing"}


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
    for key in ("lr", "lr_decay", "optimizer", "scale", "loss"):
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
