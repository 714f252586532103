"""Publish checked records into node topics, and bad ones into the dead-letter topic, counting both.

Readings go to ``<prefix>.samples.<node>`` as sample JSON (``docs/schemas.md``),
numbered ``seq`` 0, 1, 2, ... per node from the connector's start; label
records (:mod:`streamlearn.kafka.labels`) go to the same topic and take no ``seq``.
The Kafka key is the reading's ``key`` when it has one. A bad record goes to
``<prefix>.deadletter`` unchanged (cut to 1 MiB), with the headers of
``codecs.deadletter_headers``: ``sl-error`` the reason, ``sl-source-topic``
where it came from (``csv:PATH``, ``mqtt:TOPIC``, ``http:/ingest``, ...),
``sl-source-partition`` -1 (not a Kafka partition), ``sl-source-offset`` its
line or message number; plus ``sl-connector``, the connector's kind.
With a :class:`~streamlearn.metrics.ConnectorMetrics`, every count also goes to
Prometheus (dead letters by reason class, :func:`streamlearn.connectors.errors.reason_class`).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from streamlearn.connectors.errors import RecordError, reason_class
from streamlearn.kafka.labels import LabelRecord, encode_label_json
from streamlearn.connectors.schema import Reading
from streamlearn.errors import StreamlearnError
from streamlearn.kafka.broker import track_topics
from streamlearn.kafka.codecs import MAX_SAMPLE_JSON_BYTES, _dump_json, deadletter_headers
from streamlearn.kafka.config import KafkaSettings, validate_topic_prefix
from streamlearn.kafka.layout import Layout, LayoutBoard, LayoutMismatch, check_against
from streamlearn.kafka.topics import deadletter_topic, ensure_topics, samples_topic, schema_topic

__all__ = ["ConnectStats", "ConnectError", "Publisher", "encode_reading", "MAX_DEADLETTER_BYTES"]

log = logging.getLogger(__name__)

MAX_DEADLETTER_BYTES = 1 << 20
MAX_REASONS = 50  # distinct dead-letter reasons kept in the stats (the count is always exact)


class ConnectError(StreamlearnError):
    """The connector cannot go on (Kafka unreachable, a source that cannot be read)."""


def encode_reading(reading: Reading, *, node: int, seq: int) -> bytes:
    """A checked reading as sample JSON (``docs/schemas.md``); RecordError if over the 1 MiB limit.

    Examples
    --------
    >>> encode_reading(Reading(x={"temp": 21.5}, y="ok", key="r1"), node=0, seq=7)
    b'{"node":0,"seq":7,"key":"r1","x":{"temp":21.5},"y":"ok"}'
    """
    obj = {"node": node, "seq": seq, "ts": reading.ts, "key": reading.key, "x": reading.x, "y": reading.y}
    data = _dump_json({k: v for k, v in obj.items() if v is not None or k == "y"})
    if len(data) > MAX_SAMPLE_JSON_BYTES:
        raise RecordError(f"reading too large once encoded (limit {MAX_SAMPLE_JSON_BYTES} bytes)",
                          field="<payload>", value=f"{len(data)} bytes")
    return data


def _text(s: str) -> str:
    # Paths from argv and values from JSON escapes may hold lone surrogates; headers must be UTF-8.
    return s.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass
class ConnectStats:
    """What a connector did.

    ``readings`` and ``labels`` were handed to Kafka, ``delivered`` of them
    acknowledged by the broker; ``deadlettered`` bad records went to the
    dead-letter topic (``reasons``: count per reason, the first 50 reasons);
    ``send_errors`` records Kafka failed to take; ``per_node``: readings per node;
    ``with_missing``: readings sent with a missing feature value (null: the node imputes or skips it).
    """

    kind: str
    readings: int = 0
    labels: int = 0
    delivered: int = 0
    deadlettered: int = 0
    send_errors: int = 0
    per_node: dict = field(default_factory=dict)
    with_missing: int = 0
    reasons: Counter = field(default_factory=Counter)
    elapsed: float = 0.0
    reason: str = ""

    def to_dict(self) -> dict:
        return {"kind": self.kind, "readings": self.readings, "labels": self.labels, "delivered": self.delivered,
                "deadlettered": self.deadlettered, "send_errors": self.send_errors,
                "with_missing": self.with_missing, "per_node": {str(k): v for k, v in sorted(self.per_node.items())},
                "reasons": dict(self.reasons), "elapsed": round(self.elapsed, 3), "stopped": self.reason}

    def summary(self) -> str:
        """Counts in one line, then the most frequent dead-letter reasons.

        Examples
        --------
        >>> print(ConnectStats("csv", readings=3, delivered=3, per_node={0: 3}).summary())
        connect csv: 3 readings + 0 labels sent, 3 delivered, 0 dead-lettered, 0 send errors to 1 node(s) in 0.0 s
        """
        line = (f"connect {self.kind}: {self.readings} readings + {self.labels} labels sent, {self.delivered} "
                f"delivered, {self.deadlettered} dead-lettered, {self.send_errors} send errors to "
                f"{len(self.per_node)} node(s) in {self.elapsed:.1f} s")
        if self.with_missing:
            line += f"; {self.with_missing} readings with missing values (sent as null: the nodes impute or skip)"
        if self.reason:
            line += f"; stopped: {self.reason}"
        lines = [line] + [f"  {n} x {r}" for r, n in self.reasons.most_common(5)]
        return "\n".join(lines)


class Publisher:
    """A Kafka producer for one connector: node topics, dead-letter topic, counts.

    Parameters
    ----------
    kind
        The connector's name (``csv``, ``mqtt``...), for headers and the summary.
    bootstrap
        ``host:port``; None: ``settings.bootstrap_servers``, else 127.0.0.1:9092 (waited for, never started).
    prefix
        Topic prefix; None: ``settings.topic_prefix``.
    settings
        :class:`KafkaSettings`; None: from the environment.
    nodes
        Node ids whose topics are created up front; others are created when first used.
    progress
        Seconds between count lines on stderr (:meth:`tick`); 0: none.
    metrics
        A :class:`~streamlearn.metrics.ConnectorMetrics` that gets every count too; None: none.
    """

    def __init__(self, kind: str, *, bootstrap: str | None = None, prefix: str | None = None,
                 settings: KafkaSettings | None = None, nodes=None, progress: float = 0.0, metrics=None):
        from kafka import KafkaAdminClient, KafkaProducer

        self.stats = ConnectStats(kind)
        self.metrics = metrics
        self.settings = settings or KafkaSettings.from_env()
        bootstrap = bootstrap or self.settings.bootstrap_servers
        if bootstrap is None:
            from streamlearn.kafka.broker import ensure_broker

            bootstrap = ensure_broker().bootstrap  # never started here: `streamlearn broker` runs it
        self.bootstrap = bootstrap
        self.prefix = validate_topic_prefix(prefix or self.settings.topic_prefix, "prefix")
        self.progress = float(progress)
        self._dead = deadletter_topic(self.prefix)
        self._seq: dict = {}
        self._topics: dict = {}
        self._lock = threading.Lock()  # topic creation and counters, for threaded connectors (HTTP)
        self._t0 = time.monotonic()
        self._last_tick = self._t0
        self._first_error: str | None = None
        self._closed = False
        self._admin = None
        self._board = self._layout = None  # see declare()
        try:
            self._admin = KafkaAdminClient(**self.settings.admin_kwargs(bootstrap))
            ensure_topics(self._admin, self.prefix, list(nodes or []))
            for node in nodes or []:
                self._topics[node] = samples_topic(self.prefix, node)
            self._producer = KafkaProducer(**self.settings.producer_kwargs(
                bootstrap, linger_ms=5, batch_size=1 << 18, max_block_ms=15_000))
            track_topics(self._producer, [self._dead, schema_topic(self.prefix), *self._topics.values()])
        except Exception as exc:
            if self._admin is not None:
                self._admin.close()
            if isinstance(exc, StreamlearnError):
                raise
            raise ConnectError(f"cannot reach Kafka at {bootstrap}: {exc}") from None

    # ---- records -------------------------------------------------------------------------------------

    def _topic(self, node: int) -> str:
        topic = self._topics.get(node)
        if topic is None:
            with self._lock:
                topic = self._topics.get(node)
                if topic is None:
                    # Before any send: Tansu would auto-create it with 4 partitions.
                    ensure_topics(self._admin, self.prefix, [node])
                    topic = samples_topic(self.prefix, node)
                    track_topics(self._producer, [topic])
                    self._topics[node] = topic
        return topic

    def reading(self, node: int, reading: Reading):
        """Send one reading to ``node``'s topic; return the send future. RecordError if it cannot be encoded."""
        topic = self._topic(node)
        with self._lock:
            seq = self._seq.get(node, 0)
            data = encode_reading(reading, node=node, seq=seq)
            self._seq[node] = seq + 1
            self.stats.readings += 1
            self.stats.with_missing += None in reading.x.values()
            self.stats.per_node[node] = self.stats.per_node.get(node, 0) + 1
        if self.metrics is not None:
            self.metrics.observe_reading(node)
        key = None if reading.key is None else reading.key.encode("utf-8")
        return self._send(topic, data, key)

    def label(self, node: int, record: LabelRecord):
        """Send one label record to ``node``'s topic; return the send future."""
        topic = self._topic(node)
        data = encode_label_json(LabelRecord(key=record.key, y=record.y, node=node, ts=record.ts))
        with self._lock:
            self.stats.labels += 1
        if self.metrics is not None:
            self.metrics.observe_label(node)
        return self._send(topic, data, record.key.encode("utf-8"))

    def deadletter(self, raw: bytes, error, *, source: str, offset: int):
        """Send a bad record, unchanged (cut to 1 MiB), to the dead-letter topic with its reason; count it.

        ``error``: the :class:`~streamlearn.connectors.errors.RecordError` (or a reason text); its text is the reason.
        """
        raw = bytes(raw)
        reason = str(error)
        if len(raw) > MAX_DEADLETTER_BYTES:
            reason = f"{reason} [first {MAX_DEADLETTER_BYTES} of {len(raw)} bytes kept]"
            raw = raw[:MAX_DEADLETTER_BYTES]
        reason = _text(reason)
        with self._lock:
            self.stats.deadlettered += 1
            short = _short_reason(reason)
            if short in self.stats.reasons or len(self.stats.reasons) < MAX_REASONS:
                self.stats.reasons[short] += 1
        if self.metrics is not None:
            self.metrics.observe_deadletter(reason_class(error))
        headers = deadletter_headers(reason, topic=_text(source), partition=-1, offset=offset)
        headers.append(("sl-connector", self.stats.kind.encode("utf-8")))
        try:
            future = self._producer.send(self._dead, value=raw, headers=headers, partition=0)
        except Exception as exc:  # a full buffer, a broker gone: counted, and the connector goes on
            self._on_error(exc)
            return None
        future.add_errback(self._on_error)
        return future

    def _send(self, topic: str, data: bytes, key):
        try:
            future = self._producer.send(topic, value=data, key=key, partition=0)
        except Exception as exc:
            self._on_error(exc)
            raise ConnectError(f"Kafka did not take a record for {topic}: {exc}") from None
        future.add_callback(self._on_ok)
        future.add_errback(self._on_error)
        return future

    def _on_ok(self, _metadata) -> None:  # kafka-python's sender thread
        self.stats.delivered += 1
        if self.metrics is not None:
            self.metrics.observe_delivered()

    def _on_error(self, exc) -> None:
        self.stats.send_errors += 1
        if self.metrics is not None:
            self.metrics.observe_send_error()
        if self._first_error is None:
            self._first_error = repr(exc)
            log.warning("Kafka send failed: %r", exc)

    # ---- lifecycle -----------------------------------------------------------------------------------

    def declare(self, layout) -> None:
        """Check the schema's ``(features, classes)`` against the running nodes' layouts and announce it on
        ``<prefix>.schema`` (:mod:`streamlearn.kafka.layout`); LayoutMismatch, naming both, when a node
        expects other features or classes."""
        features, classes = layout
        self._layout = Layout(f"connect {self.stats.kind}", tuple(features), None if classes is None else tuple(classes))
        self._board = LayoutBoard(self.settings, self.bootstrap, self.prefix)
        try:
            check_against(self._layout, self._board.recent(), mine_is_node=False)
        except LayoutMismatch:
            self.close("layout mismatch")
            raise
        self._board.announce(self._producer, self._layout, force=True)

    def tick(self) -> None:
        """Announce the layout again when due; print the counts on stderr if ``progress`` seconds have passed."""
        if self._board is not None:
            self._board.announce(self._producer, self._layout)
        if self.progress <= 0:
            return
        now = time.monotonic()
        if now - self._last_tick >= self.progress:
            self._last_tick = now
            s = self.stats
            print(f"connect {s.kind} {now - self._t0:7.1f} s | readings {s.readings} labels {s.labels} "
                  f"delivered {s.delivered} dead-lettered {s.deadlettered}", file=sys.stderr, flush=True)

    def flush(self, timeout: float = 30.0) -> None:
        self._producer.flush(timeout=timeout)

    def close(self, reason: str = "") -> ConnectStats:
        """Flush, close, and return the final counts."""
        if self._closed:
            return self.stats
        self._closed = True
        from streamlearn.kafka.broker import close_producer

        try:
            lost = close_producer(self._producer, 30)  # never raises: a broker gone costs a count, not a trace
            if lost:
                log.warning("connect %s: the broker %s did not answer at shutdown: %d records not delivered",
                            self.stats.kind, self.bootstrap, lost)
        finally:
            self._admin.close()
        self.stats.elapsed = time.monotonic() - self._t0
        self.stats.reason = reason
        return self.stats

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _short_reason(reason: str) -> str:
    # "must be a number (row 12, field 'temp', value 'x')" -> "must be a number (field 'temp')": groups by cause.
    head, sep, rest = reason.partition(" (")
    if not sep:
        return reason[:200]
    fields = [p for p in rest.rstrip(")").split(", ") if p.startswith("field ")]
    return (f"{head} ({fields[0]})" if fields else head)[:200]
