"""Status messages: what a node service or the sync service reports about itself, every second or so.

A status is a small JSON object on ``<prefix>.status`` (schema in docs/schemas.md)::

    {"type": "status", "role": "node", "node": 3, "ts": 1700000000.0, "samples": 1200, ...}

``role`` is ``"node"`` (with ``node``) or ``"sync"``. Non-finite numbers are written as
``null``. The demo renders them, the tests read them: :class:`StatusReader` keeps the latest
status of every node and of the sync service. :func:`model_hash` gives the short model
fingerprint statuses carry, so equal models can be told from a distance.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from typing import Any, Callable, Mapping

import numpy as np

from streamlearn.errors import ConfigError
from streamlearn.kafka.codecs import DecodeError, EncodeError, _load_json

__all__ = [
    "ROLES",
    "MAX_STATUS_BYTES",
    "model_hash",
    "encode_status",
    "decode_status",
    "StatusReader",
]

ROLES = ("node", "sync")
MAX_STATUS_BYTES = 64 << 10
_MAX_DEPTH = 4


def model_hash(model) -> str:
    """16 hex digits of BLAKE2b over the model as little-endian float32: equal models, equal hashes.

    Examples
    --------
    >>> import torch
    >>> model_hash(torch.zeros(3)) == model_hash(np.zeros(3, dtype=np.float64))
    True
    >>> len(model_hash(torch.ones(3)))
    16
    """
    if hasattr(model, "detach") and hasattr(model, "cpu"):  # torch.Tensor, without importing torch
        model = model.detach().cpu().numpy()
    arr = np.ascontiguousarray(np.asarray(model), dtype="<f4")
    return hashlib.blake2b(memoryview(arr.reshape(-1)).cast("B"), digest_size=8).hexdigest()


def _clean(value, where: str, depth: int = 0):
    """A JSON-able copy: NaN/inf become None, numpy scalars plain numbers, tuples lists."""
    if depth > _MAX_DEPTH:
        raise EncodeError(f"nested deeper than {_MAX_DEPTH} levels", field=where)
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_clean(v, f"{where}[]", depth + 1) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _clean(v, f"{where}.{k}", depth + 1) for k, v in value.items()}
    raise EncodeError("status values must be numbers, strings, booleans, lists or objects", field=where,
                      value=type(value).__name__)


def encode_status(status: Mapping[str, Any]) -> bytes:
    """Encode a status dict as compact JSON; adds ``"type": "status"``, NaN/inf become null.

    ``role`` must be ``"node"`` (then ``node`` is an int >= 0) or ``"sync"``; ``ts`` is
    filled with the current time when missing.

    Examples
    --------
    >>> data = encode_status({"role": "node", "node": 1, "ts": 5.0, "accuracy": float("nan"), "drifts": (3, 9)})
    >>> data
    b'{"type":"status","role":"node","node":1,"ts":5.0,"accuracy":null,"drifts":[3,9]}'
    >>> decode_status(data)["drifts"]
    [3, 9]
    """
    if not isinstance(status, Mapping):
        raise EncodeError("status must be a mapping", field="<root>", value=type(status).__name__)
    obj = {"type": "status", **_clean(dict(status), "status")}
    obj.setdefault("ts", time.time())
    _check(obj, EncodeError)
    data = json.dumps(obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    if len(data) > MAX_STATUS_BYTES:
        raise EncodeError("status too large", field="<payload>", value=f"{len(data)} bytes")
    return data


def _check(obj, err) -> dict:
    if not isinstance(obj, dict):
        raise err("status must be a JSON object", field="<root>", value=obj)
    if obj.get("type") != "status":
        raise err("type must be 'status'", field="type", value=obj.get("type"))
    role = obj.get("role")
    if role not in ROLES:
        raise err(f"role must be one of {ROLES}", field="role", value=role)
    ts = obj.get("ts")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        raise err("ts must be a finite number", field="ts", value=ts)
    node = obj.get("node")
    if role == "node" and (isinstance(node, bool) or not isinstance(node, int) or node < 0):
        raise err("a node status needs node >= 0", field="node", value=node)
    return obj


def decode_status(data: bytes) -> dict:
    """Decode and check a status record (type, role, ts, node); raise :class:`DecodeError`."""
    return _check(_load_json(data, "status", MAX_STATUS_BYTES), DecodeError)


class StatusReader:
    """Follows ``<prefix>.status`` and keeps the latest status of every node and of the sync service.

    Parameters
    ----------
    bootstrap
        ``host:port`` of the cluster.
    prefix
        Topic prefix.
    settings
        :class:`~streamlearn.kafka.config.KafkaSettings` (security); default from the environment.
    from_beginning
        Read the topic from its start (default) or only statuses published from now on.

    Use :meth:`poll` in a loop, or :meth:`wait_for` with a condition on the reader.
    """

    def __init__(self, bootstrap: str, prefix: str, settings=None, from_beginning: bool = True):
        from kafka import KafkaConsumer, TopicPartition

        from streamlearn.kafka.config import KafkaSettings
        from streamlearn.kafka.topics import status_topic

        settings = KafkaSettings.from_env() if settings is None else settings
        self.nodes: dict[int, dict] = {}
        self.sync: dict | None = None  # the latest sync status (of any shard)
        self.shards: dict[int, dict] = {}  # shard -> its service's latest status (protocol shards=S)
        self.bad = 0
        self._consumer = KafkaConsumer(**settings.consumer_kwargs(bootstrap, fetch_max_wait_ms=100))
        tp = TopicPartition(status_topic(prefix), 0)
        self._consumer.assign([tp])
        if from_beginning:
            self._consumer.seek_to_beginning(tp)
        else:
            self._consumer.seek(tp, self._consumer.end_offsets([tp])[tp])

    def poll(self, timeout: float = 0.1) -> int:
        """Read what arrived within ``timeout`` seconds; return the number of statuses read."""
        n = 0
        for records in self._consumer.poll(timeout_ms=int(timeout * 1000)).values():
            for rec in records:
                try:
                    status = decode_status(rec.value)
                except DecodeError:
                    self.bad += 1
                    continue
                n += 1
                if status["role"] == "node":
                    self.nodes[status["node"]] = status
                else:
                    self.sync = status
                    if isinstance(status.get("shard"), int):  # one service per shard of a sharded layer
                        self.shards[status["shard"]] = status
        return n

    def wait_for(self, condition: Callable[["StatusReader"], bool], timeout: float) -> bool:
        """Poll until ``condition(self)`` holds (True) or ``timeout`` seconds passed (False)."""
        if not timeout > 0:
            raise ConfigError(f"timeout must be > 0, got {timeout!r}")
        deadline = time.monotonic() + timeout
        while True:
            if condition(self):
                return True
            if time.monotonic() > deadline:
                return False
            self.poll(0.1)

    def close(self) -> None:
        self._consumer.close()

    def __enter__(self) -> "StatusReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
