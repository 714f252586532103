"""JSON lines from stdin, through the command line, into a real broker; bad lines dead-lettered."""

from __future__ import annotations

import json
import subprocess
import sys

from streamlearn.connectors.jsonl import run_jsonl
from streamlearn.kafka.labels import LabelRecord, decode_node_record
from streamlearn.connectors.routing import NodeRouter
from streamlearn.connectors.schema import StreamSchema
from streamlearn.kafka.topics import deadletter_topic, samples_topic

SCHEMA_TOML = """
key = "id"
ignore = ["sensor"]
[label]
name = "state"
classes = ["ok", "fault"]
[features]
temp = "float"
rpm = "int"
"""

GOOD = [
    b'{"sensor": "a", "id": "r1", "temp": 20.5, "rpm": 1200, "state": "ok"}',
    b'{"sensor": "b", "id": "r2", "x": {"temp": 21, "rpm": 1100}, "state": null}',
    b'{"sensor": "b", "id": "r2", "state": "fault"}',
    b'  {"sensor": "a", "temp": 19, "rpm": 900, "state": "fault"}  ',
]
BAD = [
    (b'{"sensor": "a", "temp": 20.5, "rpm": 1200, "state": "ok"', "<payload>"),  # malformed JSON
    (b'{"sensor": "a", "temp": NaN, "rpm": 1200, "state": "ok"}', "<json>"),
    (b'{"sensor": "a", "temp": 1e999, "rpm": 1200, "state": "ok"}', "temp"),  # overflows to inf
    (b'{"sensor": "a", "temp": 1, "rpm": 1200, "state": "ok", "colour": 1}', "colour"),
    (b'{"sensor": "a", "rpm": 1200, "state": "ok"}', "temp"),
    (b'{"sensor": "a", "temp": "hot", "rpm": 1200, "state": "ok"}', "temp"),
    (b'{"sensor": "a", "temp": 1, "rpm": 1200, "state": "meh"}', "state"),
    (b'{"sensor": "c", "temp": 1, "rpm": 1200, "state": "ok"}', "sensor"),  # not in the node map
    (b'[{"sensor": "a", "temp": 1, "rpm": 1200, "state": "ok"}]', "<root>"),  # one object per line
    (b'{"sensor": "a", "temp": 1, "temp": 2, "rpm": 1, "state": "ok"}', "temp"),  # duplicate key
    (b'{"sensor": "\xff", "temp": 1, "rpm": 1, "state": "ok"}', "<payload>"),
    (b'{"sensor": "a", "temp": 1, "rpm": 1, "state": "ok", "pad": "' + b"x" * 70_000 + b'"}', "<payload>"),
]


def test_jsonl_from_stdin_through_the_cli(tmp_path, settings, prefix, consume):
    schema = tmp_path / "plant.toml"
    schema.write_text(SCHEMA_TOML)
    lines = [GOOD[0], BAD[0][0], GOOD[1], b""]
    for i, (bad, _) in enumerate(BAD[1:]):
        lines.append(bad)
        if i == 4:
            lines.append(GOOD[2])
    lines.append(GOOD[3])
    proc = subprocess.run(
        [sys.executable, "-m", "streamlearn.connectors", "jsonl", "-", "--schema", str(schema), "--node-by", "sensor",
         "--node-map", "a=0,b=1", "--bootstrap", settings.bootstrap_servers, "--prefix", prefix, "--json",
         "--progress", "0"],
        input=b"\n".join(lines) + b"\n", capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    stats = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert (stats["readings"], stats["labels"], stats["deadlettered"]) == (3, 1, len(BAD))
    assert stats["delivered"] == 4 and stats["per_node"] == {"0": 2, "1": 1}

    node0 = [decode_node_record(r.value) for r in consume(samples_topic(prefix, 0), 2)]
    node1 = [decode_node_record(r.value) for r in consume(samples_topic(prefix, 1), 2)]
    assert [(s.key, s.y, s.seq) for s in node0] == [("r1", "ok", 0), (None, "fault", 1)]
    assert node0[0].x == {"temp": 20.5, "rpm": 1200.0}
    assert node1[0].key == "r2" and node1[0].y is None and node1[0].x == {"temp": 21.0, "rpm": 1100.0}
    assert node1[1] == LabelRecord(key="r2", y="fault", node=1)  # after its reading, on its node

    dead = consume(deadletter_topic(prefix), len(BAD))
    assert len(dead) == len(BAD)
    for record, (raw, field) in zip(dead, BAD):
        reason = dict(record.headers)["sl-error"].decode()
        assert f"field '{field}'" in reason, reason
        if len(raw) < 65536:
            assert record.value == raw  # forwarded unchanged
    assert dict(dead[0].headers)["sl-source-topic"] == b"jsonl:stdin"


def test_jsonl_file_with_round_robin(tmp_path, kafka, consume):
    schema = StreamSchema(["a"], label="y", classes=[0, 1])
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps({"a": i, "y": i % 2}) + "\n" for i in range(10)))
    stats = run_jsonl(path, schema, NodeRouter(round_robin=2), **kafka)
    assert stats.delivered == 10 and stats.per_node == {0: 5, 1: 5}
    got = [decode_node_record(r.value) for r in consume(samples_topic(kafka["prefix"], 1), 5)]
    assert [s.x["a"] for s in got] == [1.0, 3.0, 5.0, 7.0, 9.0]
