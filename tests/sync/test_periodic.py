"""Periodic and continuous averaging, with models arriving one at a time."""

from __future__ import annotations

import torch

from streamlearn.sync import Continuous, Periodic, Report


def rep(node, x, step=2):
    return Report(node, step, model=torch.tensor([float(x), 0.0]))


def test_node_rule_every_b_steps():
    p = Periodic(3, 2, b=3, device="cpu")
    assert [p.node_rule(0, s, 0.0) for s in (1, 2, 3, 6)] == [None, None, "model", "model"]
    assert Continuous(3, 2, device="cpu").node_rule(0, 7, 0.0) == "model"


def test_waits_for_every_alive_node_then_sends_the_plain_mean_to_all():
    p = Periodic(3, 2, b=2, seed=0, device="cpu")
    assert p.pending == set()  # no round open
    assert p.on_reports([rep(0, 1.0)]) == []
    assert p.pending == {1, 2}
    assert p.on_reports([rep(0, 7.0)]) == []  # a second model overwrites the first
    assert p.on_reports([rep(2, 2.0)]) == []
    [a] = p.on_reports([rep(1, 3.0)])
    assert a.nodes == (0, 1, 2) and a.reference and a.model.tolist() == [4.0, 0.0]
    assert p.reference.tolist() == [4.0, 0.0]
    assert (p.stats.models_up, p.stats.models_down, p.stats.full_syncs) == (4, 3, 1)
    assert p.pending == set()


def test_a_joiner_mid_round_is_waited_for_and_a_leaver_is_not():
    p = Periodic(3, 2, b=2, seed=0, device="cpu", initial_nodes=[0, 1])
    assert p.on_reports([rep(0, 1.0)]) == []
    [ref] = p.on_join(2)
    assert ref.nodes == (2,) and ref.reference
    assert p.pending == {1, 2}
    assert p.on_leave(1) == []
    [a] = p.on_reports([rep(2, 5.0)])
    assert a.nodes == (0, 2) and a.model.tolist() == [3.0, 0.0]


def test_reports_of_nodes_that_left_are_ignored_but_counted():
    p = Periodic(2, 2, b=2, seed=0, device="cpu")
    p.on_leave(1)
    assert p.on_reports([rep(1, 9.0)]) == []
    assert p.stats.models_up == 1 and p.pending == set()
    [a] = p.on_reports([rep(0, 1.0)])
    assert a.nodes == (0,) and a.model.tolist() == [1.0, 0.0]
