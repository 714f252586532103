"""streamlearn's topic names, and their creation with the settings they need.

=============================  ===========================================  =================
Topic                          Carries                                      max.message.bytes
=============================  ===========================================  =================
``<prefix>.samples.<node>``    one node's readings: sample JSON records     17 MiB
                               or binary sample batches (codecs.py)
``<prefix>.sync.up``           models the nodes send to the sync service    72 MiB
``<prefix>.sync.down``         averaged models the sync service sends back  72 MiB
``<prefix>.drift``             drift events (ground truth for scoring)      broker default
``<prefix>.control``           control commands                             broker default
``<prefix>.deadletter``        undecodable records, unchanged, with the     72 MiB
                               ``sl-*`` headers of codecs.deadletter_headers
``<prefix>.status``            status messages of the node and sync         broker default
                               services (status.py)
``<prefix>.predictions``       the nodes' test-then-train predictions       broker default
                               (predictions.py; records stay < 900 kB)
``<prefix>.schema``            the layout (features, classes) connectors    broker default
                               and nodes declare (layout.py)
=============================  ===========================================  =================

Every topic has one partition: a node's stream and the sync protocol need
their order kept. Model topics keep records for one hour (a model matters only
until the next sync); the others keep the broker's defaults.

Tansu stores and reports these configs but does not enforce
``max.message.bytes`` (it accepted 100 MiB records on a topic set to 1 000
bytes), so there only the client limits of config.py apply; Apache Kafka
enforces them, hence the settings. A 64 MiB model fits in one record: no chunking.
Tansu also creates a topic, with 4 partitions, as soon as any client asks for
its metadata (whatever ``allow_auto_create_topics`` says): call
:func:`ensure_topics` before any producer or consumer touches the topics.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Iterable

from streamlearn.errors import ConfigError, StreamlearnError
from streamlearn.kafka.codecs import MAX_SAMPLE_BATCH_BYTES
from streamlearn.kafka.config import MAX_MESSAGE_BYTES, KafkaSettings, validate_topic_prefix

__all__ = [
    "TopicError",
    "TopicSpec",
    "samples_topic",
    "sync_up_topic",
    "sync_down_topic",
    "drift_topic",
    "control_topic",
    "deadletter_topic",
    "status_topic",
    "predictions_topic",
    "schema_topic",
    "parse_samples_topic",
    "topic_specs",
    "ensure_topics",
    "SAMPLES_MAX_MESSAGE_BYTES",
    "MODEL_MAX_MESSAGE_BYTES",
    "MODEL_RETENTION_MS",
]

log = logging.getLogger(__name__)

SAMPLES_MAX_MESSAGE_BYTES = MAX_SAMPLE_BATCH_BYTES + (1 << 20)  # a full batch plus Kafka's record overhead
MODEL_MAX_MESSAGE_BYTES = MAX_MESSAGE_BYTES  # a 64 MiB model plus header
MODEL_RETENTION_MS = 3_600_000
_TOPIC_ALREADY_EXISTS = 36  # Kafka error code


class TopicError(StreamlearnError):
    """Topics cannot be created or have an unexpected shape."""


def _node(node) -> int:
    if isinstance(node, bool) or not isinstance(node, int) or node < 0:
        raise ConfigError(f"node must be an integer >= 0, got {node!r}")
    return node


def samples_topic(prefix: str, node: int) -> str:
    """Topic of one node's readings.

    Examples
    --------
    >>> samples_topic("streamlearn", 3)
    'streamlearn.samples.3'
    """
    return f"{validate_topic_prefix(prefix, 'prefix')}.samples.{_node(node)}"


def sync_up_topic(prefix: str) -> str:
    """Topic of the models the nodes send to the sync service."""
    return f"{validate_topic_prefix(prefix, 'prefix')}.sync.up"


def sync_down_topic(prefix: str) -> str:
    """Topic of the models the sync service sends to the nodes."""
    return f"{validate_topic_prefix(prefix, 'prefix')}.sync.down"


def sync_root_up_topic(prefix: str) -> str:
    """Topic of the shards' references, read by the root of a sharded sync layer (protocol ``shards=S,root=R``)."""
    return f"{validate_topic_prefix(prefix, 'prefix')}.sync.root.up"


def sync_root_down_topic(prefix: str) -> str:
    """Topic of the root's averages, read by every shard's sync service."""
    return f"{validate_topic_prefix(prefix, 'prefix')}.sync.root.down"


def drift_topic(prefix: str) -> str:
    """Topic of drift events."""
    return f"{validate_topic_prefix(prefix, 'prefix')}.drift"


def control_topic(prefix: str) -> str:
    """Topic of control commands."""
    return f"{validate_topic_prefix(prefix, 'prefix')}.control"


def deadletter_topic(prefix: str) -> str:
    """Topic of records that could not be decoded."""
    return f"{validate_topic_prefix(prefix, 'prefix')}.deadletter"


def status_topic(prefix: str) -> str:
    """Topic of the status messages of the node and sync services."""
    return f"{validate_topic_prefix(prefix, 'prefix')}.status"


def predictions_topic(prefix: str) -> str:
    """Topic of the nodes' predictions (streamlearn.kafka.predictions)."""
    return f"{validate_topic_prefix(prefix, 'prefix')}.predictions"


def schema_topic(prefix: str) -> str:
    """Topic of the layouts connectors and nodes announce (streamlearn.kafka.layout)."""
    return f"{validate_topic_prefix(prefix, 'prefix')}.schema"


def parse_samples_topic(prefix: str, topic: str) -> int | None:
    """The node of a samples topic name, or None if ``topic`` is not one.

    Examples
    --------
    >>> parse_samples_topic("streamlearn", "streamlearn.samples.12"), parse_samples_topic("streamlearn", "x.drift")
    (12, None)
    """
    m = re.fullmatch(re.escape(prefix) + r"\.samples\.(0|[1-9][0-9]*)", topic)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class TopicSpec:
    """A topic to create: name, partitions and topic-level configs."""

    name: str
    partitions: int = 1
    config: dict = field(default_factory=dict)


def _nodes(nodes) -> list:
    if isinstance(nodes, int) and not isinstance(nodes, bool):
        nodes = range(nodes)
    return sorted({_node(n) for n in nodes})


def topic_specs(prefix: str, nodes: Iterable[int] | int, shards: int = 1) -> list:
    """Every topic of a run with ``nodes`` (ids, or a count m for nodes 0..m-1).

    With ``shards`` > 1 (a sharded sync layer, protocol ``shards=S``) ``sync.up`` and ``sync.down`` have
    one partition per shard (shard s: partition s) and the root's two topics are added.

    Examples
    --------
    >>> [s.name for s in topic_specs("sl", 2)]
    ['sl.samples.0', 'sl.samples.1', 'sl.sync.up', 'sl.sync.down', 'sl.drift', 'sl.control', 'sl.deadletter', 'sl.status', 'sl.predictions', 'sl.schema']
    >>> [(s.name, s.partitions) for s in topic_specs("sl", [], shards=3) if ".sync." in s.name]
    [('sl.sync.up', 3), ('sl.sync.down', 3), ('sl.sync.root.up', 1), ('sl.sync.root.down', 1)]
    """
    samples = {"max.message.bytes": str(SAMPLES_MAX_MESSAGE_BYTES)}
    models = {"max.message.bytes": str(MODEL_MAX_MESSAGE_BYTES), "retention.ms": str(MODEL_RETENTION_MS)}
    specs = [TopicSpec(samples_topic(prefix, n), 1, dict(samples)) for n in _nodes(nodes)]
    specs += [
        TopicSpec(sync_up_topic(prefix), int(shards), dict(models)),
        TopicSpec(sync_down_topic(prefix), int(shards), dict(models)),
        *([TopicSpec(sync_root_up_topic(prefix), 1, dict(models)), TopicSpec(sync_root_down_topic(prefix), 1,
                                                                            dict(models))] if shards > 1 else []),
        TopicSpec(drift_topic(prefix)),
        TopicSpec(control_topic(prefix)),
        TopicSpec(deadletter_topic(prefix), 1, {"max.message.bytes": str(MODEL_MAX_MESSAGE_BYTES)}),
        TopicSpec(status_topic(prefix)),
        TopicSpec(predictions_topic(prefix)),
        TopicSpec(schema_topic(prefix)),
    ]
    return specs


def ensure_topics(admin_or_bootstrap, prefix: str, nodes: Iterable[int] | int, *,
                  settings: KafkaSettings | None = None, timeout_ms: int = 30_000, shards: int = 1) -> dict:
    """Create the missing topics of a run; existing ones are left as they are.

    Parameters
    ----------
    admin_or_bootstrap
        A ``KafkaAdminClient``, or a bootstrap string (an admin client is then
        made from ``settings``, default :meth:`KafkaSettings.from_env`, and closed).
    prefix
        Topic prefix, e.g. ``settings.topic_prefix``.
    nodes
        Node ids, or a count m for nodes 0..m-1.
    shards
        Shards of the sync layer: ``sync.up`` and ``sync.down`` need that many partitions (an existing
        topic with fewer is a :class:`TopicError`).

    Returns
    -------
    dict
        Topic name to ``"created"`` or ``"exists"``. An existing topic whose
        partition count differs from the spec is logged as a warning (Tansu
        auto-creates topics with 4 partitions).
    """
    specs = topic_specs(prefix, nodes, shards)
    own_admin = isinstance(admin_or_bootstrap, str)
    if own_admin:
        from kafka import KafkaAdminClient

        settings = KafkaSettings.from_env() if settings is None else settings
        admin = KafkaAdminClient(**settings.admin_kwargs(admin_or_bootstrap, request_timeout_ms=timeout_ms))
    else:
        admin = admin_or_bootstrap
    try:
        existing = set(admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        result = {s.name: "exists" for s in specs if s.name in existing}
        if missing:
            request = {s.name: {"num_partitions": s.partitions, "replication_factor": -1, "configs": s.config}
                       for s in missing}
            response = admin.create_topics(request, timeout_ms=timeout_ms, raise_errors=False,
                                           wait_for_metadata=True)
            for item in response["topics"]:
                code = item["error_code"]
                if code == 0:
                    result[item["name"]] = "created"
                elif code == _TOPIC_ALREADY_EXISTS:  # created meanwhile by another process
                    result[item["name"]] = "exists"
                else:
                    raise TopicError(f"cannot create topic {item['name']!r}: Kafka error {code} "
                                     f"({item.get('error_message')})")
        _check_partitions(admin, [s for s in specs if result.get(s.name) == "exists"], shards)
        return {s.name: result[s.name] for s in specs}
    finally:
        if own_admin:
            admin.close()


def _check_partitions(admin, specs, shards: int = 1) -> None:
    if not specs:
        return
    want = {s.name: s.partitions for s in specs}
    for desc in admin.describe_topics(list(want)):
        got = len(desc.get("partitions") or [])
        if shards > 1 and got < want.get(desc.get("name"), 0):  # a shard without its partition cannot sync
            raise TopicError(f"topic {desc['name']} has {got} partitions, a sync layer of {shards} shards needs "
                             f"{want[desc['name']]}: delete it, or use a new --prefix")
        if got != want.get(desc.get("name"), got):
            log.warning("topic %s has %d partitions, expected %d (auto-created before ensure_topics?); "
                        "only partition 0 keeps the order streamlearn relies on", desc["name"], got,
                        want[desc["name"]])
