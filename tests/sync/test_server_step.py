"""The server step and the codec as protocol settings, checked over every protocol that averages."""

from __future__ import annotations

import pytest
import torch

from streamlearn.errors import ConfigError
from streamlearn.sync import SendModel, make_protocol
from streamlearn.sync.aggregate import server_step
from streamlearn.sync.codec import Uplink, message_bytes
from streamlearn.sync.driver import lockstep
from streamlearn.sync.protocol import SYNC_PARAMS

M, D, P = 6, 5, 4  # the last entry is a buffer (like an online scaler's statistic)
W0 = torch.linspace(-1.0, 1.0, D)
AVERAGING = {
    "continuous": ("continuous", {}),
    "periodic": ("periodic", {"b": 2}),
    "fedavg": ("fedavg", {"b": 2, "C": 1.0}),
    "dynamic": ("dynamic", {"delta": 0.01, "b": 1}),
}


def walk(protocol, rounds=12, seed=0, uplink=None):
    """Nodes step apart at random; returns node models W, references R and every action."""
    gen = torch.Generator().manual_seed(seed)
    W, R = W0.repeat(M, 1), W0.repeat(M, 1)
    actions = []
    for t in range(1, rounds + 1):
        W += 0.05 + 0.1 * torch.randn(M, D, generator=gen)
        actions += lockstep(protocol, t, W, R, loss=torch.rand(M, generator=gen),
                            n_samples=torch.full((M,), 10), uplink=uplink)
    return W, R, actions


@pytest.fixture(params=list(AVERAGING))
def make(request):
    name, params = AVERAGING[request.param]
    return lambda **kw: make_protocol(name, M, D, w0=W0, seed=0, device="cpu", n_params=P, **{**params, **kw})


def test_every_averaging_protocol_takes_the_sync_settings(make):
    p = make(server_lr=2.0, server_momentum=0.5, codec="sign")
    assert set(SYNC_PARAMS) <= set(type(p).params)
    assert p.clone().server_lr == 2.0 and p.clone().codec == p.codec


def test_server_lr_1_is_todays_averaging_bit_for_bit(make):
    _, _, plain = walk(make())
    _, _, same = walk(make(server_lr=1.0, server_momentum=0.0, codec="fp32"))
    sends = [(a.nodes, a.model) for a in plain if isinstance(a, SendModel)]
    assert sends and len(sends) == len([a for a in same if isinstance(a, SendModel)])
    for (nodes, model), b in zip(sends, [a for a in same if isinstance(a, SendModel)]):
        assert nodes == b.nodes and torch.equal(model, b.model)


def test_a_full_sync_steps_from_the_reference_by_server_lr_buffers_take_the_mean(make):
    p = make(server_lr=3.0)
    plain = make()
    W, R, actions = walk(p, rounds=2)
    W2, R2, plain_actions = walk(plain, rounds=2)
    full = [a for a in actions if isinstance(a, SendModel) and a.reference]
    mean = [a for a in plain_actions if isinstance(a, SendModel) and a.reference]
    assert full and mean
    # the first full sync of both runs saw the same models: r + 3 (mean - r) on the parameters
    expect = W0.clone()
    expect[:P] = W0[:P] + 3.0 * (mean[0].model[:P] - W0[:P])
    expect[P:] = mean[0].model[P:]
    assert torch.allclose(full[0].model, expect, atol=1e-6)


def test_dynamic_partial_syncs_keep_the_global_mean_with_a_server_step():
    p = make_protocol("dynamic", 8, D, w0=W0, seed=0, device="cpu", n_params=P, delta=0.05, b=1, server_lr=2.0)
    gen = torch.Generator().manual_seed(3)
    W, R = W0.repeat(8, 1), W0.repeat(8, 1)
    partial = 0
    for t in range(1, 40):
        step = torch.zeros(8, D)
        step[t % 8] = 0.4 * torch.randn(D, generator=gen)  # one node at a time moves: balancing suffices
        W += step
        before = W.mean(0).clone()
        actions = lockstep(p, t, W, R)
        if any(isinstance(a, SendModel) and not a.reference for a in actions) and \
                not any(isinstance(a, SendModel) and a.reference for a in actions):
            partial += 1
            assert torch.allclose(W.mean(0), before, atol=1e-5)
    assert partial > 0


def test_momentum_state_survives_get_and_set_arrays(make):
    p = make(server_momentum=0.9, codec="int8")
    walk(p)
    arrays = p.get_arrays()
    assert set(arrays) == {"server_velocity", "downlink_memory"}
    q = make(server_momentum=0.9, codec="int8")
    q.set_arrays(arrays)
    assert torch.equal(q.get_arrays()["server_velocity"], arrays["server_velocity"])
    with pytest.raises(ConfigError, match="server_velocity"):
        q.set_arrays({"server_velocity": torch.zeros(P + 1)})


def test_compressed_syncs_leave_every_node_on_the_coordinators_reference(make):
    p = make(codec="sign")
    up = Uplink(p.codec, M, D, P)
    W, R, actions = walk(p, uplink=up)
    full = [a for a in actions if isinstance(a, SendModel) and a.reference]
    assert full and all(a.compressed is not None for a in full)
    assert torch.equal(R[0], p.reference) and all(torch.equal(R[i], R[0]) for i in range(M))
    # bytes: every model crossed the wire as a compressed message
    s = p.stats
    assert s.bytes_up == s.models_up * message_bytes(p.codec, D, P)
    assert s.bytes_down == s.models_down * message_bytes(p.codec, D, P)


@pytest.mark.parametrize("bad", [{"server_lr": 0}, {"server_lr": -1}, {"server_momentum": 1.0}, {"codec": "zip"}])
def test_bad_sync_settings_name_the_field(make, bad):
    with pytest.raises(ConfigError, match=next(iter(bad))):
        make(**bad)


def test_server_step_is_a_pure_function_of_its_inputs():
    r, mean = torch.zeros(3), torch.ones(3)
    model, v = server_step(r, mean, lr=0.5, momentum=0.5, velocity=None, n_params=3)
    assert model.tolist() == [0.5, 0.5, 0.5] and v.tolist() == [1.0, 1.0, 1.0]
    model, v = server_step(r, mean, lr=0.5, momentum=0.5, velocity=v, n_params=3)
    assert model.tolist() == [0.75, 0.75, 0.75]  # v = 0.5 * 1 + 1


def test_buffers_every_k_th_message_and_full_sync_only(make):
    p = make(codec="sign", buffers_every=3)
    up = Uplink(p.codec, M, D, P, buffers_every=3)
    W, R, actions = walk(p, rounds=12, uplink=up)
    full = [a for a in actions if isinstance(a, SendModel) and a.reference]
    assert [a.model.numel() for a in full[:4]] == [D, P, P, D]  # nodes keep their own buffers in between
    lean, whole = message_bytes(p.codec, D, P, buffers=False), message_bytes(p.codec, D, P)
    sent = up.sends.tolist()
    expect_up = sum(whole if i % 3 == 0 else lean for n in sent for i in range(n))
    assert p.stats.bytes_up == expect_up and p.stats.models_up == sum(sent)
    with pytest.raises(ConfigError, match="buffers_every"):
        make(buffers_every=2)  # fp32 sends whole models
