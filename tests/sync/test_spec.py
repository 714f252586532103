"""Protocol specs, the factory, hyperparameter checks and clone."""

from __future__ import annotations

import pytest
import torch

from streamlearn.errors import ConfigError
from streamlearn.sync import LSGD, PROTOCOLS, Continuous, Dynamic, FedAvg, NoSync, Periodic, make_protocol, parse_spec


@pytest.mark.parametrize("spec, name, params", [
    ("dynamic:delta=0.5,b=1", "dynamic", {"delta": 0.5, "b": 1}),
    ("periodic:b=8", "periodic", {"b": 8}),
    ("fedavg:b=4,C=0.5", "fedavg", {"b": 4, "C": 0.5}),
    ("lsgd:tau=8,strength=0.2", "lsgd", {"tau": 8, "strength": 0.2}),
    (" LSGD: tau = 8 , groups=2 ", "lsgd", {"tau": 8, "groups": 2}),
    ("nosync", "nosync", {}),
    ("continuous", "continuous", {}),
])
def test_parse_spec(spec, name, params):
    assert parse_spec(spec) == (name, params)


@pytest.mark.parametrize("spec, words", [
    ("gossip:b=1", ["gossip"]),
    ("dynamic:delta=0.5,k=3", ["'k'", "delta"]),
    ("periodic:b=eight", ["b", "eight"]),
    ("periodic:b=1.5", ["b", "1.5"]),
    ("periodic:b", ["'b'"]),
    ("periodic:b=1,b=2", ["'b'", "twice"]),
    ("continuous:b=2", ["'b'"]),
    ("", []),
])
def test_parse_spec_errors_name_the_bad_part(spec, words):
    with pytest.raises(ConfigError) as err:
        parse_spec(spec)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("spec, cls", [
    ("nosync", NoSync), ("continuous", Continuous), ("periodic:b=8", Periodic),
    ("fedavg:b=4,C=0.5", FedAvg), ("dynamic:delta=0.5,b=2", Dynamic), ("lsgd:tau=8,strength=0.2", LSGD),
])
def test_make_protocol(spec, cls):
    w0 = torch.arange(3.0)
    p = make_protocol(spec, 4, 3, w0=w0, seed=1, device="cpu")
    assert type(p) is cls and PROTOCOLS[p.name] is cls
    assert torch.equal(p.reference, w0) and p.alive == frozenset(range(4))
    q = p.clone()
    assert type(q) is cls and repr(q) == repr(p) and q is not p
    assert torch.equal(q.reference, w0) and q.stats.models == 0


def test_make_protocol_keywords():
    p = make_protocol("dynamic", 4, 3, seed=0, delta=0.25, b=3, initial_nodes=[0, 1], device="cpu")
    assert (p.delta, p.b, p.alive) == (0.25, 3, frozenset({0, 1}))
    with pytest.raises(ConfigError, match="'delta'"):
        make_protocol("dynamic:delta=0.5", 4, 3, delta=0.25)
    with pytest.raises(ConfigError, match="'C'"):
        make_protocol("dynamic", 4, 3, C=0.5)


@pytest.mark.parametrize("spec, word", [
    ("dynamic:delta=-1", "delta"), ("dynamic:b=0", "b"), ("periodic:b=0", "b"), ("fedavg:C=0", "C"),
    ("lsgd:tau=0", "tau"), ("lsgd:strength=1.5", "strength"), ("lsgd:groups=9", "groups"),
    ("dynamic:delta=inf", "delta"),
])
def test_out_of_range_values(spec, word):
    with pytest.raises(ConfigError, match=word):
        make_protocol(spec, 4, 3)


def test_bad_sizes():
    with pytest.raises(ConfigError):
        make_protocol("nosync", 0, 3)
