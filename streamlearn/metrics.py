"""Every Prometheus metric of streamlearn, in one place, and a small ``/metrics`` server.

Each process (a node, the sync service, the producer) registers its metrics in a registry it is
given, never prometheus_client's global one, and serves that registry on its own port with
:func:`serve_metrics`. Names start with ``streamlearn_``, use base units (seconds, bytes), counters
end in ``_total``; the only labels are small, bounded sets (``node`` id, sync ``kind``, transfer
``direction``, drift ``kind``).

Most numbers already exist in the status dicts the services publish (``NodeService.status()``,
``SyncService.status()``): :class:`NodeMetrics` and :class:`SyncMetrics` keep the latest status
(given with ``update_from_status``, or read from a ``status`` callable) and turn it into metrics
when Prometheus scrapes, so every counter equals the service's own count. What a status cannot
carry (latency distributions, nodes per sync) the service reports through a few ``observe_*``
calls. The producer keeps no status dict: :class:`ProducerMetrics` is fed by calls.
:func:`new_registry` adds the process metrics (CPU, memory) to a fresh registry.

Metric families (``{...}``: labels)

- node: ``samples``, ``steps``, ``drifts_detected``, ``violations``, ``models_sent``,
  ``models_received``, ``sent_bytes``, ``received_bytes``, ``syncs``, ``deadletters``,
  ``periodic_models`` (what periodic averaging with the same b would have transferred for this
  node: 2 per b local updates) ... (``_total``); gauges ``rolling_accuracy``, ``accuracy``,
  ``rolling_loss``, ``loss``, ``divergence`` (``||w - r||^2``), ``delta``,
  ``consumer_lag_records``; histograms ``learn_seconds``, ``sync_wait_seconds``; all ``{node}``.
- sync: ``syncs_total{kind}`` (full, partial, pull), ``models_total{direction}`` (up, down),
  ``rejected_models_total{reason}`` (:data:`REJECT_REASONS`), ``clipped_total`` and
  ``rate_limited_total`` (robust aggregation), gauge ``clip_bound``,
  ``transferred_bytes_total{direction}``, ``wire_bytes_total{direction}``, ``nodes_alive``,
  histograms ``nodes_per_sync{kind}`` and ``averaging_seconds``.
- producer: ``samples_total{node}``, ``records_total{node}``, ``sent_bytes_total{node}``,
  ``drift_events_total{node,kind}`` (every node and drift kind from the start, at 0, so a first
  drift is an increase Prometheus sees), ``errors_total``.
- connector: ``readings_total{connector,node}``, ``labels_total{connector,node}``,
  ``delivered_total{connector}``, ``deadletters_total{connector,reason}`` (:data:`DEADLETTER_REASONS`),
  ``send_errors_total{connector}``, gauge ``pending_labels{connector}``.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from streamlearn.errors import ConfigError
from streamlearn.kafka.signing import AUTH_REASONS

__all__ = [
    "NodeMetrics",
    "SyncMetrics",
    "ProducerMetrics",
    "MetricsServer",
    "new_registry",
    "serve_metrics",
    "LATENCY_BUCKETS",
    "NODES_BUCKETS",
    "SYNC_KINDS",
    "REJECT_REASONS",
    "ConnectorMetrics",
    "DEADLETTER_REASONS",
]

#: Histogram buckets of latencies, in seconds (100 µs to 10 s).
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0)
#: Histogram buckets of the number of nodes in one sync.
NODES_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 256)
#: Kinds of sync (label ``kind``): a full sync sets the reference, a partial one balances a subset, a pull is LSGD's.
SYNC_KINDS = ("full", "partial", "pull")
#: Why the sync service refused a model (label ``reason``): NaN/inf, wrong length or not flat, not
#: float32, L2 norm above --max-norm, CRC32 mismatch, any other damage of the model message, and a
#: compressed delta taken from a reference the service does not hold (the node missed a full sync).
REJECT_REASONS = ("nonfinite", "shape", "dtype", "norm", "checksum", "malformed", "reference")


# ---- helpers --------------------------------------------------------------------------------------

def _check_registry(registry) -> CollectorRegistry:
    if not isinstance(registry, CollectorRegistry):
        raise ConfigError(f"registry must be a prometheus_client CollectorRegistry, got {type(registry).__name__}")
    return registry


def _check_node(node) -> str:
    if isinstance(node, bool) or not isinstance(node, int) or node < 0:
        raise ConfigError(f"node must be an integer >= 0, got {node!r}")
    return str(node)


def _seconds(seconds) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds >= 0:
        raise ConfigError(f"seconds must be a number >= 0, got {seconds!r}")
    return float(seconds)


def _number(value) -> float | None:
    """A status value as a float (bools as 0/1, NaN stays NaN); None for missing, null and non-numbers."""
    if value is None or isinstance(value, (str, bytes, list, tuple, dict)):
        return None
    try:  # ints, floats, bools, numpy scalars
        return float(value)
    except (TypeError, ValueError):
        return None


@lru_cache(maxsize=64)
def _spec_b(spec: str) -> int:
    """Steps between syncs ``b`` of a protocol spec (1 when it has none)."""
    from streamlearn.sync.spec import parse_spec

    try:
        b = parse_spec(spec)[1].get("b", 1)
    except ConfigError:
        return 1
    return b if isinstance(b, int) and b >= 1 else 1


def _periodic_models(status: Mapping) -> float | None:
    """Transfers periodic averaging with the node's b would have made: 1 up + 1 down every b updates."""
    spec, steps = status.get("protocol"), _number(status.get("steps"))
    if not status.get("averageable") or not isinstance(spec, str) or steps is None or not math.isfinite(steps):
        return None
    return 2.0 * (int(steps) // _spec_b(spec))


@dataclass(frozen=True)
class _Field:
    """One metric family taken from a status dict.

    ``value`` is a status key or a function of the status returning a number, a
    ``{label value: number}`` dict (for ``label``), or None (then the family is left out).
    A counter whose key is missing reads 0; a gauge whose key is missing or null is left out.
    """

    name: str
    type: str  # "counter" or "gauge"
    doc: str
    value: str | Callable[[Mapping], Any]
    label: str | None = None

    def read(self, status: Mapping):
        if callable(self.value):
            return self.value(status)
        return status.get(self.value, 0) if self.type == "counter" else status.get(self.value)

    def family(self, labels: list[str]):
        names = labels + ([self.label] if self.label else [])
        cls = CounterMetricFamily if self.type == "counter" else GaugeMetricFamily
        return cls(self.name, self.doc, labels=names)


class _StatusCollector(Collector):
    """Turns the latest status dict into metric families when Prometheus scrapes."""

    def __init__(self, fields: tuple, read: Callable[[], Mapping], labels: dict, info: tuple = ()):
        self._fields = fields
        self._read = read
        self._labels = labels
        self._info = info  # (name, doc, status keys) of one info metric

    def describe(self):
        families = [f.family(list(self._labels)) for f in self._fields]
        if self._info:
            families.append(InfoMetricFamily(self._info[0], self._info[1]))
        return families

    def collect(self):
        status = self._read() or {}
        if not status:  # the service has not started yet
            return []
        keys, values = list(self._labels), list(self._labels.values())
        out = []
        for f in self._fields:
            got = f.read(status)
            if isinstance(got, Mapping):
                samples = [(values + [k], _number(v)) for k, v in got.items()]
            else:
                samples = [(values, _number(got))]
            samples = [(lv, v) for lv, v in samples if v is not None]
            if not samples:
                continue
            fam = f.family(keys)
            for lv, v in samples:
                fam.add_metric(lv, v)
            out.append(fam)
        if self._info:
            name, doc, info_keys = self._info
            fam = InfoMetricFamily(name, doc, labels=keys)
            fam.add_metric(values, {k: "" if status.get(k) is None else str(status.get(k)) for k in info_keys})
            out.append(fam)
        return out


# ---- node -----------------------------------------------------------------------------------------

_NODE_FIELDS = (
    _Field("streamlearn_node_samples", "counter", "Samples learned (test-then-train).", "samples"),
    _Field("streamlearn_node_steps", "counter", "Local updates (mini-batches learned).", "steps"),
    _Field("streamlearn_node_unlabelled_samples", "counter", "Samples without a label (not learned).",
           "unlabelled"),
    _Field("streamlearn_node_sequence_gaps", "counter", "Gaps in the sample sequence numbers.", "seq_gaps"),
    _Field("streamlearn_node_lost_samples", "counter",
           "Sequence numbers skipped by the gaps: samples that never came (lost before the node read them).",
           "seq_lost"),
    _Field("streamlearn_node_rolling_accuracy", "gauge", "Prequential accuracy over the last window of samples.",
           "rolling_accuracy"),
    _Field("streamlearn_node_accuracy", "gauge", "Prequential accuracy since start.", "accuracy"),
    _Field("streamlearn_node_rolling_loss", "gauge", "Mean log loss over the last window of samples.",
           "rolling_loss"),
    _Field("streamlearn_node_loss", "gauge", "Mean log loss since start.", "loss"),
    _Field("streamlearn_node_rolling_mae", "gauge",
           "A regression node's mean absolute error over the last window of samples (in the target's unit).",
           "rolling_mae"),
    _Field("streamlearn_node_mae", "gauge", "A regression node's mean absolute error since start.", "mae"),
    _Field("streamlearn_node_drifts_detected", "counter", "Drifts the node's detector found on its error stream.",
           "n_drifts"),
    _Field("streamlearn_node_divergence", "gauge", "Squared distance ||w - r||^2 of the model to the reference.",
           "divergence"),
    _Field("streamlearn_node_delta", "gauge", "Divergence threshold Delta of the dynamic protocol.", "delta"),
    _Field("streamlearn_node_violations", "counter", "Local conditions violated (model sent up).", "violations"),
    _Field("streamlearn_node_suppressed_violations", "counter",
           "Violations not sent because the answer to an earlier one was awaited.", "suppressed"),
    _Field("streamlearn_node_reports_sent", "counter", "Reports sent to the sync service.", "reports_sent"),
    _Field("streamlearn_node_models_sent", "counter", "Models sent to the sync service.", "models_sent"),
    _Field("streamlearn_node_models_received", "counter", "Models received from the sync service.",
           "models_received"),
    _Field("streamlearn_node_sent_bytes", "counter", "Bytes of sync messages sent.", "bytes_sent"),
    _Field("streamlearn_node_received_bytes", "counter", "Bytes of sync messages received.", "bytes_received"),
    _Field("streamlearn_node_syncs", "counter", "Models from the sync service applied (send or pull).", "syncs"),
    _Field("streamlearn_node_declines", "counter",
           "Models from the sync a guarded node declined (worse than its own on its recent samples).", "declines"),
    _Field("streamlearn_node_divergences", "counter",
           "Times the node's loss exploded or its parameters became NaN/inf: the loss guard set its last good model "
           "back and halved its learning rate (or stopped its learning).", "divergences"),
    _Field("streamlearn_node_learning_stopped", "gauge",
           "1 when the loss guard stopped the node's learning (its loss kept exploding); it predicts on.",
           "learning_stopped"),
    _Field("streamlearn_node_periodic_models", "counter",
           "Model transfers periodic averaging with the same b would have made for this node (2 per b updates).",
           _periodic_models),
    _Field("streamlearn_node_deadletters", "counter", "Records sent to the dead-letter topic.", "deadletters"),
    _Field("streamlearn_node_missing_imputed", "counter",
           "Missing feature values imputed with the node's running mean of that feature.", "missing_imputed"),
    _Field("streamlearn_node_missing_skipped", "counter", "Readings skipped for a missing feature value.",
           "missing_skipped"),
    _Field("streamlearn_node_predictions", "counter",
           "Predictions published to <prefix>.predictions (none when the node runs with --no-predictions).",
           "predictions"),
    _Field("streamlearn_node_send_errors", "counter", "Messages that could not be sent.", "send_errors"),
    _Field("streamlearn_node_relearned_samples", "counter",
           "Samples learned again after a restart from a checkpoint (learned before the crash, after the checkpoint).",
           "relearned"),
    _Field("streamlearn_node_checkpoints", "counter", "Checkpoints written to --checkpoint-dir.", "checkpoints"),
    _Field("streamlearn_node_checkpoint_errors", "counter", "Failed checkpoint writes.", "checkpoint_errors"),
    _Field("streamlearn_node_topic_resets", "counter",
           "Times a topic had fewer records than were read (the broker lost its data) and was read from its start.",
           "topic_resets"),
    _Field("streamlearn_node_bad_sync_records", "counter", "Undecodable records on the sync topic.",
           "bad_sync_records"),
    _Field("streamlearn_node_sync_skipped", "counter",
           "Records on sync.down addressed to other nodes, skipped from their header without decoding.",
           "sync_skipped"),
    _Field("streamlearn_node_sync_unauthenticated", "counter",
           "Records on sync.down refused by their signature (--sync-key-file): forged, replayed, unknown_sender.",
           lambda status: None if not status.get("sync_signed") else
           {r: dict(status.get("unauthenticated_by_reason") or {}).get(r, 0) for r in AUTH_REASONS}, label="reason"),
    _Field("streamlearn_node_consumer_lag_records", "gauge",
           "Records in the node's samples topic not learned yet (high-water mark minus learned offset).", "lag"),
    _Field("streamlearn_node_buffered_samples", "gauge", "Samples received and not learned yet.", "buffered"),
    _Field("streamlearn_node_joined", "gauge", "1 when the sync service accepted the node.", "joined"),
    _Field("streamlearn_node_awaiting_sync", "gauge", "1 while the answer to a violation is awaited.",
           "awaiting_sync"),
    _Field("streamlearn_node_last_sync_timestamp_seconds", "gauge", "Unix time of the last model applied.",
           "last_sync"),
)


class NodeMetrics:
    """Metrics of one node service (one registry per node process).

    Parameters
    ----------
    registry
        A ``prometheus_client.CollectorRegistry`` (not the global one).
    node
        The node id (the ``node`` label of every metric).
    status
        A callable returning the node's latest status dict (e.g. ``NodeService.status``), read
        when Prometheus scrapes. Without it, call :meth:`update_from_status`.

    Examples
    --------
    >>> from prometheus_client import CollectorRegistry
    >>> reg = CollectorRegistry()
    >>> m = NodeMetrics(reg, node=3)
    >>> m.update_from_status({"node": 3, "samples": 120, "steps": 12, "rolling_accuracy": 0.75,
    ...                       "averageable": True, "protocol": "dynamic:delta=0.5,b=4"})
    >>> m.observe_learn(0.002)
    >>> reg.get_sample_value("streamlearn_node_samples_total", {"node": "3"})
    120.0
    >>> reg.get_sample_value("streamlearn_node_periodic_models_total", {"node": "3"})  # 2 per 4 updates
    6.0
    >>> reg.get_sample_value("streamlearn_node_learn_seconds_count", {"node": "3"})
    1.0
    """

    def __init__(self, registry: CollectorRegistry, node: int, status: Callable[[], Mapping] | None = None):
        _check_registry(registry)
        self.node = _check_node(node)
        if status is not None and not callable(status):
            raise ConfigError(f"status must be a callable returning the status dict, got {type(status).__name__}")
        self._status: Mapping = {}
        read = status if status is not None else (lambda: self._status)
        registry.register(_StatusCollector(_NODE_FIELDS, read, {"node": self.node},
                                           info=("streamlearn_node", "Learner and protocol of the node.",
                                                 ("learner", "protocol"))))
        self._learn = Histogram("streamlearn_node_learn_seconds",
                                "Seconds to test-then-train one mini-batch and run the node rule (a run of "
                                "mini-batches learnt in one call: once, its mean per mini-batch).",
                                ["node"], registry=registry, buckets=LATENCY_BUCKETS).labels(node=self.node)
        self._wait = Histogram("streamlearn_node_sync_wait_seconds",
                               "Seconds from a violation (model sent up) to the averaged model applied.",
                               ["node"], registry=registry, buckets=LATENCY_BUCKETS).labels(node=self.node)

    def update_from_status(self, status: Mapping) -> None:
        """Keep ``status`` (a node status dict) as the source of the next scrape."""
        if not isinstance(status, Mapping):
            raise ConfigError(f"status must be a mapping, got {type(status).__name__}")
        self._status = dict(status)

    def observe_learn(self, seconds: float) -> None:
        """One local update (predict, score, learn, node rule) took ``seconds`` (a run of them: observed once,
        with its mean per mini-batch)."""
        self._learn.observe(_seconds(seconds))

    def observe_sync_wait(self, seconds: float) -> None:
        """The averaged model arrived ``seconds`` after the violation that asked for it."""
        self._wait.observe(_seconds(seconds))


# ---- sync service ---------------------------------------------------------------------------------

def _by(keys: dict) -> Callable[[Mapping], dict]:
    return lambda status: {label: status.get(key, 0) for label, key in keys.items()}


def _count(key: str) -> Callable[[Mapping], int | None]:
    return lambda status: None if status.get(key) is None else len(status[key])


_SYNC_FIELDS = (
    _Field("streamlearn_sync_syncs", "counter", "Syncs by kind: full (sets the reference), partial, pull.",
           _by({"full": "full_syncs", "partial": "partial_syncs", "pull": "pulls"}), label="kind"),
    _Field("streamlearn_sync_models", "counter", "Model transfers (one per model received or per target sent).",
           _by({"up": "models_up", "down": "models_down"}), label="direction"),
    _Field("streamlearn_sync_transferred_bytes", "counter", "Bytes of the models transferred (payload).",
           _by({"up": "bytes_up", "down": "bytes_down"}), label="direction"),
    _Field("streamlearn_sync_wire_bytes", "counter", "Bytes of sync records read and written (with headers).",
           _by({"up": "bytes_up_wire", "down": "bytes_down_wire"}), label="direction"),
    _Field("streamlearn_sync_violations", "counter", "Violations reported by nodes.", "violations"),
    _Field("streamlearn_sync_reports", "counter", "Reports received.", "reports"),
    _Field("streamlearn_sync_timeouts", "counter", "Awaited models or reports given up on.", "timeouts"),
    _Field("streamlearn_sync_joins", "counter", "Nodes that joined.", "joins"),
    _Field("streamlearn_sync_leaves", "counter", "Nodes that left.", "leaves"),
    _Field("streamlearn_sync_rejects", "counter", "Nodes rejected (layout or id).", "rejects"),
    _Field("streamlearn_sync_unknown_reports", "counter", "Messages from nodes that had not joined.",
           "unknown_reports"),
    _Field("streamlearn_sync_rejected_models", "counter",
           "Models refused (never averaged) by reason: nonfinite, shape, dtype, norm, checksum, malformed.",
           lambda status: {r: dict(status.get("rejected_models_by_reason") or {}).get(r, 0) for r in REJECT_REASONS},
           label="reason"),
    _Field("streamlearn_sync_unauthenticated", "counter",
           "Records on sync.up refused by their signature (--sync-key-file): forged, replayed, unknown_sender.",
           lambda status: None if not status.get("sync_signed") else
           {r: dict(status.get("unauthenticated_by_reason") or {}).get(r, 0) for r in AUTH_REASONS}, label="reason"),
    _Field("streamlearn_sync_bad_records", "counter", "Unusable records (sent to the dead-letter topic).",
           "bad_records"),
    _Field("streamlearn_sync_send_errors", "counter", "Messages that could not be sent.", "send_errors"),
    _Field("streamlearn_sync_state_saves", "counter", "Reference and protocol state written to --state-dir.",
           "state_saves"),
    _Field("streamlearn_sync_state_errors", "counter", "Failed writes of the state to --state-dir.", "state_errors"),
    _Field("streamlearn_sync_topic_resets", "counter",
           "Times sync.up had fewer records than were read (the broker lost its data) and was read from its start.",
           "topic_resets"),
    _Field("streamlearn_sync_messages_sent", "counter", "Messages sent to the nodes.", "messages_down"),
    _Field("streamlearn_sync_declines", "counter", "Models guarded nodes declined (they kept their own).",
           "declines"),
    _Field("streamlearn_sync_group_changes", "counter",
           "Group changes by kind: split (a node left its group), join (it joined another), merge (a group "
           "dissolved into another).", lambda status: status.get("group_changes_by_kind"), label="kind"),
    _Field("streamlearn_sync_groups", "gauge", "Groups of nodes averaged apart (1: every node together).",
           "n_groups"),
    _Field("streamlearn_sync_node_group", "gauge", "The group each alive node is averaged in (0: the whole).",
           lambda status: status.get("node_groups"), label="node"),
    _Field("streamlearn_sync_nodes_alive", "gauge", "Nodes taking part in the sync.", "nodes_alive"),
    _Field("streamlearn_sync_pending_models", "gauge", "Models requested and not yet arrived.", _count("pending")),
    _Field("streamlearn_sync_max_nodes", "gauge", "Node slots of the protocol.", "max_nodes"),
    _Field("streamlearn_sync_model_parameters", "gauge", "Length d of a flat model.", "d"),
    _Field("streamlearn_sync_clipped", "counter",
           "Models whose move from the reference ||w - r|| was clipped to the bound (--clip, centered clipping).",
           "clipped_models"),
    _Field("streamlearn_sync_rate_limited", "counter",
           "Records on sync.up dropped unread: their node id sent above --max-reports-per-second.", "rate_limited"),
    _Field("streamlearn_sync_clip_bound", "gauge",
           "The longest move ||w - r|| a model keeps (--clip times the nodes' typical long move; absent before "
           "warm-up).",
           "clip_bound"),
)


class SyncMetrics:
    """Metrics of the sync service.

    Parameters
    ----------
    registry
        A ``prometheus_client.CollectorRegistry`` (not the global one).
    status
        A callable returning the service's latest status dict (e.g. ``SyncService.status``), read
        when Prometheus scrapes. Without it, call :meth:`update_from_status`.

    Examples
    --------
    >>> import torch
    >>> from prometheus_client import CollectorRegistry
    >>> from streamlearn.sync.messages import SendModel
    >>> reg = CollectorRegistry()
    >>> m = SyncMetrics(reg)
    >>> m.update_from_status({"full_syncs": 1, "partial_syncs": 2, "models_up": 5, "models_down": 7,
    ...                       "nodes_alive": 4})
    >>> m.observe_actions([SendModel((0, 1), torch.zeros(2), False)])
    >>> reg.get_sample_value("streamlearn_sync_syncs_total", {"kind": "partial"})
    2.0
    >>> reg.get_sample_value("streamlearn_sync_nodes_per_sync_sum", {"kind": "partial"})
    2.0
    """

    def __init__(self, registry: CollectorRegistry, status: Callable[[], Mapping] | None = None):
        _check_registry(registry)
        if status is not None and not callable(status):
            raise ConfigError(f"status must be a callable returning the status dict, got {type(status).__name__}")
        self._status: Mapping = {}
        read = status if status is not None else (lambda: self._status)
        registry.register(_StatusCollector(_SYNC_FIELDS, read, {},
                                           info=("streamlearn_sync", "Protocol and model bank device.",
                                                 ("protocol", "device"))))
        nodes = Histogram("streamlearn_sync_nodes_per_sync", "Nodes that receive the model of one sync.", ["kind"],
                          registry=registry, buckets=NODES_BUCKETS)
        self._nodes = {kind: nodes.labels(kind=kind) for kind in SYNC_KINDS}
        self._averaging = Histogram("streamlearn_sync_averaging_seconds",
                                    "Seconds to handle one poll of node messages: protocol events, averaging on "
                                    "the model bank, actions encoded and sent.",
                                    registry=registry, buckets=LATENCY_BUCKETS)

    def update_from_status(self, status: Mapping) -> None:
        """Keep ``status`` (the sync service's status dict) as the source of the next scrape."""
        if not isinstance(status, Mapping):
            raise ConfigError(f"status must be a mapping, got {type(status).__name__}")
        self._status = dict(status)

    def observe_sync(self, kind: str, nodes: int) -> None:
        """A sync of ``kind`` (full, partial, pull) sent a model to ``nodes`` nodes."""
        if kind not in self._nodes:
            raise ConfigError(f"kind must be one of {SYNC_KINDS}, got {kind!r}")
        if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
            raise ConfigError(f"nodes must be an integer >= 1, got {nodes!r}")
        self._nodes[kind].observe(nodes)

    def observe_actions(self, actions, joining=None) -> None:
        """Observe the syncs among a protocol's actions (``SendModel``, ``PullToward``).

        The answer to joining nodes (the first action, a reference sent to ``joining``: a node id, or the
        ids of the joins answered together) is not a sync and is skipped; model requests are not syncs either.
        """
        from streamlearn.kafka.sync_actions import answers_join
        from streamlearn.sync.messages import PullToward, SendModel

        for i, action in enumerate(actions):
            if isinstance(action, SendModel):
                if answers_join(i, action, joining):
                    continue
                self.observe_sync("full" if action.reference else "partial", len(action.nodes))
            elif isinstance(action, PullToward):
                self.observe_sync("pull", len(action.nodes))

    def observe_averaging(self, seconds: float) -> None:
        """Handling one poll's messages (protocol, averaging, sending) took ``seconds``."""
        self._averaging.observe(_seconds(seconds))


# ---- producer -------------------------------------------------------------------------------------

class ProducerMetrics:
    """Metrics of the producer: samples, records and bytes per node, drift events injected.

    Every ``(node, kind)`` drift series exists from the start at 0 (kinds from
    :data:`streamlearn.streams.drift_spec.DRIFT_KINDS`), so the first drift of a kind at a node
    is an increase that ``changes()``/``increase()`` see.

    Parameters
    ----------
    registry
        A ``prometheus_client.CollectorRegistry`` (not the global one).
    nodes
        Number of node streams m (ids 0..m-1).

    Examples
    --------
    >>> from prometheus_client import CollectorRegistry
    >>> reg = CollectorRegistry()
    >>> m = ProducerMetrics(reg, nodes=2)
    >>> m.observe_sent(1, samples=100, records=1, nbytes=1700)
    >>> m.observe_drift(1, "sudden")
    >>> reg.get_sample_value("streamlearn_producer_samples_total", {"node": "1"})
    100.0
    >>> reg.get_sample_value("streamlearn_producer_drift_events_total", {"node": "0", "kind": "sudden"})
    0.0
    """

    def __init__(self, registry: CollectorRegistry, nodes: int):
        from streamlearn.streams.drift_spec import DRIFT_KINDS

        _check_registry(registry)
        if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
            raise ConfigError(f"nodes must be an integer >= 1, got {nodes!r}")
        self.nodes = nodes
        self.kinds = tuple(DRIFT_KINDS)
        self._samples = Counter("streamlearn_producer_samples", "Samples published.", ["node"], registry=registry)
        self._records = Counter("streamlearn_producer_records", "Records published.", ["node"], registry=registry)
        self._bytes = Counter("streamlearn_producer_sent_bytes", "Bytes of sample records published.", ["node"],
                              registry=registry)
        self._drifts = Counter("streamlearn_producer_drift_events", "Drift events injected (ground truth).",
                               ["node", "kind"], registry=registry)
        self._errors = Counter("streamlearn_producer_errors", "Records that could not be delivered.",
                               registry=registry)
        self._failed = Counter("streamlearn_producer_failed_samples", "Samples in records that could not be delivered.",
                               registry=registry)
        self._awaiting = Gauge("streamlearn_producer_unacknowledged_records",
                               "Records handed to the Kafka client and not acknowledged by the broker yet.",
                               registry=registry)
        self._unreachable = Gauge("streamlearn_producer_broker_unreachable",
                                  "1 while records wait for an acknowledgement and none comes (broker down), else 0.",
                                  registry=registry)
        for k in range(nodes):
            for c in (self._samples, self._records, self._bytes):
                c.labels(node=str(k))
            for kind in self.kinds:
                self._drifts.labels(node=str(k), kind=kind)

    def _node(self, node) -> str:
        label = _check_node(node)
        if node >= self.nodes:
            raise ConfigError(f"node must be below nodes={self.nodes}, got {node}")
        return label

    def observe_sent(self, node: int, samples: int, records: int = 1, nbytes: int = 0) -> None:
        """``records`` records holding ``samples`` samples (``nbytes`` bytes) went to ``node``'s topic."""
        label = self._node(node)
        for name, v in (("samples", samples), ("records", records), ("nbytes", nbytes)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {v!r}")
        self._samples.labels(node=label).inc(samples)
        self._records.labels(node=label).inc(records)
        self._bytes.labels(node=label).inc(nbytes)

    def observe_drift(self, node: int, kind: str) -> None:
        """A drift of ``kind`` was injected at ``node`` (its event published)."""
        if kind not in self.kinds:
            raise ConfigError(f"kind must be one of {list(self.kinds)}, got {kind!r}")
        self._drifts.labels(node=self._node(node), kind=kind).inc()

    def observe_error(self, records: int = 1, samples: int = 0) -> None:
        """``records`` records holding ``samples`` samples could not be delivered (safe from kafka-python's
        sender thread)."""
        self._errors.inc(records)
        self._failed.inc(samples)

    def observe_delivery(self, awaiting: int, unreachable: bool) -> None:
        """Records awaiting the broker's acknowledgement now, and whether the broker counts as unreachable."""
        self._awaiting.set(awaiting)
        self._unreachable.set(1 if unreachable else 0)


# ---- connectors -----------------------------------------------------------------------------------

#: Why a connector dead-lettered a record (label ``reason``), a fixed set whatever the error text says:
#: bad JSON/CSV/UTF-8 or not an object, a wrong type, a missing field, an unknown field, NaN/inf (or a
#: number that overflows to it), a label not among the classes, over the size limit, no node for it,
#: anything else. ``streamlearn.connectors.errors.reason_class`` maps an error to one of them.
DEADLETTER_REASONS = ("malformed", "type", "missing", "unknown_field", "nonfinite", "unknown_label", "too_large",
                      "route", "other")


class ConnectorMetrics:
    """Metrics of one connector process (``streamlearn connect <kind>``), fed by calls.

    Every series carries ``connector`` (the kind: csv, jsonl, mqtt, http, river); the
    dead-letter counter has every ``reason`` of :data:`DEADLETTER_REASONS` from the start, at 0.

    Parameters
    ----------
    registry
        A ``prometheus_client.CollectorRegistry`` (not the global one).
    kind
        The connector's kind, a short lower-case name.

    Examples
    --------
    >>> from prometheus_client import CollectorRegistry
    >>> reg = CollectorRegistry()
    >>> m = ConnectorMetrics(reg, "mqtt")
    >>> m.observe_reading(2); m.observe_delivered(); m.observe_deadletter("nonfinite")
    >>> reg.get_sample_value("streamlearn_connector_readings_total", {"connector": "mqtt", "node": "2"})
    1.0
    >>> reg.get_sample_value("streamlearn_connector_deadletters_total", {"connector": "mqtt", "reason": "type"})
    0.0
    """

    def __init__(self, registry: CollectorRegistry, kind: str):
        from prometheus_client import Gauge

        _check_registry(registry)
        if not isinstance(kind, str) or not kind.isidentifier() or not kind.islower() or len(kind) > 32:
            raise ConfigError(f"kind must be a short lower-case name such as csv or mqtt, got {kind!r}")
        self.kind = kind
        self._readings = Counter("streamlearn_connector_readings", "Readings received, checked and handed to Kafka.",
                                 ["connector", "node"], registry=registry)
        self._labels = Counter("streamlearn_connector_labels", "Late label records handed to Kafka.",
                               ["connector", "node"], registry=registry)
        self._delivered = Counter("streamlearn_connector_delivered",
                                  "Readings and label records acknowledged by Kafka.", ["connector"],
                                  registry=registry).labels(connector=kind)
        self._dead = Counter("streamlearn_connector_deadletters",
                             "Bad records sent to the dead-letter topic, by reason class.", ["connector", "reason"],
                             registry=registry)
        self._errors = Counter("streamlearn_connector_send_errors", "Records Kafka failed to take.", ["connector"],
                               registry=registry).labels(connector=kind)
        self._pending = Gauge("streamlearn_connector_pending_labels",
                              "Unlabelled readings with a key whose node is kept until their late label comes.",
                              ["connector"], registry=registry).labels(connector=kind)
        self._dead_by = {r: self._dead.labels(connector=kind, reason=r) for r in DEADLETTER_REASONS}
        self._per_node: dict = {}  # (counter, node) -> child: a labels() lookup per reading costs more

    def _child(self, counter, node):
        child = self._per_node.get((counter, node))
        if child is None:
            child = self._per_node[(counter, node)] = counter.labels(connector=self.kind, node=_check_node(node))
        return child

    def observe_reading(self, node: int) -> None:
        """A checked reading went to ``node``'s topic."""
        self._child(self._readings, node).inc()

    def observe_label(self, node: int) -> None:
        """A late label record went to ``node``'s topic."""
        self._child(self._labels, node).inc()

    def observe_delivered(self) -> None:
        """Kafka acknowledged a reading or label record (safe from kafka-python's sender thread)."""
        self._delivered.inc()

    def observe_deadletter(self, reason: str) -> None:
        """A bad record went to the dead-letter topic; ``reason`` one of :data:`DEADLETTER_REASONS`."""
        child = self._dead_by.get(reason)
        if child is None:
            raise ConfigError(f"reason must be one of {list(DEADLETTER_REASONS)}, got {reason!r}")
        child.inc()

    def observe_send_error(self) -> None:
        """Kafka failed to take a record (safe from kafka-python's sender thread)."""
        self._errors.inc()

    def track_pending(self, count: Callable[[], int]) -> None:
        """Read the number of readings waiting for their late label from ``count()`` at each scrape."""
        if not callable(count):
            raise ConfigError(f"count must be a callable, got {type(count).__name__}")
        self._pending.set_function(count)

# ---- registry and server --------------------------------------------------------------------------

class ShardRegistries:
    """One endpoint for the sync services of several shards in one process (``sync --shard group``): each
    shard's :class:`SyncMetrics` lives in a registry of its own (:meth:`registry`), and this collector,
    registered in the served registry, gives their samples with a ``shard`` label (at most ``shards``
    values). A shard handed over to another member is dropped (:meth:`drop`).

    Examples
    --------
    >>> reg = new_registry(process=False)
    >>> shards = ShardRegistries(reg)
    >>> SyncMetrics(shards.registry(1)).update_from_status({"full_syncs": 3, "nodes_alive": 2})
    >>> reg.get_sample_value("streamlearn_sync_syncs_total", {"kind": "full", "shard": "1"})
    3.0
    >>> shards.drop(1); reg.get_sample_value("streamlearn_sync_syncs_total", {"kind": "full", "shard": "1"}) is None
    True
    """

    def __init__(self, served: CollectorRegistry):
        _check_registry(served)
        self._registries: dict[int, CollectorRegistry] = {}
        self._lock = threading.Lock()
        served.register(self)

    def registry(self, shard: int) -> CollectorRegistry:
        """A fresh registry for ``shard``'s metrics (replacing an earlier one)."""
        reg = CollectorRegistry()
        with self._lock:
            self._registries[int(shard)] = reg
        return reg

    def drop(self, shard: int) -> None:
        with self._lock:
            self._registries.pop(int(shard), None)

    def describe(self):
        return []  # samples only at scrape time: the shards come and go

    def collect(self):
        from prometheus_client.metrics_core import Metric

        with self._lock:
            registries = sorted(self._registries.items())
        merged: dict[str, Metric] = {}
        for shard, reg in registries:
            for family in reg.collect():
                out = merged.get(family.name)
                if out is None:
                    out = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
                for sample in family.samples:
                    out.samples.append(sample._replace(labels={**sample.labels, "shard": str(shard)}))
        yield from merged.values()


def new_registry(process: bool = True) -> CollectorRegistry:
    """A fresh registry; with ``process``, also the process, platform and GC metrics
    (``process_cpu_seconds_total``, ``process_resident_memory_bytes``, ``python_info``, ...).

    Examples
    --------
    >>> reg = new_registry()
    >>> reg.get_sample_value("python_info", {}) is None  # python_info has labels
    True
    >>> new_registry(process=False).get_sample_value("process_cpu_seconds_total") is None
    True
    """
    from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

    registry = CollectorRegistry()
    if process:
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
    return registry


class MetricsServer:
    """A running ``/metrics`` endpoint (see :func:`serve_metrics`): ``host``, ``port``, ``url``, :meth:`stop`."""

    def __init__(self, server, thread: threading.Thread, host: str):
        self._server = server
        self._thread = thread
        self.host = host
        self.port = int(server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        """Stop serving and free the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "MetricsServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_metrics(registry: CollectorRegistry, port: int, host: str = "127.0.0.1") -> MetricsServer:
    """Serve ``registry`` on ``http://host:port/metrics`` from a daemon thread.

    ``port`` 0 picks a free port (read it from the result). Binds 127.0.0.1 unless told
    otherwise (``0.0.0.0`` in a container, so Prometheus can reach it). A port that cannot be
    bound is a :class:`~streamlearn.errors.ConfigError` naming it.

    Examples
    --------
    >>> import urllib.request
    >>> reg = new_registry(process=False)
    >>> m = ProducerMetrics(reg, nodes=1)
    >>> with serve_metrics(reg, port=0) as server:
    ...     text = urllib.request.urlopen(server.url, timeout=5).read().decode()
    >>> 'streamlearn_producer_samples_total{node="0"} 0.0' in text
    True
    """
    from prometheus_client import start_http_server

    _check_registry(registry)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"metrics port must be an integer in 0..65535, got {port!r}")
    if not isinstance(host, str) or not host:
        raise ConfigError(f"metrics host must be a non-empty string, got {host!r}")
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
    return MetricsServer(server, thread, host)
