"""Delayed labels: the label record on a node topic, and the bounded table that joins it to its reading.

The wire format nodes read lives here, beside :mod:`streamlearn.kafka.codecs`; the connectors
publish label records with :func:`encode_label_json` (:mod:`streamlearn.connectors.publish`) and import this
module, never the reverse.

A reading may arrive without its label (``"y": null``) and with a ``key``; the
label comes later, in a *label record* on the same node topic::

    {"node": 0, "key": "meter-7/2024-05-01T10:30", "y": "UP", "ts": 1714559400.0}

=========  ========  ===================================================
Field      Required  Meaning
=========  ========  ===================================================
``key``    yes       the ``key`` of the reading it labels (1-256 chars)
``y``      yes       the label (boolean, integer, number or string; never null)
``node``   no        the node topic it was published to
``ts``     no        when the label was observed, Unix seconds
=========  ========  ===================================================

A label record has no ``x`` and no ``seq``: that is how a consumer tells it
from a reading (:func:`decode_node_record`). It labels the **oldest still
unlabelled reading with that key** in the same topic, so keys may be unique
reading ids (the usual case) or repeat (a sensor id whose labels come in
order). The node predicts an unlabelled reading at once, holds it in a
:class:`PendingByKey` table and, when the label comes, scores the prediction it
made then and learns the reading. Labels that match no held reading, and
readings whose label never comes (evicted oldest-first beyond ``max_items``,
or after ``ttl`` seconds), are counted.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any, Union

from streamlearn.errors import ConfigError
from streamlearn.kafka.codecs import (
    MAX_SAMPLE_JSON_BYTES,
    DecodeError,
    EncodeError,
    Sample,
    _check_int,
    _check_label,
    _check_number,
    _check_object,
    _check_str,
    _dump_json,
    _load_json,
    _sample_from_obj,
)

__all__ = ["LabelRecord", "encode_label_json", "decode_label_json", "decode_node_record", "PendingByKey"]

_INT32_MAX = (1 << 31) - 1


@dataclass(frozen=True)
class LabelRecord:
    """The late label of the reading(s) with ``key``.

    Examples
    --------
    >>> LabelRecord(key="r-17", y="UP")
    LabelRecord(key='r-17', y='UP', node=None, ts=None)
    """

    key: str
    y: Union[bool, int, float, str]
    node: int | None = None
    ts: float | None = None


def _label_from_obj(obj, err) -> LabelRecord:
    _check_object(obj, "label record", err, ("key", "y"), ("node", "ts"))
    y = _check_label(obj["y"], "y", err)
    if y is None:
        raise err("a label record needs a label", field="y", value=None)
    return LabelRecord(
        key=_check_str(obj["key"], "key", err),
        y=y,
        node=_check_int(obj.get("node"), "node", err, 0, _INT32_MAX, optional=True),
        ts=_check_number(obj.get("ts"), "ts", err, optional=True),
    )


def encode_label_json(record: LabelRecord) -> bytes:
    """Encode a label record as compact UTF-8 JSON (None fields left out).

    Examples
    --------
    >>> encode_label_json(LabelRecord(key="r-17", y="UP", node=0))
    b'{"node":0,"key":"r-17","y":"UP"}'
    """
    if not isinstance(record, LabelRecord):
        raise EncodeError("expected a LabelRecord", field="<root>", value=type(record).__name__)
    obj = {"node": record.node, "key": record.key, "y": record.y, "ts": record.ts}
    obj = {k: v for k, v in obj.items() if v is not None or k == "y"}
    clean = _label_from_obj(obj, EncodeError)
    return _dump_json({k: getattr(clean, k) for k in obj})


def decode_label_json(data: bytes) -> LabelRecord:
    """Decode and validate a label record; raise :class:`DecodeError` naming the field otherwise.

    Examples
    --------
    >>> decode_label_json(b'{"key": "r-17", "y": 1}')
    LabelRecord(key='r-17', y=1, node=None, ts=None)
    """
    return _label_from_obj(_load_json(data, "label record", MAX_SAMPLE_JSON_BYTES), DecodeError)


def decode_node_record(data: bytes) -> Union[Sample, LabelRecord]:
    """A JSON record of a samples topic: a reading (:class:`Sample`) or, without ``x``, a :class:`LabelRecord`.

    The node service's JSON path calls this instead of ``decode_sample_json``.
    Raises only :class:`DecodeError`.

    Examples
    --------
    >>> decode_node_record(b'{"seq": 3, "x": {"a": 1}, "y": null, "key": "r-17"}').key
    'r-17'
    >>> decode_node_record(b'{"key": "r-17", "y": "UP"}')
    LabelRecord(key='r-17', y='UP', node=None, ts=None)
    """
    obj = _load_json(data, "record", MAX_SAMPLE_JSON_BYTES)
    if isinstance(obj, dict) and "x" not in obj and "seq" not in obj:
        return _label_from_obj(obj, DecodeError)
    return _sample_from_obj(obj, DecodeError)


class PendingByKey:
    """Items waiting for their label, first in first out per key, bounded in count and age.

    Parameters
    ----------
    max_items
        Most items held; putting one more evicts the oldest.
    ttl
        Seconds an item may wait; None: no limit. Expired items are dropped by
        :meth:`put` and :meth:`expire`.
    clock
        Seconds, monotonic (tests pass their own).

    Examples
    --------
    >>> table = PendingByKey(max_items=2)
    >>> table.put("a", 1), table.put("a", 2), table.put("b", 3)
    ([], [], [('a', 1)])
    >>> table.pop("a"), table.pop("a"), len(table)
    (2, None, 1)
    """

    def __init__(self, max_items: int = 100_000, ttl: float | None = None, clock=time.monotonic):
        if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
            raise ConfigError(f"max_items must be an integer >= 1, got {max_items!r}")
        self.max_items = max_items
        self.ttl = ttl
        self._clock = clock
        self._order: OrderedDict[int, tuple] = OrderedDict()  # ticket -> (key, item, time put)
        self._by_key: dict[Any, deque] = {}
        self._next = 0

    def __len__(self) -> int:
        return len(self._order)

    def put(self, key, item) -> list:
        """Hold ``item`` under ``key``; return the (key, item) pairs evicted to make room or expired."""
        now = self._clock()
        dropped = self.expire(now)
        while len(self._order) >= self.max_items:
            dropped.append(self._drop_oldest())
        ticket = self._next
        self._next += 1
        self._order[ticket] = (key, item, now)
        self._by_key.setdefault(key, deque()).append(ticket)
        return dropped

    def pop(self, key):
        """The oldest item held under ``key`` (removed), or None."""
        tickets = self._by_key.get(key)
        if not tickets:
            return None
        ticket = tickets.popleft()
        if not tickets:
            del self._by_key[key]
        return self._order.pop(ticket)[1]

    def expire(self, now: float | None = None) -> list:
        """Drop and return the (key, item) pairs older than ``ttl``."""
        if self.ttl is None:
            return []
        now = self._clock() if now is None else now
        dropped = []
        while self._order:
            _, (_, _, t) = next(iter(self._order.items()))
            if now - t <= self.ttl:
                break
            dropped.append(self._drop_oldest())
        return dropped

    def _drop_oldest(self) -> tuple:
        # The globally oldest item is also the oldest of its key: first in its deque.
        ticket, (key, item, _) = self._order.popitem(last=False)
        tickets = self._by_key[key]
        tickets.popleft()
        if not tickets:
            del self._by_key[key]
        return key, item
