"""Topic names, creation on a real Tansu, and every codec's records through it intact."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from kafka import KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType

from streamlearn.errors import ConfigError
from streamlearn.kafka.codecs import (
    DriftEvent,
    Sample,
    decode_message,
    decode_model,
    decode_sample_batch,
    decode_sample_json,
    deadletter_headers,
    encode_message,
    encode_model,
    encode_sample_batch,
    encode_sample_json,
    record_kind,
)
from streamlearn.kafka.topics import (
    MODEL_MAX_MESSAGE_BYTES,
    SAMPLES_MAX_MESSAGE_BYTES,
    control_topic,
    deadletter_topic,
    drift_topic,
    ensure_topics,
    parse_samples_topic,
    samples_topic,
    sync_down_topic,
    sync_up_topic,
    topic_specs,
)


def test_topic_names():
    assert samples_topic("streamlearn", 0) == "streamlearn.samples.0"
    assert [sync_up_topic("p"), sync_down_topic("p"), drift_topic("p"), control_topic("p"), deadletter_topic("p")] == [
        "p.sync.up", "p.sync.down", "p.drift", "p.control", "p.deadletter"]
    assert parse_samples_topic("a.b", "a.b.samples.7") == 7
    assert parse_samples_topic("a.b", "aXb.samples.7") is None and parse_samples_topic("a", "a.samples.07") is None
    for bad in (-1, "3", True, 1.0):
        with pytest.raises(ConfigError):
            samples_topic("p", bad)
    with pytest.raises(ConfigError, match="prefix"):
        sync_up_topic("bad prefix")


def test_topic_specs_sizes():
    specs = {s.name: s for s in topic_specs("p", [2, 0, 2])}
    assert sorted(specs) == sorted(["p.samples.0", "p.samples.2", "p.sync.up", "p.sync.down", "p.drift", "p.control",
                                    "p.deadletter", "p.status", "p.predictions", "p.schema"])
    assert all(s.partitions == 1 for s in specs.values())
    assert int(specs["p.sync.up"].config["max.message.bytes"]) >= 64 << 20
    assert int(specs["p.samples.0"].config["max.message.bytes"]) == SAMPLES_MAX_MESSAGE_BYTES


def _configs(admin, topic):
    res = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, None)], config_filter="all")
    return {k: v["value"] for k, v in res["topic"][topic].items()}


def test_ensure_topics_creates_once_with_settings(broker, admin, settings, prefix):
    first = ensure_topics(admin, prefix, 2)
    assert set(first.values()) == {"created"} and len(first) == len(topic_specs(prefix, 2))
    assert ensure_topics(admin, prefix, 3) == {**{k: "exists" for k in first}, f"{prefix}.samples.2": "created"}
    # A bootstrap string works too (an admin client is made and closed).
    assert set(ensure_topics(broker.bootstrap, prefix, 3, settings=settings).values()) == {"exists"}
    described = {d["name"]: len(d["partitions"]) for d in admin.describe_topics(list(first))}
    assert set(described.values()) == {1}
    # Tansu stores and reports the topic configs (it does not enforce max.message.bytes).
    up = _configs(admin, sync_up_topic(prefix))
    assert up["max.message.bytes"] == str(MODEL_MAX_MESSAGE_BYTES) and up["retention.ms"] == "3600000"


def test_auto_created_topic_is_reported(broker, admin, settings, prefix, caplog):
    # Tansu creates a topic with 4 partitions as soon as a client asks for it.
    producer = KafkaProducer(**settings.producer_kwargs(allow_auto_create_topics=False))
    producer.send(samples_topic(prefix, 0), b"{}").get(timeout=10)
    producer.close()
    with caplog.at_level(logging.WARNING, logger="streamlearn.kafka.topics"):
        result = ensure_topics(admin, prefix, 1)
    assert result[samples_topic(prefix, 0)] == "exists"
    assert "has 4 partitions, expected 1" in caplog.text


def test_5mb_model_through_tansu_intact(admin, settings, prefix, consume):
    ensure_topics(admin, prefix, 1)
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(5 * 2**20 // 4, generator=gen)  # 5 MiB of float32, over Kafka's 1 MB default
    r = torch.randn(1000, generator=gen)
    producer = KafkaProducer(**settings.producer_kwargs())
    producer.send(sync_up_topic(prefix), encode_model(w, node=0, version=7, samples=4096), key=b"0").get(timeout=30)
    producer.send(sync_up_topic(prefix), encode_model(r, node=None, version=8, is_reference=True)).get(timeout=30)
    producer.close()
    records = consume(sync_up_topic(prefix), 2)
    assert len(records) == 2 and record_kind(records[0].value) == "model"
    big = decode_model(records[0].value, expected_shape=w.shape, expected_dtype=torch.float32)
    assert (big.node, big.version, big.samples, records[0].key) == (0, 7, 4096, b"0")
    assert torch.equal(big.tensor("cpu"), w)
    ref = decode_model(records[1].value)
    assert ref.is_reference and ref.node is None and torch.equal(ref.tensor("cpu"), r)


def test_sample_batches_and_json_through_tansu(admin, settings, prefix, consume):
    ensure_topics(admin, prefix, [3])
    topic = samples_topic(prefix, 3)
    rng = np.random.default_rng(0)
    names = ["nswdemand", "vicprice", "vicdemand", "transfer"]
    batches = [(rng.normal(size=(200, 4)), rng.integers(0, 2, 200)) for _ in range(3)]
    readings = [Sample(seq=600 + i, x=dict(zip(names, map(float, rng.normal(size=4)))), y=["DOWN", "UP"][i % 2],
                       node=3, ts=1.7e9 + i) for i in range(5)]
    producer = KafkaProducer(**settings.producer_kwargs())
    for i, (X, y) in enumerate(batches):
        producer.send(topic, encode_sample_batch(X, y, first_seq=200 * i, node=3, names=names))
    for s in readings:
        producer.send(topic, encode_sample_json(s))
    producer.flush(timeout=30)
    producer.close()
    records = consume(topic, 8)
    assert [record_kind(r.value) for r in records] == ["sample_batch"] * 3 + ["json"] * 5
    for i, (record, (X, y)) in enumerate(zip(records, batches)):
        batch = decode_sample_batch(record.value, expected_names=names)
        np.testing.assert_array_equal(batch.X, X.astype(np.float32))
        assert batch.y.tolist() == y.tolist() and batch.first_seq == 200 * i and batch.node == 3
    assert [decode_sample_json(r.value) for r in records[3:]] == readings


def test_drift_events_and_deadletter_headers_through_tansu(admin, settings, prefix, consume):
    ensure_topics(admin, prefix, 1)
    event = DriftEvent(kind="sudden", ts=1.7e9, node=0, seq=5000, params={"concept": 2})
    producer = KafkaProducer(**settings.producer_kwargs())
    producer.send(drift_topic(prefix), encode_message(event)).get(timeout=10)
    headers = deadletter_headers("bad magic", topic=samples_topic(prefix, 0), partition=0, offset=41)
    producer.send(deadletter_topic(prefix), b"\x00garbage", headers=headers).get(timeout=10)
    producer.close()
    assert decode_message(consume(drift_topic(prefix), 1)[0].value, expect="drift") == event
    dead = consume(deadletter_topic(prefix), 1)[0]
    assert dead.value == b"\x00garbage" and dict(dead.headers)["sl-source-offset"] == b"41"
