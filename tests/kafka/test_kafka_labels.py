"""Delayed labels: the label record's wire format and the bounded join table."""

from __future__ import annotations

import pytest

from streamlearn.kafka.labels import LabelRecord, PendingByKey, decode_label_json, decode_node_record, encode_label_json
from streamlearn.kafka.codecs import DecodeError, Sample


def test_label_record_round_trips():
    rec = LabelRecord(key="r-17", y="UP", node=2, ts=1714559400.0)
    assert decode_label_json(encode_label_json(rec)) == rec
    assert decode_node_record(encode_label_json(rec)) == rec


def test_node_record_tells_readings_from_labels():
    assert isinstance(decode_node_record(b'{"seq": 0, "x": {"a": 1}, "y": null, "key": "k"}'), Sample)
    assert isinstance(decode_node_record(b'{"key": "k", "y": false}'), LabelRecord)


@pytest.mark.parametrize("data, field", [
    (b'{"key": "k", "y": null}', "y"),
    (b'{"key": "k"}', "y"),
    (b'{"y": 1}', "key"),
    (b'{"key": "", "y": 1}', "key"),
    (b'{"key": "k", "y": 1, "colour": 1}', "colour"),
    (b'{"key": "k", "y": 1, "node": -1}', "node"),
    (b'{"seq": 1, "y": 1}', "x"),  # a reading without features, not a label
])
def test_bad_label_records_name_the_field(data, field):
    with pytest.raises(DecodeError) as err:
        decode_node_record(data)
    assert err.value.field == field


def test_pending_is_fifo_per_key_and_bounded():
    table = PendingByKey(max_items=3)
    assert table.put("a", 1) == [] and table.put("b", 2) == [] and table.put("a", 3) == []
    assert table.put("c", 4) == [("a", 1)]  # the oldest goes, even though "a" has another item
    assert table.pop("a") == 3 and table.pop("a") is None
    assert table.pop("b") == 2 and table.pop("c") == 4 and len(table) == 0


def test_pending_expires_after_ttl():
    now = [0.0]
    table = PendingByKey(ttl=10, clock=lambda: now[0])
    table.put("a", 1)
    now[0] = 5
    table.put("b", 2)
    now[0] = 12
    assert table.expire() == [("a", 1)]
    assert table.pop("b") == 2
