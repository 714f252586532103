"""Guarded averaging in the node service (issue 12, point 1): the rule of :mod:`streamlearn.sync.guard`.

Against the real Tansu broker of conftest.py: three nodes on a near-separable stream under
``periodic:b=2``; node 2's labels are flipped from the start (a concept of its own). With
``guard=200`` node 2 declines most syncs and keeps its accuracy; without the guard the average
of the others drags it down. The sync service counts the ``decline`` records the nodes send.
(Nodes 0 and 1 decline the average too at the default margin: see MARGIN.)

Without a broker: the configuration's validation, the options plumbing, the guard's window (a ring), and
the check itself (:class:`streamlearn.node.GuardWindow`: both ways of evaluating the window agree; its cost
is printed).
"""

from __future__ import annotations

import numpy as np
import pytest

from streamlearn.errors import ConfigError
from streamlearn.kafka.node import NodeConfig, node_config_from_options
from streamlearn.kafka.topics import sync_up_topic
from streamlearn.kafka.wire import decode_sync
from streamlearn.node import GuardWindow

from sync_wire_helpers import read_all
from test_kafka_pipeline import Pipeline, encode, make_data, publish

N, BATCH, SPEC = 2000, 10, "periodic:b=2"
# The default margin (0.05 nats). Nodes 0 and 1 decline the average too, here: it has their decision
# boundary but node 2's opposite model shrinks it to about a third of their weights' length, so it is
# less confident and its window loss is ~0.14 nats above theirs (0.22 against 0.08; node 2's gap: ~1.9).
# With a margin above that gap (0.3, 0.5) a node that once accepts the average is dragged by it and
# keeps accepting (its own model is then as bad): node 2 at 0.5 ends at 0.52, node 1 at 0.3 at 0.82.
# Not averaging a node that keeps declining is issue 12's point 2 (groups).
MARGIN = 0.05


def up_kinds(settings, prefix) -> list:
    """The kinds of every record on ``<prefix>.sync.up`` so far."""
    return [decode_sync(rec.value).kind for rec in read_all(settings, sync_up_topic(prefix))]


def run(broker, settings, prefix, guard, margin=MARGIN, spec=SPEC, m=3, flipped=(2,), n=N, seed=20, seconds=5.0,
        timeout=60.0) -> dict:
    """m nodes learn n samples each, the ``flipped`` ones with flipped labels; their statuses, the sync's, the up kinds."""
    with Pipeline(broker, settings, prefix, spec=spec, timeout=3.0) as p:
        p.start_sync()
        for node in range(m):
            p.start_node(node, batch_size=BATCH, detector=None, guard=guard, guard_margin=margin)
        p.wait(lambda r: r.sync and r.sync.get("nodes_alive") == m, what=f"{m} joins")
        streams = {}
        for node in range(m):
            X, y = make_data(n, seed=seed + node, flip_at=0 if node in flipped else None)
            streams[node] = encode(X, y, 0, "batch", BATCH)
        publish(settings, prefix, streams, seconds=seconds)

        def settled(r):
            return (r.sync and all(r.nodes.get(i, {}).get("samples") == n for i in range(m))
                    and not any(r.nodes[i]["awaiting_sync"] for i in range(m)) and not r.sync["pending"]
                    and r.sync.get("declines") == sum(r.nodes[i]["declines"] for i in range(m)))

        p.wait(settled, timeout=timeout, what="the streams learned and the declines counted")
        nodes = {i: dict(p.status.nodes[i]) for i in range(m)}
        sync = dict(p.status.sync)
        # A node that leaves can end a round for the others, whose guards may decline that sync too: the
        # declines on sync.up are compared with the nodes' last statuses, published as they stop.
        for svc in list(p.nodes.values()):
            p.stop(svc)
        p.wait(lambda r: all(r.nodes[i].get("state") == "stopped" for i in range(m)), what="the nodes' last statuses")
        final_declines = sum(p.status.nodes[i]["declines"] for i in range(m))
    return {"nodes": nodes, "sync": sync, "up": up_kinds(settings, prefix), "final_declines": final_declines}


def test_a_guarded_node_with_its_own_concept_declines_the_average_and_keeps_its_accuracy(broker, settings, prefix):
    guarded = run(broker, settings, f"{prefix}.g", guard=200)
    plain = run(broker, settings, f"{prefix}.u", guard=None)
    g, u = guarded["nodes"], plain["nodes"]
    declines = {n: g[n]["declines"] for n in range(3)}
    checks = {n: g[n]["guard_checks"] for n in range(3)}
    print(f"\nnode 2 accuracy: guarded {g[2]['accuracy']:.3f} (rolling {g[2]['rolling_accuracy']:.3f}), "
          f"plain {u[2]['accuracy']:.3f} (rolling {u[2]['rolling_accuracy']:.3f})")
    print(f"nodes 0, 1 accuracy: guarded {g[0]['accuracy']:.3f}, {g[1]['accuracy']:.3f}; "
          f"plain {u[0]['accuracy']:.3f}, {u[1]['accuracy']:.3f}")
    print(f"declines {declines} of checks {checks}; sync service declines {guarded['sync']['declines']}, "
          f"full syncs {guarded['sync']['full_syncs']}")
    print("last check, window loss [arriving, own]: " + ", ".join(f"node {n} {g[n]['guard_losses']}" for n in range(3)))
    print("guard check (two forwards of a 200-sample window): "
          + ", ".join(f"node {n} {g[n]['guard_check_us']:.0f} us" for n in range(3)))
    assert g[2]["accuracy"] > 0.9, g[2]
    assert u[2]["accuracy"] < g[2]["accuracy"] - 0.1, (u[2]["accuracy"], g[2]["accuracy"])
    assert checks[2] > 10 and declines[2] > checks[2] / 2  # most syncs declined
    # Nodes 0 and 1 decline as well (see MARGIN): learning alone, they do better than with the dragged average.
    assert all(g[n]["accuracy"] >= u[n]["accuracy"] - 0.02 for n in (0, 1)), (g, u)
    assert guarded["sync"]["declines"] == sum(declines.values()) > 0
    assert guarded["up"].count("decline") == guarded["final_declines"] >= sum(declines.values())
    assert all(g[n]["guard"] == 200 for n in range(3))
    # without the guard: nothing checked, nothing declined, no decline on the wire
    assert all(u[n]["declines"] == 0 and u[n]["guard_checks"] == 0 and u[n]["guard"] is None for n in range(3))
    assert plain["sync"]["declines"] == 0 and "decline" not in plain["up"]


def test_guard_settings_are_validated_at_config_time():
    base = dict(node=0, features=("a", "b"), classes=(0, 1))
    assert NodeConfig(**base).guard is None
    cfg = NodeConfig(**base, guard=200, guard_margin=0)
    assert (cfg.guard, cfg.guard_margin) == (200, 0.0)
    for kw, match in [({"guard": 5}, "guard: .*got 5"), ({"guard": 200.0}, "guard: .*got 200.0"),
                      ({"guard": True}, "guard: .*got True"), ({"guard": 200, "guard_margin": -0.1}, "guard_margin.*-0.1"),
                      ({"guard_margin": float("nan")}, "guard_margin.*nan"), ({"guard_margin": "x"}, "guard_margin.*'x'")]:
        with pytest.raises(ConfigError, match=match):
            NodeConfig(**base, **kw)
    opts = {"id": 1, "features": "a,b", "classes": "0,1"}
    cfg = node_config_from_options({**opts, "guard": "300", "guard-margin": "0.2"})
    assert (cfg.guard, cfg.guard_margin) == (300, 0.2)
    assert node_config_from_options({**opts, "guard": "none"}).guard is None
    with pytest.raises(ConfigError, match="guard"):
        node_config_from_options({**opts, "guard": "lots"})


@pytest.mark.parametrize("G", [10, 37])
def test_the_guard_window_holds_the_last_learned_samples(G):
    rng = np.random.default_rng(G)
    ring = GuardWindow(G, classes=[0, 1, 2])
    X = rng.normal(size=(500, 2)).astype(np.float32)
    y = rng.integers(0, 3, 500)
    at = 0
    for n in rng.integers(1, 2 * G, 60):
        n = int(min(n, 500 - at))
        if not n:
            break
        ring.remember(X[at:at + n], y[at:at + n])
        at += n
        k = min(at, G)
        assert ring.n == k
        got = sorted(map(tuple, np.column_stack([ring.X[:k], ring.y[:k]]).tolist()))
        want = sorted(map(tuple, np.column_stack([X[at - k:at], y[at - k:at]]).tolist()))
        assert got == want


def _trained_window(learner_params: dict, G: int = 200, margin: float = 0.05):
    """A learner trained on 500 samples and a guard window holding the next G (no Kafka)."""
    from streamlearn.learners import make_learner

    learner = make_learner("logreg", features=["a", "b", "c"], classes=[0, 1], seed=0, device="cpu",
                           **learner_params)
    X, y = make_data(G + 500, seed=3)
    for i in range(0, 500, 10):
        learner.learn_many(X[i:i + 10], y[i:i + 10])
    window = GuardWindow(G, classes=[0, 1], margin=margin)
    window.remember(X[500:], y[500:])
    return learner, window


@pytest.mark.parametrize("params", [{"lr": 0.5}, {"lr": 0.5, "scale": True}], ids=["functional", "set_flat"])
def test_the_guard_check_takes_the_better_model_and_leaves_the_learner_as_it_was(params):
    import time

    import torch

    learner, window = _trained_window(params)
    own = learner.get_flat()
    p = learner.n_params
    opposite = own.clone()
    opposite[:p] = -own[:p]
    assert window.takes(learner, own.clone())  # the same model: not worse
    assert not window.takes(learner, opposite)  # the opposite concept: far worse
    assert torch.equal(learner.get_flat(), own)  # its own model (and scaler) back
    loss_in, loss_own = window.last_losses
    assert loss_in > loss_own + 1.0
    # the same probabilities as the learner's own predictions
    P = learner.predict_proba_many(window.X)
    p_own = window.p_true(learner, [own])[0].numpy()
    np.testing.assert_allclose(p_own, P[np.arange(len(P)), window.y], rtol=1e-5, atol=1e-6)
    runs = 200
    t0 = time.perf_counter()
    for _ in range(runs):
        window.takes(learner, opposite)
    us = (time.perf_counter() - t0) / runs * 1e6
    print(f"\nguard check, logreg, 200-sample window, {params}: {us:.0f} us per sync "
          f"(last one measured inside: {window.last_us:.0f} us)")
