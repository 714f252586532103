"""Publish every node's stream to Kafka at a set rate, with scheduled and live drift and their ground truth.

:class:`Producer` (``streamlearn produce``) reads the node streams of
:func:`streamlearn.streams.node_streams` block by block (numpy, ``BLOCK`` rows
at a time, never one generator step per record), and sends node k's samples to
``<prefix>.samples.<k>``: one JSON reading per record, or binary batches of
``batch`` readings. A token bucket per node keeps ``rate`` samples/s (0: as
fast as possible). When a node's stream reaches the position of a drift, the
ground truth goes to ``<prefix>.drift`` (a :class:`~streamlearn.kafka.codecs.DriftEvent`
with ``seq`` = that position and ``params.live`` false).

Live drift: the producer reads ``<prefix>.control`` (from its end at start,
never blocking) and applies each ``inject_drift`` command (see
:mod:`streamlearn.kafka.control`) to the node's stream from its current
position P, the first sample not yet sent. The drift is built exactly as
:func:`streamlearn.streams.inject` would build ``KIND@P`` on the node's stream
(seed in the event's ``params.seed``) and applied to the remaining blocks, so
from P on the node sends what ``inject(stream, spec@P, node, seed)`` replays.
Per-sample drifts (label permutation, feature shift/scale/rotation,
incremental, noise) apply at once. Concept switches (sudden, gradual, recurring)
need the alternate concept's samples aligned with the stream, so its generator
is first advanced to P: the node pauses meanwhile (the others go on; the
catch-up runs in slices of a few milliseconds), about a second per 250 000
samples of SEA. ``gradual`` is centred at P + width, so that its transition
starts at P. The live event carries ``params.live = true``, ``seed`` and the
command's id, and is published when the node's stream reaches it (at once,
except for ``gradual``).

Delivery: records go out in order (one request in flight per connection, see
:meth:`~streamlearn.kafka.config.KafkaSettings.producer_kwargs`). A record the broker has not
acknowledged within ``delivery_timeout`` seconds fails and is counted at once (``errors``,
``failed_samples``, ``streamlearn_producer_errors_total``); the producer goes on with the next
ones. While records wait for an acknowledgement for more than ``UNREACHABLE_SECONDS`` the broker
counts as unreachable: a warning, the progress line and
``streamlearn_producer_broker_unreachable`` say so, with the records awaiting acknowledgement
(``streamlearn_producer_unacknowledged_records``). Nothing accepted goes silently: at exit every
record not acknowledged is counted as not delivered, and :meth:`Producer.run` raises
:class:`ProduceError` with the counts.

Binary batches carry labels as class indices into :meth:`Producer.schema`'s
``classes`` (the stream's label set, in order), or float32 targets for a
stream without classes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import threading
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from streamlearn.errors import BadRecordError, ConfigError, StreamlearnError
from streamlearn.kafka import codecs
from streamlearn.kafka.config import KafkaSettings, validate_topic_prefix
from streamlearn.kafka.control import LIVE_DRIFT_COMMAND, LiveDrift, parse_drift_command
from streamlearn.kafka.service import StopSignals
from streamlearn.kafka.topics import control_topic, drift_topic, ensure_topics, samples_topic
from streamlearn.streams.base import BLOCK, class_index
from streamlearn.streams.drift_spec import DriftSpec, parse_drift
from streamlearn.streams.injectors import ConceptSwitch, inject
from streamlearn.streams.nodes import node_streams, parse_schedule, parse_split

__all__ = ["ProducerConfig", "Producer", "ProduceStats", "ProduceError", "FORMATS"]

log = logging.getLogger(__name__)

FORMATS = ("json", "binary")
MAX_BATCH = 100_000
BURST_SECONDS = 0.1  # a node's token bucket holds at most this much of its rate (or one batch)
CONTROL_POLL_SECONDS = 0.05  # how often the control topic is polled (without blocking)
CATCHUP_SLICE_SECONDS = 0.02  # work on a concept switch's catch-up per loop turn
MAX_IDLE_SECONDS = 0.05  # longest sleep, so stop requests and commands are seen quickly
PROGRESS_SECONDS = 1.0
UNREACHABLE_SECONDS = 2.0  # records awaiting an acknowledgement this long, none coming: the broker is unreachable
DELIVERY_CHECK_SECONDS = 0.1


class ProduceError(StreamlearnError):
    """Records could not be delivered; ``stats`` holds what was sent."""

    def __init__(self, message: str, stats: "ProduceStats"):
        super().__init__(message)
        self.stats = stats


def _int(value, name: str, lo: int, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ConfigError(f"{name} must be an integer >= {lo}{' or None' if optional else ''}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class ProducerConfig:
    """Validated settings of a :class:`Producer` (the flags of ``streamlearn produce``).

    Parameters
    ----------
    source
        Source name for ``make_source`` (``sea``, ``hyperplane``, ``elec2``, ``csv:PATH``, ...).
    nodes
        Number of nodes m; node k publishes to ``<prefix>.samples.<k>``. None with ``split="key:COLUMN"``
        on a file: one node per distinct key value (the :class:`Producer` fills it in).
    rate
        Samples per second per node; 0: as fast as possible.
    drifts
        Scheduled drift specs (``"sudden@5000"``, ...), applied at each node of the ``schedule``.
    schedule
        ``"all"``, ``"staggered:GAP"`` or ``"subset:0,3,5"`` (see ``node_streams``).
    split
        None (one seeded source per node), ``"round-robin"`` or ``"key:COLUMN[...]"``.
    n
        Samples per node; None: endless (a finite source: until it ends).
    format
        ``"json"`` (one reading per record) or ``"binary"`` (batches of ``batch`` readings).
    batch
        Readings per binary record.
    seed
        Seed of the sources and drifts.
    source_params
        Parameters of the source (``SOURCES[name]["params"]``).
    bootstrap
        ``host:port``; None: ``settings.bootstrap_servers``, else 127.0.0.1:9092 (waited for, never started).
    prefix
        Topic prefix; None: ``settings.topic_prefix``.
    settings
        :class:`KafkaSettings`; None: from the environment.
    live_drift
        Listen on ``<prefix>.control`` for live drift commands.
    progress
        Print progress (at most once a second) and the final counts on stderr.
    missing
        None: a file's empty field is a bad record (``source_params["on_bad_record"]``); ``"keep"``: it
        is sent as missing (NaN in a binary batch, ``null`` in JSON) for the node service to impute or
        skip (``streamlearn node --missing``), and a record without a label is left out and counted.
    delivery_timeout
        Seconds a record may wait for the broker's acknowledgement (retries included) before it counts
        as not delivered (kafka-python's ``delivery_timeout_ms``); bounded so that an outage shows as
        errors while it lasts, not only at exit. At least 1.

    Examples
    --------
    >>> ProducerConfig(source="sea", nodes=2, rate=500, drifts="sudden@5000", format="binary").drifts
    ('sudden@5000',)
    >>> ProducerConfig(format="csv")
    Traceback (most recent call last):
    ...
    streamlearn.errors.ConfigError: format must be one of json, binary, got 'csv'
    """

    source: str = "sea"
    nodes: int = 4
    rate: float = 2000.0
    drifts: tuple = ()
    schedule: str = "all"
    split: str | None = None
    n: int | None = None
    format: str = "json"
    batch: int = 100
    seed: int = 0
    source_params: dict = field(default_factory=dict)
    bootstrap: str | None = None
    prefix: str | None = None
    settings: KafkaSettings | None = None
    live_drift: bool = True
    progress: bool = True
    missing: str | None = None
    delivery_timeout: float = 30.0

    def __post_init__(self):
        if self.nodes is None and (self.split is None or parse_split(self.split).get("how") != "first"):
            raise ConfigError("nodes: give the number of node streams (only a split by key:COLUMN counts them)")
        nodes = None if self.nodes is None else _int(self.nodes, "nodes", 1)
        object.__setattr__(self, "nodes", nodes)
        if self.missing not in (None, "keep"):
            raise ConfigError(f"missing must be None or 'keep' (the node imputes or skips), got {self.missing!r}")
        rate = self.rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float, np.number)) or not math.isfinite(rate) \
                or rate < 0:
            raise ConfigError(f"rate must be a finite number of samples/s >= 0 (0: as fast as possible), got {rate!r}")
        object.__setattr__(self, "rate", float(rate))
        drifts = (self.drifts,) if isinstance(self.drifts, (str, DriftSpec)) else tuple(self.drifts or ())
        for d in drifts:
            parse_drift(d)  # ConfigError naming the spec
        object.__setattr__(self, "drifts", drifts)
        if nodes is not None:
            parse_schedule(self.schedule, nodes)
        if self.split is not None:
            parse_split(self.split)
        object.__setattr__(self, "n", _int(self.n, "n", 0, optional=True))
        if self.format not in FORMATS:
            raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {self.format!r}")
        batch = _int(self.batch, "batch", 1)
        if batch > MAX_BATCH:
            raise ConfigError(f"batch must be at most {MAX_BATCH}, got {batch}")
        object.__setattr__(self, "batch", batch)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))
        if not isinstance(self.source_params, dict):
            raise ConfigError(f"source_params must be a dict, got {self.source_params!r}")
        if self.prefix is not None:
            validate_topic_prefix(self.prefix, "prefix")
        if self.settings is not None and not isinstance(self.settings, KafkaSettings):
            raise ConfigError(f"settings must be a KafkaSettings, got {type(self.settings).__name__}")
        dt = self.delivery_timeout
        if isinstance(dt, bool) or not isinstance(dt, (int, float, np.number)) or not 1 <= dt <= 3600:
            raise ConfigError(f"delivery_timeout must be a number of seconds in [1, 3600], got {dt!r}")
        object.__setattr__(self, "delivery_timeout", float(dt))


@dataclass
class ProduceStats:
    """What a :meth:`Producer.run` sent.

    ``sent``/``records`` map node to samples/records; ``drift_events`` are the
    published drift messages as dicts; ``reason`` is ``"done"`` (every stream
    ended or reached n), ``"stop"`` (stop_event or :meth:`Producer.stop`),
    ``"signal"`` (SIGINT/SIGTERM) or ``"max_seconds"``. ``errors``/``failed_samples``: records and
    samples not delivered (refused, not acknowledged within the delivery timeout, or still unacknowledged
    at exit); ``outage_seconds``: how long the broker was unreachable in all.
    """

    sent: dict
    records: dict
    bytes: int = 0
    drift_events: list = field(default_factory=list)
    live_drifts: int = 0
    rejected_commands: int = 0
    elapsed: float = 0.0
    reason: str = ""
    errors: int = 0
    failed_samples: int = 0
    outage_seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        """One line per node: samples, records, rate."""
        dt = max(self.elapsed, 1e-9)
        lines = [f"node {k}: {n} samples in {self.records[k]} records ({n / dt:.0f}/s)" for k, n in self.sent.items()]
        lines.append(f"total {sum(self.sent.values())} samples, {self.bytes} bytes, {len(self.drift_events)} drift "
                     f"events ({self.live_drifts} live) in {self.elapsed:.1f} s; stopped: {self.reason}")
        if self.errors or self.outage_seconds:
            lines.append(f"delivery: {self.errors} records ({self.failed_samples} samples) "
                         f"{'NOT DELIVERED' if self.errors else 'all delivered'}; broker unreachable for "
                         f"{self.outage_seconds:.1f} s in all")
        return "\n".join(lines)


# ------------------------------------------------------------ live drift stages
# A stage transforms the node's blocks from the live drift's block on, exactly as the
# injector would inside inject(stream, spec@P): same _apply, same random draws.
class _TransformStage:
    """Label permutation, feature transforms, incremental, noise: the injector's own block transform."""

    def __init__(self, injector):
        self.injector = injector
        self._rng = injector._sample_rng()

    def advance(self, deadline: float) -> bool:
        return True

    def apply(self, X, y, start: int):
        return self.injector._apply(X, y, np.arange(start, start + len(y)), self._rng)


class _SwitchStage:
    """sudden, gradual, recurring: rows from the alternate concept, read in step with the node's blocks."""

    def __init__(self, injector: ConceptSwitch, first_block: int, hint: int | None):
        self.injector = injector
        self._rng = injector._sample_rng()
        self._alt = injector.inner.concept(1)._blocks(hint)
        self._skip = first_block  # blocks of the alternate concept to read and drop (the catch-up)
        # gradual draws one number per row of every block from the start: draw the skipped ones too
        self._burn = first_block * BLOCK if injector.spec.kind == "gradual" else 0

    def advance(self, deadline: float) -> bool:
        while self._skip > 0:
            if next(self._alt, None) is None:
                self._skip = 0
                self._alt = iter(())
                break
            self._skip -= 1
            if time.monotonic() > deadline:
                return False
        while self._burn > 0:
            k = min(self._burn, 1 << 20)
            self._rng.random(k)
            self._burn -= k
        return True

    def apply(self, X, y, start: int):
        alt = next(self._alt, None)
        if alt is None:  # the alternate concept ended: so does the switched stream (as in ConceptSwitch)
            return X[:0], y[:0]
        XB, yB = alt
        m = min(len(y), len(yB))
        use_b = self.injector._alternate_at(np.arange(start, start + m), self._rng)
        return np.where(use_b[:, None], XB[:m], X[:m]), np.where(use_b, yB[:m], y[:m])


class _Feed:
    """One node's stream as it is being sent: the current block, the cursor, live drifts, events to publish."""

    def __init__(self, node: int, stream, limit: int | None, rate: float, capacity: float):
        self.node = node
        self.scheduled = stream  # node stream with its scheduled drifts (ground truth of those)
        self.definition = stream  # ... plus the live drifts so far: what a replay would have to inject
        self.live = []  # (injector, extra event params) per live drift
        self.limit = limit
        self._blocks = stream._blocks(limit)  # the block machinery every stream shares (base.py)
        self._stages = []
        self._X = self._y = None
        self._bstart = self._bend = 0
        self.sent = 0
        self.records = 0
        self.exhausted = False
        self.pending = None  # (stage, injector, extra) while a concept switch catches up
        self.queue = []  # live drifts that arrived during a catch-up
        self.rate = rate
        self.capacity = capacity
        self.tokens = 0.0
        self.t_last = time.monotonic()
        self._events = []
        self._events_horizon = 0
        self._events_dirty = True

    @property
    def done(self) -> bool:
        return self.exhausted or (self.limit is not None and self.sent >= self.limit)

    # -- samples --------------------------------------------------------------------
    def _load(self) -> bool:
        block = next(self._blocks, None)
        if block is None:
            self.exhausted = True
            return False
        X, y = block
        start = self._bend
        for stage in self._stages:
            X, y = stage.apply(X, y, start)
        if len(y) == 0:
            self.exhausted = True
            return False
        self._X, self._y, self._bstart, self._bend = X, y, start, start + len(y)
        return True

    def take(self, k: int):
        """Up to ``k`` next samples as (X, y) (fewer at the end of the stream); advances the cursor."""
        if self.limit is not None:
            k = min(k, self.limit - self.sent)
        Xs, ys = [], []
        while k > 0:
            if self.sent >= self._bend and not self._load():
                break
            r0 = self.sent - self._bstart
            r1 = min(len(self._y), r0 + k)
            Xs.append(self._X[r0:r1])
            ys.append(self._y[r0:r1])
            self.sent += r1 - r0
            k -= r1 - r0
        if not Xs:
            return None, None
        if len(Xs) == 1:
            return Xs[0], ys[0]
        return np.concatenate(Xs), np.concatenate(ys)

    def refill(self, now: float) -> None:
        self.tokens = min(self.capacity, self.tokens + (now - self.t_last) * self.rate)
        self.t_last = now

    # -- live drift -----------------------------------------------------------------
    def request(self, live: LiveDrift, seed: int) -> None:
        """Start a live drift at the current position (queued behind a running catch-up). ConfigError if unusable."""
        if self.done:
            raise ConfigError(f"node {self.node}'s stream has ended")
        if self.pending is not None:
            self.queue.append((live, seed))
            return
        self._start(live, seed)

    def _start(self, live: LiveDrift, seed: int) -> None:
        P = self.sent
        params = dict(live.params)
        position = P
        if live.kind == "gradual":
            # centred one width after P: the mixing probability is ~2% at P, the transition starts there
            position = P + DriftSpec("gradual", 0, params).params["width"]
        injector = inject(self.definition, DriftSpec(live.kind, position, params), node=self.node, seed=seed)
        extra = {"live": True, "seed": seed}
        if live.kind == "gradual":
            extra["start"] = P
        if live.id is not None:
            extra["command"] = live.id
        if isinstance(injector, ConceptSwitch):
            stage = _SwitchStage(injector, P // BLOCK, self.limit)
        else:
            stage = _TransformStage(injector)
        self.pending = (stage, injector, extra)

    def advance(self, deadline: float, warn) -> bool:
        """Work on a pending live drift until ``deadline``; True while one is still pending."""
        while self.pending is not None:
            stage, injector, extra = self.pending
            if not stage.advance(deadline):
                return True
            self._install(stage, injector, extra)
            self.pending = None
            while self.queue and self.pending is None:
                live, seed = self.queue.pop(0)
                try:
                    self._start(live, seed)
                except ConfigError as exc:
                    warn(f"live drift {live.kind!r} on node {self.node} skipped: {exc}")
        return False

    def _install(self, stage, injector, extra) -> None:
        if self._y is not None and self.sent < self._bend:
            # the current block holds unsent rows: they drift too (rows before the cursor are out already)
            X, y = stage.apply(self._X, self._y, self._bstart)
            self._X, self._y, self._bend = X, y, self._bstart + len(y)
            if self._bend <= self.sent:
                self.exhausted = True
        self._stages.append(stage)
        self.definition = injector
        self.live.append((injector, extra))
        self._events_dirty = True

    # -- ground truth -----------------------------------------------------------------
    def events_between(self, a: int, b: int) -> list:
        """(streams.DriftEvent, extra params) with position in [a, b), in order; each is returned once."""
        if self._events_dirty or b > self._events_horizon:
            horizon = max(b, 2 * self._events_horizon, 4 * BLOCK)
            events = [(e, {"live": False}) for e in self.scheduled.drift_events(horizon)]
            for injector, extra in self.live:
                events += [(e, extra) for e in injector._own_events(horizon) if e.position < horizon]
            events.sort(key=lambda item: item[0].position)
            self._events = [item for item in events if item[0].position >= a]
            self._events_horizon = horizon
            self._events_dirty = False
        out = [item for item in self._events if item[0].position < b]
        self._events = self._events[len(out):]
        return [item for item in out if item[0].position >= a]


class _JsonEncoder:
    """Sample JSON records of a block, byte for byte what ``codecs.encode_sample_json`` writes, several times faster.

    Names and classes are checked once, by ``encode_sample_json`` itself; a block's values with one
    ``np.isfinite``. A block that is not plainly valid (non-finite values, a label outside the classes)
    goes through ``encode_sample_json``, which writes a missing value (NaN) as ``null`` and names a bad value.
    """

    def __init__(self, names: list, classes: list | None):
        self._names = list(names)
        codecs.encode_sample_json(codecs.Sample(seq=0, x={k: 0.0 for k in names}, y=None))  # raises on a bad name
        keys = ",".join(json.dumps(k, ensure_ascii=False) + ":%r" for k in names)
        self._template = '{"node":%d,"seq":%d,"ts":%r,"x":{' + keys + '},"y":%s}'
        self._labels = {}
        for c in classes or ():
            c = c.item() if isinstance(c, np.generic) else c
            if isinstance(c, (bool, int, str)):
                try:
                    codecs.encode_sample_json(codecs.Sample(seq=0, x={"a": 0.0}, y=c))
                except codecs.EncodeError:
                    continue  # such labels take the slow path, which raises
                self._labels[c] = json.dumps(c, ensure_ascii=False)

    def encode(self, X: np.ndarray, y: np.ndarray, first: int, node: int, ts: float) -> list:
        rows, labels = X.tolist(), y.tolist()
        table = self._labels
        plain = np.isfinite(X).all() and all(type(v) is not float and v in table for v in labels)
        if not plain:
            return [codecs.encode_sample_json(codecs.Sample(seq=first + i, x=dict(zip(self._names, row)), y=label,
                                                            node=node, ts=ts))
                    for i, (row, label) in enumerate(zip(rows, labels))]
        t = self._template
        return [(t % (node, first + i, ts, *row, table[label])).encode("utf-8")
                for i, (row, label) in enumerate(zip(rows, labels))]


# ----------------------------------------------------------------------- producer
class Producer:
    """Publishes the node streams of a :class:`ProducerConfig` and applies live drift commands.

    The node streams are built (and the settings checked) on construction, no
    Kafka connection is made until :meth:`run`. ``ready`` is set once the topics
    exist and the control topic is being read. One ``run`` per instance.

    ``streams``: node streams already built from this config, as :func:`~streamlearn.streams.node_streams`
    builds them (``streamlearn demo`` reads its file once for its layout and hands them over: a big file
    takes seconds to parse). ``progress_to``: where progress and the final counts go (default stderr).

    Examples
    --------
    >>> p = Producer(ProducerConfig(source="sea", nodes=2, n=1000, drifts=["sudden@500"], format="binary"))
    >>> p.schema()
    {'feature_names': ['x0', 'x1', 'x2'], 'classes': [False, True]}
    >>> [(e.node, e.position, e.kind) for s in p.streams for e in s.drift_events(1000)]
    [(0, 500, 'sudden'), (1, 500, 'sudden')]
    """

    def __init__(self, config: ProducerConfig, metrics=None, streams=None, progress_to=None):
        self.metrics = metrics  # a streamlearn.metrics.ProducerMetrics, or None
        if not isinstance(config, ProducerConfig):
            raise ConfigError(f"expected a ProducerConfig, got {type(config).__name__}")
        c = config
        if streams is None:
            streams = node_streams(c.source, c.nodes, c.drifts, c.schedule, c.split, c.seed, on_missing=c.missing,
                                   **c.source_params)
        elif not streams or (c.nodes is not None and len(streams) != c.nodes):
            raise ConfigError(f"streams: need one stream per node ({c.nodes}), got {len(streams)}")
        self.streams = list(streams)
        self._progress_to = progress_to
        if c.nodes is None:  # one node per distinct key value
            from dataclasses import replace

            c = replace(c, nodes=len(self.streams))
        self.config = config = c
        first = self.streams[0]
        self._names = list(first.feature_names)
        self._classes = list(first.classes) if first.classes else None
        if c.format == "binary":
            # header, names, padding, float32 X, 4-byte labels, CRC
            size = 52 + len("\n".join(self._names).encode()) + 8 + c.batch * (4 * len(self._names) + 4) + 4
            if size > codecs.MAX_SAMPLE_BATCH_BYTES:
                raise ConfigError(f"batch={c.batch} readings of {len(self._names)} features exceed the "
                                  f"{codecs.MAX_SAMPLE_BATCH_BYTES} bytes of a binary batch; use a smaller batch")
        self._json = _JsonEncoder(self._names, self._classes)
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._signals = contextlib.nullcontext()  # run()'s StopSignals: whether a signal stopped it
        self._feeds: list = []
        self._ran = False
        self._producer = None
        self._consumer = None
        self._events_out: list = []
        # delivery accounting: records handed to kafka-python (main thread), acknowledged and failed (its
        # sender thread; failures also from the main thread, hence the lock)
        self._records_out = self._acked = self._errors = self._failed_samples = 0
        self._error_lock = threading.Lock()
        self._first_error = None
        self._ack_mark = time.monotonic()  # last time the broker was seen answering (or nothing awaited)
        self._acked_seen = self._errors_seen = 0
        self._unreachable_since: float | None = None
        self._outage = 0.0
        self._next_check = 0.0
        self._live_count = 0
        self._rejected = 0
        self._bytes = 0

    # -- public ---------------------------------------------------------------------
    def schema(self) -> dict:
        """Feature names (column order of binary batches) and classes (label of each class index)."""
        return {"feature_names": list(self._names), "classes": None if self._classes is None else list(self._classes)}

    @property
    def sent(self) -> dict:
        """Samples sent so far per node (safe to read from another thread)."""
        return {f.node: f.sent for f in self._feeds}

    def stop(self) -> None:
        """Ask a running :meth:`run` to stop (flushes, then returns)."""
        self._stop.set()

    def run(self, stop_event: threading.Event | None = None, max_seconds: float | None = None, *,
            handle_signals: bool | None = None) -> ProduceStats:
        """Publish until every stream is done, ``stop_event`` is set, ``max_seconds`` of publishing pass (counted
        once connected to the broker) or SIGINT/SIGTERM.

        ``handle_signals`` (default: when called in the main thread) installs SIGINT and SIGTERM
        handlers for the duration of the run, so Ctrl-C stops cleanly with a final flush.
        Raises :class:`ProduceError` (with ``.stats``) when records could not be delivered.
        """
        if self._ran:
            raise StreamlearnError("a Producer runs once; make a new one")
        self._ran = True
        if max_seconds is not None and (isinstance(max_seconds, bool) or not max_seconds >= 0):
            raise ConfigError(f"max_seconds must be a number >= 0 or None, got {max_seconds!r}")
        if handle_signals is None:
            handle_signals = threading.current_thread() is threading.main_thread()
        # SIGINT/SIGTERM stop as they stop a service (a second Ctrl-C at once), restored after the final flush
        self._signals = StopSignals(self._stop) if handle_signals else contextlib.nullcontext()
        t0 = time.monotonic()
        reason = "stop"
        with self._signals:
            try:
                self._connect()
                self.ready.set()
                reason = self._loop(stop_event, max_seconds, time.monotonic())  # a slow connect: no publishing time
            finally:
                self._close()
        c = self.config
        stats = ProduceStats(
            sent={f.node: f.sent for f in self._feeds}, records={f.node: f.records for f in self._feeds},
            bytes=self._bytes, drift_events=list(self._events_out), live_drifts=sum(len(f.live) for f in self._feeds),
            rejected_commands=self._rejected, elapsed=time.monotonic() - t0, reason=reason, errors=self._errors,
            failed_samples=self._failed_samples,
            # an outage still going on at exit counts too (the broker never answered again before the stop)
            outage_seconds=self._outage + (0.0 if self._unreachable_since is None
                                           else time.monotonic() - self._unreachable_since),
        )
        if c.progress:
            print(f"produce: {stats.summary()}", file=self._progress_to or sys.stderr, flush=True)
        if self._errors:
            raise ProduceError(f"{self._errors} records ({self._failed_samples} samples) were not delivered; first "
                               f"error: {self._first_error}", stats)
        return stats

    def delivery(self) -> dict:
        """Delivery counts now (safe from another thread): records ``sent`` to Kafka's client, ``acked``,
        ``errors`` (records not delivered) and ``failed_samples``, ``awaiting`` acknowledgement, and
        ``unreachable`` (seconds the broker has been unreachable, 0 when it answers)."""
        now = time.monotonic()
        since = self._unreachable_since
        return {"sent": self._records_out, "acked": self._acked, "errors": self._errors,
                "failed_samples": self._failed_samples, "awaiting": self._awaiting(),
                "unreachable": 0.0 if since is None else now - since, "outage_seconds": self._outage}

    # -- setup and teardown -----------------------------------------------------------
    def _connect(self) -> None:
        from kafka import KafkaConsumer, KafkaProducer, TopicPartition

        c = self.config
        settings = c.settings or KafkaSettings.from_env()
        bootstrap = c.bootstrap or settings.bootstrap_servers
        if bootstrap is None:
            from streamlearn.kafka.broker import ensure_broker

            bootstrap = ensure_broker(stop=self._stop).bootstrap
        self.prefix = c.prefix or settings.topic_prefix
        ensure_topics(bootstrap, self.prefix, c.nodes, settings=settings)
        unit = c.batch if c.format == "binary" else 1
        capacity = max(float(unit), c.rate * BURST_SECONDS)
        self._feeds = [_Feed(k, s, c.n, c.rate, capacity) for k, s in enumerate(self.streams)]
        self._topics = [samples_topic(self.prefix, k) for k in range(c.nodes)]
        self._drift_topic = drift_topic(self.prefix)
        # A bounded delivery timeout: a record the broker does not take fails (and is counted) while the
        # outage lasts. The request timeout nearly as long (kafka-python wants delivery >= linger + request):
        # without idempotence a request that timed out may still be written by a slow broker, after the
        # retry of an earlier batch; a long one makes that rare (under load a 1.5 s one did it).
        delivery_ms = int(c.delivery_timeout * 1000)
        self._producer = KafkaProducer(**settings.producer_kwargs(
            bootstrap, linger_ms=5, batch_size=1 << 18, delivery_timeout_ms=delivery_ms,
            request_timeout_ms=min(30_000, max(delivery_ms // 2, delivery_ms - 1_000))))
        if c.live_drift:
            consumer = KafkaConsumer(**settings.consumer_kwargs(bootstrap))
            tp = TopicPartition(control_topic(self.prefix), 0)
            consumer.assign([tp])
            consumer.seek_to_end(tp)
            consumer.position(tp)  # resolve the end now: commands sent after ready is set are seen
            self._consumer = consumer

    def _close(self) -> None:
        if self._producer is not None:
            from streamlearn.kafka.broker import close_producer

            # never raises: the records a vanished broker did not take fail, and _on_error counts them
            if close_producer(self._producer, 30) and "closed forcefully" in (self._first_error or "closed forcefully"):
                self._first_error = "the broker did not answer within 30 s at shutdown"
            left = self._awaiting()
            if left:  # handed over, never acknowledged nor failed: counted, not lost silently
                self._count_failure(f"{left} records unacknowledged at exit", 0, records=left)
            self._delivery_check(time.monotonic())
        if self._consumer is not None:
            self._consumer.close()

    # -- the loop ---------------------------------------------------------------------
    def _loop(self, stop_event, max_seconds, t0) -> str:
        c = self.config
        next_control = t0
        last_progress, last_sent = t0, [0] * c.nodes
        while True:
            now = time.monotonic()
            if self._stop.is_set():
                return "signal" if getattr(self._signals, "received", False) else "stop"
            if stop_event is not None and stop_event.is_set():
                return "stop"
            if max_seconds is not None and now - t0 >= max_seconds:
                return "max_seconds"
            if self._consumer is not None and now >= next_control:
                self._poll_control()
                next_control = now + CONTROL_POLL_SECONDS
            if now >= self._next_check:
                self._delivery_check(now)
                self._next_check = now + DELIVERY_CHECK_SECONDS
            busy = False
            deadline = now + CATCHUP_SLICE_SECONDS
            for feed in self._feeds:
                if feed.pending is not None:
                    busy = feed.advance(deadline, self._warn) or busy
            active = [f for f in self._feeds if not f.done]
            if not active:
                return "done"
            sent_any, wait = False, MAX_IDLE_SECONDS
            now = time.monotonic()
            for feed in active:
                feed.refill(now)
                if feed.pending is not None:
                    continue
                k, need = self._quota(feed)
                if k > 0:
                    self._send(feed, k)
                    sent_any = True
                else:
                    wait = min(wait, need)
            if c.progress and now - last_progress >= PROGRESS_SECONDS:
                last_progress, last_sent = self._print_progress(now, t0, last_progress, last_sent)
            if not sent_any and not busy:
                self._stop.wait(max(wait, 0.0005))

    def _quota(self, feed: _Feed) -> tuple[int, float]:
        """(samples to send now, seconds until enough tokens when 0)."""
        c = self.config
        unit = c.batch if c.format == "binary" else 1
        if c.rate == 0:
            return (c.batch if c.format == "binary" else BLOCK), 0.0
        need = unit if feed.limit is None else max(1, min(unit, feed.limit - feed.sent))
        if feed.tokens < need:
            return 0, (need - feed.tokens) / c.rate
        k = int(feed.tokens) if unit == 1 else max(need, int(feed.tokens // unit) * unit)
        return k, 0.0

    def _send(self, feed: _Feed, k: int) -> None:
        c = self.config
        first = feed.sent
        X, y = feed.take(k)
        if X is None:
            return
        n = len(y)
        if c.rate:
            feed.tokens -= n
        topic = self._topics[feed.node]
        deliver = self._deliver
        b0, r0 = self._bytes, feed.records
        if c.format == "binary":
            labels = self._label_codes(y, first)
            for i in range(0, n, c.batch):
                data = codecs.encode_sample_batch(X[i:i + c.batch], labels[i:i + c.batch], first_seq=first + i,
                                                  node=feed.node, names=self._names,
                                                  allow_missing=c.missing == "keep")
                deliver(topic, data, min(c.batch, n - i))
                self._bytes += len(data)
                feed.records += 1
        else:
            for data in self._json.encode(X, y, first, feed.node, time.time()):
                deliver(topic, data, 1)
                self._bytes += len(data)
            feed.records += n
        if self.metrics is not None:
            self.metrics.observe_sent(feed.node, n, feed.records - r0, self._bytes - b0)
        for event, extra in feed.events_between(first, first + n):
            self._publish_event(event, extra)

    def _label_codes(self, y: np.ndarray, first: int) -> np.ndarray:
        if self._classes is None:
            if y.dtype.kind not in "biuf":
                raise BadRecordError("a stream without classes must have numeric labels for binary batches",
                                     row=first, value=str(y.dtype))
            return y.astype(np.float32)
        idx = class_index(y, self._classes)
        if (idx < 0).any():
            i = int(np.flatnonzero(idx < 0)[0])
            raise BadRecordError(f"label not among the stream's classes {self._classes}", row=first + i,
                                 column="y", value=y[i])
        return idx.astype(np.int32)

    def _publish_event(self, event, extra: dict) -> None:
        params = {**event.to_dict()["params"], **extra}
        msg = codecs.DriftEvent(kind=event.kind, ts=time.time(), node=event.node, seq=event.position, params=params)
        self._deliver(self._drift_topic, codecs.encode_message(msg), 0)
        self._events_out.append({"kind": msg.kind, "ts": msg.ts, "node": msg.node, "seq": msg.seq,
                                 "params": msg.params})
        if self.metrics is not None:
            self.metrics.observe_drift(msg.node, msg.kind)

    def _deliver(self, topic: str, data: bytes, samples: int) -> None:
        """Hand one record to kafka-python; its acknowledgement or failure is counted when it comes."""
        from kafka.errors import KafkaError

        self._records_out += 1
        try:
            future = self._producer.send(topic, value=data, partition=0)
        except KafkaError as exc:  # not accepted (buffer full for max_block_ms during an outage): counted, go on
            self._count_failure(exc, samples)
            return
        future.add_callback(self._on_ack).add_errback(self._on_error, samples)

    def _on_ack(self, metadata) -> None:  # runs in kafka-python's sender thread (the only writer of _acked)
        self._acked += 1

    def _on_error(self, samples: int, exc) -> None:  # runs in kafka-python's sender thread
        self._count_failure(exc, samples)

    def _count_failure(self, exc, samples: int, records: int = 1) -> None:
        with self._error_lock:
            self._errors += records
            self._failed_samples += samples
            if self._first_error is None:
                self._first_error = exc if isinstance(exc, str) else repr(exc)
        if self.metrics is not None:
            self.metrics.observe_error(records, samples)

    def _awaiting(self) -> int:
        """Records handed to kafka-python, neither acknowledged nor failed yet."""
        return max(0, self._records_out - self._acked - self._errors)

    def _delivery_check(self, now: float) -> None:
        """Is the broker answering? Records awaiting an acknowledgement for UNREACHABLE_SECONDS with none
        coming: unreachable (said once, and again when it answers); the metrics' delivery gauges."""
        awaiting, acked, errors = self._awaiting(), self._acked, self._errors
        # nothing awaited is no news unless it came from acknowledgements: records that failed leave none awaited
        if acked != self._acked_seen or (awaiting == 0 and errors == self._errors_seen):
            self._ack_mark = now
        self._acked_seen, self._errors_seen = acked, errors
        stalled = now - self._ack_mark
        if self._unreachable_since is None and stalled >= UNREACHABLE_SECONDS:
            self._unreachable_since = self._ack_mark
            self._warn(f"the broker is unreachable: no acknowledgement for {stalled:.1f} s, {awaiting} records "
                       f"awaiting it (they fail after {self.config.delivery_timeout:g} s)")
        elif self._unreachable_since is not None and stalled < UNREACHABLE_SECONDS:
            lasted = now - self._unreachable_since
            self._outage += lasted
            self._unreachable_since = None
            self._warn(f"the broker answers again after {lasted:.1f} s; {self._errors} records "
                       f"({self._failed_samples} samples) not delivered so far")
        if self.metrics is not None and hasattr(self.metrics, "observe_delivery"):
            self.metrics.observe_delivery(awaiting, self._unreachable_since is not None)

    # -- control ----------------------------------------------------------------------
    def _poll_control(self) -> None:
        try:
            batches = self._consumer.poll(timeout_ms=0)
        except Exception as exc:  # a broker hiccup must not stop the samples
            self._warn(f"cannot read the control topic: {exc}")
            return
        for records in batches.values():
            for record in records:
                self._on_command(record.value)

    def _on_command(self, value: bytes) -> None:
        try:
            cmd = codecs.decode_message(value, expect="control")
        except codecs.DecodeError as exc:
            self._warn(f"ignored an undecodable control record: {exc}")
            return
        if cmd.command != LIVE_DRIFT_COMMAND:
            return  # for other services
        try:
            live = parse_drift_command(cmd)
            if live.target is not None and live.target >= self.config.nodes:
                raise ConfigError(f"node {live.target} is not one of this producer's nodes 0..{self.config.nodes - 1}")
        except ConfigError as exc:
            self._rejected += 1
            self._warn(f"rejected live drift command {cmd.id or ''}: {exc}")
            return
        # one definition per command (same permutation, rotation plane at every node), distinct across commands
        seed = self.config.seed + 7919 * (self._live_count + 1)
        self._live_count += 1
        targets = range(self.config.nodes) if live.target is None else [live.target]
        for node in targets:
            try:
                self._feeds[node].request(live, seed)
            except ConfigError as exc:
                self._rejected += 1
                self._warn(f"live drift {live.kind!r} on node {node} skipped: {exc}")

    # -- output -----------------------------------------------------------------------
    def _warn(self, message: str) -> None:
        log.warning("%s", message)

    def _print_progress(self, now, t0, last_progress, last_sent):
        dt = max(now - last_progress, 1e-9)
        parts = []
        for feed in self._feeds:
            rate = (feed.sent - last_sent[feed.node]) / dt
            state = " (catching up)" if feed.pending is not None else ""
            parts.append(f"node {feed.node}: {feed.sent} ({rate:.0f}/s){state}")
        if self._unreachable_since is not None:
            parts.append(f"BROKER UNREACHABLE for {now - self._unreachable_since:.1f} s, {self._awaiting()} records "
                         f"awaiting acknowledgement")
        if self._errors:
            parts.append(f"{self._errors} records ({self._failed_samples} samples) NOT DELIVERED")
        print(f"produce {now - t0:6.1f} s | " + " | ".join(parts), file=self._progress_to or sys.stderr, flush=True)
        return now, [f.sent for f in self._feeds]
