"""MQTT (a real mosquitto) -> connector -> Kafka (a real Tansu): readings land in the right node topics."""

from __future__ import annotations

import json
import threading

import pytest

from streamlearn.connectors.cli import main
from streamlearn.connectors.mqtt import MqttConnector, parse_topic, parse_topic_map
from streamlearn.connectors.routing import NodeRouter
from streamlearn.connectors.schema import StreamSchema
from streamlearn.errors import ConfigError
from streamlearn.kafka.codecs import decode_sample_json
from streamlearn.kafka.topics import deadletter_topic, samples_topic

from waiting import wait_until

SCHEMA = StreamSchema({"temp": "float", "rpm": "int"}, label="state", classes=["ok", "fault"])


def publisher(host, port):
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect(host, port)
    client.loop_start()
    return client


def send(client, topic, payload, retain=False):
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    client.publish(topic, data, qos=1, retain=retain).wait_for_publish(timeout=10)


def test_topic_filters_and_maps():
    assert parse_topic("sensors/{node}/reading").node_level == 1
    assert parse_topic("a/{node}").node_value("a/7") == "7"
    for bad in ("a/{node}x", "a/{node}/{node}", "a/#/b", "a/b+", ""):
        with pytest.raises(ConfigError):
            parse_topic(bad)
    for bad in (["a/b"], ["a/b=x"], ["a/#/c=1"], ["a=5000"]):
        with pytest.raises(ConfigError):
            parse_topic_map(bad)


def test_routing_is_remembered_per_topic_and_the_memory_is_bounded(monkeypatch):
    # Pure logic (no broker): each topic is matched once; publishers choosing endless topics cannot grow the memory.
    from types import SimpleNamespace

    from streamlearn.connectors import mqtt as mqtt_mod

    monkeypatch.setattr(mqtt_mod, "_MAX_ROUTES", 4)
    conn = MqttConnector(SCHEMA, NodeRouter(nodes=50), topics=["s/{node}/r"], topic_map=[("k/#", 3)])
    calls = []
    conn._ingest = SimpleNamespace(payload=lambda raw, **kw: calls.append(kw))
    topics = ["k/a", "s/7/r", "x/y"] + [f"s/{i}/r" for i in range(10)] + ["k/a", "s/7/r"]
    for i, topic in enumerate(topics):
        conn._on_message(None, None, SimpleNamespace(topic=topic, payload=b"{}", qos=0, mid=i))
        assert len(conn._routes) <= 4
    routes = [{k: v for k, v in kw.items() if k not in ("source", "offset")} for kw in calls]
    assert routes[0] == routes[-2] == {"node": 3}
    assert routes[1] == routes[-1] == {"route_value": "7", "route_field": "s/{node}/r"}
    assert routes[2] == {}  # no filter of ours: the router's own rule
    assert [kw["offset"] for kw in calls] == list(range(1, len(topics) + 1))


def test_mqtt_readings_arrive_in_their_node_topics(mosquitto, kafka, consume):
    host, port = mosquitto
    base = kafka["prefix"].replace(".", "_")  # this test's own MQTT topics
    conn = MqttConnector(SCHEMA, NodeRouter(), host=host, port=port, topics=[f"{base}/sensors/{{node}}/reading"],
                         topic_map=[(f"{base}/plant/kitchen/#", 5)], **kafka)
    stop = threading.Event()
    result = {}
    thread = threading.Thread(target=lambda: result.setdefault("stats", conn.run(stop, max_seconds=60)))
    thread.start()
    client = publisher(host, port)
    try:
        assert conn.ready.wait(20), "the connector did not subscribe"
        good = {0: [], 2: [], 5: []}
        for i in range(6):
            node = (0, 2)[i % 2]
            reading = {"temp": 20.0 + i, "rpm": 1000 + i, "state": "ok"}
            send(client, f"{base}/sensors/{node}/reading", reading)
            good[node].append(reading)
        batch = [{"temp": 30.0, "rpm": 1, "state": "fault"}, {"temp": 31.0, "rpm": 2, "state": "fault"}]
        send(client, f"{base}/plant/kitchen/oven", batch)
        good[5] += batch
        send(client, f"{base}/sensors/kitchen/reading", {"temp": 1, "rpm": 1, "state": "ok"})  # not a node id
        send(client, f"{base}/sensors/0/reading", b"{not json")
        send(client, f"{base}/sensors/0/reading", {"temp": 1, "rpm": 1, "state": "boiling"})
        send(client, f"{base}/sensors/2/reading", {"temp": 40.0, "rpm": 9, "state": "ok"})  # after the bad ones
        good[2].append({"temp": 40.0, "rpm": 9, "state": "ok"})
        wait_until(lambda: conn.messages >= 11, "11 messages")
    finally:
        client.loop_stop()
        client.disconnect()
        stop.set()
        thread.join(timeout=30)
    stats = result["stats"]
    assert (stats.readings, stats.delivered, stats.deadlettered) == (9, 9, 3)
    for node, readings in good.items():
        samples = [decode_sample_json(r.value) for r in consume(samples_topic(kafka["prefix"], node), len(readings))]
        assert [s.x["temp"] for s in samples] == [r["temp"] for r in readings]
        assert {s.node for s in samples} == {node} and [s.seq for s in samples] == list(range(len(readings)))
    dead = consume(deadletter_topic(kafka["prefix"]), 3)
    info = [{k: v.decode() for k, v in r.headers} for r in dead]
    assert info[0]["sl-source-topic"] == f"mqtt:{base}/sensors/kitchen/reading"
    assert "node id" in info[0]["sl-error"] and f"field '{base}/sensors/{{node}}/reading'" in info[0]["sl-error"]
    assert "not valid JSON" in info[1]["sl-error"] and "unknown label" in info[2]["sl-error"]


def test_mqtt_through_the_cli(mosquitto, settings, prefix, consume, capsys, tmp_path):
    host, port = mosquitto
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps(SCHEMA.to_dict()))
    topic = f"{prefix.replace('.', '_')}/line/3"
    client = publisher(host, port)
    try:
        send(client, topic, {"temp": 5.5, "rpm": 3, "state": "ok"}, retain=True)  # delivered on subscribe
        code = main("mqtt", ["--host", host, "--port", str(port), "--topic", topic.rsplit("/", 1)[0] + "/{node}",
                             "--schema", str(schema), "--bootstrap", settings.bootstrap_servers,
                             "--prefix", prefix, "--max-messages", "1", "--max-seconds", "30", "--json"])
        send(client, topic, b"", retain=True)  # clear the retained message
    finally:
        client.loop_stop()
        client.disconnect()
    assert code == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["delivered"] == 1 and stats["per_node"] == {"3": 1}
    sample = decode_sample_json(consume(samples_topic(prefix, 3), 1)[0].value)
    assert sample.x == {"temp": 5.5, "rpm": 3.0} and sample.node == 3



def test_readings_published_while_the_connector_is_down_reach_kafka_after_it_returns(mosquitto, kafka, consume):
    # At least once: a named connector keeps its session, so mosquitto queues the QoS 1 messages published while
    # it is away and delivers them when it comes back; each is acknowledged once Kafka has it.
    host, port = mosquitto
    base = kafka["prefix"].replace(".", "_")
    topic = f"{base}/line/reading"

    def start():
        conn = MqttConnector(SCHEMA, NodeRouter(node=0), host=host, port=port, topics=[topic],
                             client_id=f"{base}-connector", qos=1, **kafka)
        stop, result = threading.Event(), {}
        thread = threading.Thread(target=lambda: result.setdefault("stats", conn.run(stop, max_seconds=60)))
        thread.start()
        assert conn.ready.wait(20), "the connector did not subscribe"
        return conn, stop, thread, result

    client = publisher(host, port)
    try:
        conn, stop, thread, result = start()  # the first run makes the session and its subscription
        send(client, topic, {"temp": 1.0, "rpm": 1, "state": "ok"})
        wait_until(lambda: conn.messages == 1, "the first reading")
        stop.set()
        thread.join(30)
        assert result["stats"].delivered == 1
        for i in range(50):  # nobody is connected under that id now: mosquitto queues them
            send(client, topic, {"temp": float(i), "rpm": i, "state": "fault"})
        conn, stop, thread, result = start()
        wait_until(lambda: conn.messages == 50, "the queued readings", timeout=30)
        stop.set()
        thread.join(30)
        assert result["stats"].readings == result["stats"].delivered == 50
    finally:
        client.loop_stop()
        client.disconnect()
    got = [decode_sample_json(r.value) for r in consume(samples_topic(kafka["prefix"], 0), 51)]
    assert [s.x["rpm"] for s in got] == [1] + list(range(50))
