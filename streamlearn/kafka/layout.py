"""The stream's layout (features, classes) announced on ``<prefix>.schema``, so that a connector and a node that
disagree fail at start, naming both, instead of dead-lettering every record.

A connector announces the layout of its schema when it starts and again every :data:`ANNOUNCE_EVERY` seconds;
a node announces the layout it learns with. Each side reads the other's recent announcements at start
(:meth:`LayoutBoard.recent`) and stops on a :func:`disagreement`: a feature the node needs that the connector does
not send, or classes that differ, also in type only (``1`` is not ``"1"``: a label keeps its type end to end). A
node started without ``--source``/``--features``/``--classes`` takes the layout a connector announced, waiting for
one. A record is JSON: ``{"who": "connect csv", "features": [...], "classes": [...] or null, "ts": 1733000000.0}``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from streamlearn.errors import ConfigError

__all__ = ["ANNOUNCE_EVERY", "FRESH", "Layout", "LayoutBoard", "LayoutMismatch", "disagreement"]

log = logging.getLogger(__name__)

ANNOUNCE_EVERY = 60.0  # seconds between two announcements of a running process
FRESH = 5 * ANNOUNCE_EVERY  # older announcements are of processes that stopped
_READ_BACK = 1000  # records read back from the end of the topic
_MAX_RECORD = 1 << 20


class LayoutMismatch(ConfigError):
    """A connector and a node declare layouts that cannot work together."""


@dataclass(frozen=True)
class Layout:
    """Who declared which features and classes (``classes`` None: any label, a connector without classes).

    Examples
    --------
    >>> a = Layout("connect csv", ("temp", "rpm"), ("0", "1"), ts=1.0)
    >>> Layout.from_json(a.to_json()) == a
    True
    >>> Layout.from_json(b"[[[") is None
    True
    """

    who: str
    features: tuple
    classes: tuple | None
    ts: float = 0.0

    def to_json(self) -> bytes:
        return json.dumps({"who": self.who, "features": list(self.features),
                           "classes": None if self.classes is None else list(self.classes), "ts": self.ts},
                          separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data) -> "Layout | None":
        """The layout in a record, or None for anything that is not one (never raises)."""
        try:
            if data is None or len(data) > _MAX_RECORD:
                return None
            obj = json.loads(data)
            features, classes = obj["features"], obj["classes"]
            ok = (isinstance(obj["who"], str) and isinstance(features, list)
                  and all(isinstance(f, str) for f in features)
                  and (classes is None or (isinstance(classes, list)
                                           and all(isinstance(c, (str, int, float)) for c in classes))))
            if not ok:
                return None
            return cls(obj["who"], tuple(features), None if classes is None else tuple(classes), float(obj["ts"]))
        except Exception:  # hostile bytes: RecursionError, MemoryError, KeyError, ... are not a layout
            return None


def _typed(classes) -> list:
    return sorted(((type(c).__name__, str(c)) for c in classes))


def disagreement(node: Layout, source: Layout) -> str | None:
    """Why ``node`` cannot learn from what ``source`` (a connector) sends, or None when it can.

    Examples
    --------
    >>> src = Layout("connect csv", ("temp", "rpm"), ("0", "1"))
    >>> disagreement(Layout("node 0", ("temp",), ("0", "1")), src) is None
    True
    >>> print(disagreement(Layout("node 0", ("temp", "rpm"), (0, 1)), src))
    node 0 has classes [0, 1] but connect csv declares ['0', '1']: the same text in another type (a label keeps its type: 1 is not "1"). Start the node without --classes to take the connector's layout, or declare the classes with the node's type in the schema
    """
    missing = [f for f in node.features if f not in source.features]
    if missing:
        return (f"{node.who} reads features {missing} that {source.who} does not send (it sends "
                f"{list(source.features)})")
    if source.classes is None or node.classes is None or _typed(node.classes) == _typed(source.classes):
        return None
    text = sorted(str(c) for c in node.classes) == sorted(str(c) for c in source.classes)
    why = (': the same text in another type (a label keeps its type: 1 is not "1"). Start the node without '
           "--classes to take the connector's layout, or declare the classes with the node's type in the schema"
           if text else "")
    return f"{node.who} has classes {list(node.classes)!r} but {source.who} declares {list(source.classes)!r}{why}"


class LayoutBoard:
    """Reads and writes announcements on ``<prefix>.schema`` (the topic exists: see ``topics.topic_specs``)."""

    def __init__(self, settings, bootstrap: str, prefix: str):
        from streamlearn.kafka.topics import schema_topic

        self.settings, self.bootstrap, self.topic = settings, bootstrap, schema_topic(prefix)
        self._last = 0.0

    def announce(self, producer, layout: Layout, *, force: bool = False) -> None:
        """Send ``layout`` (again, if ``ANNOUNCE_EVERY`` seconds passed or ``force``); errors are only logged."""
        now = time.monotonic()
        if not force and now - self._last < ANNOUNCE_EVERY:
            return
        self._last = now
        try:
            producer.send(self.topic, Layout(layout.who, layout.features, layout.classes, time.time()).to_json(),
                          key=layout.who.encode(), partition=0)
        except Exception as exc:  # a full buffer or a broker gone: the next announcement comes
            log.warning("cannot announce the layout on %s: %s", self.topic, exc)

    def recent(self, max_age: float = FRESH, timeout: float = 10.0) -> dict:
        """The newest announcement of each process within ``max_age`` seconds: ``{who: Layout}``."""
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(**self.settings.consumer_kwargs(self.bootstrap))
        try:
            tp = TopicPartition(self.topic, 0)
            consumer.assign([tp])
            ms = int(timeout * 1000)
            end = consumer.end_offsets([tp], timeout_ms=ms)[tp]
            begin = consumer.beginning_offsets([tp], timeout_ms=ms)[tp]
            consumer.seek(tp, max(begin, end - _READ_BACK))
            found: dict = {}
            deadline = time.monotonic() + timeout
            while consumer.position(tp, timeout_ms=ms) < end and time.monotonic() < deadline:
                for records in consumer.poll(timeout_ms=200).values():
                    for rec in records:
                        layout = Layout.from_json(rec.value)
                        if layout is not None:
                            found[layout.who] = layout
        finally:
            consumer.close()
        now = time.time()
        return {who: lay for who, lay in found.items() if now - lay.ts <= max_age}


def check_against(mine: Layout, others: dict, *, mine_is_node: bool) -> None:
    """Raise :class:`LayoutMismatch` naming both sides when ``mine`` disagrees with any announcement in ``others``."""
    problems = []
    for who, other in sorted(others.items()):
        if who == mine.who or who.startswith("node ") == mine_is_node:
            continue  # only a node against a connector
        msg = disagreement(mine, other) if mine_is_node else disagreement(other, mine)
        if msg:
            problems.append(msg)
    if problems:
        raise LayoutMismatch("; ".join(problems))
