"""The stream schema: files, and the check of every record at the edge."""

from __future__ import annotations

import json

import pytest

from streamlearn.connectors.errors import RecordError
from streamlearn.kafka.labels import LabelRecord
from streamlearn.connectors.schema import SCHEMA_DIR, Reading, StreamSchema, load_schema, parse_schema
from streamlearn.errors import ConfigError

TOML = """
key = "id"
time = "ts"
ignore = ["site"]

[label]
name = "state"
classes = ["ok", "fault"]

[features]
temp = "float"
count = "int"
door = "bool"
"""


@pytest.fixture
def schema():
    return parse_schema(TOML, "toml")


def test_toml_and_json_files_declare_the_same_schema(tmp_path, schema):
    (tmp_path / "s.toml").write_text(TOML)
    (tmp_path / "s.json").write_text(json.dumps(schema.to_dict()))
    (tmp_path / "noext").write_text(json.dumps(schema.to_dict()))
    assert load_schema(tmp_path / "s.toml") == schema
    assert load_schema(tmp_path / "s.json") == schema
    assert load_schema(tmp_path / "noext") == schema
    assert schema.feature_names == ["temp", "count", "door"]  # the file's order is the model's order
    assert schema.layout() == (["temp", "count", "door"], ["ok", "fault"])


def test_shipped_elec2_schema_matches_the_elec2_source():
    from streamlearn.streams import make_source

    src = make_source("elec2")
    assert load_schema(SCHEMA_DIR / "elec2.toml").layout() == (list(src.feature_names), list(src.classes))


@pytest.mark.parametrize("text, words", [
    ('[features]\na = "complex"', "type must be one of"),
    ('[label]\nname = "a"\n[features]\na = "float"', "named twice"),
    ('[label]\nclasses = [1, "a"]\n[features]\na = "float"', "one kind"),
    ('[label]\nclasses = [1, 1]\n[features]\na = "float"', "twice"),
    ('[label]\ntype = "float"\nclasses = [1]\n[features]\na = "float"', "no classes"),
    ('colour = "red"\n[features]\na = "float"', "unknown schema entries"),
    ('[label]\nname = "y"', r"needs \[features\]"),
    ('[features', "not valid TOML"),
    ("max_bytes = 1\n[features]\na = 'float'", "max_bytes"),
])
def test_bad_schema_files_are_config_errors_naming_the_problem(text, words):
    with pytest.raises(ConfigError, match=words):
        parse_schema(text, "toml")


def test_missing_schema_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the schema file"):
        load_schema(tmp_path / "nope.toml")


def test_flat_and_nested_readings(schema):
    flat = schema.check({"temp": 21, "count": 3.0, "door": False, "state": "ok", "id": 7, "ts": 1.5e9, "site": "x"})
    assert flat == Reading(x={"temp": 21.0, "count": 3.0, "door": 0.0}, y="ok", key="7", ts=1.5e9)
    nested = schema.check({"x": {"temp": 21, "count": 3, "door": 0}, "state": "ok", "id": "7", "ts": 1.5e9})
    assert nested == flat
    assert schema.check({"temp": 1.0, "count": 1, "door": True, "state": None}).y is None  # label comes later


def test_iso_time_is_unix_seconds(schema):
    r = schema.check({"temp": 1, "count": 1, "door": 1, "state": "ok", "ts": "2024-05-01T10:30:00Z"})
    assert r.ts == 1714559400.0
    r = schema.check({"temp": 1, "count": 1, "door": 1, "state": "ok", "ts": "2024-05-01T10:30:00"})
    assert r.ts == 1714559400.0  # naive: UTC


@pytest.mark.parametrize("ts, want", [("1714559400.5", 1714559400.5), (" 17 ", 17.0), ("2024-05-01", 1714521600.0),
                                      ("nan", "finite"), ("inf", "finite"), ("soon", "Unix seconds or an ISO 8601"),
                                      ("", None)])
def test_time_as_text_is_unix_seconds_or_iso_and_anything_else_names_the_field(schema, ts, want):
    record = {"temp": 1, "count": 1, "door": 1, "state": "ok", "ts": ts}
    if isinstance(want, str):
        with pytest.raises(RecordError, match=want) as err:
            schema.check(record)
        assert err.value.field == "ts"
    else:
        assert schema.check_text({k: str(v) for k, v in record.items()} | {"door": "true"}).ts == want
        if ts:
            assert schema.check(record).ts == want


def test_label_record_is_key_and_label_without_features(schema):
    assert schema.check({"id": "r1", "state": "fault", "ts": 5}) == LabelRecord(key="r1", y="fault", ts=5.0)
    with pytest.raises(RecordError) as err:
        schema.check({"id": "r1", "state": None})
    assert err.value.field == "state"


@pytest.mark.parametrize("record, field, words", [
    ({"temp": 1, "count": 1, "door": 1}, "state", "missing field"),
    ({"count": 1, "door": 1, "state": "ok"}, "temp", "missing field"),
    ({"temp": 1, "count": 1, "door": 1, "state": "ok", "humidity": 3}, "humidity", "unknown field"),
    ({"temp": "1", "count": 1, "door": 1, "state": "ok"}, "temp", "not a string"),
    ({"temp": True, "count": 1, "door": 1, "state": "ok"}, "temp", "must be a number"),
    ({"temp": float("nan"), "count": 1, "door": 1, "state": "ok"}, "temp", "finite"),
    ({"temp": float("inf"), "count": 1, "door": 1, "state": "ok"}, "temp", "finite"),
    ({"temp": 10 ** 400, "count": 1, "door": 1, "state": "ok"}, "temp", "out of float range"),
    ({"temp": 1, "count": 1.5, "door": 1, "state": "ok"}, "count", "integer"),
    ({"temp": 1, "count": 1, "door": 2, "state": "ok"}, "door", "boolean"),
    ({"temp": 1, "count": 1, "door": 1, "state": "broken"}, "state", "unknown label"),
    ({"temp": 1, "count": 1, "door": 1, "state": 1}, "state", "unknown label"),
    ({"temp": 1, "count": 1, "door": 1, "state": "ok", "ts": "yesterday"}, "ts", "ISO 8601"),
    ({"temp": 1, "count": 1, "door": 1, "state": "ok", "id": [1]}, "id", "string or an integer"),
    ({"x": {"temp": 1, "count": 1, "door": 1, "rpm": 3}, "state": "ok"}, "x.rpm", "unknown feature"),
    ({"x": [1, 2], "state": "ok"}, "x", "object"),
    ([1, 2], "<root>", "JSON object"),
])
def test_bad_readings_name_the_field(schema, record, field, words):
    with pytest.raises(RecordError, match=words) as err:
        schema.check(record)
    assert err.value.field == field
    assert field in str(err.value)


def test_text_rows_parse_cells_and_treat_empty_cells(schema):
    row = {"temp": "21.5", "count": "3", "door": "true", "state": "fault", "id": "a", "ts": "", "site": "x"}
    assert schema.check_text(row) == Reading(x={"temp": 21.5, "count": 3.0, "door": 1.0}, y="fault", key="a")
    assert schema.check_text({**row, "state": ""}).y is None  # empty label cell: comes later
    assert isinstance(schema.check_text({**row, "temp": "", "count": "", "door": ""}), LabelRecord)
    assert schema.check_text({**row, "count": ""}).x == {"temp": 21.5, "count": None, "door": 1.0}  # the node imputes
    strict = StreamSchema.from_dict({**schema.to_dict(), "missing": "reject"})
    with pytest.raises(RecordError, match="missing value") as err:
        strict.check_text({**row, "count": ""})
    assert err.value.field == "count"
    with pytest.raises(RecordError, match="missing value"):
        strict.check({"temp": None, "count": 1, "door": 1, "state": "ok"})
    with pytest.raises(ConfigError, match="missing must be one of null, reject, got 'drop'"):
        StreamSchema.from_dict({**schema.to_dict(), "missing": "drop"})
    for bad in ("nan", "inf", "-Infinity", "warm"):
        with pytest.raises(RecordError) as err:
            schema.check_text({**row, "temp": bad})
        assert err.value.field == "temp"


def test_typed_classes_match_text_and_json_labels():
    s = StreamSchema(["a"], label="c", classes=[0, 1])
    assert s.check_text({"a": "1", "c": "1"}).y == 1
    assert s.check({"a": 1, "c": 1.0}).y == 1
    with pytest.raises(RecordError, match="unknown label"):
        s.check({"a": 1, "c": True})  # a boolean is not the class 1
    b = StreamSchema(["a"], label="c", classes=[False, True])
    assert b.check_text({"a": "1", "c": "True"}).y is True and b.check_text({"a": "1", "c": "no"}).y is False
    t = StreamSchema(["a"], label="c", target=True)
    assert t.check({"a": 1, "c": 2}).y == 2.0
    with pytest.raises(RecordError, match="finite"):
        t.check_text({"a": "1", "c": "nan"})


def test_open_classes_accept_any_class_label_but_not_floats():
    s = StreamSchema(["a"], label="c")
    assert s.check({"a": 1, "c": "anything"}).y == "anything"
    with pytest.raises(RecordError, match="class label"):
        s.check({"a": 1, "c": 0.5})
