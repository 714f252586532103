"""Shards with a root (streamlearn.sync.hierarchy): exact per shard, the root's average and its messages,
specs, state, and the simulator running it."""

from __future__ import annotations

import json

import pytest
import torch

from streamlearn.cli import main
from streamlearn.errors import BadRecordError, ConfigError
from streamlearn.sync import Report, SendModel, make_protocol
from streamlearn.sync.codec import FP32_HEADER_BYTES
from streamlearn.sync.driver import lockstep
from streamlearn.sync.dynamic import Dynamic
from streamlearn.sync.hierarchy import SEED_STRIDE, Hierarchy, root_average, shard_of
from streamlearn.sync.periodic import Periodic

D = 3


def noise(m, steps, scale=0.3, seed=1):
    g = torch.Generator().manual_seed(seed)
    # a drift of its own per node, so nodes diverge and the dynamic rule fires
    return torch.randn(steps, m, D, generator=g) * scale + torch.linspace(-0.2, 0.2, m)[None, :, None]


def run(p, m, steps=24, W=None, seed=1):
    """Lockstep rounds: every alive node moves by its noise, then the protocol syncs."""
    W = torch.zeros(m, D) if W is None else W
    R = torch.zeros(m, D)
    for t, step_noise in enumerate(noise(m, steps, seed=seed), start=1):
        W += step_noise
        lockstep(p, t, W, R)
    return W, R


def plain(kind, m, seed=0, **kw):
    if kind == "periodic":
        return Periodic(m, D, b=2, seed=seed, device="cpu", **kw)
    return Dynamic(m, D, delta=0.5, b=1, seed=seed, device="cpu", **kw)


@pytest.mark.parametrize("kind", ["periodic", "dynamic"])
def test_one_shard_without_root_is_the_protocol_itself(kind):
    m = 6
    h, q = Hierarchy(plain(kind, m), shards=1, root=0), plain(kind, m)
    Wh, Rh = run(h, m)
    Wq, Rq = run(q, m)
    assert torch.equal(Wh, Wq) and torch.equal(Rh, Rq)
    assert h.stats == q.stats and h.stats.full_syncs > 0
    if kind == "dynamic":
        assert q.stats.partial_syncs > 0  # the run exercises balancing, with its random choices
    assert h.root_syncs == 0 and h.node_groups == {n: 0 for n in range(m)}


@pytest.mark.parametrize("kind", ["periodic", "dynamic"])
def test_shards_without_root_are_independent_plain_protocols_over_their_nodes(kind):
    m, S = 9, 3
    h = Hierarchy(plain(kind, m), shards=S, root=0)
    Wh, Rh = run(h, m)
    total = None
    for s in range(S):
        nodes = [n for n in range(m) if n % S == s]
        q = plain(kind, m, seed=0 + SEED_STRIDE * s, initial_nodes=nodes)
        Wq, Rq = run(q, m)
        assert torch.equal(Wh[nodes], Wq[nodes]) and torch.equal(Rh[nodes], Rq[nodes])
        assert torch.equal(h.references[s], q.reference)
        total = q.stats.as_dict() if total is None else {k: v + q.stats.as_dict()[k] for k, v in total.items()}
    assert h.stats.as_dict() == total and h.stats.full_syncs >= S
    assert h.node_groups == {n: n % S for n in range(m)}


def test_shard_of_and_root_average():
    assert [shard_of(n, 4) for n in (0, 1, 5, 8, 11)] == [0, 1, 1, 0, 3]
    refs = [torch.tensor([1.0, 0.0]), torch.tensor([4.0, 3.0]), torch.tensor([9.0, 9.0])]
    assert root_average(refs, [3, 1, 0]).tolist() == [1.75, 0.75]  # an empty shard weighs nothing
    # the mean of shard means weighted by their sizes is the mean of all models
    W = torch.arange(14.0).reshape(7, 2)
    shards = [W[[n for n in range(7) if n % 3 == s]] for s in range(3)]
    got = root_average([w.mean(0) for w in shards], [len(w) for w in shards])
    assert torch.allclose(got, W.mean(0))
    with pytest.raises(ConfigError, match="weights"):
        root_average(refs, [0, 0, 0])


@pytest.mark.parametrize("m, S", [(6, 3), (7, 3), (5, 5)])
def test_root_every_step_is_global_continuous_averaging_plus_the_root_messages(m, S):
    steps = 10
    h = Hierarchy(Periodic(m, D, b=1, seed=0, device="cpu"), shards=S, root=1)
    q = Periodic(m, D, b=1, seed=0, device="cpu")
    Wh, Rh = run(h, m, steps)
    Wq, Rq = run(q, m, steps)
    assert torch.allclose(Wh, Wq, atol=1e-5) and torch.allclose(Rh, Rq, atol=1e-5)
    assert h.root_syncs == steps
    hs, qs = h.stats, q.stats
    assert hs.models_up == qs.models_up and hs.bytes_up == qs.bytes_up
    assert hs.models_down == qs.models_down + steps * m  # the shards' syncs reach every node, then the root's
    assert hs.bytes_down == qs.bytes_down + steps * m * (FP32_HEADER_BYTES + 4 * D)
    assert hs.full_syncs == S * qs.full_syncs


def test_root_counts_full_syncs_across_shards_and_waits_for_a_sync_in_progress():
    p = Hierarchy(Periodic(4, 1, b=1, seed=0, device="cpu"), shards=2, root=1)  # due after 2 shard syncs
    x = lambda v: torch.tensor([float(v)])
    assert [a.nodes for a in p.on_reports([Report(0, 1, model=x(0)), Report(2, 1, model=x(2))])] == [(0, 2)]
    assert p.on_reports([Report(1, 1, model=x(1))]) == []  # shard 1's round opens: node 3 awaited
    [a] = p.on_reports([Report(0, 2, model=x(4)), Report(2, 2, model=x(4))])
    assert a.nodes == (0, 2) and p.root_syncs == 0  # due, but shard 1 awaits a model: it finishes first
    shard1, root = p.on_reports([Report(3, 1, model=x(3))])
    assert (shard1.nodes, shard1.model.tolist()) == ((1, 3), [2.0])
    assert (root.nodes, root.model.tolist(), root.reference) == ((0, 1, 2, 3), [3.0], True)
    assert p.root_syncs == 1 and all(r.tolist() == [3.0] for r in p.references.values())


def test_joins_and_leaves_stay_in_their_shard_and_the_root_weighs_alive_nodes():
    p = Hierarchy(Periodic(4, 1, b=1, seed=0, device="cpu", initial_nodes=[0, 1, 2]), shards=2, root=1)
    assert p.node_groups == {0: 0, 1: 1, 2: 0}
    [a] = p.on_join(3)
    assert isinstance(a, SendModel) and a.nodes == (3,) and p.node_groups[3] == 1
    p.on_leave(1)
    acts = p.on_reports([Report(n, 1, model=torch.tensor([float(n)])) for n in (0, 2, 3)])
    assert acts[-1].nodes == (0, 2, 3) and acts[-1].model.tolist() == [pytest.approx(5 / 3)]
    with pytest.raises(BadRecordError, match="node"):
        p.on_join(4)


def test_fedavg_and_lsgd_run_per_shard():
    m = 6
    f = make_protocol("fedavg:b=2,C=0.5,shards=2,root=2", m=m, d=D, seed=0, device="cpu")
    run(f, m, steps=16)
    assert f.stats.full_syncs == 2 * 8 and f.root_syncs == 4  # a round per shard every 2 steps, a root every 4
    g = make_protocol("lsgd:tau=2,shards=2", m=m, d=D, seed=0, device="cpu")
    run(g, m, steps=8)
    assert g.stats.pulls == 2 * 4 and g.root_syncs == 0


def test_state_round_trip_and_layout_check():
    p = make_protocol("dynamic:delta=0.5,shards=3,root=2", m=6, d=D, seed=0, device="cpu")
    run(p, 6, steps=12)
    q = make_protocol("dynamic:delta=0.5,shards=3,root=2", m=6, d=D, seed=0, device="cpu")
    state = json.loads(json.dumps(p.get_state()))  # plain JSON
    q.set_state(state)
    q.set_arrays(p.get_arrays())
    assert q.root_syncs == p.root_syncs and q._since_root == p._since_root
    assert all(torch.equal(q.references[s], p.references[s]) for s in range(3))
    assert [x.violation_counter for x in q.parts] == [x.violation_counter for x in p.parts]
    q.stats = p.stats
    assert q.stats == p.stats
    other = make_protocol("dynamic:delta=0.5,shards=2", m=6, d=D, seed=0, device="cpu")
    with pytest.raises(ConfigError, match="shards"):
        other.set_state(state)
    assert repr(p.clone()) == repr(p) and p.clone().root_syncs == 0


@pytest.mark.parametrize("spec, m, words", [
    ("periodic:b=8,shards=0", 4, ["shards", "0"]),
    ("periodic:b=8,shards=two", 4, ["shards", "'two'"]),
    ("periodic:b=8,shards=1.5", 4, ["shards", "'1.5'"]),
    ("periodic:b=8,shards=2,root=-1", 4, ["root", "-1"]),
    ("periodic:b=8,shards=5", 4, ["shards=5", "m=4"]),
    ("periodic:b=8,root=2", 4, ["root=2", "shards"]),
    ("periodic:b=8,split=3,shards=2", 4, ["split=3", "shards=2"]),
    ("nosync:shards=2", 4, ["shards"]),
    ("dynamic:extrapolate=1,shards=2,root=1", 4, ["root=1", "extrapolate"]),
    ("lsgd:shards=2,root=1", 4, ["root=1", "lsgd"]),
])
def test_bad_specs_name_the_field_and_the_value(spec, m, words):
    with pytest.raises(ConfigError) as err:
        make_protocol(spec, m=m, d=D, seed=0, device="cpu")
    assert all(w in str(err.value) for w in words), str(err.value)


def test_simulate_runs_shards_with_a_root_seeded_and_repeatable(tmp_path, capsys):
    def simulate(spec, name):
        out = tmp_path / name
        argv = ["simulate", "--source", "sea", "--nodes", "6", "--n", "400", "--protocol", spec, "--seed", "3",
                "--no-progress", "--json", str(out)]
        assert main(argv) == 0
        return json.loads(out.read_text())

    a = simulate("periodic:b=4,shards=3,root=2", "a.json")
    b = simulate("periodic:b=4,shards=3,root=2", "b.json")
    flat = simulate("periodic:b=4,shards=3", "c.json")
    assert a["accuracy"] == b["accuracy"] and a["comm"] == b["comm"]
    # 40 rounds: every shard syncs 10 times (30 full syncs), the root every 6 of them: 5 times to 6 nodes
    assert a["comm"]["full_syncs"] == flat["comm"]["full_syncs"] == 30
    assert a["comm"]["models_down"] == flat["comm"]["models_down"] + 5 * 6
    assert a["accuracy"] != flat["accuracy"]
