"""``streamlearn connect mqtt``: subscribe to an MQTT broker and publish its JSON readings into node topics.

Which node a message goes to, first match wins:

1. ``topic_map``: an MQTT filter (wildcards ``+``, ``#``) -> node, e.g.
   ``plant/kitchen/#=0``;
2. a subscription with ``{node}`` in place of one level, e.g.
   ``sensors/{node}/reading`` (subscribed as ``sensors/+/reading``): that
   level's text chooses the node, through the router's value rule (a node id,
   ``nodes`` = m for "integer mod m, else hash mod m", or a node map);
3. the router's own rule (a fixed node, round-robin, a field of the payload).

A payload is one JSON reading or label record, or an array of them. Bad
payloads go to the dead-letter topic (``sl-source-topic`` = ``mqtt:<topic>``)
and are counted; the subscription goes on. The password comes from
``MQTT_PASSWORD`` (never a flag, so it stays out of ``ps``).

Delivery is at least once for QoS 1 and 2: a message is acknowledged to the MQTT broker only after Kafka
confirmed what it became (the connector flushes and acknowledges every 0.1 s; a round in which Kafka refused a
record acknowledges nothing, so the broker sends those messages again after a reconnect). With ``client_id``
the session is persistent (not clean): the broker keeps the messages published while the connector is down and
delivers them when it comes back under the same id.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
from dataclasses import dataclass

from streamlearn.connectors.ingest import Ingestor
from streamlearn.connectors.publish import ConnectError, ConnectStats, Publisher
from streamlearn.connectors.routing import MAX_NODE, NodeRouter
from streamlearn.connectors.schema import StreamSchema
from streamlearn.errors import ConfigError

__all__ = ["TopicSpec", "parse_topic", "parse_topic_map", "MqttConnector", "run_mqtt"]

log = logging.getLogger(__name__)

NODE_LEVEL = "{node}"
_NODE_RE = re.compile(r"^(0|[1-9][0-9]{0,9})$")
_MAX_ROUTES = 10_000  # topics whose routing is remembered


@dataclass(frozen=True)
class TopicSpec:
    """A subscription: the MQTT filter, and which level (if any) names the node."""

    subscription: str
    node_level: int | None = None

    @property
    def pattern(self) -> str:
        """The filter as written, with ``{node}`` at its level."""
        levels = self.subscription.split("/")
        if self.node_level is not None:
            levels[self.node_level] = NODE_LEVEL
        return "/".join(levels)

    def node_value(self, topic: str) -> str | None:
        """The text of the node level of ``topic`` (None without one)."""
        if self.node_level is None:
            return None
        return topic.split("/")[self.node_level]


def _check_filter(text: str) -> list:
    if not isinstance(text, str) or not text or len(text.encode("utf-8", "surrogatepass")) > 65535 or "\0" in text:
        raise ConfigError(f"an MQTT topic filter must be a non-empty string, got {text!r}")
    levels = text.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ConfigError(f"MQTT filter {text!r}: '#' must be a whole level, the last one")
        if "+" in level and level != "+":
            raise ConfigError(f"MQTT filter {text!r}: '+' must be a whole level")
    return levels


def parse_topic(text: str) -> TopicSpec:
    """A ``--topic`` value: an MQTT filter, with ``{node}`` as at most one whole level.

    Examples
    --------
    >>> parse_topic("sensors/{node}/reading")
    TopicSpec(subscription='sensors/+/reading', node_level=1)
    >>> parse_topic("plant/#")
    TopicSpec(subscription='plant/#', node_level=None)
    """
    levels = text.split("/") if isinstance(text, str) else None
    node_level = None
    if levels is not None:
        marks = [i for i, level in enumerate(levels) if NODE_LEVEL in level]
        if len(marks) > 1 or (marks and levels[marks[0]] != NODE_LEVEL):
            raise ConfigError(f"MQTT topic {text!r}: {NODE_LEVEL} must be one whole level, e.g. sensors/{{node}}/reading")
        if marks:
            node_level = marks[0]
            levels[node_level] = "+"
        text = "/".join(levels)
    _check_filter(text)
    return TopicSpec(text, node_level)


def parse_topic_map(entries) -> list:
    """``["plant/kitchen/#=0", ...]`` -> ``[("plant/kitchen/#", 0), ...]`` (in order: first match wins).

    Examples
    --------
    >>> parse_topic_map(["plant/kitchen/#=0", "plant/+/garage=1"])
    [('plant/kitchen/#', 0), ('plant/+/garage', 1)]
    """
    out = []
    for entry in entries or ():
        filt, sep, node = str(entry).rpartition("=")
        node = node.strip()
        if not sep or not _NODE_RE.match(node) or int(node) > MAX_NODE:
            raise ConfigError(f"topic map entries are FILTER=NODE with a node id 0..{MAX_NODE}, got {entry!r}")
        _check_filter(filt)
        out.append((filt, int(node)))
    return out


class MqttConnector:
    """Subscribe, check, route and publish; :meth:`run` until stopped. ``ready`` is set once subscribed.

    Parameters
    ----------
    schema, router
        The stream's schema and the fallback node mapping.
    host, port
        The MQTT broker.
    topics
        ``--topic`` filters (see :func:`parse_topic`).
    topic_map
        ``[(filter, node), ...]`` (see :func:`parse_topic_map`); these filters are subscribed too.
    qos
        Subscription QoS (0, 1 or 2).
    client_id, username, tls, cafile
        Connection; the password is read from ``MQTT_PASSWORD``.
    bootstrap, prefix, settings, progress, max_pending, metrics
        As for :func:`streamlearn.connectors.csv_replay.run_csv`.
    """

    def __init__(self, schema: StreamSchema, router: NodeRouter, *, host: str = "127.0.0.1", port: int = 1883,
                 topics=(), topic_map=(), qos: int = 1, client_id: str | None = None, username: str | None = None,
                 tls: bool = False, cafile: str | None = None, bootstrap: str | None = None,
                 prefix: str | None = None, settings=None, progress: float = 0.0, max_pending: int = 100_000,
                 metrics=None):
        self.specs = [s if isinstance(s, TopicSpec) else parse_topic(s) for s in topics]
        self.topic_map = list(topic_map)
        if not self.specs and not self.topic_map:
            raise ConfigError("mqtt: subscribe to at least one topic (--topic FILTER or --topic-map FILTER=NODE)")
        if qos not in (0, 1, 2):
            raise ConfigError(f"qos must be 0, 1 or 2, got {qos!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
            raise ConfigError(f"MQTT port must be 1..65535, got {port!r}")
        self.schema, self.router = schema, router
        self.host, self.port, self.qos = host, port, qos
        self.client_id, self.username, self.tls, self.cafile = client_id, username, tls, cafile
        self.kafka = dict(bootstrap=bootstrap, prefix=prefix, settings=settings, progress=progress, metrics=metrics)
        self.max_pending = max_pending
        self.ready = threading.Event()
        self.messages = 0
        nodes = set(router.known_nodes() or []) | {node for _, node in self.topic_map}
        self._nodes = sorted(nodes)
        self._ingest: Ingestor | None = None
        self._failure: str | None = None
        self._unacked: list = []  # (mid, qos) of messages handed to Kafka, acknowledged after a flush
        self._ack_lock = threading.Lock()
        self._routes: dict = {}  # topic -> how its messages are routed (_route_of)

    def subscriptions(self) -> list:
        """Distinct filters to subscribe, in order."""
        subs = [s.subscription for s in self.specs] + [f for f, _ in self.topic_map]
        return list(dict.fromkeys(subs))

    def _on_connect(self, client, userdata, flags, reason_code, properties=None):
        if reason_code.is_failure:
            self._failure = f"MQTT broker refused the connection: {reason_code}"
            log.warning("%s", self._failure)
            return
        client.subscribe([(sub, self.qos) for sub in self.subscriptions()])

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties=None):
        bad = [str(rc) for rc in reason_codes if rc.is_failure]
        if bad:
            log.warning("MQTT broker refused subscriptions: %s", bad)
        if not self.ready.is_set():  # readings published before this are not ours (a clean session)
            print(f"connect mqtt: subscribed to {', '.join(self.subscriptions())}", file=sys.stderr, flush=True)
        self.ready.set()

    def _route_of(self, topic: str) -> dict:
        """How a message on ``topic`` is routed: the :meth:`Ingestor.payload` arguments that say so."""
        from paho.mqtt.client import topic_matches_sub

        for filt, node in self.topic_map:
            if topic_matches_sub(filt, topic):
                return {"node": node}
        for spec in self.specs:
            if spec.node_level is not None and topic_matches_sub(spec.subscription, topic):
                return {"route_value": spec.node_value(topic), "route_field": spec.pattern}
        return {}

    def _on_message(self, client, userdata, message):
        self.messages += 1
        topic = message.topic
        if message.qos:
            with self._ack_lock:
                self._unacked.append((message.mid, message.qos))
        try:
            route = self._routes.get(topic)
            if route is None:  # matched once per topic (paho's matcher costs as much as the rest of a message)
                if len(self._routes) >= _MAX_ROUTES:  # topics are the publishers' choice: bounded
                    self._routes.clear()
                route = self._routes[topic] = self._route_of(topic)
            self._ingest.payload(message.payload, source=f"mqtt:{topic}", offset=self.messages, **route)
        except Exception as exc:  # a Kafka failure: keep the subscription alive, count it
            log.warning("message on %s not published: %s", topic, exc)
            if not isinstance(exc, ConnectError):  # a ConnectError was counted where it was raised
                self._ingest.publisher._on_error(exc)

    def run(self, stop_event: threading.Event | None = None, max_seconds: float | None = None,
            max_messages: int | None = None) -> ConnectStats:
        """Subscribe and publish until ``stop_event``, ``max_seconds``, ``max_messages`` or Ctrl-C."""
        from streamlearn.extras import require

        mqtt = require("paho.mqtt.client", "mqtt", "the MQTT connector")  # optional: the "mqtt" extra

        stop_event = stop_event or threading.Event()
        publisher = Publisher("mqtt", nodes=self._nodes, **self.kafka)
        self._ingest = Ingestor(self.schema, self.router, publisher, max_pending=self.max_pending)
        # A named client keeps its session (and the messages queued for it) across restarts; acks are manual.
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id or "",
                             clean_session=not self.client_id, manual_ack=True)
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        if self.username:
            client.username_pw_set(self.username, os.environ.get("MQTT_PASSWORD"))
        if self.tls:
            client.tls_set(ca_certs=self.cafile)
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        reason = "error"
        try:
            try:
                client.connect(self.host, self.port, keepalive=30)
            except (OSError, ValueError) as exc:
                raise ConnectError(f"cannot connect to the MQTT broker {self.host}:{self.port}: {exc}") from None
            client.loop_start()
            t0 = time.monotonic()
            while True:
                if stop_event.wait(0.1):
                    reason = "stop"
                    break
                if max_seconds is not None and time.monotonic() - t0 >= max_seconds:
                    reason = "max_seconds"
                    break
                if max_messages is not None and self.messages >= max_messages:
                    reason = "max_messages"
                    break
                publisher.tick()
                self._acknowledge(client, publisher)
        except KeyboardInterrupt:
            reason = "interrupted"
        finally:
            try:
                self._acknowledge(client, publisher)  # what Kafka has; the rest the broker sends again
            finally:
                client.disconnect()
                client.loop_stop()
                stats = publisher.close(reason)
        return stats

    def _acknowledge(self, client, publisher) -> None:
        """Acknowledge to the MQTT broker the messages Kafka confirmed: flush, then ack what was handed over
        before it, unless Kafka refused a record meanwhile (then none: the broker redelivers them)."""
        with self._ack_lock:
            batch, self._unacked = self._unacked, []
        if not batch:
            return
        errors = publisher.stats.send_errors
        try:
            publisher.flush(timeout=30.0)
        except Exception as exc:  # kafka.errors.KafkaTimeoutError: Kafka is away; the broker keeps them
            log.warning("Kafka did not confirm %d MQTT messages: not acknowledged (%s)", len(batch), exc)
            return
        if publisher.stats.send_errors != errors:
            log.warning("Kafka refused records of %d MQTT messages: not acknowledged", len(batch))
            return
        for mid, qos in batch:
            client.ack(mid, qos)


def run_mqtt(schema: StreamSchema, router: NodeRouter, *, stop_event: threading.Event | None = None,
             max_seconds: float | None = None, max_messages: int | None = None, **options) -> ConnectStats:
    """Run an :class:`MqttConnector` (``options``: its parameters) until stopped; return the counts."""
    return MqttConnector(schema, router, **options).run(stop_event, max_seconds, max_messages)
