"""Focused tests of dynamic averaging: the rule of DESIGN.md, step by step, counted by hand."""

from __future__ import annotations

import torch

from streamlearn.sync import Dynamic, Report, RequestModels, SendModel
from streamlearn.sync.driver import lockstep

D = 3


def bank_of(m, delta=1.0, b=1, seed=0):
    p = Dynamic(m, D, delta=delta, b=b, seed=seed, device="cpu")
    return p, torch.zeros(m, D), torch.zeros(m, D)


def e(x):
    return torch.tensor([x, 0.0, 0.0])


def test_node_rule_checks_every_b_steps_only():
    p = Dynamic(4, D, delta=1.0, b=2, device="cpu")
    assert p.node_rule(0, 3, 5.0) is None
    assert p.node_rule(0, 4, 5.0) == "model"
    assert p.node_rule(0, 4, 1.0) is None  # ||w - r||^2 <= delta holds
    codes = p.node_rule_many(torch.tensor([2, 3, 4]), torch.tensor([2.0, 2.0, 0.5]))
    assert codes.tolist() == [2, 0, 0]


def test_no_violation_no_communication():
    p, W, R = bank_of(5, delta=1.0)
    gen = torch.Generator().manual_seed(0)
    for step in range(1, 21):
        W += 0.01 * torch.randn(5, D, generator=gen)  # stays well inside delta
        assert lockstep(p, step, W, R) == []
    assert p.stats.models == 0 and p.stats.violations == 0 and p.stats.bytes_up == 0
    assert torch.equal(p.reference, torch.zeros(D))


def test_balancing_growth_doubles_then_requests_all_at_half():
    p, W, R = bank_of(16, delta=1.0)
    W[0] = e(100.0)  # no subset mean gets within delta: B grows 1 -> 2 -> 4 -> all
    actions = lockstep(p, 1, W, R)
    sizes = [len(a.nodes) for a in actions if isinstance(a, RequestModels)]
    assert sizes == [1, 2, 12]  # 4 + 4 would reach m/2 = 8: all the remaining 12 instead
    [full] = [a for a in actions if isinstance(a, SendModel)]
    assert full.reference and full.nodes == tuple(range(16))
    assert torch.allclose(p.reference, e(100.0 / 16))
    assert (p.stats.models_up, p.stats.models_down) == (16, 16)
    assert (p.stats.full_syncs, p.stats.partial_syncs, p.stats.violations) == (1, 0, 1)


def test_balancing_stops_as_soon_as_the_subset_mean_is_within_delta():
    p, W, R = bank_of(16, delta=1.0)
    W[0] = e(10.0 ** 0.5)  # B={0}: 10 > 1; B of 2: 2.5 > 1; B of 4: 0.625 <= 1
    total = W.sum(0).clone()
    actions = lockstep(p, 1, W, R)
    assert [len(a.nodes) for a in actions if isinstance(a, RequestModels)] == [1, 2]
    [bal] = [a for a in actions if isinstance(a, SendModel)]
    assert not bal.reference and len(bal.nodes) == 4 and 0 in bal.nodes
    assert torch.allclose(bal.model, e(10.0 ** 0.5 / 4))
    assert torch.allclose(W.sum(0), total)  # the global mean is unchanged
    assert torch.equal(p.reference, torch.zeros(D)) and torch.equal(R, torch.zeros(16, D))  # r did not move
    assert (p.stats.models_up, p.stats.models_down, p.stats.partial_syncs) == (4, 4, 1)


def test_forced_full_sync_after_m_violations():
    p, W, R = bank_of(8, delta=1.0)
    # Round 1: nodes 0..3 violate but their mean is r: balanced among themselves. v = 4.
    W[:4] = torch.stack([e(2.0), e(-2.0), e(3.0), e(-3.0)])
    [bal] = lockstep(p, 1, W, R)
    assert isinstance(bal, SendModel) and bal.nodes == (0, 1, 2, 3) and not bal.reference
    assert p.violation_counter == 4 and (p.stats.models_up, p.stats.models_down) == (4, 4)
    # Round 2: nodes 4..7 violate: v = 8 >= m forces a full sync; the models of 0..3 are requested.
    W[4:] = torch.stack([e(2.0), e(2.0), e(2.0), e(3.0)])
    actions = lockstep(p, 2, W, R)
    assert [a.nodes for a in actions if isinstance(a, RequestModels)] == [(0, 1, 2, 3)]
    [full] = [a for a in actions if isinstance(a, SendModel)]
    assert full.reference and full.nodes == tuple(range(8))
    assert torch.allclose(p.reference, e(9.0 / 8))
    assert p.violation_counter == 0
    s = p.stats
    assert (s.models_up, s.models_down, s.full_syncs, s.partial_syncs, s.violations) == (12, 12, 1, 1, 8)
    assert (s.bytes_up, s.bytes_down) == (12 * (52 + D * 4), 12 * (52 + D * 4))


def test_violations_arriving_during_a_balancing_are_merged_into_it():
    p = Dynamic(16, D, delta=1.0, seed=0, device="cpu")
    [req] = p.on_reports([Report(0, 1, model=e(3.0))])  # 9 > 1: one more node requested
    assert len(req.nodes) == 1 and p.pending == set(req.nodes)
    j = req.nodes[0]
    other = next(n for n in range(1, 16) if n != j)
    assert p.on_reports([Report(other, 1, model=e(-3.0))]) == []  # merged: still waiting for j
    assert p.balancing == {0, j, other} and p.violation_counter == 2
    [bal] = p.on_models({j: torch.zeros(D)})  # mean of {3, -3, 0} = 0: balanced
    assert bal.nodes == tuple(sorted({0, j, other})) and not bal.reference
    assert torch.allclose(bal.model, torch.zeros(D))
    assert (p.stats.models_up, p.stats.models_down, p.stats.violations) == (3, 3, 2)


def test_a_node_leaving_mid_balancing_is_replaced_and_never_targeted():
    p = Dynamic(16, D, delta=1.0, seed=0, device="cpu")
    [req] = p.on_reports([Report(0, 1, model=e(1.5))])  # 2.25 > 1: grow to 2
    j = req.nodes[0]
    [req2] = p.on_leave(j)  # B = {0} again: still violated, so another node is asked
    assert j not in req2.nodes and len(req2.nodes) == 1 and p.pending == set(req2.nodes)
    [bal] = p.on_models({req2.nodes[0]: torch.zeros(D)})
    assert bal.nodes == tuple(sorted({0, req2.nodes[0]})) and j not in bal.nodes
    assert p.stats.models_up == 2  # node 0's and the replacement's


def test_timeout_gives_up_on_a_node_and_ignores_its_late_model():
    p = Dynamic(16, D, delta=1.0, seed=0, device="cpu")
    [req] = p.on_reports([Report(0, 1, model=e(1.5))])
    j = req.nodes[0]
    [req2] = p.on_timeout(j)
    assert j not in req2.nodes and j in p.alive and p.stats.timeouts == 1
    assert p.on_models({j: e(100.0)}) == []  # late: counted, not used
    [bal] = p.on_models({req2.nodes[0]: torch.zeros(D)})
    assert torch.allclose(bal.model, e(0.75)) and j not in bal.nodes
    assert p.stats.models_up == 3


def test_a_sync_whose_violators_all_left_ends_without_action():
    p = Dynamic(16, D, delta=1.0, seed=0, device="cpu")
    [req] = p.on_reports([Report(0, 1, model=e(1.5))])
    assert p.on_leave(0) == []
    assert p.balancing == frozenset() and p.pending == set()
    assert p.on_models({req.nodes[0]: torch.zeros(D)}) == []  # the late answer is not used
    assert p.stats.models_down == 0 and p.stats.partial_syncs == 0


def test_seed_decides_which_nodes_are_asked():
    chosen = []
    for seed in (0, 0, 1, 2, 3):
        p = Dynamic(32, D, delta=1.0, seed=seed, device="cpu")
        [req] = p.on_reports([Report(0, 1, model=e(1.5))])
        chosen.append(req.nodes)
    assert chosen[0] == chosen[1]
    assert len(set(chosen)) > 1
