"""The demo fed by a connector instead of the producer: a JSON-lines file, an MQTT broker or HTTP posts.

``streamlearn demo --source jsonl:PATH|mqtt:HOST[:PORT]/TOPIC|http:[HOST:]PORT --schema FILE`` starts
``streamlearn connect ...`` (a process, like every part of the demo: streamlearn never imports the connectors)
and node processes given no layout: they take the features and classes the connector announces on
``<prefix>.schema`` (:mod:`streamlearn.kafka.layout`), so the two cannot disagree. ``--split key:FIELD``
routes by a field, one node per distinct value in the order they first come (``--first-seen``).
"""

from __future__ import annotations

import json
import os

from streamlearn.errors import ConfigError

__all__ = ["CONNECTOR_KINDS", "connector_kind", "connector_argv", "distinct_keys"]

CONNECTOR_KINDS = ("jsonl", "mqtt", "http")
_MQTT_PORT = 1883
_HTTP_PORT = 8080


def connector_kind(source: str) -> str | None:
    """``"jsonl"``, ``"mqtt"`` or ``"http"`` for a source a connector reads; None for the producer's sources.

    >>> connector_kind("mqtt:127.0.0.1:1883/sensors/{node}"), connector_kind("csv:x.csv"), connector_kind("sea")
    ('mqtt', None, None)
    """
    kind = source.partition(":")[0].strip().lower()
    return kind if kind in CONNECTOR_KINDS and ":" in source else None


def _host_port(text: str, default_port: int, what: str) -> tuple:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, ""
    if not port:
        return host or "127.0.0.1", default_port
    try:
        value = int(port)
    except ValueError:
        raise ConfigError(f"--source {what}: the port must be a number, got {port!r}") from None
    if not 0 < value < 65536:
        raise ConfigError(f"--source {what}: port out of range: {value}")
    return host or "127.0.0.1", value


def _routing(kind: str, split: str | None, nodes: int, topic: str | None = None) -> list:
    if split is None:
        if kind == "mqtt" and topic and "{node}" in topic:
            return ["--first-seen", "--nodes", nodes]  # the topic level names the node: first seen, first numbered
        return ["--round-robin", nodes]
    if split == "round-robin":
        return ["--round-robin", nodes]
    if split.startswith("key:"):
        field = split[4:].partition(":")[0]
        if not field:
            raise ConfigError(f"--split: key:FIELD, got {split!r}")
        return ["--node-by", field, "--first-seen", "--nodes", nodes]
    raise ConfigError(f"--split: round-robin or key:FIELD with a connector source, got {split!r}")


def connector_argv(source: str, schema: str, nodes: int, split: str | None, rate: float) -> list:
    """The ``streamlearn connect`` arguments that publish ``source`` into the nodes' topics.

    Examples
    --------
    >>> connector_argv("mqtt:broker:1884/plant/{node}/reading", "plant.toml", 3, None, 100.0)
    ['connect', 'mqtt', '--host', 'broker', '--port', 1884, '--topic', 'plant/{node}/reading', '--schema', 'plant.toml', '--first-seen', '--nodes', 3]
    >>> connector_argv("jsonl:r.jsonl", "s.toml", 2, "key:machine", 50.0)[-7:]
    ['--rate', 100.0, '--node-by', 'machine', '--first-seen', '--nodes', 2]
    """
    kind = connector_kind(source)
    if kind is None:
        raise ConfigError(f"--source: not a connector source: {source!r}")
    rest = source.split(":", 1)[1].strip()
    if kind == "jsonl":
        if not rest:
            raise ConfigError("--source jsonl:PATH: give the file")
        argv = ["connect", "jsonl", rest, "--schema", schema, "--rate", rate * nodes]
        return argv + _routing(kind, split, nodes)
    if kind == "mqtt":
        address, _, topic = rest.partition("/")
        if not topic:
            raise ConfigError(f"--source mqtt:HOST[:PORT]/TOPIC: give the topic filter, got {source!r}")
        host, port = _host_port(address, _MQTT_PORT, source)
        return ["connect", "mqtt", "--host", host, "--port", port, "--topic", topic, "--schema", schema] + \
            _routing(kind, split, nodes, topic)
    host, port = _host_port(rest, _HTTP_PORT, source)
    return ["connect", "http", "--host", host, "--port", port, "--schema", schema] + _routing(kind, split, nodes)


def distinct_keys(path: str, field: str, limit: int = 64) -> int:
    """How many distinct values ``field`` takes in a JSON-lines file (the nodes of ``--split key:FIELD``).

    Lines that are not JSON objects, or lack the field, are left to the connector (it dead-letters them).
    """
    if not os.path.exists(path):
        raise ConfigError(f"--source jsonl:{path}: no such file")
    seen: set = set()
    with open(path, "rb") as fh:
        for line in fh:
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError):
                continue
            if isinstance(obj, dict) and field in obj and isinstance(obj[field], (str, int)):
                seen.add(str(obj[field]).strip())
                if len(seen) > limit:
                    raise ConfigError(f"--split key:{field}: more than {limit} distinct values in {path}; the demo "
                                      f"runs at most {limit} node processes")
    if not seen:
        raise ConfigError(f"--split key:{field}: no reading in {path} has the field {field!r}")
    return len(seen)
