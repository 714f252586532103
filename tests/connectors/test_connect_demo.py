"""`streamlearn demo` fed by a connector, as a user types it: a JSON-lines file, and live MQTT readings through a
real mosquitto. The nodes are given no layout: they take the features and classes the connector announces (typed:
the labels are text here), one node per distinct machine, first seen first numbered; every reading is learned."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np

SCHEMA = """
[label]
name = "state"
classes = ["ok", "fault"]

[features]
temp = "float"
rpm = "float"
"""
MACHINES = ["press-7", "press-2", "lathe-1"]  # numbered in this order: the order they first come
ROWS = 200  # per machine


def _readings(seed=0) -> list:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(ROWS * len(MACHINES)):
        t, r = rng.normal(size=2) * 2
        out.append({"machine": MACHINES[i % len(MACHINES)], "temp": float(t), "rpm": float(r),
                    "state": "ok" if t > r else "fault"})
    return out


def _rows(text: str) -> dict:
    table = text[text.rindex("streamlearn demo"):]
    return {int(r[0]): r for r in (line.split() for line in table.splitlines()) if r and r[0].isdigit()}


class Demo:
    def __init__(self, tmp_path, *argv):
        env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
        env["PYTHONUNBUFFERED"] = "1"
        self.out = tmp_path / "demo"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlearn.cli", "demo", *argv, "--duration", "0", "--out", str(self.out),
             "--view-port", "-1", "--protocol", "periodic:b=4", "--learner", "logreg", "--lr", "0.5"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
        self.lines: list = []
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()

    @property
    def text(self) -> str:
        return "".join(list(self.lines))

    def wait(self, condition, what, timeout=180):
        deadline = time.monotonic() + timeout
        while not condition(self.text):
            assert self.proc.poll() is None and time.monotonic() < deadline, \
                f"{what}:\n{self.text[-3000:]}" + (self.proc.stderr.read() if self.proc.poll() is not None else "")
            time.sleep(0.5)

    def stop(self) -> str:
        try:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        err = self.proc.stderr.read()
        assert self.proc.returncode == 0, self.text[-3000:] + err
        return self.text

    def learned(self, counts):
        def done(text):
            rows = _rows(text) if "streamlearn demo" in text else {}
            return len(rows) == len(counts) and [int(rows[k][1]) for k in range(len(counts))] == counts
        return done


def _check_nodes(demo: Demo, text: str) -> None:
    rows = _rows(text)
    assert [int(rows[k][-2]) for k in range(3)] == [0, 0, 0]  # no dead letters: the layouts agree
    for k in range(3):
        log = (demo.out / "logs" / f"node-{k}.log").read_text()
        assert "the layout of connect" in log and "classes ['ok', 'fault']" in log, log[-2000:]
        assert "Traceback" not in log
    assert all(0.6 < float(rows[k][4]) <= 1.0 for k in range(3)), text[-2000:]  # accuracy: they learned


def test_demo_from_a_jsonl_file_one_node_per_machine(tmp_path):
    (tmp_path / "plant.toml").write_text('ignore = ["machine"]\n' + SCHEMA)
    path = tmp_path / "plant.jsonl"
    bad = {"machine": "press-2", "temp": "warm", "rpm": 1.0, "state": "ok"}  # the connector dead-letters it
    path.write_text("".join(json.dumps(r) + "\n" for r in _readings() + [bad]))
    demo = Demo(tmp_path, "--source", f"jsonl:{path}", "--schema", "plant.toml", "--split", "key:machine",
                "--rate", "100")
    try:
        demo.wait(demo.learned([ROWS] * 3), "every reading learned, one node per machine")
    finally:
        text = demo.stop()
    _check_nodes(demo, text)
    final = text[text.rindex("streamlearn demo"):]
    assert "3 nodes" in final.splitlines()[0]
    # a reading the connector rejected is no node's dead letter, and is counted all the same
    assert "dead letters: 1 in " in final and ".deadletter (0 counted by the nodes)" in final, final
    assert "streamlearn tail predictions --bootstrap" in text
    assert "take a node's model away: streamlearn export --checkpoint-dir" in text


def test_demo_from_live_mqtt_readings(tmp_path, mosquitto):
    import paho.mqtt.client as mqtt

    host, port = mosquitto
    (tmp_path / "plant.toml").write_text('ignore = ["machine"]\n' + SCHEMA)
    demo = Demo(tmp_path, "--source", f"mqtt:{host}:{port}/plant/{{node}}/reading", "--schema", "plant.toml",
                "--nodes", "3")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    try:
        # The connector subscribes once it runs; its log says so. Readings before that would be lost (QoS 0).
        demo.wait(lambda _: (demo.out / "logs" / "connector.log").exists()
                  and "subscribed" in (demo.out / "logs" / "connector.log").read_text(), "the connector subscribed")
        client.connect(host, port)
        client.loop_start()
        for r in _readings(seed=1):
            client.publish(f"plant/{r['machine']}/reading", json.dumps(r), qos=1).wait_for_publish(10)
        demo.wait(demo.learned([ROWS] * 3), "every MQTT reading learned, one node per machine")
    finally:
        client.loop_stop()
        client.disconnect()
        text = demo.stop()
    _check_nodes(demo, text)
