"""Predictions out: the publisher's records, their JSON Schema, and a node publishing on the real Tansu broker.

The integration test runs a node (and the sync service) on a labelled stream of JSON readings
(with keys and event times), binary batches and late-labelled readings, reads
``<prefix>.predictions`` back and checks one prediction per learned sample, keyed and
sequenced, whose accuracy against the labels is the node's reported accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaProducer

from streamlearn.errors import ConfigError
from streamlearn.kafka.codecs import DecodeError, Sample, encode_sample_batch, encode_sample_json
from streamlearn.kafka.labels import LabelRecord, encode_label_json
from streamlearn.kafka.node import NodeConfig
from streamlearn.kafka.predictions import (
    _DEFAULTS,
    MAX_PREDICTION_RECORD_BYTES,
    PredictionPublisher,
    decode_predictions,
    encode_predictions,
)
from streamlearn.kafka.topics import predictions_topic, samples_topic

from separable import make_data
from test_kafka_pipeline import CLASSES, FEATURES, Pipeline

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "docs" / "prediction.schema.json").read_text())


def validate(record: dict) -> None:
    """Check a decoded record against docs/prediction.schema.json (jsonschema when installed, else the
    documented required fields and types by hand)."""
    try:
        import jsonschema
    except ImportError:
        jsonschema = None
    if jsonschema is not None:
        jsonschema.validate(record, SCHEMA)
        return
    assert set(record) == {"type", "node", "classes", "predictions"} and record["type"] == "predictions"
    for p in record["predictions"]:
        assert {"seq", "prediction", "step", "syncs"} <= set(p) <= set(SCHEMA["$defs"]["prediction"]["properties"])
        assert all(isinstance(p[k], int) and p[k] >= 0 for k in ("seq", "step", "syncs"))


class _Producer:
    """Records what is sent (a stand-in for KafkaProducer)."""

    def __init__(self, fail: bool = False):
        self.sent, self.fail = [], fail

    def send(self, topic, value, key=None, partition=None):
        if self.fail:
            raise RuntimeError("buffer full")
        self.sent.append((topic, key, partition, value))


def _records(producer) -> list:
    return [decode_predictions(value) for _, _, _, value in producer.sent]


def rows_of(rec: dict) -> list:
    """The predictions of a record with the fields it leaves out (null key, ts, epoch; false late) filled in."""
    return [dict(_DEFAULTS, **p) for p in rec["predictions"]]


# ---- the publisher, without a broker ---------------------------------------------------------------


@pytest.mark.parametrize("classes", [[0, 1, 2], ["DOWN", "UP"], [False, True]])
def test_predictions_keep_the_type_of_the_labels_and_validate(classes):
    prod = _Producer()
    pub = PredictionPublisher(prod, "p.predictions", node=3, classes=classes)
    k = len(classes)
    P = np.eye(k)[[1, 0, k - 1]] * 0.7 + 0.3 / k
    pub.add(np.array([5, 6, 7]), P, step=2, syncs=1, epoch="5f0c2a9e13d4")
    assert pub.flush() == 1 and pub.published == 3
    topic, key, partition, value = prod.sent[0]
    assert (topic, key, partition) == ("p.predictions", b"3", 0)
    rec = decode_predictions(value)
    validate(rec)
    rows = rows_of(rec)
    preds = [p["prediction"] for p in rows]
    assert preds == [classes[1], classes[0], classes[k - 1]]
    assert all(type(p) is type(classes[0]) for p in preds)  # 1 stays 1, never "1" or True
    assert rec["classes"] == classes and rec["node"] == 3
    assert [p["seq"] for p in rows] == [5, 6, 7]
    assert all(p["step"] == 2 and p["syncs"] == 1 and p["epoch"] == "5f0c2a9e13d4" and not p["late"] for p in rows)
    assert np.allclose([p["proba"] for p in rows], P, atol=1e-6)


def test_no_prediction_yet_is_null_and_regression_has_no_proba():
    prod = _Producer()
    pub = PredictionPublisher(prod, "p.predictions", node=0, classes=[0, 1])
    pub.add(np.array([0, 1]), np.array([[np.nan, np.nan], [0.4, 0.6]]))
    reg = PredictionPublisher(prod, "p.predictions", node=1, classes=None)
    reg.add(np.array([0, 1]), values=np.array([12.5, np.nan]), keys=["s1", "s2"], ts=[1.0, None])
    pub.flush(), reg.flush()
    a, b = _records(prod)
    for rec in (a, b):
        validate(rec)
    assert [(p["prediction"], p["proba"]) for p in a["predictions"]] == [(None, None), (1, [0.4, 0.6])]
    assert b["classes"] is None
    assert [(p["prediction"], p["proba"], p["key"], p["ts"]) for p in rows_of(b)] == [
        (12.5, None, "s1", 1.0), (None, None, "s2", None)]


def test_sources_skips_splits_and_send_errors():
    prod = _Producer()
    pub = PredictionPublisher(prod, "p.predictions", node=0, classes=[0, 1], max_rows=4, max_pending=4)
    pub.note_source(10, "k10", 100.0)
    pub.note_source(12, None, 102.0)
    P = np.tile([0.3, 0.7], (6, 1))
    # rows 1 and 4 are late-labelled: published on arrival, skipped here
    pub.add(np.arange(6), P, offsets=np.array([10, 11, 11, 12, 12, 13]), skip=np.array([0, 1, 0, 0, 1, 0], bool))
    assert len(prod.sent) == 1  # 4 rows: max_rows reached, sent at once
    pub.flush()
    rows = [p for rec in _records(prod) for p in rows_of(rec)]
    assert [(p["seq"], p["key"], p["ts"]) for p in rows] == [
        (0, "k10", 100.0), (2, None, None), (3, None, 102.0), (5, None, None)]
    pub.forget_before(12)
    assert list(pub._source) == [12]
    pub.note_source(0, "again", None)  # a topic read again from its start: what was noted is stale
    assert list(pub._source) == [0]
    # a record over the size limit is split
    big = PredictionPublisher(prod, "p.predictions", node=0, classes=list(range(2000)), max_rows=1000)
    big.add(np.arange(200), np.full((200, 2000), 1 / 2000))
    assert big.flush() >= 2 and big.published == 200
    assert all(len(v) <= MAX_PREDICTION_RECORD_BYTES for _, _, _, v in prod.sent)
    failing = PredictionPublisher(_Producer(fail=True), "p.predictions", node=0, classes=[0, 1])
    failing.add(np.arange(2), P[:2])
    assert failing.flush() == 0 and failing.send_errors == 1 and failing.published == 0
    with pytest.raises(ConfigError, match="max_rows"):
        PredictionPublisher(prod, "t", node=0, classes=[0, 1], max_rows=0)
    with pytest.raises(ConfigError, match="max_pending"):
        PredictionPublisher(prod, "t", node=0, classes=[0, 1], max_pending=0)


def test_kept_until_max_pending_then_sent_as_records_of_max_rows():
    prod = _Producer()
    pub = PredictionPublisher(prod, "p.predictions", node=0, classes=[0, 1], max_rows=4)  # max_pending 8 * 4
    P = np.tile([0.3, 0.7], (3, 1))
    for i in range(10):  # 30 rows: nothing sent yet
        pub.add(np.arange(3 * i, 3 * i + 3), P)
    assert prod.sent == [] and pub.pending == 30
    pub.add(np.arange(30, 33), P)  # 33 >= 32: all of them, in records of 4 (the last of 1)
    assert [len(rec["predictions"]) for rec in _records(prod)] == [4] * 8 + [1] and pub.pending == 0
    assert [p["seq"] for rec in _records(prod) for p in rec["predictions"]] == list(range(33))


def _reference_rows(classes, batches) -> list:
    """The JSON text of each prediction as the publisher wrote it row by row before its bulk formatting
    (the reference the publisher's output must equal, byte for byte)."""
    def number(x):
        return repr(float(x)) if x is not None and np.isfinite(x) else "null"

    rows = []
    for b in batches:
        tail = ("" if b["epoch"] is None else ',"epoch":' + json.dumps(b["epoch"])) \
            + ',"syncs":%d,"step":%d' % (b["syncs"], b["step"]) + (',"late":true}' if b["late"] else "}")
        for i, seq in enumerate(b["seqs"]):
            if b["skip"] is not None and b["skip"][i]:
                continue
            key, ts = b["keys"][i], b["ts"][i]
            k = "" if key is None else ',"key":' + json.dumps(key, ensure_ascii=False)
            t = "" if ts is None or not np.isfinite(ts) else ',"ts":' + repr(float(ts))
            if classes is None:
                pred, proba = number(b["values"][i]), "null"
            elif not np.isfinite(b["proba"][i]).all():
                pred = proba = "null"
            else:
                row = b["proba"][i]
                pred = json.dumps(classes[int(np.argmax(row))], ensure_ascii=False, separators=(",", ":"))
                proba = "[" + ",".join("%.6g" % v for v in row.tolist()) + "]"
            rows.append(f'{{"seq":{int(seq)}{k}{t},"prediction":{pred},"proba":{proba}{tail}')
    return rows


@pytest.mark.parametrize("classes", [["DOWN", "UP", "ünï"], [0, 1], None])
def test_bulk_formatting_equals_the_row_by_row_reference(classes):
    """Random mini-batches (NaN rows, tiny and huge probabilities, late-labelled readings with string keys and
    event times, source notes by offset, skipped rows, epochs): the records hold exactly the reference's rows."""
    rng = np.random.default_rng(7)
    prod = _Producer()
    pub = PredictionPublisher(prod, "p.predictions", node=3, classes=classes, max_rows=7)
    k = 0 if classes is None else len(classes)
    sources, batches, seq = {}, [], 0
    for step in range(60):
        n = int(rng.integers(1, 12))
        proba = rng.dirichlet(np.full(max(k, 1), 0.3), size=n)[:, :k] if k else None
        if k:
            proba[rng.random(n) < 0.15] = np.nan  # no prediction possible
            proba[rng.random(n) < 0.1, 0] = 1e-9  # exponent notation in %.6g
        values = rng.normal(0, 1e3, n) if classes is None else None
        if values is not None:
            values[rng.random(n) < 0.15] = np.nan
        b = {"seqs": np.arange(seq, seq + n), "proba": proba, "values": values, "step": step, "syncs": step // 7,
             "epoch": None if step < 20 else f"ep\"{step // 25}", "late": bool(rng.random() < 0.3),
             "skip": None}
        seq += n
        if b["late"]:  # held readings: keys and event times of their own
            b["keys"] = [None if rng.random() < 0.3 else f"k{j}\u00e9\n" for j in range(n)]
            b["ts"] = [None if rng.random() < 0.3 else float(rng.uniform(0, 2e9)) for _ in range(n)]
            pub.add(b["seqs"], proba, values=values, keys=b["keys"], ts=b["ts"], step=step, syncs=b["syncs"],
                    epoch=b["epoch"], late=True)
        else:  # labelled on arrival: keys and event times noted by offset (some offsets noted, some not)
            offsets = np.arange(n) + 1000 * step
            for off in offsets.tolist():
                if rng.random() < 0.5:
                    sources[off] = (f"s{off}", None if rng.random() < 0.5 else float(rng.uniform(0, 1e9)))
                    pub.note_source(off, *sources[off])
            b["keys"] = [sources.get(o, (None, None))[0] for o in offsets.tolist()]
            b["ts"] = [sources.get(o, (None, None))[1] for o in offsets.tolist()]
            b["skip"] = rng.random(n) < 0.2 if rng.random() < 0.5 else None
            pub.add(b["seqs"], proba, values=values, offsets=offsets, step=step, syncs=b["syncs"], epoch=b["epoch"],
                    skip=b["skip"])
        batches.append(b)
    pub.flush()
    expected = _reference_rows(None if classes is None else list(classes), batches)
    head = encode_predictions(3, classes, [])[:-2]  # the record up to its list of predictions
    got = []
    for _, key, _, value in prod.sent:
        assert key == b"3" and value.startswith(head) and value.endswith(b"]}")
        record = decode_predictions(value)
        validate(record)
        assert len(record["predictions"]) <= 7
        got.append(value[len(head):-2].decode())
    assert ",".join(got) == ",".join(expected) and len(expected) > 200


@pytest.mark.parametrize("skip", [False, True])
def test_a_run_of_mini_batches_publishes_as_its_mini_batches_one_by_one(skip):
    """A run learnt in one call adds its predictions once, with a step per reading: the records are those of
    the same mini-batches added one per step (an epoch with a '%' in it, noted sources, skipped rows)."""
    rng = np.random.default_rng(3)
    B, steps = 10, 23
    proba = rng.dirichlet([1.0, 1.0], size=B * steps)
    seqs, offsets = np.arange(B * steps) + 500, np.arange(B * steps) // 4
    drop = rng.random(B * steps) < 0.3 if skip else None
    sent = []
    for run in (False, True):
        prod = _Producer()
        pub = PredictionPublisher(prod, "p.predictions", node=1, classes=[0, 1], max_rows=50)
        for off in range(0, B * steps // 4, 3):
            pub.note_source(off, f"s{off}", float(off))
        if run:
            pub.add(seqs, proba, offsets=offsets, step=np.repeat(np.arange(40, 40 + steps), B), syncs=2,
                    epoch="e%d", skip=drop)
        else:
            for t in range(steps):
                sl = slice(t * B, (t + 1) * B)
                pub.add(seqs[sl], proba[sl], offsets=offsets[sl], step=40 + t, syncs=2, epoch="e%d",
                        skip=None if drop is None else drop[sl])
        pub.flush()
        sent.append([value for _, _, _, value in prod.sent])
    assert sent[0] == sent[1]
    rows = [p for value in sent[1] for p in decode_predictions(value)["predictions"]]
    assert len(rows) == (B * steps if drop is None else int((~drop).sum()))
    assert rows[-1]["step"] == 40 + steps - 1 and rows[0]["epoch"] == "e%d"


@pytest.mark.parametrize("record, field", [
    ({"type": "status", "node": 0, "classes": None, "predictions": []}, "type"),
    ({"type": "predictions", "node": -1, "classes": None, "predictions": []}, "node"),
    ({"type": "predictions", "node": 0, "classes": [0, 1], "predictions": [
        {"seq": 1, "prediction": 2, "step": 0, "syncs": 0}]}, "predictions[0].prediction"),
    ({"type": "predictions", "node": 0, "classes": [0, 1], "predictions": [
        {"seq": 1, "prediction": 1, "step": 0, "syncs": 0, "proba": [0.5]}]}, "predictions[0].proba"),
    ({"type": "predictions", "node": 0, "classes": None, "predictions": [
        {"seq": 1, "prediction": "x", "step": 0, "syncs": 0}]}, "predictions[0].prediction"),
    ({"type": "predictions", "node": 0, "classes": None, "predictions": [
        {"seq": 1, "prediction": 1.0, "step": 0, "syncs": 0, "extra": 1}]}, "predictions[0].extra"),
])
def test_decode_names_the_bad_field(record, field):
    with pytest.raises(DecodeError) as exc:
        decode_predictions(json.dumps(record).encode())
    assert exc.value.field == field


def test_node_option_turns_predictions_off():
    from streamlearn.kafka.node import node_config_from_options

    assert NodeConfig(node=0, source="sea").predictions is True
    assert node_config_from_options({"id": 0, "source": "sea", "predictions": False}).predictions is False
    with pytest.raises(ConfigError, match="predictions"):
        NodeConfig(node=0, source="sea", predictions="no")


# ---- a node on the real broker -----------------------------------------------------------------------


def _read_predictions(settings, prefix, until, timeout=30.0) -> list:
    """Records of ``<prefix>.predictions`` (kafka record, decoded) from the start until ``until(decoded)``."""
    from kafka import KafkaConsumer, TopicPartition
    import time

    consumer = KafkaConsumer(**settings.consumer_kwargs(fetch_max_wait_ms=100))
    try:
        tp = TopicPartition(predictions_topic(prefix), 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        out = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not until([d for _, d in out]):
            for batch in consumer.poll(timeout_ms=200).values():
                out.extend((rec, decode_predictions(rec.value)) for rec in batch)
        return out
    finally:
        consumer.close()


def test_node_publishes_one_prediction_per_learned_sample(broker, settings, prefix, capsys):
    n_json, n_batch, n_late = 300, 400, 100
    X, y = make_data(n_json + n_batch + n_late, seed=3)
    t0 = 1_700_000_000.0
    records = []
    for i in range(n_json):  # JSON readings with a key and an event time
        records.append((encode_sample_json(Sample(seq=i, x=dict(zip(FEATURES, X[i].tolist())), y=CLASSES[y[i]],
                                                  key=f"r{i}", ts=t0 + i)), None))
    for i in range(n_json, n_json + n_batch, 50):  # binary batches, in records keyed "bat"
        records.append((encode_sample_batch(X[i:i + 50], y[i:i + 50], first_seq=i, names=FEATURES), b"bat"))
    first_late = n_json + n_batch
    for i in range(first_late, first_late + n_late):  # readings without label, their labels 5 readings later
        records.append((encode_sample_json(Sample(seq=i, x=dict(zip(FEATURES, X[i].tolist())), y=None,
                                                  key=f"late{i}", ts=t0 + i)), None))
        if i - first_late >= 5:
            records.append((encode_label_json(LabelRecord(key=f"late{i - 5}", y=CLASSES[y[i - 5]])), None))
    for i in range(first_late + n_late - 5, first_late + n_late):
        records.append((encode_label_json(LabelRecord(key=f"late{i}", y=CLASSES[y[i]])), None))
    n = len(y)
    with Pipeline(broker, settings, prefix, spec="periodic:b=5") as pipe:
        pipe.start_sync()
        node = pipe.start_node(0, detector=None)
        pipe.wait(lambda r: r.nodes.get(0, {}).get("joined"), what="node 0 joined")
        producer = KafkaProducer(**settings.producer_kwargs())
        for i, (value, key) in enumerate(records):
            producer.send(samples_topic(prefix, 0), value, key=key, partition=0)
            if i == n_json - 1:  # a sync reaches the node before the rest: their predictions carry it
                producer.flush()
                pipe.wait(lambda r: r.nodes.get(0, {}).get("syncs", 0) > 0, what="node 0 synced")
        producer.flush()
        producer.close()
        pipe.wait(pipe.learned({0: n}), what="every sample learned")
        pipe.stop(node)
    final = node.status()
    assert final["samples"] == n and final["deadletters"] == 0 and final["predictions"] == n
    from prometheus_client import CollectorRegistry

    from streamlearn.metrics import NodeMetrics

    reg = CollectorRegistry()
    NodeMetrics(reg, node=0).update_from_status(final)
    assert reg.get_sample_value("streamlearn_node_predictions_total", {"node": "0"}) == n
    got = _read_predictions(settings, prefix, lambda recs: sum(len(r["predictions"]) for r in recs) >= n)
    for rec, dec in got:
        assert rec.key == b"0" and dec["node"] == 0 and dec["classes"] == CLASSES
        validate(dec)
    rows = [p for _, dec in got for p in rows_of(dec)]
    # exactly one prediction per learned sample
    assert sorted(p["seq"] for p in rows) == list(range(n))
    by_seq = {p["seq"]: p for p in rows}
    assert all(by_seq[i]["key"] == f"r{i}" and by_seq[i]["ts"] == t0 + i for i in range(n_json))
    assert all(by_seq[i]["key"] == "bat" and by_seq[i]["ts"] is None for i in range(n_json, first_late))
    assert all(by_seq[i]["key"] == f"late{i}" and by_seq[i]["late"] for i in range(first_late, n))
    assert not any(by_seq[i]["late"] for i in range(first_late))
    assert all(type(p["prediction"]) is int and len(p["proba"]) == 2 for p in rows)
    # the model version moves on: steps never go back along the stream of labelled readings, syncs happen
    steps = [by_seq[i]["step"] for i in range(first_late)]
    assert steps == sorted(steps) and steps[0] == 0 and steps[-1] > 0
    assert by_seq[first_late - 1]["syncs"] > 0 and by_seq[first_late - 1]["epoch"] == pipe.sync.status()["epoch"]
    # the predictions' accuracy against the labels is the node's (late readings: scored by the published one)
    accuracy = np.mean([by_seq[i]["prediction"] == CLASSES[y[i]] for i in range(n)])
    assert accuracy == pytest.approx(final["accuracy"], abs=1e-12)
    assert accuracy > 0.8
    # and `streamlearn tail predictions` shows the node's records as they are
    from streamlearn.cli import main

    assert main(["tail", "predictions", "--bootstrap", broker.bootstrap, "--prefix", prefix, "--from-beginning",
                 "--json", "--max", str(n), "--max-seconds", "30"]) == 0
    shown = [json.loads(t) for t in capsys.readouterr().out.splitlines()]
    assert [(p["seq"], p["key"], p["prediction"], p["late"]) for p in shown] == [
        (p["seq"], p["key"], p["prediction"], p["late"]) for p in rows]


def test_node_without_predictions_publishes_none(broker, settings, prefix):
    X, y = make_data(100, seed=1)
    with Pipeline(broker, settings, prefix, spec="nosync") as pipe:
        node = pipe.start_node(0, detector=None, predictions=False)
        producer = KafkaProducer(**settings.producer_kwargs())
        producer.send(samples_topic(prefix, 0), encode_sample_batch(X, y, first_seq=0, names=FEATURES), partition=0)
        producer.flush()
        producer.close()
        pipe.wait(pipe.learned({0: 100}), what="every sample learned")
        pipe.stop(node)
    assert node.status()["predictions"] is None
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**settings.consumer_kwargs())
    try:
        tp = TopicPartition(predictions_topic(prefix), 0)
        assert consumer.end_offsets([tp])[tp] == 0
    finally:
        consumer.close()


def test_encode_predictions_is_what_the_schema_documents():
    rec = json.loads(encode_predictions(0, ["a", "b"], [{"seq": 0, "key": None, "ts": None, "prediction": "a",
                                                         "proba": [1.0, 0.0], "epoch": None, "syncs": 0, "step": 0,
                                                         "late": False}]))
    validate(rec)
    assert set(SCHEMA["$defs"]["prediction"]["properties"]) == set(rec["predictions"][0])


def test_cli_node_flag():
    from streamlearn.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["node", "--id", "0"]).predictions is True
    assert parser.parse_args(["node", "--id", "0", "--no-predictions"]).predictions is False
