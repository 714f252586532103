"""Producer settings and live drift command validation, without a broker."""

from __future__ import annotations

import numpy as np
import pytest

from streamlearn.errors import ConfigError
from streamlearn.kafka import codecs
from streamlearn.kafka.control import LiveDrift, drift_command, parse_drift_command, parse_params
from streamlearn.kafka.producer import Producer, ProducerConfig, _JsonEncoder
from streamlearn.streams import make_source


@pytest.mark.parametrize("kwargs, match", [
    ({"nodes": 0}, "nodes"),
    ({"rate": -1}, "rate"),
    ({"rate": float("inf")}, "rate"),
    ({"format": "avro"}, "format"),
    ({"batch": 0}, "batch"),
    ({"n": -5}, "n must"),
    ({"drifts": ["sudden"]}, "bad drift spec 'sudden'"),
    ({"schedule": "sometimes"}, "bad schedule"),
    ({"split": "by:day"}, "bad split"),
    ({"prefix": "a b"}, "prefix"),
])
def test_bad_settings_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ProducerConfig(**kwargs)


def test_bad_source_is_refused_before_connecting():
    with pytest.raises(ConfigError):
        Producer(ProducerConfig(source="nosuchsource"))


def test_schema_names_the_binary_label_indices():
    p = Producer(ProducerConfig(source="elec2", nodes=2, split="round-robin", format="binary"))
    assert p.schema() == {"feature_names": ["day", "period", "nswdemand", "vicprice", "vicdemand", "transfer"],
                          "classes": ["DOWN", "UP"]}


@pytest.mark.parametrize("source", ["sea", "elec2", "agrawal"])
def test_fast_json_encoding_matches_the_codec(source):
    s = make_source(source, seed=0)
    X, y = s.to_arrays(600)
    X[3, 1] = 1e300  # large but finite
    fast = _JsonEncoder(s.feature_names, s.classes).encode(X, y, 10, 2, 1700000000.5)
    slow = [codecs.encode_sample_json(codecs.Sample(seq=10 + i, x=dict(zip(s.feature_names, row)), y=label, node=2,
                                                    ts=1700000000.5))
            for i, (row, label) in enumerate(zip(X.tolist(), y.tolist()))]
    assert fast == slow


def test_fast_json_encoding_falls_back_and_names_bad_values():
    enc = _JsonEncoder(["a", "b"], [0, 1])
    with pytest.raises(codecs.EncodeError, match="finite"):
        enc.encode(np.array([[1.0, np.inf]]), np.array([1]), 0, 0, 0.0)
    # a NaN is a missing value: written as null, for the node to impute or skip
    assert codecs.decode_sample_json(enc.encode(np.array([[1.0, np.nan]]), np.array([1]), 0, 0, 0.0)[0]).x == \
        {"a": 1.0, "b": None}
    # a label outside the classes is still written, by the codec
    assert codecs.decode_sample_json(enc.encode(np.array([[1.0, 2.0]]), np.array([7]), 0, 0, 0.0)[0]).y == 7


def test_parse_params():
    assert parse_params(["width=100", " shift = 2 "]) == {"width": "100", "shift": "2"}
    for bad in (["=3"], ["width"], ["a=1", "a=2"]):
        with pytest.raises(ConfigError, match="--param"):
            parse_params(bad)


def test_drift_command_round_trip_and_targets():
    cmd = drift_command("all", "feature-rotation", {"angle": "30", "features": "x0|x1"}, id="c9")
    assert cmd.target is None and cmd.args == {"kind": "feature-rotation",
                                               "params": {"angle": 30.0, "features": ["x0", "x1"]}}
    back = parse_drift_command(codecs.decode_message(codecs.encode_message(cmd), expect="control"))
    assert back == LiveDrift(None, "feature-rotation", {"angle": 30.0, "features": ("x0", "x1")}, "c9")
    assert drift_command(3, "sudden").target == 3 and drift_command("3", "sudden").target == 3


@pytest.mark.parametrize("kind, params, node, match", [
    ("bogus", {}, 0, "unknown drift kind 'bogus'"),
    ("sudden", {"width": 3}, 0, r"unknown parameter\(s\) 'width' for drift kind 'sudden'"),
    ("gradual", {"width": "wide"}, 0, "width must be an integer"),
    ("noise", {"flip": 2}, 0, r"flip must be in \[0, 1\]"),
    ("noise", {}, True, "node"),
    ("noise", {}, "two", "node"),
])
def test_bad_drift_commands_name_what_is_wrong(kind, params, node, match):
    with pytest.raises(ConfigError, match=match):
        drift_command(node, kind, params)


def test_received_command_with_unknown_args_is_refused():
    cmd = codecs.ControlCommand("inject_drift", 1, {"kind": "sudden", "position": 5})
    with pytest.raises(ConfigError, match="position"):
        parse_drift_command(cmd)


# ------------------------------------------------ live drift on a node's blocks (no broker needed)
LIVE_KINDS = [
    ("sudden", {}), ("gradual", {"width": 300}), ("recurring", {"period": 400}),
    ("incremental", {"width": 500}), ("label-permutation", {}), ("feature-shift", {"shift": 1.5}),
    ("feature-scale", {"scale": 3.0}), ("feature-rotation", {"angle": 60.0}), ("noise", {"sigma": 0.3, "flip": 0.1}),
]


def _take_all(feed, n, step):
    parts = []
    while feed.sent < n:
        X, y = feed.take(min(step, n - feed.sent))
        parts.append((X, y))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@pytest.mark.parametrize("kind, params", LIVE_KINDS)
def test_live_drift_continues_as_inject_replays_it(kind, params):
    from streamlearn.kafka.producer import _Feed
    from streamlearn.streams import DriftSpec, inject, node_streams

    n, P, node, seed = 3000, 1234, 1, 77
    streams = node_streams("sea", 2, ["sudden@600"], seed=4)  # a scheduled drift below the live one
    feed = _Feed(node, streams[node], n, rate=0.0, capacity=1.0)
    Xa, ya = _take_all(feed, P, 100)
    feed.request(LiveDrift(node, kind, params, "c1"), seed)
    while feed.advance(float("inf"), pytest.fail):
        pass
    Xb, yb = _take_all(feed, n, 333)
    X, y = np.concatenate([Xa, Xb]), np.concatenate([ya, yb])

    base = node_streams("sea", 2, ["sudden@600"], seed=4)[node]
    X0, y0 = base.to_arrays(n)
    position = P + params["width"] if kind == "gradual" else P
    Xr, yr = inject(base, DriftSpec(kind, position, params), node=node, seed=seed).to_arrays(n)
    assert np.array_equal(X[:P], X0[:P]) and np.array_equal(y[:P], y0[:P])  # what was sent before stays
    assert np.array_equal(X[P:], Xr[P:]) and np.array_equal(y[P:], yr[P:])  # from P on: the replay
    assert not (np.array_equal(X[P:], X0[P:]) and np.array_equal(y[P:], y0[P:]))  # and it did drift

    events = feed.events_between(0, n)
    assert [(e.position, e.kind, extra["live"]) for e, extra in events][:2] == [(600, "sudden", False),
                                                                               (position, kind, True)]
    assert all(extra.get("command") == "c1" and extra["seed"] == seed for _, extra in events[1:])
    if kind == "recurring":
        assert [e.position for e, _ in events[1:]] == list(range(P, n, 400))
    assert feed.events_between(0, n) == []  # each event once


def test_live_drifts_queue_behind_a_catch_up():
    from streamlearn.kafka.producer import _Feed
    from streamlearn.streams import DriftSpec, inject, node_streams

    n, P = 2000, 1024  # P ends a block: the switch starts with the next one
    feed = _Feed(0, node_streams("sea", 1, seed=2)[0], n, rate=0.0, capacity=1.0)
    _take_all(feed, P, 500)
    feed.request(LiveDrift(0, "sudden", {}, None), 5)
    feed.request(LiveDrift(0, "label-permutation", {}, None), 6)  # arrives while the first catches up
    assert feed.pending is not None and len(feed.queue) == 1
    while feed.advance(float("inf"), pytest.fail):
        pass
    _, y = _take_all(feed, n, 250)
    base = node_streams("sea", 1, seed=2)[0]
    replay = inject(inject(base, DriftSpec("sudden", P), seed=5), DriftSpec("label-permutation", P), seed=6)
    assert np.array_equal(y, replay.to_arrays(n)[1][P:])
    assert len(feed.live) == 2 and feed.queue == []
