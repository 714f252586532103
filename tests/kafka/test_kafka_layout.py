"""A connector and a node that disagree on the layout fail at start naming both; a node without one takes the
connector's; a node that dead-letters much of what it reads says so at once (streamlearn/kafka/layout.py)."""

from __future__ import annotations

import json
import logging
import threading

import pytest
from kafka import KafkaProducer
from waiting import wait_until

from streamlearn.connectors.csv_replay import run_csv
from streamlearn.connectors.routing import NodeRouter
from streamlearn.connectors.schema import StreamSchema
from streamlearn.kafka.layout import Layout, LayoutMismatch, disagreement
from streamlearn.kafka.node import NodeConfig, NodeService
from streamlearn.kafka.status import StatusReader
from streamlearn.kafka.topics import samples_topic

ROWS = 60


def _csv(tmp_path, label=lambda i: i % 2):
    path = tmp_path / "plant.csv"
    path.write_text("temp,rpm,state\n" + "".join(f"{i % 7}.5,{i % 3},{label(i)}\n" for i in range(ROWS)))
    return path


def _schema(classes):
    return StreamSchema({"temp": "float", "rpm": "float"}, label="state", classes=classes)


def _node(settings, broker, prefix, **kw):
    return NodeService(NodeConfig(node=0, learner="logreg", protocol="nosync", device="cpu", status_interval=0.2,
                                  commit_interval=0.3, bootstrap=broker.bootstrap, prefix=prefix, settings=settings,
                                  **kw))


class _Running:
    def __init__(self, svc):
        self.svc, self.errors = svc, []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        try:
            self.svc.run()
        except BaseException as exc:
            self.errors.append(exc)

    def stop(self):
        self.svc.stop()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive() and not self.errors, self.errors


def test_only_real_disagreements_are_reported():
    src = Layout("connect csv", ("temp", "rpm", "door"), (0, 1))
    assert disagreement(Layout("node 1", ("rpm", "temp"), (1, 0)), src) is None  # order does not matter
    assert "reads features ['speed']" in disagreement(Layout("node 1", ("temp", "speed"), (0, 1)), src)
    assert disagreement(Layout("node 1", ("temp",), (0, 1, 2)), src).startswith("node 1 has classes [0, 1, 2]")
    assert disagreement(Layout("node 1", ("temp",), (True, False)), src) is not None  # True is not 1
    assert disagreement(Layout("node 1", ("temp",), ("a", "b")), Layout("connect http", ("temp",), None)) is None


def test_a_connector_whose_classes_differ_in_type_from_a_running_node_stops_at_start(broker, settings, prefix,
                                                                                    tmp_path):
    node = _Running(_node(settings, broker, prefix, features=("temp", "rpm"), classes=(0, 1)))
    status = StatusReader(broker.bootstrap, prefix, settings=settings)
    try:
        assert status.wait_for(lambda r: r.nodes.get(0, {}).get("state") == "running", 60), "node did not start"
        with pytest.raises(LayoutMismatch) as err:
            run_csv(_csv(tmp_path), _schema(["0", "1"]), NodeRouter(node=0), settings=settings, prefix=prefix)
        assert "node 0 has classes [0, 1] but connect csv declares ['0', '1']" in str(err.value)
        assert node.svc.status()["records_read"] == 0  # nothing was published
    finally:
        status.close()
        node.stop()


def test_a_node_whose_classes_differ_from_a_connectors_stops_at_start(broker, settings, prefix, tmp_path):
    stats = run_csv(_csv(tmp_path), _schema(["0", "1"]), NodeRouter(node=0), settings=settings, prefix=prefix)
    assert stats.delivered == ROWS
    with pytest.raises(LayoutMismatch, match=r"node 0 has classes \[0, 1\] but connect csv declares \['0', '1'\]"):
        _node(settings, broker, prefix, features=("temp", "rpm"), classes=(0, 1)).run(max_seconds=30)


def test_a_node_without_a_layout_takes_the_connectors_and_learns_every_reading(broker, settings, prefix, tmp_path,
                                                                              caplog):
    caplog.set_level(logging.INFO, logger="streamlearn.kafka.node")
    node = _Running(_node(settings, broker, prefix))  # no source, features or classes: it waits
    try:
        wait_until(lambda: "waiting for a connector" in caplog.text, "the node to say it waits", timeout=60)
        stats = run_csv(_csv(tmp_path), _schema(["0", "1"]), NodeRouter(node=0), settings=settings, prefix=prefix)
        assert stats.delivered == ROWS
        wait_until(lambda: node.svc.status().get("samples") == ROWS, "every reading learned", timeout=60)
        status = node.svc.status()
        assert status["deadletters"] == 0 and status["deadletter_alarm"] is None
        assert node.svc.classes_ == ["0", "1"] and node.svc.features_ == ["temp", "rpm"]  # typed as declared
    finally:
        node.stop()


def test_a_node_that_dead_letters_much_of_what_it_reads_says_so_at_once(broker, settings, prefix, caplog):
    caplog.set_level(logging.WARNING, logger="streamlearn.kafka.node")
    node = _Running(_node(settings, broker, prefix, features=("temp", "rpm"), classes=(0, 1)))
    try:
        # An outside producer (no layout announced) whose labels 0..2 include one the node does not know.
        producer = KafkaProducer(**settings.producer_kwargs(broker.bootstrap))
        for i in range(ROWS):
            record = {"node": 0, "seq": i, "x": {"temp": i % 7 + 0.5, "rpm": i % 3}, "y": i % 3}
            producer.send(samples_topic(prefix, 0), json.dumps(record).encode(), partition=0)
        producer.flush()
        producer.close()
        wait_until(lambda: node.svc.status().get("records_read") == ROWS, "every record read", timeout=60)
        status = node.svc.status()
        assert status["deadletters"] == ROWS // 3 and status["samples"] == ROWS - ROWS // 3
        assert status["deadletter_alarm"].startswith(f"{ROWS // 3} of {ROWS} records dead-lettered")
        warned = [r.getMessage() for r in caplog.records if "records dead-lettered" in r.getMessage()]
        assert len(warned) == 1 and "label is not one of the classes [0, 1]" in warned[0]
        assert "(declared features temp,rpm, classes [0, 1])" in warned[0]
    finally:
        node.stop()
