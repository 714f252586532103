"""CSV replay into a real broker (Tansu): Elec2 in full, bad rows dead-lettered, delayed labels."""

from __future__ import annotations

import csv
import gzip

import pytest

from streamlearn.connectors.csv_replay import CsvFormat, parse_delimiter, run_csv, sniff_delimiter
from streamlearn.connectors.errors import RecordError
from streamlearn.kafka.labels import LabelRecord, decode_node_record
from streamlearn.connectors.routing import NodeRouter
from streamlearn.connectors.schema import SCHEMA_DIR, StreamSchema, load_schema
from streamlearn.errors import ConfigError
from streamlearn.kafka.codecs import decode_sample_json
from streamlearn.kafka.topics import deadletter_topic, samples_topic
from streamlearn.streams.csv_source import ELEC2_PATH

SCHEMA = StreamSchema({"temp": "float", "count": "int"}, label="state", classes=["ok", "fault"], key="id")


def headers(record) -> dict:
    return {k: v.decode() for k, v in record.headers}


# ---- format ----------------------------------------------------------------------------------------


def test_delimiter_is_guessed_from_the_header_or_given():
    assert sniff_delimiter("a\tb\tc") == "\t" and sniff_delimiter("a;b") == ";" and sniff_delimiter("a") == ","
    assert parse_delimiter("tab") == "\t" and parse_delimiter(None) is None
    with pytest.raises(ConfigError):
        parse_delimiter("ab")


def test_header_must_fit_the_schema():
    assert CsvFormat(b"\xef\xbb\xbfid,temp,count,state", SCHEMA).columns == ["id", "temp", "count", "state"]  # BOM
    with pytest.raises(ConfigError, match="not in the schema"):
        CsvFormat(b"temp,count,state,colour", SCHEMA)
    with pytest.raises(ConfigError, match="no column"):
        CsvFormat(b"temp,state", SCHEMA)
    with pytest.raises(ConfigError, match="twice"):
        CsvFormat(b"temp,temp,count,state", SCHEMA)


def test_bad_rows_name_the_problem():
    fmt = CsvFormat(b"temp,count,state", SCHEMA)
    for line, field in ((b"1,2", "<row>"), (b"1,2,ok,4", "<row>"), (b"\xff,2,ok", "<payload>"),
                        (b'1,2,"ok', "<row>"), (b'1,"a"b,ok', "<row>")):
        with pytest.raises(RecordError) as err:
            fmt.parse_row(line)
        assert err.value.field == field


# ---- real broker -----------------------------------------------------------------------------------


def test_elec2_replayed_at_full_speed_every_row_delivered(kafka, consume):
    schema = load_schema(SCHEMA_DIR / "elec2.toml")
    stats = run_csv(ELEC2_PATH, schema, NodeRouter(round_robin=4), **kafka)
    assert stats.readings == stats.delivered == 45_312 and stats.deadlettered == 0 and stats.send_errors == 0
    with gzip.open(ELEC2_PATH, "rt", newline="") as fh:
        rows = list(csv.DictReader(fh))
    total = 0
    for node in range(4):
        records = consume(samples_topic(kafka["prefix"], node), 45_312 // 4)
        samples = [decode_sample_json(r.value) for r in records]
        assert [s.seq for s in samples] == list(range(45_312 // 4))  # every row, in order, numbered per node
        assert {s.node for s in samples} == {node}
        total += len(samples)
        first = rows[node]  # round-robin: node k gets rows k, k+4, ...
        assert samples[0].y == first["label"]
        assert samples[0].x == {name: float(first[name]) for name in schema.feature_names}
    assert total == 45_312  # counted by consuming the topics


def test_bad_rows_go_to_the_deadletter_topic_and_the_rest_is_delivered(tmp_path, kafka, consume):
    path = tmp_path / "plant.tsv"
    lines = [b"id\ttemp\tcount\tstate",
             b"a\t20.5\t1\tok",
             b"b\tnan\t1\tok",           # NaN
             b"c\t21\t1\tbroken",        # unknown label
             b"d\t21\t1",                # missing cell
             b"e\t21\t\xff\tok",         # invalid UTF-8
             b"f\t21\t1.5\tok",          # not an integer
             b"g\t" + b"9" * 70_000 + b"\t1\tok",  # longer than max_bytes
             b"",
             b"h\t22\t2\tfault"]
    path.write_bytes(b"\n".join(lines) + b"\n")
    stats = run_csv(path, SCHEMA, NodeRouter(field="id", nodes=3), **kafka)
    assert stats.readings == 2 and stats.deadlettered == 6 and stats.delivered == 2
    good = []
    for node in range(3):
        good += [decode_sample_json(r.value) for r in consume(samples_topic(kafka["prefix"], node), idle=1.0)]
    assert sorted(s.key for s in good) == ["a", "h"]
    dead = consume(deadletter_topic(kafka["prefix"]), 6)
    assert len(dead) == 6
    info = [headers(r) for r in dead]
    assert [h["sl-source-offset"] for h in info] == ["3", "4", "5", "6", "7", "8"]  # file line numbers
    assert all(h["sl-source-topic"] == f"csv:{path}" and h["sl-connector"] == "csv" for h in info)
    assert "field 'temp'" in info[0]["sl-error"] and "finite" in info[0]["sl-error"]
    assert "unknown label" in info[1]["sl-error"] and "field 'state'" in info[1]["sl-error"]
    assert "expected 4 cells" in info[2]["sl-error"]
    assert "UTF-8" in info[3]["sl-error"]
    assert "field 'count'" in info[4]["sl-error"]
    assert "line too long" in info[5]["sl-error"]
    assert dead[0].value == lines[2]  # the record itself, unchanged


def test_delayed_labels_follow_their_reading_to_its_node(tmp_path, kafka, consume):
    path = tmp_path / "late.csv"
    path.write_text("id,temp,count,state\n"
                    "r1,1,1,\n"      # unlabelled -> node 0
                    "r2,2,2,ok\n"    # -> node 1
                    "r3,3,3,\n"      # -> node 0
                    ",4,4,ok\n"      # no key -> node 1
                    "r3,,,fault\n"   # label of r3 -> node 0, whatever round-robin says
                    "r1,,,ok\n"      # label of r1 -> node 0
                    "zz,,,ok\n")     # label of a key never seen: round-robin cannot place it
    stats = run_csv(path, SCHEMA, NodeRouter(round_robin=2), **kafka)
    assert (stats.readings, stats.labels, stats.deadlettered) == (4, 2, 1)
    node0 = [decode_node_record(r.value) for r in consume(samples_topic(kafka["prefix"], 0), 4)]
    assert [getattr(r, "seq", None) for r in node0] == [0, 1, None, None]
    assert node0[2] == LabelRecord(key="r3", y="fault", node=0) and node0[3] == LabelRecord(key="r1", y="ok", node=0)
    assert node0[0].y is None and node0[0].key == "r1"
    dead = consume(deadletter_topic(kafka["prefix"]), 1)
    assert "round-robin cannot place it" in headers(dead[0])["sl-error"]


def test_speedup_needs_a_time_field(tmp_path, kafka):
    path = tmp_path / "a.csv"
    path.write_text("temp,count,state\n1,1,ok\n")
    with pytest.raises(ConfigError, match="time"):
        run_csv(path, SCHEMA, NodeRouter(node=0), speedup=10, **kafka)


def test_time_column_replay_is_paced_and_complete(tmp_path, kafka, consume):
    schema = StreamSchema({"temp": "float"}, label="state", classes=["ok"], time="when")
    path = tmp_path / "t.csv"
    path.write_text("when;temp;state\n2024-05-01T10:00:00Z;1;ok\n2024-05-01T10:00:01Z;2;ok\n"
                    "2024-05-01T10:00:02Z;3;ok\n")
    stats = run_csv(path, schema, NodeRouter(node=5), speedup=20, **kafka)
    assert stats.delivered == 3
    samples = [decode_sample_json(r.value) for r in consume(samples_topic(kafka["prefix"], 5), 3)]
    assert [s.ts for s in samples] == [1714557600.0, 1714557601.0, 1714557602.0]
    assert {s.node for s in samples} == {5}
