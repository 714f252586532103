"""The producer against a real Tansu: every sample arrives, drift ground truth, live drift, rate, stopping."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from streamlearn.errors import ConfigError
from streamlearn.kafka import codecs
from streamlearn.kafka.control import drift_command, send_drift_command
from streamlearn.kafka.producer import Producer, ProducerConfig
from streamlearn.kafka.topics import control_topic, drift_topic, samples_topic
from streamlearn.streams import DriftSpec, inject, node_streams


def _samples(consume, prefix, node, n, fmt, batch=100):
    """(seq, X, y) of node's topic, y as labels (binary class indices mapped through SEA's classes)."""
    topic = samples_topic(prefix, node)
    if fmt == "json":
        got = [codecs.decode_sample_json(r.value) for r in consume(topic, n)]
        return (np.array([s.seq for s in got]), np.array([list(s.x.values()) for s in got]),
                np.array([s.y for s in got]))
    batches = [codecs.decode_sample_batch(r.value) for r in consume(topic, -(-n // batch))]
    classes = np.array([False, True])
    return (np.concatenate([b.seqs for b in batches]), np.concatenate([b.X for b in batches]),
            classes[np.concatenate([b.y for b in batches])])


def _drift_events(consume, prefix, expected):
    return [codecs.decode_message(r.value, expect="drift") for r in consume(drift_topic(prefix), expected)]


def _run_in_thread(producer, **kw):
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("stats", producer.run(**kw)), daemon=True)
    thread.start()
    assert producer.ready.wait(20), "producer did not get ready"
    return thread, out


def _wait_sent(producer, node, at_least, timeout=20.0):
    deadline = time.monotonic() + timeout
    while producer.sent.get(node, 0) < at_least:
        assert time.monotonic() < deadline, f"node {node} did not reach {at_least} samples"
        time.sleep(0.01)


@pytest.mark.parametrize("fmt", ["json", "binary"])
def test_every_sample_arrives_in_order_with_scheduled_drift_events(settings, prefix, consume, fmt, capsys):
    n, batch = 1300, 128
    config = ProducerConfig(source="sea", nodes=2, rate=0, n=n, drifts=["sudden@700"], schedule="staggered:300",
                            format=fmt, batch=batch, seed=3, settings=settings, prefix=prefix, live_drift=False)
    stats = Producer(config).run()

    assert stats.sent == {0: n, 1: n} and stats.reason == "done"
    assert stats.records == ({0: n, 1: n} if fmt == "json" else {0: 11, 1: 11})
    replay = node_streams("sea", 2, ["sudden@700"], schedule="staggered:300", seed=3)
    for node in (0, 1):
        seq, X, y = _samples(consume, prefix, node, n, fmt, batch)
        assert seq.tolist() == list(range(n))  # everything, once, in order
        X0, y0 = replay[node].to_arrays(n)
        if fmt == "json":
            assert np.array_equal(X, X0)
        else:
            assert np.array_equal(X, X0.astype(np.float32))
        assert np.array_equal(y, y0)
    events = _drift_events(consume, prefix, 2)
    assert [(e.node, e.seq, e.kind, e.params["live"]) for e in events] == [(0, 700, "sudden", False),
                                                                          (1, 1000, "sudden", False)]
    assert "node 1: 1300 samples" in capsys.readouterr().err


def test_streams_handed_over_are_the_ones_sent_and_progress_goes_where_asked(settings, prefix, consume, tmp_path):
    # streamlearn demo reads its file once and hands the streams over: they are sent as given, not built again
    # (seed 5 here, the config's seed 0: what arrives is the seed-5 stream)
    n = 500
    config = ProducerConfig(source="sea", nodes=2, rate=0, n=n, drifts=["sudden@200"], format="binary", seed=0,
                            settings=settings, prefix=prefix, live_drift=False)
    with open(tmp_path / "producer.log", "w") as log:
        stats = Producer(config, streams=node_streams("sea", 2, ["sudden@200"], seed=5), progress_to=log).run()
    assert stats.sent == {0: n, 1: n}
    replay = node_streams("sea", 2, ["sudden@200"], seed=5)
    for node in (0, 1):
        _, X, y = _samples(consume, prefix, node, n, "binary")
        X0, y0 = replay[node].to_arrays(n)
        assert np.array_equal(X, X0.astype(np.float32)) and np.array_equal(y, y0)
    assert "node 1: 500 samples" in (tmp_path / "producer.log").read_text()
    with pytest.raises(ConfigError, match=r"streams: need one stream per node \(2\), got 1"):
        Producer(config, streams=node_streams("sea", 1, seed=5))


def test_live_drifts_apply_from_the_announced_position(settings, prefix, consume):
    # label permutation on node 1, noise on node 0: each from its node's position when the command came
    n = 4000
    config = ProducerConfig(source="sea", nodes=2, rate=2000, n=n, format="binary", seed=5, settings=settings,
                            prefix=prefix, progress=False)
    producer = Producer(config)
    thread, out = _run_in_thread(producer)
    _wait_sent(producer, 1, 500)
    perm = send_drift_command(None, prefix, 1, "label-permutation", settings=settings)
    _wait_sent(producer, 0, 1200)
    noise = send_drift_command(None, prefix, "0", "noise", {"sigma": "0.5", "flip": "0.2"}, settings=settings)
    thread.join(30)
    stats = out["stats"]
    assert stats.sent == {0: n, 1: n} and stats.live_drifts == 2
    assert stats.elapsed >= 0.8 * n / 2000  # rate respected (a lower bound only)

    events = {e.node: e for e in _drift_events(consume, prefix, 2)}
    ev1, ev0 = events[1], events[0]
    assert ev1.kind == "label-permutation" and ev1.params["live"] is True and ev1.params["command"] == perm.id
    assert 500 <= ev1.seq < n and 1200 <= ev0.seq < n
    assert ev0.kind == "noise" and ev0.params["command"] == noise.id and ev0.params["sigma"] == 0.5

    replay = node_streams("sea", 2, seed=5)
    # node 1: the undrifted replay up to the announced position, every label swapped from there on
    _, X1, y1 = _samples(consume, prefix, 1, n, "binary")
    X, y = replay[1].to_arrays(n)
    P = ev1.seq
    assert np.array_equal(X1, X.astype(np.float32))
    assert np.array_equal(y1[:P], y[:P]) and np.array_equal(y1[P:], ~y[P:])
    # node 0: exactly what inject() replays with the announced position and seed
    _, X0, y0 = _samples(consume, prefix, 0, n, "binary")
    spec = DriftSpec("noise", ev0.seq, {"sigma": 0.5, "flip": 0.2})
    Xr, yr = inject(replay[0], spec, node=0, seed=ev0.params["seed"]).to_arrays(n)
    assert np.array_equal(X0, Xr.astype(np.float32)) and np.array_equal(y0, yr)
    assert not np.array_equal(X0[ev0.seq:], X[ev0.seq:].astype(np.float32))


def test_live_sudden_drift_on_all_nodes_switches_concept(settings, prefix, consume):
    n = 3000
    config = ProducerConfig(source="sea", nodes=2, rate=2000, n=n, format="json", seed=1, settings=settings,
                            prefix=prefix, progress=False)
    producer = Producer(config)
    thread, out = _run_in_thread(producer)
    _wait_sent(producer, 0, 800)
    send_drift_command(None, prefix, "all", "sudden", settings=settings)
    thread.join(30)
    assert out["stats"].sent == {0: n, 1: n}

    events = {e.node: e for e in _drift_events(consume, prefix, 2)}
    assert sorted(events) == [0, 1] and events[0].params["seed"] == events[1].params["seed"]
    replay = node_streams("sea", 2, seed=1)
    for node, event in events.items():
        P = event.seq
        assert event.kind == "sudden" and event.params["live"] and 800 <= P < n
        _, X, y = _samples(consume, prefix, node, n, "json")
        # SEA's concept 0 labels x0 + x1 > 8, its alternate x0 + x1 > 9
        assert np.array_equal(y[:P], X[:P, 0] + X[:P, 1] > 8) and np.array_equal(y[P:], X[P:, 0] + X[P:, 1] > 9)
        Xr, yr = inject(replay[node], DriftSpec("sudden", P), node=node, seed=event.params["seed"]).to_arrays(n)
        assert np.array_equal(X, Xr) and np.array_equal(y, yr)


def test_rate_limit_is_respected(settings, prefix, consume):
    config = ProducerConfig(source="stagger", nodes=1, rate=1000, n=700, format="json", settings=settings,
                            prefix=prefix, live_drift=False, progress=False)
    start = time.monotonic()
    stats = Producer(config).run()
    assert time.monotonic() - start >= 0.6  # 700 samples at 1000/s: a lower bound only
    assert len(consume(samples_topic(prefix, 0), 700)) == 700 == stats.sent[0]


def test_stops_cleanly_and_flushes(settings, prefix, consume):
    # endless stream: stopped by max_seconds, by a stop event, by SIGINT; what was counted has arrived
    base = dict(source="hyperplane", nodes=2, rate=0, n=None, format="binary", batch=500, settings=settings,
                live_drift=False, progress=False)
    stats = Producer(ProducerConfig(prefix=prefix + "a", **base)).run(max_seconds=0.3)
    assert stats.reason == "max_seconds" and stats.sent[0] > 0
    got = consume(samples_topic(prefix + "a", 0), stats.records[0])
    assert sum(codecs.decode_sample_batch(r.value).n for r in got) == stats.sent[0]

    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    assert Producer(ProducerConfig(prefix=prefix + "b", **base)).run(stop_event=stop, max_seconds=20).reason == "stop"

    producer = Producer(ProducerConfig(prefix=prefix + "c", **base))

    def interrupt_once_every_node_sent():  # not after a fixed delay: setting up may take longer on a busy machine
        producer.ready.wait(20)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(n > 0 for n in producer.sent.values()):
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_once_every_node_sent, daemon=True).start()
    stats = producer.run(max_seconds=20)  # in the main thread: SIGINT is handled
    assert stats.reason == "signal" and stats.sent[1] > 0
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_bad_live_drift_commands_are_refused(settings, prefix):
    dead = "127.0.0.1:1"  # validation happens before any connection: no broker error can show up
    with pytest.raises(ConfigError, match="unknown drift kind 'bogus'"):
        send_drift_command(dead, prefix, 2, "bogus", settings=settings)
    with pytest.raises(ConfigError, match="unknown parameter.*'angle'.*label-permutation"):
        send_drift_command(dead, prefix, 2, "label-permutation", {"angle": "3"}, settings=settings)
    with pytest.raises(ConfigError, match="sigma=.*-1.*sigma must be >= 0"):
        send_drift_command(dead, prefix, 2, "noise", {"sigma": "-1"}, settings=settings)
    with pytest.raises(ConfigError, match="node"):
        send_drift_command(dead, prefix, -1, "noise", settings=settings)


def test_producer_skips_commands_it_cannot_apply(settings, prefix, consume):
    from kafka import KafkaProducer

    config = ProducerConfig(source="sea", nodes=2, rate=2000, n=2000, format="binary", settings=settings,
                            prefix=prefix, progress=False)
    kp = KafkaProducer(**settings.producer_kwargs())
    producer = Producer(config)
    thread, out = _run_in_thread(producer)
    raw = [
        b"not json",
        codecs.encode_message(codecs.ControlCommand("stop")),  # for other services: ignored
        codecs.encode_message(codecs.ControlCommand("inject_drift", 0, {"kind": "bogus"})),
        codecs.encode_message(drift_command(99, "sudden")),  # no such node here
        codecs.encode_message(drift_command(1, "feature-shift", {"features": "nope"})),  # not a SEA feature
    ]
    for value in raw:
        kp.send(control_topic(prefix), value=value, partition=0)
    kp.flush()
    kp.close()
    thread.join(30)
    stats = out["stats"]
    assert stats.sent == {0: 2000, 1: 2000} and stats.live_drifts == 0 and stats.rejected_commands == 3
    assert consume(drift_topic(prefix), 1, timeout=1.0) == []
