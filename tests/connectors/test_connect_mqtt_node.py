"""End to end with real brokers: mosquitto -> ``connect mqtt`` -> Kafka (Tansu) -> a node service that learns.

Every good reading published over MQTT is learned by the node, exactly once, in order; the one bad
payload among them goes to the dead-letter topic with its reason and is counted, by the connector and
in its Prometheus metrics, and the node never sees it.
"""

from __future__ import annotations

import json
import threading

import numpy as np
from prometheus_client import CollectorRegistry

from streamlearn.connectors.mqtt import MqttConnector
from streamlearn.connectors.routing import NodeRouter
from streamlearn.connectors.schema import StreamSchema
from streamlearn.kafka.node import NodeConfig, NodeService
from streamlearn.kafka.topics import deadletter_topic, ensure_topics
from streamlearn.metrics import ConnectorMetrics

from waiting import wait_until

FEATURES = ["temp", "rpm"]
CLASSES = ["ok", "fault"]
SCHEMA = StreamSchema({"temp": "float", "rpm": "float"}, label="state", classes=CLASSES)
N = 400
BAD = b'{"temp": "hot", "rpm": 1.0, "state": "ok"}'


class Running:
    """``target(stop)`` in a thread; ``stop()`` sets the event, joins and re-raises what the thread raised."""

    def __init__(self, target):
        self.stop_event = threading.Event()
        self.result, self.errors = None, []
        self.thread = threading.Thread(target=self._run, args=(target,), daemon=True)
        self.thread.start()

    def _run(self, target):
        try:
            self.result = target(self.stop_event)
        except BaseException as exc:  # surfaced by stop()
            self.errors.append(exc)

    def stop(self):
        self.stop_event.set()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive() and not self.errors, self.errors
        return self.result


def test_node_learns_every_good_mqtt_reading_and_the_bad_one_is_dead_lettered(mosquitto, broker, settings, prefix,
                                                                               consume):
    host, port = mosquitto
    rng = np.random.default_rng(7)
    X = rng.normal(size=(N, 2)) * 2
    y = np.where(X[:, 0] > X[:, 1], 0, 1)  # index into CLASSES: ok when hotter than it spins
    readings = [json.dumps({"temp": float(a), "rpm": float(b), "state": CLASSES[c]}).encode()
                for (a, b), c in zip(X, y)]

    ensure_topics(broker.bootstrap, prefix, 1, settings=settings)
    node = NodeService(NodeConfig(node=0, features=FEATURES, classes=CLASSES, learner="logreg",
                                  learner_params={"lr": 0.5}, protocol="nosync", detector=None, batch_size=5,
                                  status_interval=0.1, commit_interval=0.2, device="cpu", bootstrap=broker.bootstrap,
                                  prefix=prefix, settings=settings))
    node_run = Running(node.run)
    registry = CollectorRegistry()
    mqtt_topic = f"{prefix.replace('.', '_')}/sensors/{{node}}/reading"
    conn = MqttConnector(SCHEMA, NodeRouter(), host=host, port=port, topics=[mqtt_topic], settings=settings,
                         prefix=prefix, metrics=ConnectorMetrics(registry, "mqtt"))
    conn_run = Running(lambda stop: conn.run(stop, max_seconds=300))

    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect(host, port)
    client.loop_start()
    try:
        assert conn.ready.wait(20), "the connector did not subscribe"
        sensor_topic = mqtt_topic.replace("{node}", "0")
        for i, payload in enumerate(readings):
            if i == N // 2:  # the bad one among the good ones
                client.publish(sensor_topic, BAD, qos=1).wait_for_publish(timeout=10)
            client.publish(sensor_topic, payload, qos=1).wait_for_publish(timeout=10)
        status = wait_until(lambda: (lambda st: st if st and st.get("samples") == N else None)(node.status()),
                            f"the node to learn {N} samples", timeout=90)
    finally:
        client.loop_stop()
        client.disconnect()
        stats = conn_run.stop()
        node_run.stop()

    # The connector: every good reading delivered to node 0, the bad one dead-lettered and counted.
    assert (stats.readings, stats.delivered, stats.deadlettered, stats.send_errors) == (N, N, 1, 0)
    assert registry.get_sample_value("streamlearn_connector_readings_total", {"connector": "mqtt", "node": "0"}) == N
    assert registry.get_sample_value("streamlearn_connector_deadletters_total",
                                     {"connector": "mqtt", "reason": "type"}) == 1
    (dead,) = consume(deadletter_topic(prefix), None, timeout=20, idle=2.0)
    headers = {k: v.decode() for k, v in dead.headers}
    assert dead.value == BAD
    assert "must be a number" in headers["sl-error"] and "field 'temp'" in headers["sl-error"]
    assert headers["sl-source-topic"] == f"mqtt:{sensor_topic}" and headers["sl-connector"] == "mqtt"

    # The node: learned exactly the good readings, in order, saw nothing bad, and learned the concept.
    final = node.status()
    assert final["samples"] == N and status["samples"] == N
    assert final["deadletters"] == 0 and final["seq_gaps"] == 0 and final["unlabelled"] == 0
    assert final["last_seq"] == N - 1
    predicted = np.asarray(node.learner_.predict_proba_many(X.astype(np.float32))).argmax(axis=1)
    assert (predicted == y).mean() > 0.8
