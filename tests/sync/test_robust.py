"""Robust aggregation math (streamlearn.sync.robust): centered clipping, its bound, the token bucket."""

from __future__ import annotations

import math

import pytest
import torch

from streamlearn.errors import ConfigError
from streamlearn.sync.messages import Report
from streamlearn.sync.robust import (
    NormBound,
    TokenBucket,
    centered_clip,
    check_clip,
    check_rate,
    median_bound,
    move_lengths,
)

NAN = float("nan")


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_centered_clip_is_the_formula_row_by_row_and_keeps_buffers():
    g = _gen(1)
    W, R = torch.randn(6, 5, generator=g) * 3, torch.randn(6, 5, generator=g)
    tau, p = 2.0, 3
    out, scale = centered_clip(W, R, tau, n_params=p)
    for i in range(6):
        move = W[i, :p] - R[i, :p]
        s = min(1.0, tau / float(move.norm()))
        assert torch.allclose(out[i, :p], R[i, :p] + move * s, atol=1e-6)
        assert math.isclose(float(scale[i]), s, rel_tol=1e-6)
        assert torch.equal(out[i, p:], W[i, p:])  # buffers (scaler statistics) untouched
    lengths = move_lengths(out, R, p)
    assert bool((lengths <= tau + 1e-5).all())
    # the direction of every move is kept
    cos = torch.nn.functional.cosine_similarity(out[:, :p] - R[:, :p], W[:, :p] - R[:, :p], dim=-1)
    assert torch.allclose(cos, torch.ones(6), atol=1e-5)
    assert not W.equal(out) and W.data_ptr() != out.data_ptr()  # a new tensor, W untouched


def test_centered_clip_leaves_short_moves_a_model_at_its_reference_and_no_bound_alone():
    r = torch.tensor([1.0, 2.0])
    W = torch.stack([r, r + 0.5])
    out, scale = centered_clip(W, r, tau=1.0)
    assert torch.equal(out, W) and scale.tolist() == [1.0, 1.0]
    for tau in (None, math.inf):
        out, scale = centered_clip(W * 100, r, tau)
        assert torch.equal(out, W * 100) and bool((scale == 1).all())


def test_the_bound_clips_as_centered_clip_and_keeps_models_within_it_as_they_are():
    # The bound tells most batches "nothing to clip" from the lengths as floats, without the tensor math:
    # moves at the bound to a few float32 ulps either side must be decided as centered_clip decides them.
    g = _gen(7)
    m, d = 8, 6
    for trial in range(40):
        bound = NormBound(m=m, factor=2.0, warmup=1)
        bound.note(list(range(m)), torch.rand(m, generator=g) + 0.5)
        tau = bound.tau
        R = torch.randn(m, d, generator=g)
        direction = torch.nn.functional.normalize(torch.randn(m, d, generator=g), dim=-1)
        if trial % 2:  # lengths within 3e-7 of tau
            length = tau * (1.0 + 1e-7 * torch.arange(-3, 5, dtype=torch.float32))
        else:  # lengths around tau
            length = tau * 2.0 * torch.rand(m, generator=g)
        W = R + direction * length.unsqueeze(-1)
        expect, expect_scale = centered_clip(W, R, tau)
        clipped_before = bound.clipped
        out, scale = bound.clip(list(range(m)), W, R)
        assert torch.equal(scale, expect_scale) and torch.equal(out, expect)
        within = scale >= 1.0
        assert torch.equal(out[within], W[within])  # not r + (w - r): the very model
        assert bound.clipped - clipped_before == int((scale < 1.0).sum())


def test_median_bound_ignores_one_node_out_of_three_and_takes_the_lower_of_two():
    honest = torch.tensor([[1.0, 1.2, 0.8], [0.9, 1.1, NAN]])
    for attacker in (1e3, 1e9):
        L = torch.cat([honest, torch.full((1, 3), attacker)])
        assert median_bound(L, 4.0) == pytest.approx(4.0 * 1.2)  # longest 1.2, 1.1, attacker: the middle one
        assert median_bound(L[[0, 2]], 4.0) == pytest.approx(4.0 * 1.2)  # of two, the lower
    assert math.isnan(median_bound(torch.full((3, 4), NAN), 4.0))


def test_no_bound_before_the_warmup_nor_without_a_factor():
    r = torch.zeros(2)
    bound = NormBound(m=2, factor=3.0, warmup=3)
    far = torch.tensor([[1e4, 0.0]])
    out, scale = bound.clip([0], far, r)
    assert scale.tolist() == [1.0]
    assert torch.equal(out, far) and bound.tau is None  # one length known: still warming up
    bound.clip([0, 1], torch.tensor([[1.0, 0.0], [0.0, 1.0]]), r)
    assert bound.tau is not None
    off = NormBound(m=2, factor=None, warmup=0)
    for _ in range(5):
        out, _ = off.clip([0, 1], torch.tensor([[1e4, 0.0], [1.0, 0.0]]), r)
    assert torch.equal(out[0], torch.tensor([1e4, 0.0])) and off.tau is None and off.clipped == 0


def test_zero_moves_say_nothing_and_other_ids_are_ignored():
    bound = NormBound(m=2, factor=3.0, warmup=1)
    bound.note([0, 1, 5, -1], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    assert bound.seen == 0 and bound.tau is None  # a bound of 0 would clip every model to its reference
    bound.note([1], torch.tensor([2.0]))
    assert bound.tau == pytest.approx(6.0)
    bound.forget(1)
    assert math.isnan(median_bound(bound.lengths, 4.0))


def test_a_flooding_node_cannot_raise_the_bound():
    g = _gen(2)
    m, d = 3, 8
    bound = NormBound(m=m, factor=3.0, warmup=4)
    r = torch.zeros(d)
    for _ in range(10):  # honest moves of length ~1
        bound.clip([1, 2], r + torch.nn.functional.normalize(torch.randn(2, d, generator=g), dim=-1), r)
    tau0 = bound.tau
    poison = (-9e5 * torch.ones(d) / math.sqrt(d)).repeat(500, 1)
    out, scale = bound.clip([0] * 500, poison, r)
    for _ in range(50):
        out, scale = bound.clip([0] * 40, poison[:40], r)
    assert bound.tau == pytest.approx(tau0)
    assert bool((move_lengths(out, r) <= tau0 * (1 + 1e-5)).all()) and bool((scale < 1e-4).all())


def test_a_sudden_honest_drift_is_clipped_for_a_few_rounds_only():
    # Three nodes move ~1 per round, then all at once ~50 per round in one direction (a drift).
    g = _gen(3)
    m, d = 3, 4
    bound = NormBound(m=m, factor=3.0)
    r = torch.zeros(d)
    for _ in range(20):
        bound.clip(list(range(m)), r + torch.nn.functional.normalize(torch.randn(m, d, generator=g), dim=-1), r)
    direction = torch.tensor([1.0, 0.0, 0.0, 0.0])
    clipped_rounds, moved = 0, 0.0
    for _ in range(30):
        W = r + 50.0 * direction + 0.1 * torch.randn(m, d, generator=g)
        out, scale = bound.clip(list(range(m)), W, r)
        clipped_rounds += bool((scale < 1).any())
        step = out.mean(dim=0) - r
        moved += float(step @ direction)
        r = r + step  # the full sync
    # the bound grows by up to the factor per move of every node: a round or two clipped, then none
    assert clipped_rounds <= 3, clipped_rounds
    assert moved > 0.8 * 30 * 50, moved  # most of the drift's way, in its direction


def _logreg_run(attack: bool, factor, seed=0, m=3, n=3000, flip=1500, b=5, batch=10, lr=0.5, attack_at=40):
    """Periodic averaging of m logistic regressions (one row each) on a separable stream whose labels swap at
    ``flip``; with ``attack``, node 0 sends ``-9e5 * r / |r|`` instead of its model at sync ``attack_at``.
    Returns the accuracy of the other nodes on the last 500 samples (test-then-train)."""
    g = _gen(seed)
    X = torch.randn(m, n, 3, generator=g)
    y = (X[..., 0] + X[..., 1] > 0).float()
    y[:, flip:] = 1 - y[:, flip:]
    Xb = torch.cat([X, torch.ones(m, n, 1)], dim=-1)
    W = torch.zeros(m, 4)
    r = W[0].clone()
    bound = NormBound(m=m, factor=factor)
    correct = []
    for k, t in enumerate(range(0, n, batch)):
        x, yy = Xb[:, t:t + batch], y[:, t:t + batch]
        z = torch.einsum("mbd,md->mb", x, W)
        correct.append(((z > 0).float() == yy).float().mean(dim=1))
        W = W - lr * torch.einsum("mb,mbd->md", torch.sigmoid(z) - yy, x) / batch
        if (k + 1) % b == 0:
            sent = W.clone()
            if attack and (k + 1) // b == attack_at:
                sent[0] = -9e5 * r / r.norm()
            sent, _ = bound.clip(list(range(m)), sent, r)
            r = sent.mean(dim=0)
            W = r.repeat(m, 1)
    last = torch.stack(correct[-500 // batch:])
    return float(last[:, 1:].mean())  # the honest nodes


def test_clipping_keeps_a_poisoned_periodic_average_learning_and_changes_nothing_honest():
    # (one poisoned sync, as the attack; a node that poisons every sync is silenced by the sync
    # service, CLIP_COOLDOWN: clipping alone would let it push tau / m at every sync)
    clean = _logreg_run(attack=False, factor=None)
    clean_clipped = _logreg_run(attack=False, factor=3.0)
    attacked = _logreg_run(attack=True, factor=3.0)
    bare = _logreg_run(attack=True, factor=None)
    print(f"\nhonest nodes, last 500 samples after a label swap: clean {clean:.3f}, clean with clipping "
          f"{clean_clipped:.3f}, node 0 poisoning one sync: clipped {attacked:.3f}, not clipped {bare:.3f}")
    assert abs(clean_clipped - clean) <= 0.01
    assert abs(attacked - clean) <= 0.01
    assert bare < 0.6


def test_token_bucket_rate_burst_keys_and_penalty():
    tb = TokenBucket(rate=10.0, burst=5)
    assert sum(tb.allow("a", now=0.0) for _ in range(20)) == 5
    assert tb.refused == 15
    assert sum(tb.allow("a", now=1.0) for _ in range(20)) == 5  # refilled up to the burst, not 10
    assert sum(tb.allow("a", now=1.0 + i / 8) for i in range(1, 9)) == 8  # the rate (8 tokens in 1 s at 10/s)
    assert tb.allow("b", now=1.0)  # another key has its own bucket
    tb.penalize("b", seconds=2.0, now=5.0)
    assert not any(tb.allow("b", now=5.0 + i / 10) for i in range(19))
    assert tb.allow("b", now=7.05)
    free = TokenBucket(rate=None, burst=1)
    assert all(free.allow(0, now=0.0) for _ in range(10_000)) and free.refused == 0
    free.penalize(0, 10.0, now=0.0)
    assert free.allow(0, now=0.0)


@pytest.mark.parametrize("value, match", [(0.5, "clip.*0.5"), ("x", "clip.*'x'"), (math.nan, "clip.*nan"),
                                          (math.inf, "clip.*inf"), (True, "clip.*True")])
def test_check_clip_names_the_field_and_the_value(value, match):
    with pytest.raises(ConfigError, match=match):
        check_clip(value)


def test_check_clip_and_rate_accept_none_and_numbers():
    assert check_clip(None) is None and check_clip("None") is None and check_clip("off") is None
    assert check_clip(1) == 1.0 and check_clip("4") == 4.0
    assert check_rate(None, 5) == (None, 5) and check_rate("none", "7") == (None, 7) and check_rate(2, 1.0) == (2.0, 1)
    for rate, burst, match in [(0, 5, "max_reports_per_second.*0"), ("fast", 5, "max_reports_per_second.*'fast'"),
                               (math.inf, 5, "max_reports_per_second.*inf"), (1, 0, "report_burst.*0"),
                               (1, 2.5, "report_burst.*2.5"), (1, "x", "report_burst.*'x'"),
                               (1, True, "report_burst.*True")]:
        with pytest.raises(ConfigError, match=match):
            check_rate(rate, burst)


def test_norm_bound_settings_are_checked():
    for kw, match in [({"window": 0}, "window.*0"), ({"warmup": -1}, "warmup.*-1"), ({"factor": 0.1}, "clip.*0.1")]:
        with pytest.raises(ConfigError, match=match):
            NormBound(m=2, **kw)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_clipping_on_cuda_matches_cpu():
    g = _gen(4)
    W, R = torch.randn(5, 6, generator=g) * 5, torch.randn(5, 6, generator=g)
    cpu, _ = centered_clip(W, R, 1.5)
    gpu, _ = centered_clip(W.cuda(), R.cuda(), 1.5)
    assert torch.allclose(cpu, gpu.cpu(), atol=1e-5)


def test_lockstep_clips_what_comes_up_as_the_sync_service_does():
    # The simulator's driver and the sync service clip through the same function (clip_to_references): warm the
    # bound with honest rounds, then one node's model is far: the full sync moves by at most tau / m.
    from streamlearn.sync.driver import lockstep
    from streamlearn.sync.periodic import Periodic

    m, d = 4, 5
    W0 = torch.zeros(m, d)
    runs = {}
    for factor in (4.0, None):
        p, bound = Periodic(m=m, d=d, b=1, seed=0, device="cpu", w0=W0[0]), NormBound(m, factor)
        W, R = W0.clone(), W0.clone()
        gg = _gen(5)
        for step in range(1, 12):
            W += 0.1 * torch.nn.functional.normalize(torch.randn(m, d, generator=gg), dim=-1)
            if step == 11:
                W[2] = 1e4  # far beyond every honest move
            lockstep(p, step, W, R, bound=bound)
        runs[factor] = (W.clone(), bound.clipped, bound.tau)
    (clipped_W, n_clipped, _), (bare_W, n_bare, _) = runs[4.0], runs[None]
    assert n_clipped == 1 and n_bare == 0
    assert float(clipped_W[0].norm()) < 2.0 and float(bare_W[0].norm()) > 1e3  # the average stayed near
    assert all(torch.equal(clipped_W[0], row) for row in clipped_W)  # a full sync: every node got it


def test_clip_to_references_under_a_grouping_protocol_clips_far_moves_only():
    from streamlearn.sync.groups import Grouped
    from streamlearn.sync.robust import clip_to_references
    from streamlearn.sync.spec import make_protocol

    p = make_protocol("periodic:b=1,split=2", m=4, d=3, w0=torch.zeros(3), seed=0, device="cpu")
    assert isinstance(p, Grouped)
    bound = NormBound(4, factor=1.0, warmup=0)
    bound.note([0, 1, 2, 3], torch.ones(4))  # typical move 1: tau = 1
    items = [(0, torch.tensor([10.0, 0.0, 0.0])), (1, None), (3, torch.tensor([0.5, 0.0, 0.0]))]
    out, nodes, scale = clip_to_references(bound, p, items)
    assert nodes == [0, 3] and out[1] is None
    assert out[0].tolist() == [1.0, 0.0, 0.0] and out[2] is items[2][1]  # clipped to tau; a short move untouched
    assert scale.tolist() == pytest.approx([0.1, 1.0])


@pytest.mark.parametrize("spec", ["periodic:b=1", "periodic:b=1,split=2"])
def test_clip_rows_is_clip_to_references_for_stacked_whole_models(spec):
    # The simulator's rounds clip a stacked batch (clip_rows), the sync service a list of models
    # (clip_to_references): the same bound, the same models out, bit for bit, clipped or not.
    from streamlearn.sync.robust import clip_rows, clip_to_references
    from streamlearn.sync.spec import make_protocol

    m, d = 6, 7
    p = make_protocol(spec, m=m, d=d, w0=torch.zeros(d), seed=0, device="cpu", n_params=5)
    g = _gen(7)
    if "split" in spec:  # node 4 declines twice and syncs alone: two groups with references of their own
        p.on_reports([Report(n, 1, model=torch.randn(d, generator=g)) for n in range(m)])
        p.on_declined([4]), p.on_declined([4])
        p.on_reports([Report(4, 2, model=torch.randn(d, generator=g) * 3)])
        assert len(p.references) == 2 and not torch.equal(*p.references.values())
    bounds = [NormBound(m, factor=2.0, warmup=0) for _ in range(2)]
    for b in bounds:
        b.note(list(range(m)), torch.ones(m))  # tau = 2
    for round_ in range(6):
        rows = torch.randn(m - 1, d, generator=g) * (0.5 + round_)  # moves from ~1 to far beyond tau
        nodes = [0, 1, 2, 4, 5]
        listed, _, _ = clip_to_references(bounds[0], p, [(n, r.clone()) for n, r in zip(nodes, rows)])
        stacked = clip_rows(bounds[1], p, nodes, rows.clone())
        assert torch.equal(torch.stack(listed), stacked)
        assert bounds[0].clipped == bounds[1].clipped and bounds[0].tau == bounds[1].tau
    assert bounds[0].clipped > 0  # the far rounds were clipped
