"""The vectorized simulator against a Python loop over m separate learners doing the same work.

Both run test-then-train on the same node streams (SEA, one generator per node), the same MLP,
the same mini-batches, no sync; the speed-up is loop time / simulator time, measured in this run.
Both must end with the same models (checked, printed). Writes bench/results/sim_speed.json.

    python bench/sim_speed.py [--nodes 64] [--n 2000] [--batch-size 10]
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


def loop(data, template, batch_size):
    learners = [template.clone({"features": data.feature_names, "classes": data.classes}) for _ in range(data.m)]
    correct = np.empty((data.m, data.n), dtype=bool)
    for start in range(0, data.n - data.n % batch_size, batch_size):
        for i, learner in enumerate(learners):
            Xb, yb = data.X[i, start:start + batch_size], data.y[i, start:start + batch_size]
            correct[i, start:start + batch_size] = learner.predict_many(Xb) == yb
            learner.learn_many(Xb, yb)
    return correct, torch.stack([learner.get_flat() for learner in learners])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=64)
    ap.add_argument("--n", type=int, default=2000, help="samples per node")
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "sim_speed.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = build_node_data("sea", args.nodes, n=args.n, seed=0)
    rows = []
    for arch, scale in (("logreg", True), ("mlp", True)):
        template = TorchLearner(arch, hidden=(32,), lr=0.05, scale=scale, seed=0, device="cpu")
        simulate(data, template, "nosync", batch_size=args.batch_size, progress=False)  # warm-up
        t = time.perf_counter()
        res = simulate(data, template, "nosync", batch_size=args.batch_size, progress=False)
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
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"benchmark": "sim_speed", "threads": args.threads, "rows": rows}, fh, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
