"""What one lockstep sync round costs, against the arithmetic it does.

A round of the simulator (and of the sync service, which runs the same protocol code) is the node rule over
m nodes, the reports, robust clipping, the protocol's decision and the models written back
(:func:`streamlearn.sync.driver.lockstep`). For small models its arithmetic is microseconds and the rest is
per-call overhead, which is most of a grid's time in one pass (``bench/sim_speed.py``). Here each protocol runs
``--rounds`` rounds on an m x d bank whose models move a little every step (d = 480: the CLI's MLP(32) on the
Beijing file with its scaler statistics), with clipping on as ``simulate`` has it, and is timed per round;
the baseline, timed in the same run, is the arithmetic of a full sync done directly (the mean of the m models,
written to every row and to the references). ``overhead`` = round / baseline.

Writes bench/results/sync_round.json.

    python bench/sync_round.py [--nodes 4 12 48] [--rounds 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from streamlearn.sync.driver import lockstep
from streamlearn.sync.robust import CLIP_FACTOR, NormBound
from streamlearn.sync.spec import make_protocol

# Protocols that act at every step: each round is a full sync (dynamic: Δ so small that every node violates).
SPECS = ["continuous", "dynamic:delta=0.000001", "fedavg:b=1,C=0.5", "lsgd:tau=1"]
D, P = 480, 450  # model length (parameters, then the scaler's statistics) and parameters


def time_rounds(spec: str, m: int, rounds: int) -> float:
    """Seconds per lockstep round of ``spec`` on m nodes."""
    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(D, generator=g)
    proto = make_protocol(spec, m, D, w0.clone(), seed=0, n_params=P)
    bound = NormBound(m, CLIP_FACTOR)
    W, R = w0.repeat(m, 1), w0.repeat(m, 1)
    loss, n_samples = torch.rand(m, dtype=torch.float64), torch.full((m,), 10)
    moves = torch.randn(64, m, D, generator=g) * 0.01
    for step in range(1, 50):  # warm-up: the clipping bound and the protocols' state settle
        W += moves[step % 64]
        lockstep(proto, step, W, R, loss=loss, n_samples=n_samples, bound=bound)
    t = time.perf_counter()
    for step in range(50, 50 + rounds):
        W += moves[step % 64]
        lockstep(proto, step, W, R, loss=loss, n_samples=n_samples, bound=bound)
    elapsed = time.perf_counter() - t
    t = time.perf_counter()
    for step in range(rounds):  # the moves alone, taken out of the round's time
        W += moves[step % 64]
    return (elapsed - (time.perf_counter() - t)) / rounds


def time_arithmetic(m: int, rounds: int) -> float:
    """Seconds per full sync done directly: the mean of m models written to every row and reference."""
    g = torch.Generator().manual_seed(0)
    W, R = torch.randn(m, D, generator=g), torch.empty(m, D)
    t = time.perf_counter()
    for _ in range(rounds):
        avg = W.mean(dim=0)
        W[:] = avg
        R[:] = avg
    return (time.perf_counter() - t) / rounds


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[4, 12, 48])
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "sync_round.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    print(f"{'protocol':26} {'m':>4} {'us/round':>9} {'arithmetic us':>14} {'overhead':>9}")
    for m in args.nodes:
        base = time_arithmetic(m, args.rounds)
        for spec in SPECS:
            per = time_rounds(spec, m, args.rounds)
            rows.append({"protocol": spec, "nodes": m, "d": D, "us_per_round": per * 1e6,
                         "arithmetic_us": base * 1e6, "overhead": per / base})
            print(f"{spec:26} {m:>4} {per * 1e6:>9.0f} {base * 1e6:>14.1f} {per / base:>8.0f}x", flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"benchmark": "sync_round", "threads": 1, "rounds": args.rounds, "rows": rows}, fh, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
