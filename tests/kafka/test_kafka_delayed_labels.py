"""Late labels in the node service, against the real Tansu broker of conftest.py.

Readings come with a key and ``"y": null``; their label records come later, between other
records. The node predicts a reading when it arrives, scores that prediction when the label
comes, learns the reading then, and never commits past a reading that still waits.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from streamlearn.kafka.labels import LabelRecord, encode_label_json
from streamlearn.kafka.codecs import Sample, encode_sample_json
from streamlearn.kafka.node import NodeConfig, NodeService, _declared_proba, _early_scores
from streamlearn.kafka.topics import deadletter_topic, ensure_topics, samples_topic

FEATURES = ["a", "b", "c"]
CLASSES = [0, 1]


def reading(seq: int, x, y=None, key=None) -> bytes:
    return encode_sample_json(Sample(seq=seq, x=dict(zip(FEATURES, map(float, x))), y=y, key=key))


def label(key: str, y) -> bytes:
    return encode_label_json(LabelRecord(key=key, y=y))


def publish(settings, prefix, records: list) -> int:
    """Publish records to node 0's topic; return the offset of the first one."""
    producer = KafkaProducer(**settings.producer_kwargs())
    try:
        first = producer.send(samples_topic(prefix, 0), records[0]).get(timeout=10).offset
        for rec in records[1:]:
            producer.send(samples_topic(prefix, 0), rec)
        producer.flush()
        return first
    finally:
        producer.close()


def committed(settings, prefix) -> int | None:
    consumer = KafkaConsumer(**settings.consumer_kwargs(group_id=f"{prefix}.node.0", enable_auto_commit=False))
    try:
        tp = TopicPartition(samples_topic(prefix, 0), 0)
        consumer.assign([tp])
        return consumer.committed(tp)
    finally:
        consumer.close()


class Node:
    """Node 0 as a thread, without a sync service (protocol nosync); stopped on exit."""

    def __init__(self, broker, settings, prefix, **kw):
        kw = {"learner_params": {"lr": 0.5}, "protocol": "nosync", "detector": None, "status_interval": 0.1,
              "commit_interval": 0.2, "device": "cpu", **kw}
        self.svc = NodeService(NodeConfig(node=0, features=FEATURES, classes=CLASSES, bootstrap=broker.bootstrap,
                                          prefix=prefix, settings=settings, **kw))
        self.errors: list = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            self.svc.run()
        except BaseException as exc:  # surfaced by stop()
            self.errors.append(exc)

    def wait(self, condition, what: str, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.svc.status()
            if st and condition(st):
                return st
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}: {self.svc.status()}")

    def stop(self) -> dict:
        self.svc.stop()
        self.thread.join(timeout=20)
        assert not self.thread.is_alive() and not self.errors, self.errors
        return self.svc.status()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.thread.is_alive():
            self.stop()


def w0_predictions(X: np.ndarray) -> np.ndarray:
    """What a node's untrained model (w0, seed 0) predicts: the class index per row."""
    from streamlearn.learners import make_learner

    learner = make_learner("logreg", features=FEATURES, classes=CLASSES, seed=0, device="cpu", lr=0.5)
    return np.asarray(learner.predict_proba_many(X.astype(np.float32))).argmax(axis=1)


# ------------------------------------------------------------------------------------------------


def test_late_labels_score_the_prediction_made_on_arrival_and_are_learned(broker, settings, prefix, consume):
    rng = np.random.default_rng(0)
    n, m = 120, 30
    X = rng.normal(size=(n + m, 3)).astype(np.float32) * 2
    y = 1 - w0_predictions(X)  # every prediction of the untrained model is wrong; a linear concept all the same
    ensure_topics(broker.bootstrap, prefix, 1, settings=settings)
    publish(settings, prefix, [reading(i, X[i], key=f"r{i}") for i in range(n)])
    with Node(broker, settings, prefix, batch_size=1) as node:
        node.wait(lambda s: s["awaiting_label"] == n, "the readings held")
        st = node.svc.status()
        assert st["samples"] == 0 and st["predicted_unlabelled"] == n and st["last_prediction"]["key"] == f"r{n - 1}"
        assert st["committed"] == 0  # nothing may be committed past a reading that waits

        # The labels, in another order, between readings of other keys (whose labels never come)
        # and labels of keys never seen.
        later = [label(f"r{i}", int(y[i])) for i in rng.permutation(n)]
        others = [reading(n + j, X[n + j], key=f"s{j}") for j in range(m)]
        stray = [label("nobody", 1), label("r-1", 0), label("r5x", 1)]
        records = later[:40] + others[:10] + stray[:2] + later[40:90] + others[10:] + later[90:] + stray[2:]
        first = publish(settings, prefix, records)
        st = node.wait(lambda s: s["samples"] == n and s["deadletters"] == 3 and s["committed"] == first + 40,
                       "the labelled readings learned")
        final = node.stop()
        learned = np.asarray(node.svc.learner_.predict_proba_many(X[:n])).argmax(axis=1)

    assert final["labels_matched"] == n and final["labels_unmatched"] == 3 and final["labels_missing"] == 0
    assert final["predicted_unlabelled"] == n + m and final["awaiting_label"] == m
    assert final["last_prediction"]["key"] == f"s{m - 1}"
    # scored with the predictions made on arrival, by w0: all wrong, although the model learned the concept
    assert final["accuracy"] == 0.0
    assert (learned == y[:n]).mean() > 0.8
    assert final["seq_gaps"] == 0 and final["unlabelled"] == 0
    # the position stays at the oldest reading still waiting for its label (s0, 40 records in)
    assert final["committed"] == first + 40 and committed(settings, prefix) == first + 40
    dead = consume(deadletter_topic(prefix), 3)
    assert sorted(r.value for r in dead) == sorted(stray)
    assert all(b"matches no reading" in dict(r.headers)["sl-error"] for r in dead)


def test_a_restart_rereads_the_held_readings_and_labels_it_used_are_not_dead_lettered(broker, settings, prefix):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(60, 3)).astype(np.float32)
    y = (X[:, 0] + X[:, 1] > 0).astype(int)
    # seq 0-19 labelled; 20-29 keyed without labels, between labelled 30-39; then labels of u0-u4
    first_part = [reading(i, X[i], int(y[i])) for i in range(20)]
    for j in range(10):
        first_part += [reading(20 + 2 * j, X[20 + 2 * j], key=f"u{j}"),
                       reading(21 + 2 * j, X[21 + 2 * j], int(y[21 + 2 * j]))]
    first_part += [label(f"u{j}", int(y[20 + 2 * j])) for j in range(5)]
    ensure_topics(broker.bootstrap, prefix, 1, settings=settings)
    publish(settings, prefix, first_part)
    u5 = 20 + 2 * 5  # offset of the oldest reading still held when the node stops
    with Node(broker, settings, prefix) as node:
        node.wait(lambda s: s["samples"] == 35 and s["labels_matched"] == 5 and s["awaiting_label"] == 5,
                  "the first part")  # 30 labelled readings and u0-u4
        st = node.stop()
    assert st["committed"] == u5 and committed(settings, prefix) == u5

    second_part = [label(f"u{j}", int(y[20 + 2 * j])) for j in range(5, 10)]
    second_part += [reading(40 + i, X[40 + i], int(y[40 + i])) for i in range(20)]
    end = publish(settings, prefix, second_part) + len(second_part)
    with Node(broker, settings, prefix) as node:
        # re-read from u5: u5-u9 held again, the 5 labelled readings after u5 learned again (at
        # least once), the labels of u0-u4 recognised as used before, u5-u9 labelled now
        node.wait(lambda s: s["samples"] == 5 + 5 + 20 and s["committed"] == end, "the second part")
        final = node.stop()
    assert final["labels_replayed"] == 5 and final["labels_matched"] == 5 and final["labels_unmatched"] == 0
    assert final["deadletters"] == 0 and final["awaiting_label"] == 0 and final["seq_gaps"] == 0


def test_held_readings_are_bounded_in_count_and_age(broker, settings, prefix):
    X = np.ones((5, 3), dtype=np.float32)
    ensure_topics(broker.bootstrap, prefix, 1, settings=settings)
    publish(settings, prefix, [reading(i, X[i], key=f"k{i}") for i in range(5)])
    with Node(broker, settings, prefix, max_pending=3, label_ttl=2.5) as node:
        node.wait(lambda s: s["predicted_unlabelled"] == 5, "the readings")
        st = node.svc.status()
        assert st["awaiting_label"] == 3 and st["labels_missing"] == 2  # k0, k1 evicted: the oldest go first
        publish(settings, prefix, [label("k0", 1), label("k2", 0)])
        node.wait(lambda s: s["labels_matched"] == 1 and s["labels_unmatched"] == 1 and s["samples"] == 1,
                  "k0 unmatched, k2 learned")
        # k3 and k4 expire; then the position moves past them
        st = node.wait(lambda s: s["labels_missing"] == 4 and s["awaiting_label"] == 0 and s["committed"] == 7,
                       "k3 and k4 expired", timeout=10)
        assert st["deadletters"] == 1


@pytest.mark.parametrize("learner_classes", [[0, 1], [1, 0], [1]])
def test_early_scores_match_the_scores_of_a_prediction_in_the_learners_class_order(learner_classes):
    from streamlearn.kafka.node import _score

    rng = np.random.default_rng(2)
    P = rng.dirichlet(np.ones(len(learner_classes)), size=8)
    yi = rng.integers(0, 2, size=8)
    correct, p_true, _ = _score(P, learner_classes, CLASSES, yi)
    got = _early_scores(_declared_proba(P, learner_classes, CLASSES), yi)
    assert (got[:, 0] == 1).all()
    np.testing.assert_array_equal(got[:, 1].astype(bool), correct)
    np.testing.assert_allclose(got[:, 2], p_true)


def test_a_learner_that_cannot_predict_yet_leaves_late_samples_unscored():
    got = _early_scores(_declared_proba(np.empty((2, 0)), [], CLASSES), np.array([0, 1]))
    assert (got[:, 1] == 0).all() and np.isnan(got[:, 2]).all()
