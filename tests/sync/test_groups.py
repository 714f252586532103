"""Groups (streamlearn.sync.groups) as a pure state machine: splits, joins, merges, and the protocol's
own events (joins, leaves, timeouts) while groups change."""

from __future__ import annotations

import pytest
import torch

from streamlearn.errors import ConfigError
from streamlearn.sync import Report, RequestModels, SendModel, make_protocol
from streamlearn.sync.dynamic import Dynamic
from streamlearn.sync.groups import MERGE, MIN_AGE, Grouped
from streamlearn.sync.periodic import Periodic


def rep(node, x, step=1):
    return Report(node, step, model=torch.tensor([float(x), 0.0]))


def periodic(m=4, split=2, **kw):
    return Grouped(Periodic(m, 2, b=1, seed=0, device="cpu", **kw), split=split)


def sync_all(p, values, step=1):
    """Every alive node reports its model (values[node]); returns the actions."""
    return p.on_reports([rep(n, values[n], step) for n in sorted(p.alive)])


def decline(p, node, times):
    out = []
    for _ in range(times):
        p._sent[node] += 1  # one model sent to it, declined
        out += p.on_declined([node])
    return out


def test_one_group_is_the_protocol_itself():
    p, q = periodic(), Periodic(4, 2, b=1, seed=0, device="cpu")
    for step in (1, 2):
        a, b = sync_all(p, [1, 2, 3, 6], step), sync_all(q, [1, 2, 3, 6], step)
        assert [(x.nodes, x.model.tolist(), x.reference) for x in a] == \
               [(x.nodes, x.model.tolist(), x.reference) for x in b]
    assert p.stats == q.stats and p.node_groups == {0: 0, 1: 0, 2: 0, 3: 0}


def test_a_node_that_keeps_declining_splits_off_without_a_message_and_syncs_alone():
    p = periodic(split=2)
    sync_all(p, [1, 1, 1, 9])
    r = p.reference.clone()
    assert decline(p, 3, 1) == []
    assert p.node_groups[3] == 0  # one decline is not enough
    assert decline(p, 3, 1) == []  # the split needs no message: the node holds the reference already
    assert p.node_groups == {0: 0, 1: 0, 2: 0, 3: 1}
    assert torch.equal(p.references[1], r)
    assert list(p.events) == [(1, "split", 3, 0, 1)] and p.group_changes == {"split": 1, "join": 0, "merge": 0}
    [a] = p.on_reports([rep(3, 8.0, 2)])  # group 1 averages alone: the node keeps the model it learned on since
    assert a.nodes == (3,) and a.model.tolist() == [8.0, 0.0] and a.keep
    [b] = p.on_reports([rep(n, 2.0, 2) for n in (0, 1, 2)])  # the whole no longer waits on node 3
    assert b.nodes == (0, 1, 2) and b.model.tolist() == [2.0, 0.0]
    assert p.stats.declines == 2 and p.declined.tolist() == [0, 0, 0, 2]


def test_occasional_declines_do_not_split():
    p = periodic(split=2)
    for _ in range(6):
        decline(p, 3, 1)
        p._sent[3] += 4  # four models taken in between
    assert p.node_groups[3] == 0


def test_a_second_decliner_joins_the_nearest_group_and_gets_its_reference():
    p = periodic(split=2)
    sync_all(p, [1, 1, 9, 9])
    decline(p, 3, 2)
    p.on_reports([rep(3, 9.0, 2)])  # group 1 moves to node 3's concept
    p.on_reports([rep(n, 1.0, 2) for n in (0, 1, 2)])
    p.on_reports([rep(2, 9.0, 3)])  # node 2's model is near group 1's reference
    out = decline(p, 2, 2)
    assert p.node_groups == {0: 0, 1: 0, 2: 1, 3: 1}
    [a] = [x for x in out if isinstance(x, SendModel)]
    assert a.nodes == (2,) and a.reference and a.compressed is None and a.model.tolist() == [9.0, 0.0]
    assert p.events[-1][1:] == ("join", 2, 0, 1)


def test_a_group_whose_reference_comes_back_merges_into_the_whole():
    p = periodic(split=1)
    sync_all(p, [0, 0, 0, 0])
    decline(p, 3, 1)
    step = 2
    for _ in range(MIN_AGE):  # group 1 goes far (far = 16) and stays there until it is old enough to merge
        p.on_reports([rep(3, 4.0, step)])
        p.on_reports([rep(n, 0.0, step) for n in (0, 1, 2)])
        step += 1
    assert p.node_groups[3] == 1
    back = (MERGE * 16) ** 0.5 * 0.9  # ... then comes back within MERGE * far
    out = p.on_reports([rep(3, back, step)])
    assert p.node_groups[3] == 0 and 1 not in p.references
    join = [a for a in out if isinstance(a, SendModel) and a.nodes == (3,)][-1]
    assert join.reference and join.model.tolist() == [0.0, 0.0] and not join.keep  # the whole's reference
    assert p.events[-1][1:] == ("merge", 3, 1, 0)
    [a] = sync_all(p, [1, 1, 1, 1], step + 1)  # the whole waits on it again
    assert a.nodes == (0, 1, 2, 3)


def test_a_group_of_mild_dissent_merges_back_while_one_with_its_own_concept_is_far():
    p = periodic(m=5, split=1)
    sync_all(p, [0, 0, 0, 0, 0])
    decline(p, 4, 1)  # group 1: a concept of its own, far away
    p.on_reports([rep(4, 10.0, 2)])
    p.on_reports([rep(3, 0.5, 2)])
    decline(p, 3, 1)  # node 3 disagrees mildly: a group of its own (nearer the whole than group 1)
    assert p.node_groups == {0: 0, 1: 0, 2: 0, 3: 2, 4: 1}
    step = 3
    for _ in range(MIN_AGE):
        p.on_reports([rep(4, 10.0, step), rep(3, 2.0, step)])
        p.on_reports([rep(n, 0.0, step) for n in (0, 1, 2)])
        step += 1
    # 4 = ||r_2 - r_0||^2 is all group 2 ever went (its far), but within MERGE of the widest gap (100)
    assert p.node_groups == {0: 0, 1: 0, 2: 0, 3: 0, 4: 1}, p.node_groups


def test_a_young_group_does_not_merge():
    p = periodic(split=2)
    sync_all(p, [0, 0, 0, 0])
    decline(p, 3, 2)
    p.on_reports([rep(3, 4.0, 2)])
    p.on_reports([rep(3, 0.0, 3)])  # back at once: far fewer than MIN_AGE * split full syncs of its own
    assert p.node_groups[3] == 1


def test_a_split_during_a_round_finishes_the_round_without_the_node():
    p = periodic(split=2)
    assert p.on_reports([rep(0, 1.0), rep(1, 3.0), rep(2, 5.0)]) == []
    assert p.pending == {3}
    out = decline(p, 3, 2)
    [a] = [x for x in out if isinstance(x, SendModel)]
    assert a.nodes == (0, 1, 2) and a.model.tolist() == [3.0, 0.0]
    assert p.node_groups[3] == 1 and p.pending == set()


def test_leave_ends_a_group_and_a_rejoin_comes_back_to_the_whole():
    p = periodic(split=1)
    sync_all(p, [1, 1, 1, 9])
    decline(p, 3, 1)
    before = p.stats
    p.on_reports([rep(3, 9.0, 2)])  # one full sync in group 1: counted
    assert p.on_leave(3) == []
    assert p.node_groups == {0: 0, 1: 0, 2: 0} and list(p.references) == [0]
    assert p.stats.full_syncs == before.full_syncs + 1  # an ended group's counts stay
    [a] = p.on_join(3)
    assert a.nodes == (3,) and a.reference and p.node_groups[3] == 0


def test_a_restarted_node_rejoins_the_whole_from_its_group():
    p = periodic(split=1)
    sync_all(p, [1, 1, 1, 9])
    decline(p, 3, 1)
    decline(p, 2, 1)  # node 2 joins or splits: either way out of the whole
    assert p.node_groups[2] != 0 and p.node_groups[3] != 0
    [a] = p.on_join(3)
    assert a.model.tolist() == p.reference.tolist() and p.node_groups[3] == 0


def test_dynamic_balances_and_forces_full_syncs_within_a_group():
    p = Grouped(Dynamic(6, 2, delta=1.0, b=1, seed=0, device="cpu"), split=1)
    decline(p, 4, 1)
    decline(p, 5, 1)  # node 5's model is unknown: a new group of its own, or node 4's
    g4, g5 = p.node_groups[4], p.node_groups[5]
    assert g4 != 0 and g5 != 0
    # a violation in node 4's group involves only that group
    out = p.on_reports([Report(4, 2, model=torch.tensor([3.0, 0.0]))])
    targets = {n for a in out for n in getattr(a, "nodes", ())}
    members = {n for n, g in p.node_groups.items() if g == g4}
    assert targets <= members and out
    assert all(isinstance(a, (SendModel, RequestModels)) for a in out)


def test_a_timeout_in_a_group_finishes_its_sync_and_a_late_model_after_a_move_is_ignored():
    p = Grouped(Dynamic(8, 2, delta=0.5, b=1, seed=0, device="cpu"), split=1)
    [req] = p.on_reports([Report(0, 1, model=torch.tensor([2.0, 0.0]))])
    [asked] = req.nodes
    [again] = p.on_timeout(asked)  # the balancing goes on without it: another node is asked
    assert isinstance(again, RequestModels) and asked not in again.nodes and asked not in p.pending
    # a node asked by the whole moves away before answering: its model is counted, not used
    p2 = Grouped(Dynamic(8, 2, delta=0.5, b=1, seed=0, device="cpu"), split=1)
    [req] = p2.on_reports([Report(0, 1, model=torch.tensor([2.0, 0.0]))])
    [asked] = req.nodes
    out = decline(p2, asked, 1)
    assert asked not in p2.pending and p2.node_groups[asked] != 0
    assert all(asked not in a.nodes for a in out)
    ups = p2.stats.models_up
    assert p2.on_models({asked: torch.tensor([1.0, 0.0])}) == []
    assert p2.stats.models_up == ups + 1


def test_split_is_a_setting_of_every_averaging_protocol():
    for spec in ("periodic:b=2,split=3", "dynamic:delta=1,split=3", "fedavg:b=2,split=3", "lsgd:split=3",
                 "continuous:split=2"):
        p = make_protocol(spec, m=4, d=3, seed=0, device="cpu")
        assert isinstance(p, Grouped) and p.split in (2, 3) and "split" in p.params
        assert repr(p.clone()) == repr(p)
    with pytest.raises(ConfigError, match="split"):
        make_protocol("nosync:split=3", m=4, d=3)
    with pytest.raises(ConfigError, match="split"):
        make_protocol("periodic:split=0", m=4, d=3)


def test_a_node_alone_in_its_group_stays_unless_a_nearer_group_exists():
    p = periodic(split=1)
    sync_all(p, [0, 0, 0, 0])
    decline(p, 3, 1)
    assert p.node_groups[3] == 1
    p.on_reports([rep(3, 5.0, 2)])
    decline(p, 3, 1)  # it declines its own group's model (its own, come back after it learned on): no new group
    assert p.node_groups[3] == 1 and p.group_changes["split"] == 1
