"""The vectorized simulator against a Python loop over m separate learners, and a grid in one pass
against its settings run one by one.

1. Both run test-then-train on the same node streams (SEA, one generator per node), the same MLP,
   the same mini-batches, no sync, no loss guard; the speed-up is loop time / simulator time, measured in this run.
   Both must end with the same models (checked, printed).
2. Grid: the Beijing air file (12 stations, one node each, the whole file, missing values imputed as
   ``simulate`` does by default), the CLI's default learner (MLP(32), scaled, lr 0.05, batch 10) and a
   12-setting grid a user would run (:data:`GRID`). The file is read once; then the 12 settings run
   one by one (``simulate``, as ``--compare`` did before) and as one pass (``simulate_grid``, as
   ``--compare`` does now). ``grid_speedup`` = separate / one pass (target >= 10); every result of
   the pass must equal its separate run (checked). The whole-file grid's wall time (read + pass) is
   reported beside it. ``grid_speedup_bound`` = separate / the bank's arithmetic alone (the same
   settings as nosync in one pass: no protocol rounds), which no one-pass grid can beat;
   ``grid_speedup_bound_tenth_of_rounds`` = separate / the same arithmetic in mini-batches ten times larger
   (the same flops, a tenth of the per-round cost): what a grid could reach with free protocol rounds and a
   tenth of the bank's per-round overhead.

Writes bench/results/sim_speed.json.

    python bench/sim_speed.py [--nodes 64] [--n 2000] [--batch-size 10] [--beijing PATH] [--no-grid]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

from streamlearn.learners import TorchLearner
from streamlearn.sim import build_node_data, simulate
from streamlearn.sim.grid import Setting, simulate_grid

BEIJING = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "beijing_air.csv.gz")
# A grid a user compares protocols with: periodic and dynamic over their ranges, FedAvg, LSGD, no sync.
GRID = ["nosync", "continuous", "periodic:b=4", "periodic:b=16", "periodic:b=64", "dynamic:delta=0.1",
        "dynamic:delta=0.3", "dynamic:delta=1", "dynamic:delta=3", "fedavg:b=4,C=0.5", "lsgd:tau=4",
        "dynamic:delta=0.3,b=4"]
# Each setting at its own best learning rate: three protocols, four rates (one bank: plain SGD).
RATES = (0.02, 0.05, 0.15, 0.5)
LR_GRID = [(spec, lr) for spec in ("nosync", "periodic:b=16", "dynamic:delta=0.3") for lr in RATES]


def loop(data, template, batch_size):
    learners = [template.clone({"features": data.feature_names, "classes": data.classes}) for _ in range(data.m)]
    correct = np.empty((data.m, data.n), dtype=bool)
    for start in range(0, data.n - data.n % batch_size, batch_size):
        for i, learner in enumerate(learners):
            Xb, yb = data.X[i, start:start + batch_size], data.y[i, start:start + batch_size]
            correct[i, start:start + batch_size] = learner.predict_many(Xb) == yb
            learner.learn_many(Xb, yb)
    return correct, torch.stack([learner.get_flat() for learner in learners])


def one_grid(data, settings: list, batch_size: int) -> dict:
    """The settings one by one, then in one pass; times, and whether every result is the same."""
    t = time.perf_counter()
    alone = [simulate(data, s.learner, s.protocol, batch_size=batch_size, seed=s.seed, progress=False)
             for s in settings]
    t_separate = time.perf_counter() - t
    t = time.perf_counter()
    grid = simulate_grid(data, settings, batch_size=batch_size, progress=False)
    t_grid = time.perf_counter() - t
    same = all(np.array_equal(a.correct, g.correct) and np.array_equal(a.losses, g.losses) and a.comm == g.comm
               and torch.equal(a.final_models, g.final_models) for a, g in zip(alone, grid))
    # The bank's arithmetic alone: the same K x m models learning in one pass with no protocol rounds. No
    # one-pass grid can be faster, so separate / this bounds grid_speedup whatever the rounds cost.
    t = time.perf_counter()
    simulate_grid(data, [Setting("nosync", s.learner, s.seed) for s in settings], batch_size=batch_size,
                  progress=False)
    t_arith = time.perf_counter() - t
    # The same samples in mini-batches ten times larger: the same flops in a tenth of the rounds, so a tenth of
    # the bank's per-round cost. Near what the arithmetic alone costs: a grid with free protocol rounds and
    # a tenth of today's per-round overhead would still take this long.
    t = time.perf_counter()
    simulate_grid(data, [Setting("nosync", s.learner, s.seed) for s in settings], batch_size=10 * batch_size,
                  progress=False)
    t_flops = time.perf_counter() - t
    return {
        "settings": [f"{s.protocol} lr={s.learner.lr}" for s in settings], "separate_seconds": t_separate,
        "grid_seconds": t_grid, "grid_speedup": t_separate / t_grid, "same_results": same,
        "bank_arithmetic_seconds": t_arith, "grid_speedup_bound": t_separate / t_arith,
        "rounds_seconds": t_grid - t_arith,
        "arithmetic_tenth_of_rounds_seconds": t_flops, "grid_speedup_bound_tenth_of_rounds": t_separate / t_flops,
        "separate_per_setting_seconds": [a.seconds for a in alone],
        "accuracy": [g.accuracy for g in grid], "transfers": [g.transfers for g in grid],
    }


def bench_grid(path: str, batch_size: int) -> dict:
    t = time.perf_counter()
    data = build_node_data(f"csv:{path}", None, split="key:station", source_params={"label": "pm25_high"},
                           missing="impute")
    t_read = time.perf_counter() - t
    learner = TorchLearner("mlp", hidden=(32,), lr=0.05, scale=True, seed=0)
    simulate(data, learner, "nosync", batch_size=batch_size, progress=False)  # warm-up
    protocols = one_grid(data, [Setting(spec, learner, 0) for spec in GRID], batch_size)
    rates = one_grid(data, [Setting(spec, learner.clone({"lr": lr}), 0) for spec, lr in LR_GRID], batch_size)
    return {
        "source": os.path.basename(path), "nodes": data.m, "samples_per_node": data.n, "batch_size": batch_size,
        "learner": "mlp(32), scale, lr 0.05 (the CLI's default)", "read_seconds": t_read,
        "grid_speedup": protocols["grid_speedup"], "whole_file_grid_wall_seconds": t_read + protocols["grid_seconds"],
        "protocols": protocols, "rates": rates,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=64)
    ap.add_argument("--n", type=int, default=2000, help="samples per node")
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--beijing", default=os.path.normpath(BEIJING), help="path of beijing_air.csv.gz")
    ap.add_argument("--no-grid", action="store_true", help="skip the grid measurement")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "sim_speed.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = build_node_data("sea", args.nodes, n=args.n, seed=0)
    rows = []
    for arch, scale in (("logreg", True), ("mlp", True)):
        template = TorchLearner(arch, hidden=(32,), lr=0.05, scale=scale, seed=0, device="cpu")
        # the loop's learners have no loss guard: the simulator's nodes neither, the same work
        simulate(data, template, "nosync", batch_size=args.batch_size, progress=False, loss_guard=False)  # warm-up
        t = time.perf_counter()
        res = simulate(data, template, "nosync", batch_size=args.batch_size, progress=False, loss_guard=False)
        t_sim = time.perf_counter() - t
        t = time.perf_counter()
        correct, models = loop(data, template, args.batch_size)
        t_loop = time.perf_counter() - t
        n = res.n
        same_predictions = bool(np.array_equal(correct[:, :n], res.correct))
        max_diff = float((models.cpu() - res.final_models).abs().max())
        rows.append({
            "learner": arch, "nodes": args.nodes, "samples_per_node": n, "batch_size": args.batch_size,
            "loop_seconds": t_loop, "simulator_seconds": t_sim, "speedup": t_loop / t_sim,
            "loop_samples_per_s": args.nodes * n / t_loop, "simulator_samples_per_s": args.nodes * n / t_sim,
            "same_predictions": same_predictions, "max_abs_model_difference": max_diff,
            "same_models": max_diff < 1e-4,
        })
    print(f"{'learner':8} {'nodes':>5} {'loop s':>8} {'sim s':>8} {'speed-up':>9} {'same preds':>10} {'max |dw|':>9}")
    for r in rows:
        print(f"{r['learner']:8} {r['nodes']:>5} {r['loop_seconds']:>8.2f} {r['simulator_seconds']:>8.2f} "
              f"{r['speedup']:>8.1f}x {str(r['same_predictions']):>10} {r['max_abs_model_difference']:>9.1e}")
    print("target: speed-up >= 10x;", "met" if all(r["speedup"] >= 10 for r in rows) else "MISSED")
    out = {"benchmark": "sim_speed", "threads": args.threads, "rows": rows}
    if not args.no_grid:
        g = bench_grid(args.beijing, args.batch_size)
        out["grid"] = g
        out["grid_speedup"] = g["grid_speedup"]
        for name, r in (("12 protocol settings", g["protocols"]), ("3 protocols x 4 learning rates", g["rates"])):
            print(f"grid of {name}, {g['nodes']} nodes x {g['samples_per_node']} samples, batch {g['batch_size']}: "
                  f"separate {r['separate_seconds']:.1f} s, one pass {r['grid_seconds']:.1f} s, speed-up "
                  f"{r['grid_speedup']:.1f}x (target >= 10x: {'met' if r['grid_speedup'] >= 10 else 'MISSED'}), "
                  f"same results {r['same_results']}")
            print(f"  of the one pass, the bank's arithmetic (every setting as nosync) {r['bank_arithmetic_seconds']:.1f} s, "
                  f"protocol rounds {r['rounds_seconds']:.1f} s: no one-pass grid beats "
                  f"separate / arithmetic = {r['grid_speedup_bound']:.1f}x here")
            print(f"  the same arithmetic in a tenth of the rounds (mini-batches of {10 * g['batch_size']}): "
                  f"{r['arithmetic_tenth_of_rounds_seconds']:.1f} s; with free protocol rounds and a tenth of the "
                  f"bank's per-round cost a grid could reach {r['grid_speedup_bound_tenth_of_rounds']:.1f}x")
        print(f"whole file, 12 protocol settings: read {g['read_seconds']:.1f} s + one pass "
              f"{g['protocols']['grid_seconds']:.1f} s = {g['whole_file_grid_wall_seconds']:.1f} s")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
