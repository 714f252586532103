"""Dynamic averaging against an extrapolated reference: the movement all nodes share does not fire."""

from __future__ import annotations

import pytest
import torch

from streamlearn.errors import ConfigError
from streamlearn.sync import SendModel, make_protocol
from streamlearn.sync.driver import ReferenceMotion, lockstep

M, D = 8, 6


def run(extrapolate: int, rounds: int = 200, shared: float = 0.05, noise: float = 0.01):
    """Every node moves by the same ``shared`` step per round plus its own noise."""
    p = make_protocol("dynamic", M, D, w0=torch.zeros(D), seed=0, device="cpu", delta=0.05, b=1,
                      extrapolate=extrapolate)
    motion = ReferenceMotion(M, D) if extrapolate else None
    gen = torch.Generator().manual_seed(0)
    W, R = torch.zeros(M, D), torch.zeros(M, D)
    for t in range(1, rounds + 1):
        W += shared + noise * torch.randn(M, D, generator=gen)
        lockstep(p, t, W, R, motion=motion)
    return p, W, R, motion


def test_a_shared_steady_movement_fires_far_less_with_extrapolation():
    plain, *_ = run(0)
    extra, W, R, motion = run(1)
    assert extra.stats.models < plain.stats.models / 3
    # nodes and coordinator agree on the extrapolated reference after the last full sync
    assert torch.allclose(motion.V[0], extra.get_arrays()["reference_velocity"], atol=1e-6)


def test_without_shared_movement_it_changes_nothing_much():
    plain, *_ = run(0, shared=0.0, noise=0.05)
    extra, *_ = run(1, shared=0.0, noise=0.05)
    assert 0.5 * plain.stats.models <= extra.stats.models <= 2 * plain.stats.models


def test_the_velocity_follows_full_syncs_only():
    motion = ReferenceMotion(2, 3)
    motion.on_reference([0, 1], torch.zeros(2, 3), torch.tensor([2.0, 0.0, -2.0]), step=4)
    assert motion.V.tolist() == [[0.5, 0.0, -0.5]] * 2
    assert motion.reference([1], torch.tensor([[2.0, 0.0, -2.0]]), 6).tolist() == [[3.0, 0.0, -3.0]]


def test_extrapolate_is_0_or_1_and_survives_a_restart():
    with pytest.raises(ConfigError, match="extrapolate"):
        make_protocol("dynamic:extrapolate=2", M, D, device="cpu")
    p, *_ = run(1, rounds=50)
    q = make_protocol("dynamic", M, D, w0=p.reference, seed=0, device="cpu", delta=0.05, b=1, extrapolate=1)
    q.set_state(p.get_state())
    q.set_arrays(p.get_arrays())
    assert torch.equal(q.reference_now(), p.reference_now())
    assert not any(isinstance(a, SendModel) for a in q.on_reports([]))
