"""Status messages, the node's settings and its scoring, without a broker."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamlearn.errors import ConfigError
from streamlearn.kafka.codecs import DecodeError, EncodeError
from streamlearn.kafka.node import NodeConfig, _score, node_config_from_options
from streamlearn.kafka.status import decode_status, encode_status, model_hash


def test_status_round_trip_cleans_values():
    data = encode_status({"role": "node", "node": 2, "ts": 1.5, "acc": np.float32(0.5), "n": np.int64(3),
                          "loss": float("inf"), "drifts": np.array([4, 8]), "ok": np.bool_(True),
                          "nested": {"a": (1, 2)}})
    got = decode_status(data)
    assert got == {"type": "status", "role": "node", "node": 2, "ts": 1.5, "acc": 0.5, "n": 3, "loss": None,
                   "drifts": [4, 8], "ok": True, "nested": {"a": [1, 2]}}
    assert decode_status(encode_status({"role": "sync"}))["ts"] > 1e9  # filled with the time


@pytest.mark.parametrize("status", [{"role": "driver"}, {"role": "node"}, {"role": "node", "node": -1},
                                    {"role": "sync", "model": object()}, {"role": "sync", "big": "x" * 70_000}])
def test_bad_statuses_are_not_encoded(status):
    with pytest.raises(EncodeError):
        encode_status(status)


@pytest.mark.parametrize("data", [b"[]", b'{"type": "report"}', b'{"type": "status", "role": "sync"}',
                                  b'{"type": "status", "role": "sync", "ts": true}', b"\xff", b"{"])
def test_bad_status_records_raise_decode_error(data):
    with pytest.raises(DecodeError):
        decode_status(data)


def test_model_hash_tells_models_apart_and_ignores_the_container():
    w = torch.tensor([0.1, 0.2, 0.3])
    assert model_hash(w) == model_hash(w.numpy().copy()) == model_hash(w.clone())
    assert model_hash(w) != model_hash(w + 1e-6)


def test_node_config_layout_from_source_or_explicit():
    cfg = NodeConfig(node=1, source="sea")
    assert cfg.layout() == (["x0", "x1", "x2"], [False, True])
    cfg = NodeConfig(node=1, source="sea", classes=("lo", "hi"))  # explicit values override the source's
    assert cfg.layout() == (["x0", "x1", "x2"], ["lo", "hi"])
    assert NodeConfig(node=0, features=["a"], classes=[0, 1]).features == ("a",)


@pytest.mark.parametrize("kw, match", [
    ({"features": ("a", "b")}, "classes"),
    ({"classes": (0, 1)}, "features"),
    ({"features": "a,b", "classes": (0, 1)}, "sequence"),
    ({"features": ("a", "a"), "classes": (0, 1)}, "distinct"),
    ({"features": ("a",), "classes": (0,)}, "at least 2"),
    ({"source": "sea", "detector": "nope"}, "detector"),
    ({"source": "sea", "window": 0}, "window"),
    ({"source": "sea", "linger": -1.0}, "linger"),
    ({"source": "sea", "seed": 1.5}, "seed"),
    ({"source": "sea", "settings": {"bootstrap": "x"}}, "KafkaSettings"),
    ({"source": "nosuchsource"}, "nosuchsource"),
])
def test_node_config_errors_name_the_setting(kw, match):
    with pytest.raises(ConfigError, match=match):
        NodeConfig(node=0, **kw)


def test_node_options_like_the_cli():
    cfg = node_config_from_options({"--id": "4", "--source": "sea", "--learner": "mlp", "--hidden": "8,4",
                                    "--lr": 0.1, "--protocol": "periodic:b=4", "--batch-size": "20",
                                    "--detector": "none", "--max-seconds": 3})
    assert (cfg.node, cfg.learner, cfg.batch_size, cfg.detector, cfg.protocol) == (4, "mlp", 20, None, "periodic:b=4")
    assert cfg.learner_params == {"lr": 0.1, "hidden": (8, 4)}
    cfg = node_config_from_options({"node": 0, "features": "t,p", "classes": "DOWN,UP"})
    assert cfg.classes == ("DOWN", "UP")
    with pytest.raises(ConfigError, match="unknown node option"):
        node_config_from_options({"id": 0, "source": "sea", "colour": "red"})
    with pytest.raises(ConfigError, match="required"):
        node_config_from_options({"source": "sea"})
    with pytest.raises(ConfigError, match="hidden"):
        node_config_from_options({"id": 0, "source": "sea", "hidden": "8,x"})


def test_score_maps_the_learner_class_order_to_the_declared_one():
    y = np.array([0, 1, 2, 1])
    P = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.6, 0.2, 0.2], [0.2, 0.2, 0.6]])
    correct, p_true, valid = _score(P, ["a", "b", "c"], ["a", "b", "c"], y)
    assert correct.tolist() == [True, True, False, False] and p_true.tolist() == [0.8, 0.8, 0.2, 0.2]
    # a local river learner met the labels in another order, and never saw "c"
    P2 = np.array([[0.3, 0.7], [0.9, 0.1], [0.5, 0.5], [0.2, 0.8]])  # columns: b, a
    correct, p_true, valid = _score(P2, ["b", "a"], ["a", "b", "c"], y)
    assert correct.tolist() == [True, True, False, False] and p_true.tolist() == [0.7, 0.9, 0.0, 0.2]
    correct, p_true, valid = _score(np.zeros((4, 0)), [], ["a", "b", "c"], y)  # nothing learnt yet
    assert not valid.any() and not correct.any()
