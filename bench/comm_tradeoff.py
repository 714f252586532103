"""Communication against accuracy: dynamic averaging vs periodic averaging, on the same node streams.

For each stream (m nodes, an MLP, SGD, mini-batches of 10), every periodic setting b in
{1, 2, 4, 8, 16, 32} and every dynamic setting of a Δ grid (its condition checked every b in {1, 2, 4}
steps) runs on exactly the same samples, with nosync and serial (one learner on the whole stream) as
reference rows. Reported per stream: accuracy, cumulative loss, model transfers, bytes; the
matched-accuracy ratio (cheapest periodic and cheapest dynamic setting within 0.5 points of the best
periodic accuracy: periodic transfers / dynamic transfers, target >= 10, the paper's order of
magnitude); the nosync gap; and the samples until accuracy recovers after each injected drift.
Writes bench/results/comm_tradeoff.json.

    python bench/comm_tradeoff.py [--nodes 16] [--n 8000] [--streams sea,rbf,hyperplane,elec2,sea-subset]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from streamlearn.learners import TorchLearner
from streamlearn.sim import build_node_data, matched_accuracy
from streamlearn.sim.grid import Setting, simulate_grid
from streamlearn.sim.run import result_row, serial_baseline

# name -> (source, source params, drifts, schedule, what regime it stands for)
STREAMS = {
    "sea": ("sea", {"noise": 0.2}, ["sudden@2000", "sudden@4000", "sudden@6000"], "all",
            "SEA, 20% label noise, sudden drifts at every node"),
    "rbf": ("rbf", {"change_speed": 0.0005}, ["gradual@4000:width=1000"], "all",
            "RandomRBFDrift, moving centroids plus a gradual concept change at every node"),
    "hyperplane": ("hyperplane", {"n_features": 20, "mag_change": 0.001}, ["incremental@4000:width=2000"], "all",
                   "Hyperplane, 20 features, incremental drift at every node"),
    "hyperplane-sep": ("hyperplane", {"n_features": 50, "noise_percentage": 0.0, "sigma": 0.0, "mag_change": 0.0},
                       ["sudden@4000"], "all", "Hyperplane, 50 features, separable (no noise), a new plane at every node"),
    "agrawal": ("agrawal", {"perturbation": 0.05}, ["sudden@4000"], "all",
                "Agrawal, near-separable rules that converge, a sudden rule change at every node"),
    "elec2": ("elec2", {}, [], "all", "Elec2 (real drift), split round-robin"),
    "sea-subset": ("sea", {"noise": 0.0}, ["label-permutation@4000"], "subset:0,1,2,3",
                   "SEA near-separable (no noise), labels permuted at 4 of the nodes only"),
}
PERIODIC = [1, 2, 4, 8, 16, 32]
DELTAS = [0.03, 0.1, 0.3, 1.0, 3.0]
DYNAMIC_B = [1, 2, 4]  # dynamic checks its local condition every b steps, as periodic syncs every b


def run_stream(key, args):
    source, params, drifts, schedule, regime = STREAMS[key]
    n = None if source == "elec2" else args.n
    t0 = time.perf_counter()
    data = build_node_data(source, args.nodes, drifts, schedule=schedule, n=n, seed=args.seed, source_params=params)
    learner = TorchLearner("mlp", hidden=(32,), lr=args.lr, scale=True, seed=args.seed)
    specs = ["nosync"] + [f"periodic:b={b}" for b in PERIODIC] + \
        [f"dynamic:delta={d},b={b}" for b in DYNAMIC_B for d in DELTAS]
    rows = []
    # every setting in one pass (one model bank; each result equals its run alone)
    results = simulate_grid(data, [Setting(spec, learner, args.seed) for spec in specs], batch_size=args.batch_size,
                            progress=False, loss_guard=not args.no_loss_guard)
    for spec, res in zip(specs, results):
        row = result_row(res, window=args.window)
        rows.append(row)
        print(f"  {key:14} {spec:24} acc {row['accuracy']:.4f}  loss {row['cumulative_loss']:9.1f}  "
              f"transfers {row['transfers']:6d}", flush=True)
    rows.append(serial_baseline(data, learner, args.batch_size, args.window, loss_guard=not args.no_loss_guard))
    matched = matched_accuracy(rows)
    nosync = rows[0]["accuracy"]
    return {
        "stream": key, "regime": regime, "source": source, "source_params": params, "drifts": drifts,
        "schedule": schedule, "nodes": args.nodes, "n_per_node": data.n, "d": rows[0]["d"],
        "events": [ev.to_dict() for ev in data.events], "rows": rows, "matched_accuracy": matched,
        "nosync_gap_points": 100 * (matched["best_periodic_accuracy"] - nosync),
        "seconds": time.perf_counter() - t0,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=16)
    ap.add_argument("--n", type=int, default=8000, help="samples per node (generators)")
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--lr", type=float, default=0.5)
    ap.add_argument("--window", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-loss-guard", action="store_true",
                    help="nodes and the serial learner without the loss guard (default: guarded, as nodes are)")
    ap.add_argument("--streams", default=",".join(STREAMS))
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "comm_tradeoff.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = []
    for key in args.streams.split(","):
        print(f"{key}: {STREAMS[key][4]}", flush=True)
        results.append(run_stream(key, args))

    print()
    print(f"{args.nodes} nodes, MLP(32) SGD lr={args.lr}, batch {args.batch_size}; "
          f"ratio = periodic transfers / dynamic transfers at matched accuracy (target >= 10)")
    head = f"{'stream':14} {'nosync gap':>10} {'best periodic':>13} {'periodic (transfers)':>28} " \
           f"{'dynamic (transfers)':>32} {'ratio':>7} {'acc gap':>8}"
    print(head)
    print("-" * len(head))
    for r in results:
        m = r["matched_accuracy"]
        per = f"{m['periodic']} ({m['periodic_transfers']})"
        dyn = "none within 0.5 pts" if m["dynamic"] is None else f"{m['dynamic']} ({m['dynamic_transfers']})"
        ratio = "-" if m["ratio"] is None else f"{m['ratio']:.2f}"
        gap = "-" if m["accuracy_gap"] is None else f"{100 * m['accuracy_gap']:+.2f}"
        print(f"{r['stream']:14} {r['nosync_gap_points']:>9.2f}p {m['best_periodic_accuracy']:>13.4f} {per:>28} "
              f"{dyn:>32} {ratio:>7} {gap:>8}")
    print()
    print("recovery after drifts: samples per node until accuracy is within 2 points of its pre-drift level "
          "(125 = at once), and the largest drop below that level")
    for r in results:
        for row in r["rows"]:
            rec = row.get("recovery") or []
            if rec:
                cells = ", ".join(("never" if x["samples"] is None else str(x["samples"]))
                                  + f" (drop {100 * x['drop']:.1f}p)" for x in rec)
                print(f"  {r['stream']:14} {row['protocol']:24} {cells}")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"benchmark": "comm_tradeoff", "settings": vars(args), "streams": results}, fh, indent=2,
                  default=float)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
