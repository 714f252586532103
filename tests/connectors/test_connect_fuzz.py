"""Arbitrary bytes and JSON at every decoder and validator of the connectors: clean errors only, never a crash.

Whatever is accepted must also be a valid record on the wire (the node's own
decoder takes it); whatever is refused is dead-lettered exactly once.
"""

from __future__ import annotations

import io
import json

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from streamlearn.connectors.csv_replay import CsvFormat, parse_delimiter
from streamlearn.connectors.errors import RecordError, reason_class
from streamlearn.connectors.ingest import Ingestor, parse_payload
from streamlearn.kafka.labels import LabelRecord, decode_label_json, decode_node_record, encode_label_json
from streamlearn.connectors.lines import read_lines
from streamlearn.connectors.mqtt import parse_topic, parse_topic_map
from streamlearn.connectors.publish import encode_reading
from streamlearn.connectors.routing import NodeRouter, parse_node_map
from streamlearn.connectors.schema import Reading, StreamSchema, parse_schema
from streamlearn.errors import ConfigError
from streamlearn.kafka.codecs import DecodeError, Sample, deadletter_headers, decode_sample_json
from streamlearn.metrics import DEADLETTER_REASONS

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SCHEMA = StreamSchema({"temp": "float", "rpm": "int", "door": "bool"}, label="state", classes=["ok", "fault"],
                      key="id", time="ts", ignore=["site"], max_bytes=2048)
OPEN = StreamSchema(["a"], label="y", key="id")
NAMES = ["temp", "rpm", "door", "state", "id", "ts", "site", "x", "y", "a", "seq", "node", "key"]

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-2**70, max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
           | st.sampled_from(["ok", "fault", "", "nan", "1e999", "2024-05-01T10:30:00Z", "\ud800", "NaN"]))
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=4)
                           | st.dictionaries(st.text(max_size=8) | st.sampled_from(NAMES), c, max_size=5),
                           max_leaves=15)
records = st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=6), json_values, max_size=8)


def _json_bytes(value) -> bytes:
    return json.dumps(value, allow_nan=True).encode("utf-8", "surrogatepass")


payloads = (st.binary(max_size=300) | records.map(_json_bytes) | st.lists(records, max_size=4).map(_json_bytes)
            | json_values.map(_json_bytes))


class FakePublisher:
    """Encodes exactly as the Kafka publisher does, and checks the node's decoders accept it."""

    def __init__(self):
        self.sent, self.dead = [], []

    def reading(self, node, reading):
        assert isinstance(reading, Reading)
        data = encode_reading(reading, node=node, seq=len(self.sent))
        sample = decode_sample_json(data)  # a valid sample on the wire
        assert isinstance(decode_node_record(data), Sample) and sample.x == reading.x
        self.sent.append(data)
        return data

    def label(self, node, record):
        data = encode_label_json(LabelRecord(key=record.key, y=record.y, node=node, ts=record.ts))
        assert decode_node_record(data).key == record.key
        self.sent.append(data)
        return data

    def deadletter(self, raw, error, *, source, offset):
        reason = str(error)
        assert isinstance(raw, bytes) and isinstance(error, RecordError) and reason
        deadletter_headers(reason.encode("utf-8", "backslashreplace").decode(), topic=source, partition=-1,
                           offset=offset)
        # every refusal falls in a named class of the dead-letter metric, never "other"
        assert reason_class(error) in DEADLETTER_REASONS[:-1], reason
        self.dead.append(reason)


@FAST
@given(payloads, st.booleans())
@example(b'{"a": 1, "y": "\\ud800", "id": "\\udfff"}', True)  # lone surrogates: JSON-legal, not UTF-8
@example(b"[" * 5000 + b"]" * 5000, True)  # nesting beyond the recursion limit
@example(b'{"a": ' + b"9" * 5000 + b', "y": 1}', False)  # beyond int's 4300-digit limit
@example(b'{"a": 1e999, "y": 1}', False)  # overflows to infinity
@example(b"\xef\xbb\xbf{}", False)  # a UTF-8 byte order mark
@example(b"[]", True)
def test_ingest_payload_never_raises_and_dead_letters_every_bad_record(raw, batch):
    try:
        n = len(parse_payload(raw, max_bytes=1 << 20, batch=batch))
    except RecordError:
        n = 1  # the payload as a whole is one bad record
    for schema in (SCHEMA, OPEN):
        for router in (NodeRouter(round_robin=3), NodeRouter(field="site", nodes=4), NodeRouter(field="id")):
            pub = FakePublisher()
            out = Ingestor(schema, router, pub).payload(raw, source="fuzz", offset=1, batch=batch)
            assert all(isinstance(exc, RecordError) for _, exc in out.errors)
            assert out.accepted == len(pub.sent) and len(out.errors) == len(pub.dead)
            assert out.accepted + len(out.errors) == n  # each record delivered or dead-lettered, once


@FAST
@given(records)
def test_schema_check_accepts_or_names_a_field(record):
    for schema in (SCHEMA, OPEN):
        try:
            checked = schema.check(record)
        except RecordError as exc:
            assert exc.field is not None and str(exc) and reason_class(exc) != "other", str(exc)
            continue
        assert isinstance(checked, (Reading, LabelRecord))
        if isinstance(checked, Reading):
            decode_sample_json(encode_reading(checked, node=0, seq=0))


@FAST
@given(st.dictionaries(st.sampled_from(NAMES), st.text(max_size=12) | st.sampled_from(["", "1", "true", "ok"]),
                       max_size=8))
def test_schema_check_text_accepts_or_names_a_field(row):
    try:
        checked = SCHEMA.check_text(row)
    except RecordError as exc:
        assert exc.field is not None and reason_class(exc) != "other", str(exc)
        return
    if isinstance(checked, Reading):
        decode_sample_json(encode_reading(checked, node=1, seq=0))


@FAST
@given(st.binary(max_size=200), st.sampled_from([",", ";", "\t", "|"]))
def test_csv_rows_parse_or_fail_cleanly(line, delimiter):
    fmt = CsvFormat(delimiter.join(["id", "temp", "rpm", "door", "state"]).encode(), SCHEMA)
    try:
        row = fmt.parse_row(line)
        SCHEMA.check_text(row)
    except RecordError as exc:
        assert reason_class(exc) != "other", str(exc)


@FAST
@given(st.binary(max_size=300), st.integers(min_value=1, max_value=50))
def test_line_reader_takes_any_bytes(data, limit):
    out = list(read_lines(io.BytesIO(data), limit))
    assert all(len(line) <= limit for _, line, _ in out)


@FAST
@given(payloads)
def test_wire_decoders_raise_only_decode_errors(raw):
    for decode in (decode_node_record, decode_label_json):
        try:
            decode(raw)
        except DecodeError:
            pass
    try:
        parse_payload(raw, max_bytes=200)
    except RecordError:
        pass


@FAST
@given(st.text(max_size=200) | json_values.map(lambda v: json.dumps(v)), st.sampled_from(["toml", "json"]))
def test_schema_files_fail_only_with_config_errors(text, fmt):
    try:
        parse_schema(text, fmt)
    except ConfigError:
        pass


@FAST
@given(json_values)
def test_schema_dicts_fail_only_with_config_errors(value):
    for data in (value, {"features": value}, {"features": {"a": "float"}, "label": value},
                 {"features": ["a"], "label": {"name": "y", "classes": value}}):
        try:
            StreamSchema.from_dict(data)
        except ConfigError:
            pass


@FAST
@given(json_values)
def test_routing_values_fail_only_with_record_errors(value):
    for router in (NodeRouter(), NodeRouter(nodes=5), NodeRouter(mapping={"a": 1})):
        try:
            node = router.by_value(value)
        except RecordError:
            continue
        assert 0 <= node <= router.max_node


@FAST
@given(st.text(max_size=40))
def test_command_line_values_fail_only_with_config_errors(text):
    for parse in (parse_topic, lambda t: parse_topic_map([t]), parse_node_map, parse_delimiter):
        try:
            parse(text)
        except ConfigError:
            pass
