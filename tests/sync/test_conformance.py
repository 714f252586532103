"""One conformance suite that every sync protocol passes, driven by the pure lockstep driver."""

from __future__ import annotations

import pytest
import torch

from streamlearn.sync import PROTOCOLS, PullToward, RequestModels, SendModel, make_protocol
from streamlearn.sync.driver import apply_action, collect_reports, settle

M, D = 6, 4
W0 = torch.linspace(-1.0, 1.0, D)

# Every protocol, with settings that make it sync in a few steps of the random walk below.
CASES = {
    "nosync": ("nosync", {}),
    "continuous": ("continuous", {}),
    "periodic": ("periodic", {"b": 2}),
    "fedavg": ("fedavg", {"b": 2, "C": 0.5}),
    "dynamic": ("dynamic", {"delta": 0.02, "b": 1}),
    "lsgd": ("lsgd", {"tau": 2, "strength": 0.5}),
    "lsgd-groups": ("lsgd", {"tau": 2, "strength": 0.5, "groups": 2, "global_strength": 0.25}),
    # Run per group of nodes (streamlearn.sync.groups): with one group, the protocol itself.
    "periodic-split": ("periodic", {"b": 2, "split": 2}),
    "dynamic-split": ("dynamic", {"delta": 0.02, "b": 1, "split": 2}),
    "fedavg-split": ("fedavg", {"b": 2, "C": 0.5, "split": 2}),
    "lsgd-split": ("lsgd", {"tau": 2, "strength": 0.5, "split": 2}),
}


def test_every_protocol_is_covered():
    assert {spec for spec, _ in CASES.values()} == set(PROTOCOLS)


@pytest.fixture(params=list(CASES))
def case(request):
    name, params = CASES[request.param]

    def make(seed=0, **extra):
        return make_protocol(name, M, D, w0=W0, seed=seed, device="cpu", **{**params, **extra})

    make.name = name
    make.params = params
    return make


class World:
    """m nodes doing a seeded random walk (node i moves with noise 0.03 * (1 + i), plus a common drift)."""

    def __init__(self, seed=0, m=M):
        self.gen = torch.Generator().manual_seed(seed)
        self.W = W0.repeat(m, 1)
        self.R = W0.repeat(m, 1)
        self.steps = torch.zeros(m, dtype=torch.long)
        self.samples = torch.zeros(m, dtype=torch.long)
        self.loss = torch.zeros(m)
        self.scale = 0.03 * (1 + torch.arange(m, dtype=torch.float32)).unsqueeze(1)
        self.drift = 0.02 * torch.ones(D)

    def learn(self, nodes):
        idx = sorted(nodes)
        self.steps[idx] += 1
        self.samples[idx] += 1 + torch.tensor(idx)  # unequal, so weighted and plain means differ
        noise = torch.randn(len(idx), D, generator=self.gen)
        self.W[idx] += self.drift + self.scale[idx] * noise
        self.loss[idx] = torch.rand(len(idx), generator=self.gen)

    def round(self, p):
        """All alive nodes learn one step, then their reports are delivered together and settled."""
        self.learn(p.alive)
        before = self.W.clone()
        reports = collect_reports(p, self.steps, self.W, self.R, loss=self.loss, n_samples=self.samples)
        actions = settle(p, p.on_reports(reports), self.W, self.R)
        for a in actions:
            if isinstance(a, SendModel):
                self.samples[list(a.nodes)] = 0
        return reports, actions, before


def targets(actions):
    return {n for a in actions for n in a.nodes}


def same_actions(a, b):
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if type(x) is not type(y) or x.nodes != y.nodes:
            return False
        if isinstance(x, SendModel) and (x.reference != y.reference or not torch.equal(x.model, y.model)):
            return False
        if isinstance(x, PullToward) and (x.strength != y.strength or not torch.equal(x.model, y.model)):
            return False
    return True


def expected_model(params, action, reports, actions, before):
    """What the sync model must be, computed independently from the reports and pre-round models."""
    if isinstance(action, PullToward):  # LSGD: the lowest-loss reporter (of the group, for a local pull)
        loss = {r.node: r.loss for r in reports}
        groups = [range(M)] if "groups" not in params else [range(0, 3), range(3, 6)]
        is_global = "groups" not in params or action.strength == params["global_strength"]
        group = range(M) if is_global else next(g for g in groups if action.nodes[0] in g)
        leader = min((n for n in group if n in loss), key=lambda n: (loss[n], n))
        return before[leader]
    # A mean over the models that went up in this round; FedAvg weights them by samples.
    up = {r.node for r in reports if r.model is not None}
    up |= {n for a in actions if isinstance(a, RequestModels) for n in a.nodes}
    nodes = sorted(up)
    if "C" in params:
        samples = {r.node: r.n_samples for r in reports}
        w = torch.tensor([float(samples[n]) for n in nodes])
        return (w @ before[nodes]) / w.sum()
    return before[nodes].mean(0)


def test_same_seed_same_actions(case):
    runs = []
    for _ in range(2):
        p, world = case(seed=3), World(seed=1)
        runs.append([a for _ in range(8) for a in world.round(p)[1]])
    assert same_actions(runs[0], runs[1])


def test_syncs_are_the_right_means_and_invariants_hold(case):
    p, world = case(), World()
    kinds = set()
    for _ in range(10):
        reports, actions, before = world.round(p)
        alive = set(p.alive)
        expected = before.clone()
        for a in actions:
            assert set(a.nodes) <= alive
            if isinstance(a, RequestModels):
                continue
            model = expected_model(case.params, a, reports, actions, before)
            assert torch.allclose(a.model, model, atol=1e-5)
            apply_action(a, expected, expected.clone())
        # The driver applied exactly what the protocol computed.
        assert torch.allclose(world.W, expected, atol=1e-5)
        sends = [a for a in actions if isinstance(a, SendModel)]
        for a in sends:
            kinds.add("full" if a.reference else "partial")
            rows = world.W[list(a.nodes)]
            assert torch.equal(rows, rows[:1].expand_as(rows)), "synced nodes hold the same model"
            if a.reference:
                assert set(a.nodes) == alive
                assert torch.equal(world.W[list(alive)], p.reference.expand(len(alive), D))
                assert torch.equal(world.R[list(alive)], p.reference.expand(len(alive), D))
            else:
                assert torch.allclose(world.W.sum(0), before.sum(0), atol=1e-4), "balancing keeps the global mean"
        assert not p.pending and not p.waiting_reports
    expected_kinds = {"nosync": set(), "lsgd": set(), "dynamic": {"full", "partial"}}.get(case.name, {"full"})
    assert kinds == expected_kinds
    if case.name == "lsgd":
        assert p.stats.pulls > 0


def test_communication_is_counted_from_the_actions(case):
    p, world = case(), World()
    up = down = 0
    for _ in range(10):
        reports, actions, _ = world.round(p)
        up += sum(r.model is not None for r in reports)
        up += sum(len(a.nodes) for a in actions if isinstance(a, RequestModels))
        down += sum(len(a.nodes) for a in actions if not isinstance(a, RequestModels))
    s = p.stats
    assert (s.models_up, s.models_down) == (up, down)
    assert (s.bytes_up, s.bytes_down) == (up * (52 + D * 4), down * (52 + D * 4))  # header + payload


# Hand counts: m=4 nodes, 4 lockstep steps, every node moves each step.
HAND = {
    "nosync": ({}, dict(models_up=0, models_down=0, full_syncs=0)),
    "continuous": ({}, dict(models_up=16, models_down=16, full_syncs=4)),                 # 4 up + 4 down per step
    "periodic": ({"b": 2}, dict(models_up=8, models_down=8, full_syncs=2)),               # steps 2 and 4
    "fedavg": ({"b": 2, "C": 0.5}, dict(models_up=4, models_down=8, full_syncs=2)),       # 2 of 4 up, 4 down
    "dynamic": ({"delta": 0.0, "b": 2}, dict(models_up=8, models_down=8, full_syncs=2)),  # 4 violations = m: forced
    "lsgd": ({"tau": 2, "strength": 0.5}, dict(models_up=2, models_down=6, pulls=2)),     # leader up, 3 pulled
    "lsgd-groups": ({"tau": 2, "strength": 0.5, "groups": 2},
                    dict(models_up=4, models_down=10, pulls=2)),  # 2 leaders up; 1 + 1 local + 3 global pulls
}


@pytest.mark.parametrize("key", list(HAND))
def test_communication_hand_counts(key):
    params, expected = HAND[key]
    p = make_protocol(CASES[key][0], 4, D, w0=W0, seed=0, device="cpu", **params)
    world = World(m=4)
    for _ in range(4):
        world.round(p)
    got = p.stats.as_dict()
    assert {k: got[k] for k in expected} == expected
    assert got["bytes_up"] == expected["models_up"] * (52 + D * 4)
    assert got["bytes_down"] == expected["models_down"] * (52 + D * 4)


def _open_sync(p, world):
    """Deliver the step-4 reports of all nodes but the last, holding back any request.

    Every node has drifted far from the reference, so every protocol that syncs starts one.
    Returns the held actions and the node awaited by the sync in progress (None if none).
    """
    world.W += 0.5
    world.steps[:] = 4
    actions = p.on_reports(collect_reports(p, world.steps, world.W, world.R, loss=world.loss,
                                           n_samples=world.samples, nodes=range(M - 1)))
    awaited = p.pending | p.waiting_reports
    return actions, (min(awaited) if awaited else None)


@pytest.mark.parametrize("event", ["leave", "timeout"])
def test_sync_finishes_without_a_node_that_left_or_timed_out(case, event):
    p, world = case(), World()
    world.loss[:] = torch.arange(M, dtype=torch.float32)
    held, victim = _open_sync(p, world)
    if case.name == "nosync":
        assert victim is None and held == [] and p.stats.models == 0
        return
    assert victim == M - 1, "every protocol that syncs now waits on the node that did not report"
    world.W[victim] += 1000.0  # if its model were used, the sync model would show it
    after = p.on_leave(victim) if event == "leave" else p.on_timeout(victim)
    assert victim not in p.pending and victim not in p.waiting_reports
    # The network answers the requests held back, except the victim's.
    for a in held:
        if isinstance(a, RequestModels):
            after += p.on_models({n: world.W[n].clone() for n in a.nodes if n != victim})
    after = settle(p, after, world.W, world.R)
    syncs = [a for a in after if not isinstance(a, RequestModels)]
    assert syncs, "the sync completed"
    for a in after:
        if isinstance(a, RequestModels) or event == "leave":
            assert victim not in a.nodes
    for a in syncs:
        assert a.model.abs().max() < 100, "the victim's model was not used"
    assert not p.pending and not p.waiting_reports
    if event == "timeout":
        assert p.stats.timeouts == 1


def test_no_action_targets_or_waits_on_a_node_that_left(case):
    p, world = case(), World()
    for step in range(12):
        if step == 4:
            assert 2 not in targets(p.on_leave(2))
        _, actions, _ = world.round(p)
        if step >= 4:
            assert 2 not in targets(actions)
            assert 2 not in p.pending | p.waiting_reports
    assert 2 not in p.alive


def test_a_late_joiner_receives_the_reference(case):
    late = M - 1
    p, world = case(initial_nodes=range(M - 1)), World()
    for _ in range(6):
        _, actions, _ = world.round(p)
        assert late not in targets(actions)
    down = p.stats.models_down
    [a] = p.on_join(late)
    assert isinstance(a, SendModel) and a.nodes == (late,) and a.reference
    assert torch.equal(a.model, p.reference)
    assert p.stats.models_down == down + 1
    apply_action(a, world.W, world.R)
    assert torch.equal(world.W[late], p.reference) and torch.equal(world.R[late], p.reference)
    if case.name in ("continuous", "periodic", "fedavg", "dynamic"):
        assert not torch.equal(p.reference, W0), "the joiner got the moved reference, not w0"
    later = [a for _ in range(6) for a in world.round(p)[1]]
    if case.name != "nosync":
        assert late in targets(later), "the joiner takes part in later syncs"
