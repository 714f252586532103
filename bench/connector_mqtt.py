"""The MQTT connector against a bare MQTT subscriber: readings per second each takes from the same backlog.

An MQTT broker keeps only so many messages for a subscriber that falls behind (mosquitto: 1000 by default,
``max_queued_messages``) and drops the rest, so the connector's rate is the fastest stream it can follow
without loss. Both clients here use a persistent session (a client id): the readings are published while
the client is away, with mosquitto told to queue them all, then the client connects and is timed until it
has every one (and, separately, its second half: connected, topics made). The connector's time also covers checking each reading against its schema, routing it and
having Kafka acknowledge it (a real Tansu broker); the bare subscriber only counts the messages (paho,
QoS 1, acknowledged on arrival). ``connector_vs_raw`` = connector readings/s / bare readings/s, same run.

Readings: the rows of the Beijing air file (12 stations, one node each by the topic level
``air/{station}/reading``, missing values as JSON null), as a sensor gateway would publish them.

Writes bench/results/connector_mqtt.json.

    python bench/connector_mqtt.py [--n 20000] [--repeats 3] [--beijing PATH]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import itertools
import json
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import threading
import time

from streamlearn.connectors.mqtt import MqttConnector
from streamlearn.connectors.routing import NodeRouter
from streamlearn.connectors.schema import StreamSchema
from streamlearn.kafka.broker import EmbeddedBroker, free_port
from streamlearn.kafka.config import KafkaSettings

BEIJING = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "beijing_air.csv.gz")
FEATURES = ["so2", "no2", "co", "o3", "temp", "pres", "dewp", "rain", "wind_speed"]
SCHEMA = {"time": "time", "key": "station", "ignore": ["wind_dir"],
          "label": {"name": "pm25_high", "classes": [0, 1]}, "features": {f: "float" for f in FEATURES}}
TOPIC = "air/{node}/reading"


def readings(path: str, n: int) -> list:
    """(topic, JSON payload) of the first ``n`` rows."""
    out = []
    with gzip.open(path, "rt", newline="") as f:
        for row in itertools.islice(csv.DictReader(f), n):
            rec = {k: (None if v == "" else v) for k, v in row.items()}
            for k in FEATURES:
                rec[k] = None if rec[k] is None else float(rec[k])
            rec["pm25_high"] = None if rec["pm25_high"] is None else int(rec["pm25_high"])
            out.append((f"air/{rec['station']}/reading", json.dumps(rec).encode()))
    return out


def start_mosquitto(folder: str) -> tuple:
    binary = shutil.which("mosquitto")
    if binary is None:
        raise SystemExit("mosquitto is not installed (Debian: apt install mosquitto)")
    port = free_port("127.0.0.1")
    conf = os.path.join(folder, "mosquitto.conf")
    with open(conf, "w") as f:  # every message queued for an absent client: the backlog is the measurement
        f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n"
                "max_queued_bytes 0\n")
    log = open(os.path.join(folder, "mosquitto.log"), "wb")
    proc = subprocess.Popen([binary, "-c", conf], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("mosquitto did not start") from None
            time.sleep(0.05)


def publish(port: int, msgs: list) -> None:
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=1) for topic, payload in msgs]
        for info in infos:
            info.wait_for_publish(60)
    finally:
        client.loop_stop()
        client.disconnect()


def bare(port: int, msgs: list, client_id: str) -> float:
    """Seconds a bare paho subscriber (persistent session) takes to receive the backlog of ``msgs``."""
    import paho.mqtt.client as mqtt

    got, done, subscribed, half = [0], threading.Event(), threading.Event(), []

    def on_message(client, userdata, message):
        got[0] += 1
        if got[0] == len(msgs) // 2:
            half.append(time.perf_counter())
        if got[0] >= len(msgs):
            done.set()

    def session():
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        client.on_message = on_message
        client.on_connect = lambda c, *a: c.subscribe(TOPIC.replace("{node}", "+"), qos=1)
        client.on_subscribe = lambda *a: subscribed.set()
        client.connect("127.0.0.1", port)
        client.loop_start()
        return client

    client = session()  # the session and its subscription
    if not subscribed.wait(10):
        raise RuntimeError("the bare subscriber did not subscribe")
    client.loop_stop()
    client.disconnect()
    publish(port, msgs)
    t0 = time.perf_counter()
    client = session()
    try:
        if not done.wait(300):
            raise RuntimeError(f"the bare subscriber got {got[0]} of {len(msgs)}")
        t1 = time.perf_counter()
        return t1 - t0, t1 - half[0]
    finally:
        client.loop_stop()
        client.disconnect()


def connector(port: int, msgs: list, client_id: str, bootstrap: str, prefix: str) -> tuple:
    """Seconds the connector takes to check, route and deliver to Kafka the backlog of ``msgs``; its counts."""
    schema = StreamSchema.from_dict(SCHEMA)

    def run(max_messages=None):
        conn = MqttConnector(schema, NodeRouter(nodes=12, first_seen=True), port=port, topics=[TOPIC],
                             client_id=client_id, bootstrap=bootstrap, prefix=prefix,
                             settings=KafkaSettings(bootstrap_servers=bootstrap))
        stop, result = threading.Event(), {}
        thread = threading.Thread(target=lambda: result.setdefault(
            "stats", conn.run(stop, max_seconds=300, max_messages=max_messages)))
        return conn, stop, thread, result

    conn, stop, thread, result = run()  # the session and its subscription
    thread.start()
    if not conn.ready.wait(30):
        raise RuntimeError("the connector did not subscribe")
    stop.set()
    thread.join(60)
    publish(port, msgs)
    conn, stop, thread, result = run(max_messages=len(msgs))
    t0 = time.perf_counter()
    thread.start()
    while conn.messages < len(msgs) // 2 and thread.is_alive():
        time.sleep(0.005)
    t_half = time.perf_counter()
    thread.join(400)  # returns once it had every message, flushed to Kafka and acknowledged them
    t1 = time.perf_counter()
    stats = result["stats"]
    if stats.delivered + stats.deadlettered != len(msgs):
        raise RuntimeError(f"the connector delivered {stats.delivered} of {len(msgs)} ({stats})")
    return (t1 - t0, t1 - t_half), {"delivered": stats.delivered, "deadlettered": stats.deadlettered}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000, help="readings in the backlog")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--beijing", default=os.path.normpath(BEIJING), help="path of beijing_air.csv.gz")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "connector_mqtt.json"))
    args = ap.parse_args()
    msgs = readings(args.beijing, args.n)
    folder = tempfile.mkdtemp(prefix="bench-mqtt-")
    proc, port = start_mosquitto(folder)
    raw_s, conn_s, counts = [], [], None  # (whole backlog, its second half) seconds per round
    half = len(msgs) - len(msgs) // 2
    try:
        with EmbeddedBroker() as broker:
            for r in range(args.repeats):  # in turns, so both see the same machine
                raw_s.append(bare(port, msgs, f"bench-bare-{r}"))
                seconds, counts = connector(port, msgs, f"bench-connector-{r}", broker.bootstrap, f"bench{r}")
                conn_s.append(seconds)
                print(f"round {r + 1}: bare {len(msgs) / raw_s[-1][0]:,.0f} readings/s, connector "
                      f"{len(msgs) / conn_s[-1][0]:,.0f} readings/s (second half: bare "
                      f"{half / raw_s[-1][1]:,.0f}/s, connector {half / conn_s[-1][1]:,.0f}/s)", flush=True)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
    raw, conn = len(msgs) / min(t for t, _ in raw_s), len(msgs) / min(t for t, _ in conn_s)
    raw_steady, conn_steady = half / min(t for _, t in raw_s), half / min(t for _, t in conn_s)
    result = {
        "benchmark": "connector_mqtt", "platform": platform.platform(), "python": platform.python_version(),
        "cpus": os.cpu_count(), "load_average_at_start": list(os.getloadavg()), "args": vars(args),
        "readings": len(msgs), "bare_readings_per_s": raw, "connector_readings_per_s": conn,
        "connector_us_per_reading": 1e6 / conn, "connector_vs_raw": conn / raw,
        "bare_steady_readings_per_s": raw_steady, "connector_steady_readings_per_s": conn_steady,
        "connector_steady_vs_raw": conn_steady / raw_steady,
        "all_bare_seconds": raw_s, "all_connector_seconds": conn_s, "connector_counts": counts,
    }
    print(f"bare subscriber {raw:,.0f} readings/s; connector {conn:,.0f} readings/s "
          f"({result['connector_us_per_reading']:.0f} us each): {conn / raw:.2f} of the bare rate; second half of the "
          f"backlog (connected, topics made): bare {raw_steady:,.0f}/s, connector {conn_steady:,.0f}/s, "
          f"{conn_steady / raw_steady:.2f}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
