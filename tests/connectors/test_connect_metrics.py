"""Connector metrics: every count a connector keeps is also in Prometheus, dead letters by a fixed set of reason
classes; checked on a real registry after real runs against the real broker, and with promtool."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from servers import require

from streamlearn.connectors.errors import RecordError, reason_class
from streamlearn.connectors.jsonl import run_jsonl
from streamlearn.connectors.routing import NodeRouter
from streamlearn.connectors.schema import StreamSchema
from streamlearn.errors import ConfigError
from streamlearn.metrics import DEADLETTER_REASONS, ConnectorMetrics, new_registry

SCHEMA = StreamSchema({"temp": "float", "rpm": "int"}, label="state", classes=["ok", "fault"], key="id",
                      max_bytes=512)
SCHEMA_TOML = """
key = "id"
max_bytes = 512
[label]
name = "state"
classes = ["ok", "fault"]
[features]
temp = "float"
rpm = "int"
"""

# One bad line per reason class (all but "other"), each with the class it must be counted under.
BAD = [
    (b'{"id": "b0", "temp": 20.5, "rpm": 1200, "state": "ok"', "malformed"),
    (b'\xff\xfe{"temp": 1}', "malformed"),
    (b'[{"temp": 1, "rpm": 1, "state": "ok"}]', "malformed"),  # a JSON line holds one object
    (b'{"temp": "hot", "rpm": 1, "state": "ok"}', "type"),
    (b'{"temp": 1, "rpm": 1.5, "state": "ok"}', "type"),
    (b'{"rpm": 1, "state": "ok"}', "missing"),
    (b'{"temp": 1, "rpm": 1, "state": "ok", "colour": 1}', "unknown_field"),
    (b'{"temp": NaN, "rpm": 1, "state": "ok"}', "nonfinite"),
    (b'{"temp": 1e999, "rpm": 1, "state": "ok"}', "nonfinite"),
    (b'{"temp": 1, "rpm": 1, "state": "meh"}', "unknown_label"),
    (b'{"temp": 1, "rpm": 1, "state": "ok", "id": "' + b"k" * 600 + b'"}', "too_large"),
    (b'{"id": "never-seen", "state": "ok"}', "route"),  # round-robin cannot place a label for an unknown key
]


def sample(registry, name, **labels):
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def promtool_check(exposition: bytes) -> None:
    exe = require("prometheus", "promtool")
    r = subprocess.run([exe, "check", "metrics"], input=exposition, capture_output=True, timeout=60)
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), (r.stdout, r.stderr)


def test_every_reason_class_but_other_is_exercised():
    assert {cls for _, cls in BAD} == set(DEADLETTER_REASONS) - {"other"}
    assert reason_class(RecordError("something new", field="temp", value="node")) == "other"


def test_metric_names_labels_and_bad_arguments():
    reg = CollectorRegistry()
    m = ConnectorMetrics(reg, "csv")
    names = {metric.name: metric.type for metric in reg.collect()}
    assert names == {"streamlearn_connector_readings": "counter", "streamlearn_connector_labels": "counter",
                     "streamlearn_connector_delivered": "counter", "streamlearn_connector_deadletters": "counter",
                     "streamlearn_connector_send_errors": "counter", "streamlearn_connector_pending_labels": "gauge"}
    for reason in DEADLETTER_REASONS:  # every reason series exists at 0 from the start
        assert reg.get_sample_value("streamlearn_connector_deadletters_total",
                                    {"connector": "csv", "reason": reason}) == 0.0
    with pytest.raises(ConfigError, match="reason"):
        m.observe_deadletter("must be a number (field 'temp')")  # free text is not a label value
    with pytest.raises(ConfigError, match="node"):
        m.observe_reading(-1)
    for kind in ("", "CSV", "a b", 3, "x" * 40):
        with pytest.raises(ConfigError, match="kind"):
            ConnectorMetrics(CollectorRegistry(), kind)
    with pytest.raises(ConfigError, match="registry"):
        ConnectorMetrics(None, "csv")


def test_jsonl_run_counts_equal_its_metrics(kafka, consume, tmp_path):
    good = [json.dumps({"id": f"r{i}", "temp": 20.0 + i, "rpm": 1000 + i, "state": "ok"}).encode() for i in range(6)]
    unlabelled = [json.dumps({"id": f"u{i}", "temp": 1.0, "rpm": 1, "state": None}).encode() for i in range(3)]
    label = b'{"id": "u1", "state": "fault"}'
    lines = good[:3] + [b for b, _ in BAD[:6]] + unlabelled + good[3:] + [b for b, _ in BAD[6:]] + [label]
    path = tmp_path / "readings.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")

    registry = new_registry()
    metrics = ConnectorMetrics(registry, "jsonl")
    stats = run_jsonl(str(path), SCHEMA, NodeRouter(round_robin=2), metrics=metrics, **kafka)

    # 9 readings in turn to nodes 0, 1, 0, ...; u1 is the 5th (node 0), so its label goes to node 0
    assert (stats.readings, stats.labels, stats.deadlettered, stats.send_errors) == (9, 1, len(BAD), 0)
    assert stats.delivered == 10
    assert sample(registry, "streamlearn_connector_readings_total", connector="jsonl", node="0") == 5
    assert sample(registry, "streamlearn_connector_readings_total", connector="jsonl", node="1") == 4
    assert sample(registry, "streamlearn_connector_labels_total", connector="jsonl", node="0") == 1
    assert sample(registry, "streamlearn_connector_delivered_total", connector="jsonl") == stats.delivered
    assert sample(registry, "streamlearn_connector_send_errors_total", connector="jsonl") == 0
    by_reason = collections.Counter(cls for _, cls in BAD)
    for reason in DEADLETTER_REASONS:
        assert sample(registry, "streamlearn_connector_deadletters_total", connector="jsonl",
                      reason=reason) == by_reason[reason], reason
    # u0 and u2 still wait for their label (u1's came)
    assert sample(registry, "streamlearn_connector_pending_labels", connector="jsonl") == 2
    assert len(consume(f"{kafka['prefix']}.deadletter", len(BAD))) == len(BAD)
    promtool_check(generate_latest(registry))


def _read_until(stream, marker: str, lines: list) -> str:
    for line in stream:
        lines.append(line)
        if line.startswith(marker):
            return line[len(marker):].strip()
    raise AssertionError(f"no {marker!r} line; output: {''.join(lines)}")


def test_command_line_serves_the_metrics(broker, prefix, tmp_path):
    """``streamlearn connect http --metrics-port 0``: a real process, scraped over HTTP while it runs."""
    schema = tmp_path / "s.toml"
    schema.write_text(SCHEMA_TOML)
    exe = os.path.join(os.path.dirname(sys.executable), "streamlearn")
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "PYTHONUNBUFFERED": "1"}
    env.pop("STREAMLEARN_INGEST_TOKEN", None)
    proc = subprocess.Popen([exe, "connect", "http", "--port", "0", "--schema", str(schema), "--prefix", prefix,
                             "--node", "3", "--progress", "0", "--metrics-port", "0", "--max-seconds", "120"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    err, out = [], []
    try:
        metrics_url = _read_until(proc.stderr, "metrics: ", err)
        ingest_url = _read_until(proc.stdout, "ingest endpoint: POST ", out)
        assert metrics_url.startswith("http://127.0.0.1:"), metrics_url  # loopback unless told otherwise
        threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True).start()

        body = json.dumps([{"temp": 1, "rpm": 2, "state": "ok"}, {"temp": 2, "rpm": 3, "state": "fault"},
                           {"temp": "warm", "rpm": 3, "state": "ok"}]).encode()
        req = urllib.request.Request(ingest_url, data=body, method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:  # 400: one record bad, the two good delivered
            urllib.request.urlopen(req, timeout=20)
        assert refused.value.code == 400
        # Kafka's acknowledgements are counted in its sender thread, maybe just after the reply: scrape until seen.
        deadline = time.monotonic() + 20
        while True:
            with urllib.request.urlopen(metrics_url, timeout=10) as r:
                text = r.read()
            if b'streamlearn_connector_delivered_total{connector="http"} 2.0' in text or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        proc.terminate()  # SIGTERM: flush, print the counts, exit 0
        rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, "".join(err)
    assert "2 readings + 0 labels sent, 2 delivered, 1 dead-lettered" in rest, rest

    promtool_check(text)
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for family in text_string_to_metric_families(text.decode()) for s in family.samples}
    http = ("connector", "http")
    assert values[("streamlearn_connector_readings_total", (http, ("node", "3")))] == 2
    assert values[("streamlearn_connector_delivered_total", (http,))] == 2
    assert values[("streamlearn_connector_deadletters_total", (http, ("reason", "type")))] == 1
    assert values[("streamlearn_connector_send_errors_total", (http,))] == 0
    assert ("process_cpu_seconds_total", ()) in values  # the process metrics, as every streamlearn process
