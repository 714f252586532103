"""Node ids given out by the sync service (``streamlearn node --id auto``), against the real Tansu broker."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import pytest
from kafka import KafkaProducer

from streamlearn.errors import ConfigError, StreamlearnError
from streamlearn.kafka.codecs import encode_sample_batch
from streamlearn.kafka.node import NodeConfig, NodeService, node_config_from_options
from streamlearn.kafka.sync_service import SyncConfig, SyncService, sync_config_from_options
from streamlearn.kafka.topics import ensure_topics, samples_topic, sync_down_topic
from streamlearn.kafka.wire import SyncMessage, encode_sync

from sync_wire_helpers import SyncWire
from waiting import wait_until as wait

FEATURES = ["a", "b", "c"]
CLASSES = [0, 1]


class Services:
    """Sync and node services as threads on one prefix; all stopped on exit."""

    def __init__(self, broker, settings, prefix):
        self.broker, self.settings, self.prefix = broker, settings, prefix
        self.threads: list = []
        ensure_topics(broker.bootstrap, prefix, [], settings=settings)

    def _start(self, svc):
        t = threading.Thread(target=lambda: self._run(svc, t), daemon=True)
        t.errors = []
        self.threads.append((svc, t))
        t.start()
        return svc

    @staticmethod
    def _run(svc, t):
        try:
            svc.run()
        except BaseException as exc:  # surfaced by stop()
            t.errors.append(exc)

    def sync(self, **kw) -> SyncService:
        kw = {"protocol": "dynamic:delta=1.0,b=1", "max_nodes": 8, "device": "cpu", "status_interval": 0.1,
              "id_grace": 0.3, **kw}
        return self._start(SyncService(SyncConfig(bootstrap=self.broker.bootstrap, prefix=self.prefix,
                                                  settings=self.settings, **kw)))

    def node(self, node="auto", metrics=None, **kw) -> NodeService:
        kw = {"protocol": "dynamic:delta=1.0,b=1", "device": "cpu", "status_interval": 0.1, "id_timeout": 20.0,
              **kw}
        return self._start(NodeService(NodeConfig(node=node, features=FEATURES, classes=CLASSES,
                                                  bootstrap=self.broker.bootstrap, prefix=self.prefix,
                                                  settings=self.settings, **kw), metrics=metrics))

    def stop(self, svc) -> None:
        for s, t in self.threads:
            if s is svc:
                s.stop()
                t.join(timeout=20)
                assert not t.is_alive() and not t.errors, t.errors

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for svc, _ in self.threads:
            svc.stop()
        for _, t in self.threads:
            t.join(timeout=20)


def node_id(svc: NodeService):
    return svc.status().get("node")


# ---- with node services -------------------------------------------------------------------------


def test_nodes_started_together_get_ids_from_0_and_a_node_that_leaves_frees_its_id(broker, settings, prefix):
    with Services(broker, settings, prefix) as s:
        sync = s.sync()
        nodes = [s.node() for _ in range(3)]  # started together, before the sync service answers
        wait(lambda: all(node_id(n) is not None for n in nodes), "3 ids")
        assert sorted(node_id(n) for n in nodes) == [0, 1, 2]
        assert all(n.status()["auto_id"] for n in nodes)
        wait(lambda: sync.status().get("nodes_alive") == 3, "3 joins")
        assert sync.status()["assigned_ids"] == [0, 1, 2]

        # samples reach an auto node through the topic of the id it got
        one = next(n for n in nodes if node_id(n) == 1)
        X = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
        producer = KafkaProducer(**settings.producer_kwargs())
        producer.send(samples_topic(prefix, 1), encode_sample_batch(X, (X[:, 0] > 0).astype(np.int64), names=FEATURES))
        producer.flush()
        producer.close()
        wait(lambda: one.status()["samples"] == 40, "node 1 learning its topic")

        s.stop(one)  # its leave frees id 1
        wait(lambda: sync.status()["assigned_ids"] == [0, 2] and sync.status()["nodes_alive"] == 2, "the leave")
        explicit = s.node(node=3)  # an explicit id is honoured, and held once it registered
        wait(lambda: sync.status()["nodes_alive"] == 3, "node 3 registered")
        assert node_id(explicit) == 3 and not explicit.status()["auto_id"]
        again = s.node()
        wait(lambda: node_id(again) is not None, "a new id")
        assert node_id(again) == 1  # the lowest free id
        last = s.node()
        wait(lambda: node_id(last) is not None, "another id")
        assert node_id(last) == 4  # 3 is the explicit node's
        wait(lambda: sync.status()["nodes_alive"] == 5, "5 registered")


def test_an_auto_node_waits_for_the_sync_service_and_says_so(broker, settings, prefix, caplog):
    from streamlearn.metrics import NodeMetrics, new_registry

    caplog.set_level(logging.INFO, logger="streamlearn.kafka.node")
    registry = new_registry()
    with Services(broker, settings, prefix) as s:
        node = s.node(metrics=lambda node: NodeMetrics(registry, node))  # made once the id is known
        wait(lambda: "waiting for the sync service" in caplog.text, "the node saying it waits")
        time.sleep(1.5)  # it asks again meanwhile; nobody answers
        assert node.status() == {}
        sync = s.sync()
        wait(lambda: node_id(node) == 0, "the id, once the sync service is up")
        wait(lambda: sync.status().get("nodes_alive") == 1, "the join")
        assert registry.get_sample_value("streamlearn_node_samples_total", {"node": "0"}) == 0


def test_an_auto_node_gives_up_after_id_timeout(broker, settings, prefix):
    ensure_topics(broker.bootstrap, prefix, [], settings=settings)
    svc = NodeService(NodeConfig(node="auto", features=FEATURES, classes=CLASSES, device="cpu", id_timeout=0.5,
                                 bootstrap=broker.bootstrap, prefix=prefix, settings=settings))
    with pytest.raises(StreamlearnError, match="no node id from the sync service"):
        svc.run()


def test_an_auto_node_stops_when_told_its_id_went_to_another_node(broker, settings, prefix):
    with Services(broker, settings, prefix) as s:
        s.sync()
        node = s.node()
        wait(lambda: node_id(node) == 0, "the id")
        producer = KafkaProducer(**settings.producer_kwargs())
        producer.send(sync_down_topic(prefix), encode_sync(SyncMessage(
            "assign", token=node._token, epoch="other", reason="node id 0 is held by another node")))
        producer.flush()
        producer.close()
        wait(lambda: node.status().get("state") == "stopped", "the node stopping")
        assert "held by another node" in node.status()["rejected"]


# ---- the sync service alone, the test playing the nodes -----------------------------------------


class Wire(SyncWire):
    """Claims and renewals as auto-id nodes would send them."""

    def send(self, kind: str, **kw) -> None:
        super().send(SyncMessage(kind, **kw))

    def answer(self, token: str) -> SyncMessage:
        return self.expect(lambda m: m.kind == "assign" and m.token == token, f"answer for {token}")


def test_claims_leases_and_their_expiry(broker, settings, prefix):
    with Services(broker, settings, prefix) as s:
        wire = Wire(settings, prefix)
        try:
            # claims during the grace period are answered after it, in order
            sync = s.sync(max_nodes=3, id_grace=0.5, id_lease=2.0)
            wire.expect(lambda m: m.kind == "hello", "hello")  # the service reads sync.up from now on
            wire.send("claim", token="a")
            wire.send("claim", token="b")
            assert wire.answer("a").node == 0 and wire.answer("b").node == 1
            wire.send("claim", token="a")  # asked again (its answer was slow): the same id
            assert wire.answer("a").node == 0
            wire.send("leave", node=0, token="a")
            wire.send("claim", token="c")
            assert wire.answer("c").node == 0  # freed by the leave
            wire.send("claim", token="d")
            assert wire.answer("d").node == 2
            wire.send("claim", token="e")
            full = wire.answer("e")
            assert full.node is None and "all 3 node ids are held" in full.reason

            # c renews id 0; b and d stop renewing: their ids expire, and b's late renewal is refused
            # once id 1 went to another node
            t_end = time.monotonic() + 3.0
            while time.monotonic() < t_end:
                wire.send("claim", token="c", node=0)
                time.sleep(0.5)
            wait(lambda: sync.status()["assigned_ids"] == [0] and sync.status()["ids_expired"] == 2, "2 expiries")
            wire.send("claim", token="f")
            assert wire.answer("f").node == 1
            wire.send("claim", token="b", node=1)
            refused = wire.answer("b")
            assert refused.node is None and "held by another node" in refused.reason
            wait(lambda: sync.status()["id_conflicts"] == 1, "the conflict counted")
        finally:
            wire.close()


def test_a_restarted_sync_service_learns_the_held_ids_before_it_gives_out_new_ones(broker, settings, prefix):
    with Services(broker, settings, prefix) as s:
        first = s.sync()
        nodes = [s.node(protocol="nosync", learner="hoeffding-tree", learner_params={}) for _ in range(2)]
        wait(lambda: sorted(map(node_id, nodes), key=str) == [0, 1], "2 ids")  # local learners: never register
        s.stop(first)
        second = s.sync()  # knows nothing; the nodes renew their ids on its hello, within its grace period
        late = s.node(protocol="nosync", learner="hoeffding-tree", learner_params={})
        wait(lambda: node_id(late) is not None, "a third id")
        assert node_id(late) == 2
        assert second.status()["assigned_ids"] == [0, 1, 2]


# ---- settings ------------------------------------------------------------------------------------


def test_id_auto_in_the_options_and_bad_ids():
    assert node_config_from_options({"id": "auto", "source": "sea"}).node == "auto"
    assert node_config_from_options({"--id": "AUTO", "source": "sea", "--id-timeout": "5"}).id_timeout == 5.0
    for bad in ("x", "-1", "1.5"):
        with pytest.raises(ConfigError, match="or .?auto"):
            node_config_from_options({"id": bad, "source": "sea"})
    with pytest.raises(ConfigError, match="id_timeout"):
        NodeConfig(node="auto", source="sea", id_timeout=0)


def test_sync_id_settings_are_checked():
    cfg = sync_config_from_options({"protocol": "dynamic", "id-lease": "30", "id-grace": "2"})
    assert (cfg.id_lease, cfg.id_grace) == (30.0, 2.0)
    with pytest.raises(ConfigError, match="id_lease"):
        SyncConfig(protocol="dynamic", id_lease=1.0)  # shorter than two renewals
    with pytest.raises(ConfigError, match="id_grace"):
        SyncConfig(protocol="dynamic", id_grace=0)
