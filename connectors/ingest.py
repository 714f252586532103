"""The edge every connector shares: bytes or rows in, checked and routed records out, bad ones dead-lettered.

:func:`parse_payload` turns bytes into JSON records (an object, or an array of
objects), :class:`Ingestor` checks each against the schema, picks its node,
and hands it to the :class:`~streamlearn.connectors.publish.Publisher`; any
:class:`~streamlearn.connectors.errors.RecordError` sends the record to the dead-letter
topic and is counted, and ingestion goes on with the next record.

Delayed labels: an unlabelled reading with a key is remembered (key -> node,
bounded), so the label record for that key goes to the same node topic, after
the reading, whatever the node mapping. A label whose key was not seen goes
where the node mapping sends it if the record carries the routing value (a
fixed node, the routing field, the MQTT topic level); otherwise it is a bad record.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

from streamlearn.connectors.errors import RecordError
from streamlearn.kafka.labels import LabelRecord, PendingByKey
from streamlearn.connectors.pacing import Pacer
from streamlearn.connectors.routing import NodeRouter
from streamlearn.connectors.schema import StreamSchema
from streamlearn.kafka.codecs import DecodeError, _load_json

__all__ = ["Ingestor", "Outcome", "parse_payload", "DEFAULT_MAX_BATCH_BYTES"]

DEFAULT_MAX_BATCH_BYTES = 16 << 20
_NO_VALUE = object()


def parse_payload(raw, *, max_bytes: int, batch: bool = True) -> list:
    """JSON bytes -> list of records: one object, or (``batch``) an array of them. RecordError otherwise.

    The elements of an array are not checked here (each is checked on its own,
    so one bad element does not spoil the others).

    Examples
    --------
    >>> parse_payload(b'[{"a": 1}, 2]', max_bytes=100)
    [{'a': 1}, 2]
    >>> parse_payload(b'{"a": NaN}', max_bytes=100)
    Traceback (most recent call last):
    ...
    streamlearn.connectors.errors.RecordError: non-finite number literal is not allowed (field '<json>', value 'NaN')
    """
    try:
        obj = _load_json(raw, "payload", max_bytes)
    except DecodeError as exc:
        raise RecordError(exc.reason, field=exc.field, value=exc.value) from None
    if isinstance(obj, list) and batch:
        return obj
    if isinstance(obj, dict):
        return [obj]
    raise RecordError("must be a JSON object" + (" or an array of objects" if batch else ""), field="<root>",
                      value=type(obj).__name__)


def _element_bytes(obj) -> bytes:
    """An element of a batch as bytes, for the dead-letter topic (always encodable: ASCII escapes)."""
    try:
        return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    except (ValueError, TypeError, RecursionError):
        try:
            return repr(obj)[:4096].encode("ascii", "backslashreplace")
        except RecursionError:
            return b"<record nested too deeply to print>"


@dataclass
class Outcome:
    """What became of one payload: send futures of the accepted records, (index, error) of the bad ones."""

    futures: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    accepted: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors


class Ingestor:
    """Check, route and publish records; dead-letter and count the bad ones; never raise for bad input.

    Parameters
    ----------
    schema
        The stream's :class:`~streamlearn.connectors.schema.StreamSchema`.
    router
        The :class:`~streamlearn.connectors.routing.NodeRouter`.
    publisher
        A :class:`~streamlearn.connectors.publish.Publisher` (or anything with ``reading``,
        ``label``, ``deadletter`` and ``stats``).
    pacer
        Optional :class:`~streamlearn.connectors.pacing.Pacer`: each checked record waits until due.
    max_pending
        Unlabelled keyed readings whose node is remembered for their label.
    max_batch_bytes
        Largest payload holding an array of records.

    Examples
    --------
    >>> class Printer:  # stands in for the Kafka publisher
    ...     def reading(self, node, r): print("node", node, r.x, r.y)
    ...     def label(self, node, rec): print("label for", rec.key, "to node", node, rec.y)
    ...     def deadletter(self, raw, reason, *, source, offset): print("dead:", reason)
    >>> schema = StreamSchema(["temp"], label="state", classes=["ok", "fault"], key="id")
    >>> ingest = Ingestor(schema, NodeRouter(round_robin=2), Printer())
    >>> out = ingest.payload(b'[{"id": "a", "temp": 20, "state": null}, {"temp": "hot", "state": "ok"},'
    ...                      b' {"id": "a", "state": "fault"}]', source="demo", offset=1)
    node 0 {'temp': 20.0} None
    dead: must be a number, not a string (row 1, field 'temp', value 'hot')
    label for a to node 0 fault
    >>> out.accepted, [(i, e.field) for i, e in out.errors]
    (2, [(1, 'temp')])
    """

    def __init__(self, schema: StreamSchema, router: NodeRouter, publisher, *, pacer: Pacer | None = None,
                 max_pending: int = 100_000, max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES):
        self.schema = schema
        self.router = router
        self.publisher = publisher
        self.pacer = pacer
        self.max_batch_bytes = max(int(max_batch_bytes), schema.max_bytes)
        self._label_nodes = PendingByKey(max_pending)
        # Requests may be ingested in parallel (the HTTP connector's workers): the late-label table and the
        # router's round-robin turn are the state they share, each touched under this lock, briefly.
        self._lock = threading.Lock()
        declare = getattr(publisher, "declare", None)  # a Kafka Publisher; the doctest's and fuzz's fakes have none
        if declare is not None:
            declare(schema.layout())  # stops here when a running node expects another layout
        metrics = getattr(publisher, "metrics", None)
        if metrics is not None:
            metrics.track_pending(self._label_nodes.__len__)

    def payload(self, raw, *, source: str, offset: int | None, route_value: Any = _NO_VALUE,
                route_field: str | None = None, node: int | None = None, batch: bool = True) -> Outcome:
        """Ingest a JSON payload: one record, or (``batch``) an array of records.

        ``offset`` is the line or message number (for the dead-letter headers);
        ``route_value`` (with ``route_field`` naming it) chooses the node instead of
        the router's own rule; ``node`` fixes it outright.
        """
        out = Outcome()
        limit = self.max_batch_bytes if batch else self.schema.max_bytes
        try:
            records = parse_payload(raw, max_bytes=limit, batch=batch)
        except RecordError as exc:
            exc = exc.with_row(offset)
            self._dead(raw, exc, source, offset)
            out.errors.append((None, exc))
            return out
        raw = bytes(raw)
        single = len(records) == 1 and raw.lstrip()[:1] == b"{"  # one object: dead-letter it byte for byte
        for i, obj in enumerate(records):
            raw_i = raw if single else _element_bytes(obj)
            if len(raw_i) > self.schema.max_bytes:
                exc = RecordError(f"record too large (limit {self.schema.max_bytes} bytes)", field="<payload>",
                                  value=f"{len(raw_i)} bytes").with_row(offset)
                self._dead(raw_i, exc, source, offset)
                out.errors.append((None if single else i, exc))
                continue
            result = self.record(obj, raw_i, source=source, offset=offset, route_value=route_value,
                                 route_field=route_field, node=node)
            if isinstance(result, RecordError):
                out.errors.append((None if single else i, result))
            else:
                out.accepted += 1
                out.futures.append(result)
        return out

    def record(self, obj, raw, *, source: str, offset: int | None, text: bool = False,
               route_value: Any = _NO_VALUE, route_field: str | None = None, node: int | None = None):
        """Ingest one decoded record (``text``: a CSV row of strings): its send future, or the RecordError."""
        try:
            checked = self.schema.check_text(obj) if text else self.schema.check(obj)
            if isinstance(checked, LabelRecord):
                with self._lock:
                    remembered = self._label_nodes.pop(checked.key)
                if node is None:
                    node = remembered if remembered is not None else \
                        self._route(obj, route_value, route_field, label=True)
                if self.pacer is not None:
                    self.pacer.wait(checked.ts)
                return self.publisher.label(node, checked)
            if node is None:
                node = self._route(obj, route_value, route_field, label=False)
            if self.pacer is not None:
                self.pacer.wait(checked.ts)
            future = self.publisher.reading(node, checked)
            if checked.y is None and checked.key is not None:
                with self._lock:
                    self._label_nodes.put(checked.key, node)  # where its label must go
            return future
        except RecordError as exc:
            if exc.row is None and offset is not None:
                exc = exc.with_row(offset)
            self._dead(raw, exc, source, offset)
            return exc

    def _route(self, obj, route_value, route_field, label: bool) -> int:
        r = self.router
        if route_value is not _NO_VALUE:
            return r.by_value(route_value, route_field)
        if r.by_field:
            if r.field not in obj:
                raise RecordError("missing field (it chooses the node)", field=r.field)
            return r.by_value(obj[r.field], r.field)
        if label and not r.fixed:
            key = self.schema.key
            raise RecordError("label for a key with no unlabelled reading seen by this connector "
                              "(round-robin cannot place it)", field=key, value=obj.get(key))
        with self._lock:
            return r.next_node()

    def _dead(self, raw, exc: RecordError, source: str, offset) -> None:
        if not isinstance(raw, (bytes, bytearray, memoryview)):
            raw = _element_bytes(raw)
        self.publisher.deadletter(raw, exc, source=source, offset=-1 if offset is None else offset)

