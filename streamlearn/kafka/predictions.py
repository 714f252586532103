"""Predictions out: a node's test-then-train predictions on ``<prefix>.predictions``, and reading them back.

Every node publishes what it predicted, for each reading, before it learned it (schema:
docs/schemas.md, "Prediction record"; JSON Schema: docs/prediction.schema.json). One Kafka
record (key: the node id, decimal; sent plain, or gzip-compressed where kafka-python lacks the compiled
``crc32c`` module: :func:`producer_overrides`) carries a list of
predictions: those of the mini-batches learned within :data:`LINGER` seconds (0.1), at most
:attr:`PredictionPublisher.max_rows` (1000). kafka-python's cost is per record (compression,
CRC-32C, which is pure Python without the ``crc32c`` module, and per produce request), so fewer,
larger records keep the node fast: the node sends what it kept once per :data:`LINGER` (or per
:attr:`PredictionPublisher.max_pending` predictions), as records of at most ``max_rows`` sent
back to back, which its producer puts in one request::

    {"type": "predictions", "node": 0, "classes": [0, 1], "predictions": [
      {"seq": 1042, "key": "nsw", "ts": 1700000000.0, "prediction": 1, "proba": [0.2, 0.8],
       "epoch": "5f0c2a9e13d4", "syncs": 3, "step": 104}, ...]}

``key``, ``ts`` and ``epoch`` are left out when null, ``late`` when false.

A reading is predicted once, with the model as it was when the node predicted it: a labelled one
in its test-then-train step, one held for its late label on arrival (``"late": true``; the node
scores it by that prediction when the label comes, and learns it then). ``prediction`` keeps the
type of the labels (an int stays an int, a string a string); ``proba`` follows ``classes``. A
regression node (float labels) publishes ``prediction`` as a float, with ``classes`` and ``proba``
null. A prediction is null when the model could predict nothing yet (a river learner before its
first label).

:class:`PredictionPublisher` is the node's side (no learning in it: the node hands it plain
arrays); :class:`PredictionReader` follows the topic (``streamlearn tail predictions``).

Examples
--------
>>> import numpy as np
>>> sent = []
>>> class _Producer:
...     def send(self, topic, value, key=None, partition=None):
...         sent.append((topic, key, value))
>>> pub = PredictionPublisher(_Producer(), "sl.predictions", node=2, classes=["DOWN", "UP"])
>>> pub.note_source(offset=7, key="nsw", ts=1700000000.0)
>>> pub.add(seqs=np.array([41, 42]), proba=np.array([[0.9, 0.1], [0.25, 0.75]]), offsets=np.array([6, 7]),
...         step=4, syncs=1, epoch="5f0c2a9e13d4")
>>> pub.flush(), pub.published
(1, 2)
>>> topic, key, value = sent[0]
>>> rec = decode_predictions(value)
>>> key, rec["node"], [(p["seq"], p.get("key"), p["prediction"], p["proba"]) for p in rec["predictions"]]
(b'2', 2, [(41, None, 'DOWN', [0.9, 0.1]), (42, 'nsw', 'UP', [0.25, 0.75])])
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from itertools import chain, repeat
from typing import Iterator, Sequence

import numpy as np

from streamlearn.errors import ConfigError
from streamlearn.kafka import proba_text
from streamlearn.kafka.codecs import DecodeError, _load_json

__all__ = [
    "MAX_PREDICTION_RECORD_BYTES",
    "PROBA_DIGITS",
    "LINGER",
    "PredictionPublisher",
    "PredictionReader",
    "encode_predictions",
    "decode_predictions",
    "producer_overrides",
]

#: A prediction record stays under this (Kafka's default max.message.bytes is 1 MiB); bigger rounds are split.
MAX_PREDICTION_RECORD_BYTES = 900_000
#: Probabilities are written with this many significant digits (shorter records; the prediction itself is exact).
PROBA_DIGITS = 6
_PROBA_FORMAT = f"%.{PROBA_DIGITS}g"
_MAX_ROWS = 1000  # predictions per record at most
_RECORDS_PER_FLUSH = 8  # default max_pending: at most so many full records kept (see PredictionPublisher)
#: Seconds a prediction may wait to be sent with others (kafka-python's cost is per record: gzip, CRC-32C).
LINGER = 0.1
_FIELDS = ("seq", "key", "ts", "prediction", "proba", "epoch", "syncs", "step", "late")
_REQUIRED = ("seq", "prediction", "step", "syncs")
_DEFAULTS = {"key": None, "ts": None, "epoch": None, "late": False}  # what a record leaves out


def _dump(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")


def encode_predictions(node: int, classes: Sequence | None, rows: list) -> bytes:
    """One prediction record: ``rows`` are prediction objects (see the module doc)."""
    return _dump({"type": "predictions", "node": node, "classes": None if classes is None else list(classes),
                  "predictions": rows})


def decode_predictions(data) -> dict:
    """Decode and check a prediction record; raise :class:`~streamlearn.kafka.codecs.DecodeError` naming the field.

    Checks the envelope (``type``, ``node``, ``classes``, ``predictions``) and, in every prediction,
    the required fields and the types of all of them (docs/prediction.schema.json says the same).

    Examples
    --------
    >>> decode_predictions(b'{"type":"predictions","node":1,"classes":null,"predictions":[]}')["node"]
    1
    >>> decode_predictions(b'{"type":"predictions","node":1,"classes":null,"predictions":[{"seq":3}]}')
    Traceback (most recent call last):
    ...
    streamlearn.kafka.codecs.DecodeError: required field missing (field 'predictions[0].prediction')
    """
    obj = _load_json(data, "prediction record", 16 << 20)
    if not isinstance(obj, dict):
        raise DecodeError("a prediction record is a JSON object", field="<root>", value=obj)
    if obj.get("type") != "predictions":
        raise DecodeError("type must be 'predictions'", field="type", value=obj.get("type"))
    node = obj.get("node")
    if not _is_int(node) or node < 0:
        raise DecodeError("node must be an integer >= 0", field="node", value=node)
    classes = obj.get("classes")
    if classes is not None and not isinstance(classes, list):
        raise DecodeError("classes must be a list or null", field="classes", value=classes)
    rows = obj.get("predictions")
    if not isinstance(rows, list):
        raise DecodeError("predictions must be a list", field="predictions", value=rows)
    unknown = set(obj) - {"type", "node", "classes", "predictions"}
    if unknown:
        raise DecodeError("unknown field", field=sorted(unknown)[0])
    for i, row in enumerate(rows):
        _check_row(row, f"predictions[{i}]", classes)
    return obj


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_row(row, where: str, classes) -> None:
    if not isinstance(row, dict):
        raise DecodeError("a prediction is a JSON object", field=where, value=row)
    for name in _REQUIRED:
        if name not in row:
            raise DecodeError("required field missing", field=f"{where}.{name}")
    unknown = set(row) - set(_FIELDS)
    if unknown:
        raise DecodeError("unknown field", field=f"{where}.{sorted(unknown)[0]}")
    for name in ("seq", "step", "syncs"):
        if not _is_int(row[name]) or row[name] < 0:
            raise DecodeError(f"{name} must be an integer >= 0", field=f"{where}.{name}", value=row[name])
    if row.get("key") is not None and not isinstance(row["key"], str):
        raise DecodeError("key must be a string or null", field=f"{where}.key", value=row["key"])
    if row.get("ts") is not None and not _is_number(row["ts"]):
        raise DecodeError("ts must be a finite number or null", field=f"{where}.ts", value=row["ts"])
    if row.get("epoch") is not None and not isinstance(row["epoch"], str):
        raise DecodeError("epoch must be a string or null", field=f"{where}.epoch", value=row["epoch"])
    if not isinstance(row.get("late", False), bool):
        raise DecodeError("late must be a boolean", field=f"{where}.late", value=row["late"])
    pred = row["prediction"]
    if classes is not None and pred is not None and pred not in classes:
        raise DecodeError("prediction is not one of the classes", field=f"{where}.prediction", value=pred)
    if classes is None and pred is not None and not _is_number(pred):
        raise DecodeError("a regression prediction is a finite number or null", field=f"{where}.prediction",
                          value=pred)
    proba = row.get("proba")
    if proba is not None:
        if classes is None or not isinstance(proba, list) or len(proba) != len(classes) \
                or not all(_is_number(p) and 0.0 <= p <= 1.0 for p in proba):
            raise DecodeError("proba must be null or one probability in [0, 1] per class", field=f"{where}.proba",
                              value=proba)


def producer_overrides() -> dict:
    """Settings of the producer a node sends its predictions with: gzip unless kafka-python has the ``crc32c``
    C module. kafka-python checksums every record batch with CRC-32C, in pure Python without that module
    (about 0.3 µs per byte here): gzip first shrinks a prediction from ~100 to ~14 bytes to checksum, at
    kafka-python's fixed level 9 (~7 µs per prediction); with the C module, sending them plain is cheaper.

    The records of one :meth:`PredictionPublisher.flush` go back to back: ``linger_ms`` (5) and a
    ``batch_size`` of :data:`MAX_PREDICTION_RECORD_BYTES` let the producer put them in one record batch
    and one request (each request and each wake-up of its I/O thread costs the node ~1 ms of Python time
    on a busy machine; records stay what they are, and a batch stays under the broker's 1 MiB)."""
    try:
        from kafka.record.util import crc32c_c
    except ImportError:  # another kafka-python layout: be safe
        crc32c_c = None
    return {"compression_type": None if crc32c_c is not None else "gzip", "batch_size": MAX_PREDICTION_RECORD_BYTES,
            "linger_ms": 5}


class PredictionPublisher:
    """Collects a node's predictions and sends them as prediction records (see the module doc).

    Parameters
    ----------
    producer
        A ``KafkaProducer`` (or anything with its ``send(topic, value, key=, partition=)``).
    topic
        ``<prefix>.predictions``.
    node
        The node id: the record key and the record's ``node``.
    classes
        The declared classes, in order (``proba`` columns follow them); None for a regression node.
    max_rows
        Predictions per record at most.
    linger
        Seconds the oldest prediction kept may wait for others (:meth:`flush_due`).
    max_pending
        Predictions kept at most: that many are sent at once, as records of ``max_rows`` (``max_rows``
        sends each record as soon as it is full). Default: about what one producer batch holds
        (:data:`MAX_PREDICTION_RECORD_BYTES`, ~10 bytes per class and 64 more per prediction), between
        ``max_rows`` and ``8 * max_rows`` (8000 predictions of 2 classes).

    The node calls :meth:`note_source` for each record with a key or an event time, :meth:`add`
    after each step (and for readings held for their late label), :meth:`flush_due` once per
    round of its loop and :meth:`flush` at shutdown. Send errors are counted (``send_errors``),
    never raised.
    """

    def __init__(self, producer, topic: str, node: int, classes: Sequence | None, *, max_rows: int = _MAX_ROWS,
                 linger: float = LINGER, max_pending: int | None = None):
        if not _is_int(max_rows) or max_rows < 1:
            raise ConfigError(f"max_rows must be an integer >= 1, got {max_rows!r}")
        if max_pending is None:  # one producer batch's worth: fewer requests, and no huge text at once
            per_batch = MAX_PREDICTION_RECORD_BYTES // (64 + 10 * (1 if classes is None else len(classes)))
            max_pending = max(max_rows, min(_RECORDS_PER_FLUSH * max_rows, per_batch))
        if not _is_int(max_pending) or max_pending < 1:
            raise ConfigError(f"max_pending must be an integer >= 1, got {max_pending!r}")
        if isinstance(linger, bool) or not isinstance(linger, (int, float)) or not linger >= 0:
            raise ConfigError(f"linger must be a number of seconds >= 0, got {linger!r}")
        self.linger, self._since = float(linger), 0.0
        self.producer, self.topic, self.node = producer, topic, node
        self.classes = None if classes is None else [c.item() if isinstance(c, np.generic) else c for c in classes]
        self.max_rows, self.max_pending = max_rows, max_pending
        self.key = str(node).encode()
        # JSON texts: each class label (a prediction), and the start of every record
        self._label_json = None if self.classes is None else [_dump(c).decode() for c in self.classes]
        self._head = _dump({"type": "predictions", "node": node, "classes": self.classes})[:-1].decode() \
            + ',"predictions":['
        self._head_bytes = self._head.encode("utf-8")
        self._chunks: list = []  # what add() kept since the last flush
        self._epoch: tuple = (None, "")  # the last epoch and its JSON field
        self.pending = 0  # predictions in it
        self.published = self.records = self.send_errors = 0
        self.last_error: str | None = None
        # offset of a samples record -> (key, event time) of its readings; offsets in the order noted
        self._source: dict = {}
        self._order: deque = deque()

    # ---- where a reading came from ---------------------------------------------------------------

    def note_source(self, offset: int, key: str | None, ts: float | None) -> None:
        """The readings of the samples record at ``offset`` have this key and event time."""
        if self._order and offset <= self._order[-1]:  # read again from earlier (a seek back): start over
            self._source.clear()
            self._order.clear()
        self._source[offset] = (_key_field(key), _ts_field(ts))
        self._order.append(offset)

    def forget_before(self, offset: int) -> None:
        """Drop what :meth:`note_source` kept for records before ``offset`` (all their readings learned)."""
        order, source = self._order, self._source
        while order and order[0] < offset:
            source.pop(order.popleft(), None)

    # ---- predictions -----------------------------------------------------------------------------

    def add(self, seqs: np.ndarray, proba: np.ndarray | None = None, *, values: np.ndarray | None = None,
            offsets: np.ndarray | None = None, keys: Sequence | None = None, ts: Sequence | None = None,
            step: int | np.ndarray = 0, syncs: int = 0, epoch: str | None = None, late: bool = False,
            skip: np.ndarray | None = None) -> None:
        """Predictions of readings ``seqs``: ``proba`` (n, classes) in the declared order (a NaN row: no
        prediction), or, for regression, ``values`` (n,). Key and event time come from ``keys``/``ts``,
        else from :meth:`note_source` by ``offsets``. ``skip`` (bool, n): rows not to publish (a
        late-labelled reading, published on arrival). ``step``, ``syncs``, ``epoch``: the model version (``step``
        may be one per reading, ascending: a run of mini-batches learnt in one call).

        Called once per mini-batch: it only keeps copies; :meth:`flush` writes the JSON of all of them at once.
        """
        if keys is not None and ts is None:
            ts = [None] * len(keys)
        if skip is not None and skip.any():
            keep = ~skip
            pick = (lambda a: None if a is None else np.asarray(a)[keep])  # fancy indexing: a copy
            seqs, proba, values, offsets = pick(seqs), pick(proba), pick(values), pick(offsets)
            if isinstance(step, np.ndarray):
                step = step[keep]
            if keys is not None:
                keys, ts = [k for k, s in zip(keys, skip) if not s], [t for t, s in zip(ts, skip) if not s]
        else:  # copies: the caller's arrays may change before the flush
            seqs = np.array(seqs)
            proba = None if proba is None else np.array(proba)
            values = None if values is None else np.array(values)
        n = len(seqs)
        if n == 0:
            return
        if keys is not None:
            keys, ts = [_key_field(k) for k in keys], [_ts_field(t) for t in ts]
        else:  # looked up now: the source notes of these offsets may be forgotten before the flush
            keys, ts = self._sources(offsets, n)
        # null key, ts and epoch and a false late are left out (fewer bytes to compress and checksum)
        if epoch != self._epoch[0]:  # the epoch's JSON once per epoch, not per mini-batch
            self._epoch = (epoch, '' if epoch is None else ',"epoch":' + json.dumps(epoch))
        head, end = '%s,"syncs":%d,"step":' % (self._epoch[1], syncs), ',"late":true}' if late else '}'
        if isinstance(step, np.ndarray):  # a tail per reading: (each step's text once, how many readings it closes)
            steps, counts = np.unique(step, return_counts=True)
            tail = ([f"{head}{s}{end}" for s in steps.tolist()], counts)
        else:
            tail = "%s%d%s" % (head, step, end)
        if not self._chunks:
            self._since = time.monotonic()
        self._chunks.append((seqs, proba, values, keys, ts, tail))
        self.pending += n
        if self.pending >= self.max_pending:
            self.flush()

    def _compiled_rows(self) -> tuple | None:
        """The JSON text of every prediction kept since the last flush, written by compiled code
        (:func:`~streamlearn.kafka.proba_text.prediction_rows`: the bytes of :meth:`_rows`, a few times faster), as
        ``(text, ends)``; None where it does not apply (no numba, regression, keys or event times to write)."""
        chunks = self._chunks
        if not proba_text.AVAILABLE or self.classes is None or not self.classes or \
                any(c[3] is not None for c in chunks):
            return None
        tails, counts = [], []
        for c in chunks:
            if type(c[5]) is tuple:
                tails += c[5][0]
                counts.append(c[5][1])
            else:
                tails.append(c[5])
                counts.append([len(c[0])])
        tail_of = np.repeat(np.arange(len(tails)), np.concatenate(counts))
        got = proba_text.prediction_rows(np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks]),
                                         self._label_json, tails, tail_of, _PROBA_FORMAT)
        self._chunks, self.pending = [], 0
        return got

    def _rows(self) -> list:
        """The JSON text of every prediction kept since the last flush (each array op once for all of them)."""
        chunks, self._chunks, self.pending = self._chunks, [], 0
        seqs = np.concatenate([c[0] for c in chunks]).tolist()
        if self.classes is not None:
            preds, probs = self._classify(np.concatenate([c[1] for c in chunks]))
        else:
            preds, probs = self._regress(np.concatenate([c[2] for c in chunks]))
        tails = list(chain.from_iterable(np.repeat(np.array(c[5][0], dtype=object), c[5][1]).tolist()
                                         if type(c[5]) is tuple else repeat(c[5], len(c[0])) for c in chunks))
        if all(c[3] is None for c in chunks):  # no key nor event time anywhere (see _sources): nothing to write
            return [f'{{"seq":{s},"prediction":{p},"proba":{q}{e}' for s, p, q, e in zip(seqs, preds, probs, tails)]
        keys = [k for c in chunks for k in (c[3] or repeat("", len(c[0])))]
        ts = [t for c in chunks for t in (c[4] or repeat("", len(c[0])))]
        return [f'{{"seq":{s}{k}{t},"prediction":{p},"proba":{q}{e}'
                for s, k, t, p, q, e in zip(seqs, keys, ts, preds, probs, tails)]

    def _classify(self, proba: np.ndarray) -> tuple:
        """JSON texts of the predicted classes and of the probability rows."""
        P = np.asarray(proba, dtype=np.float64)
        n, k = P.shape
        if k == 0:
            return [_NULL] * n, [_NULL] * n
        finite = np.isfinite(P).all(axis=1)
        if not finite.all():
            P = np.where(finite[:, None], P, 0.0)
        label = self._label_json
        preds = [label[i] for i in P.argmax(axis=1).tolist()]
        # one %-format for the whole matrix (6 significant digits), cut into its rows
        row = "[" + ",".join([_PROBA_FORMAT] * k) + "]\n"
        probs = ((row * n) % tuple(P.ravel().tolist())).split("\n")[:-1]
        if not finite.all():
            for i in np.flatnonzero(~finite).tolist():
                preds[i] = probs[i] = _NULL
        return preds, probs

    @staticmethod
    def _regress(values) -> tuple:
        v = np.asarray(values, dtype=np.float64).tolist()
        return [_number(x) for x in v], [_NULL] * len(v)

    def _sources(self, offsets, n: int) -> tuple:
        """JSON fields of the keys and event times of readings at ``offsets`` (None, None: none noted)."""
        if offsets is None or not self._source:
            return None, None
        get, none = self._source.get, ("", "")
        pairs = [get(o, none) for o in offsets.tolist()]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def flush_due(self, now: float | None = None) -> int:
        """:meth:`flush` if the oldest prediction kept waited ``linger`` seconds; the number of records sent."""
        if self._chunks and (time.monotonic() if now is None else now) - self._since >= self.linger:
            return self.flush()
        return 0

    def flush(self) -> int:
        """Send what was kept (one record per :attr:`max_rows` predictions); the number of records sent."""
        if not self._chunks:
            return 0
        compiled = self._compiled_rows()
        sent = 0
        if compiled is not None:
            text, ends = compiled
            for i in range(0, len(ends), self.max_rows):
                sent += self._send_span(text, ends, i, min(i + self.max_rows, len(ends)))
            return sent
        rows = self._rows()
        for i in range(0, len(rows), self.max_rows):
            sent += self._send(rows[i:i + self.max_rows])
        return sent

    def _send_span(self, text: bytes, ends: np.ndarray, a: int, b: int) -> int:
        """:meth:`_send` of rows ``a`` to ``b`` of compiled ``text`` (each row ends at ``ends``, then a comma)."""
        start = 0 if a == 0 else int(ends[a - 1]) + 1
        data = self._head_bytes + text[start:int(ends[b - 1])] + b"]}"
        if len(data) > MAX_PREDICTION_RECORD_BYTES and b - a > 1:  # many classes: halve until it fits
            half = (a + b) // 2
            return self._send_span(text, ends, a, half) + self._send_span(text, ends, half, b)
        return self._send_data(data, b - a)

    def _send(self, rows: list) -> int:
        data = (self._head + ",".join(rows) + "]}").encode("utf-8")
        if len(data) > MAX_PREDICTION_RECORD_BYTES and len(rows) > 1:  # many classes: halve until it fits
            half = len(rows) // 2
            return self._send(rows[:half]) + self._send(rows[half:])
        return self._send_data(data, len(rows))

    def _send_data(self, data: bytes, n_rows: int) -> int:
        try:
            self.producer.send(self.topic, value=data, key=self.key, partition=0)
        except Exception as exc:  # KafkaError, a full buffer: counted, the node learns on
            self.send_errors += 1
            self.last_error = str(exc)
            return 0
        self.published += n_rows
        self.records += 1
        return 1


_NULL = "null"


def _key_field(key) -> str:
    return "" if key is None else ',"key":' + json.dumps(key, ensure_ascii=False)


def _ts_field(ts) -> str:
    return "" if ts is None or not math.isfinite(ts) else ',"ts":' + repr(float(ts))


def _number(x) -> str:
    """A finite number as JSON, else null."""
    return repr(float(x)) if x is not None and math.isfinite(x) else _NULL


class PredictionReader:
    """Follows ``<prefix>.predictions``: :meth:`poll` gives the predictions that arrived, one dict each.

    Parameters
    ----------
    bootstrap, prefix
        The cluster and the topic prefix of the pipeline.
    settings
        :class:`~streamlearn.kafka.config.KafkaSettings`; default from the environment.
    from_beginning
        Read the topic from its start; else only what is published from now on.
    nodes
        Node ids to keep (None: all).

    Each prediction comes as its record's prediction object, with the fields left out filled in
    (``key``, ``ts``, ``epoch``: None; ``late``: False), plus ``node`` and ``classes``.
    Records that do not decode are counted in ``bad`` and skipped.
    """

    def __init__(self, bootstrap: str, prefix: str, settings=None, *, from_beginning: bool = False,
                 nodes: Sequence[int] | None = None):
        from kafka import KafkaConsumer, TopicPartition

        from streamlearn.kafka.config import KafkaSettings
        from streamlearn.kafka.topics import predictions_topic

        settings = KafkaSettings.from_env() if settings is None else settings
        self.nodes = None if nodes is None else set(nodes)
        self.bad = 0
        self._consumer = KafkaConsumer(**settings.consumer_kwargs(bootstrap, fetch_max_wait_ms=100))
        tp = TopicPartition(predictions_topic(prefix), 0)
        self._consumer.assign([tp])
        if from_beginning:
            self._consumer.seek_to_beginning(tp)
        else:
            self._consumer.seek(tp, self._consumer.end_offsets([tp])[tp])

    def poll(self, timeout: float = 0.1) -> list:
        """The predictions that arrived within ``timeout`` seconds, in order."""
        out = []
        for records in self._consumer.poll(timeout_ms=int(timeout * 1000)).values():
            for rec in records:
                try:
                    obj = decode_predictions(rec.value)
                except DecodeError:
                    self.bad += 1
                    continue
                node, classes = obj["node"], obj["classes"]
                if self.nodes is not None and node not in self.nodes:
                    continue
                out.extend(dict(_DEFAULTS, **row, node=node, classes=classes) for row in obj["predictions"])
        return out

    def follow(self, max_predictions: int | None = None, max_seconds: float | None = None) -> Iterator[dict]:
        """Predictions as they come, until ``max_predictions`` were given or ``max_seconds`` passed (None: no end)."""
        deadline = None if max_seconds is None else time.monotonic() + max_seconds
        given = 0
        while True:
            wait = 0.2 if deadline is None else min(0.2, max(0.0, deadline - time.monotonic()))
            for p in self.poll(wait):
                yield p
                given += 1
                if max_predictions is not None and given >= max_predictions:
                    return
            if deadline is not None and time.monotonic() >= deadline:
                return

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> "PredictionReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
