"""The scalar node rule (what a node service calls after every mini-batch) against the batched
``node_rule_many``, which defines the rule, for every protocol; and ``check_every``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamlearn.sync import PROTOCOLS, make_protocol
from streamlearn.sync.protocol import KINDS, NONE

# Every protocol, with periods > 1 where it has one (so due and not-due steps both occur) and
# thresholds that are not exact in float32.
CASES = [
    ("nosync", {}),
    ("continuous", {}),
    ("periodic", {"b": 1}),
    ("periodic", {"b": 3}),
    ("fedavg", {"b": 4, "C": 0.5}),
    ("dynamic", {"delta": 0.1, "b": 1}),
    ("dynamic", {"delta": 0.5, "b": 3}),
    ("dynamic", {"delta": 0.0, "b": 2}),
    ("lsgd", {"tau": 5, "strength": 0.5}),
]


def divergences(delta: float) -> list[float]:
    """Around the threshold (both sides of it in float64 and float32), far from it, and odd values."""
    d32 = float(np.float32(delta))
    near = [delta, d32, np.nextafter(delta, 0.0), np.nextafter(delta, 1.0), np.nextafter(d32, 1.0),
            float(np.nextafter(np.float32(delta), np.float32(1.0))), delta + 1e-9, delta - 1e-9]
    return [0.0, 1e-12, 0.05, 0.3, 2.0, 1e6, float("inf"), float("nan")] + [float(v) for v in near if v >= 0]


def test_every_protocol_is_covered():
    assert {name for name, _ in CASES} == set(PROTOCOLS)


@pytest.mark.parametrize("name,params", CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_scalar_node_rule_agrees_with_node_rule_many(name, params):
    p = make_protocol(name, m=3, d=2, seed=0, device="cpu", **params)
    steps = list(range(0, 31))
    for div in divergences(params.get("delta", 0.5)):
        codes = p.node_rule_many(torch.tensor(steps), torch.full((len(steps),), div)).tolist()
        for step, code in zip(steps, codes):
            assert p.node_rule(1, step, div) == KINDS[code], (name, params, step, div)
    # the rule does act at some steps (but for nosync), so they agree on more than None
    acted = {p.node_rule(0, s, 1e6) for s in steps} - {None}
    assert acted == (set() if name == "nosync" else {"report" if name in ("fedavg", "lsgd") else "model"})


@pytest.mark.parametrize("name,params", CASES, ids=[f"{n}-{p}" for n, p in CASES])
def test_the_rule_is_silent_between_checks(name, params):
    """A node computes the divergence only at multiples of check_every: elsewhere it cannot matter."""
    p = make_protocol(name, m=2, d=2, seed=0, device="cpu", **params)
    period = p.check_every
    assert isinstance(period, int) and period >= 1
    assert period == params.get("b", params.get("tau", 1))
    steps = torch.tensor([s for s in range(1, 40) if s % period])
    for div in (0.0, 0.7, 1e6, float("inf")):
        codes = p.node_rule_many(steps, torch.full((len(steps),), div))
        assert bool((codes == NONE).all()), (name, params, div)
