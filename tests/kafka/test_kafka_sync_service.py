"""The sync service against hand-written node messages: requests, timeouts, pulls, rejects, bad records."""

from __future__ import annotations

import time

import numpy as np
import pytest

from streamlearn.errors import ConfigError
from streamlearn.kafka.status import model_hash
from streamlearn.kafka.sync_service import SyncConfig, sync_config_from_options
from streamlearn.kafka.topics import deadletter_topic
from streamlearn.kafka.wire import SyncMessage

from sync_wire_helpers import FakeNodes


@pytest.fixture
def nodes(broker, settings, prefix):
    made = []

    def make(**kw):
        kw = {"max_nodes": 4, "timeout": 0.5, "device": "cpu", "status_interval": 0.2, **kw}
        made.append(FakeNodes(broker, settings, prefix, SyncConfig(bootstrap=broker.bootstrap, prefix=prefix,
                                                                   settings=settings, **kw)))
        return made[-1]

    yield make
    for f in made:
        f.close()


def _join(node, d=2, layout="L", model=None):
    return SyncMessage("join", node=node, d=d, layout=layout, spec="dynamic:delta=1.0,b=1",
                       model=np.zeros(d, dtype=np.float32) if model is None else model)


def test_a_node_that_joins_twice_in_one_poll_gets_two_answers_as_counted(nodes):
    # a node's start can race the service's hello: it joins, sees the hello and registers again. The joins of one
    # poll go out together, but a node named twice gets a record per join, as models_down counts them.
    from streamlearn.kafka.topics import sync_up_topic
    from streamlearn.kafka.wire import encode_sync

    f = nodes(protocol="dynamic", params={"delta": 1.0, "b": 1})
    for node in (0, 0, 1):
        f.producer.send(sync_up_topic(f.prefix), encode_sync(_join(node)), partition=0)
    f.producer.flush()  # one batch: most likely one poll of the service
    answers = [f.expect(lambda m: m.kind == "send" and m.reason == "join", "a join answer") for _ in range(2)]
    named = sorted(t for m in answers for t in m.targets)
    if named != [0, 0, 1]:  # the three joins came in two polls or three
        named += [t for t in f.expect(lambda m: m.kind == "send" and m.reason == "join", "the last join answer").targets]
    assert sorted(named) == [0, 0, 1] and all(len(set(m.targets)) == len(m.targets) for m in answers)
    f.service.stop()
    f.thread.join(timeout=10)
    assert f.service.status()["models_down"] == 3


def test_requests_are_sent_and_a_node_that_does_not_answer_times_out(nodes):
    f = nodes(protocol="dynamic", params={"delta": 1.0, "b": 1})
    for node in range(4):
        f.send(_join(node))
        reply = f.expect(lambda m: m.kind == "send" and m.targets == (node,))
        assert reply.reason == "join" and reply.reference and reply.model.tolist() == [0.0, 0.0]
    f.send(SyncMessage("report", node=0, step=5, n_samples=50, model=np.array([4.0, 0.0], dtype=np.float32)))
    request = f.expect(lambda m: m.kind == "request")
    assert request.targets == (1, 2, 3)  # growing B to half the nodes means asking all of them
    for node in (1, 2):  # node 3 never answers
        f.send(SyncMessage("model", node=node, step=5, request=request.request, model=np.zeros(2, dtype=np.float32)))
    t0 = time.monotonic()
    full = f.expect(lambda m: m.kind == "send" and m.reason == "sync")
    assert time.monotonic() - t0 > 0.3  # it waited for node 3 ...
    assert full.reference and full.targets == (0, 1, 2, 3)  # ... then synced without it, and told everyone
    assert np.allclose(full.model, [4 / 3, 0.0])
    f.service.stop()
    f.thread.join(timeout=10)
    st = f.service.status()
    assert (st["timeouts"], st["full_syncs"], st["violations"], st["models_up"]) == (1, 1, 1, 3)
    assert st["models_down"] == 4 + 4  # 4 join replies, 4 targets of the full sync
    assert st["reference_hash"] == model_hash(full.model) and st["nodes_alive"] == 4


def test_round_protocols_pull_toward_the_leader(nodes):
    f = nodes(protocol="lsgd:tau=1,strength=0.5")
    for node in (0, 1):
        f.send(_join(node))
    for node, loss in ((0, 0.9), (1, 0.1)):
        f.send(SyncMessage("report", node=node, step=1, loss=loss))
    request = f.expect(lambda m: m.kind == "request")
    assert request.targets == (1,)  # the lowest loss leads
    f.send(SyncMessage("model", node=1, step=1, request=request.request, model=np.ones(2, dtype=np.float32)))
    pull = f.expect(lambda m: m.kind == "pull")
    assert pull.targets == (0,) and pull.strength == 0.5 and pull.model.tolist() == [1.0, 1.0]


def test_mismatched_joins_are_rejected_and_bad_records_dead_lettered(nodes, consume, prefix):
    f = nodes(protocol="dynamic")
    f.send(_join(0))
    f.expect(lambda m: m.kind == "send" and m.targets == (0,))
    f.send(_join(1, d=3))
    assert "layout" in f.expect(lambda m: m.kind == "reject" and m.targets == (1,)).reason
    f.send(_join(2, layout="other"))
    f.expect(lambda m: m.kind == "reject" and m.targets == (2,))
    f.send(_join(7))  # beyond max_nodes
    assert "max-nodes" in f.expect(lambda m: m.kind == "reject" and m.targets == (7,)).reason
    f.send(None, raw=b"\x00 garbage")
    f.send(SyncMessage("report", node=3, step=1))  # never joined: asked to register
    assert f.expect(lambda m: m.kind == "hello" and m.targets == (3,)).epoch == f.service.epoch_
    dead = consume(deadletter_topic(prefix), 1)
    assert dead[0].value == b"\x00 garbage" and dict(dead[0].headers)["sl-error"]
    f.send(SyncMessage("leave", node=0))
    time.sleep(0.3)
    f.service.stop()
    f.thread.join(timeout=10)
    st = f.service.status()
    assert (st["rejects"], st["bad_records"], st["unknown_reports"], st["leaves"], st["nodes_alive"]) == (3, 1, 1, 1, 0)


def test_sync_settings_and_options():
    cfg = sync_config_from_options({"--protocol": "dynamic", "--delta": 0.5, "--b": 2, "--max-nodes": "16",
                                    "--timeout": "2.5", "--max-seconds": 1})
    assert (cfg.spec, cfg.max_nodes, cfg.timeout) == ("dynamic:delta=0.5,b=2", 16, 2.5)
    assert SyncConfig(protocol="periodic:b=4").spec == "periodic:b=4"
    for kw, match in (({"protocol": "gossip"}, "gossip"), ({"max_nodes": 0}, "max_nodes"), ({"timeout": 0}, "timeout"),
                      ({"protocol": "dynamic:delta=1", "params": {"delta": 2}}, "twice|spec and as a keyword"),
                      ({"protocol": "dynamic", "params": {"delta": -1}}, "delta")):
        with pytest.raises(ConfigError, match=match):
            SyncConfig(**kw)
    with pytest.raises(ConfigError, match="unknown sync option"):
        sync_config_from_options({"protocol": "dynamic", "nodes": 3})
