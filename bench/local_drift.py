"""When one node's world changes: averaging with and without the guard, against learning alone.

Streams: SEA (separable) with labels permuted at 4 of 16 nodes; Beijing air (12 stations, learning
every reading) with the labels of 3 stations inverted from reading 2,000 on; and a global drift of
SEA (every node) as the control. Each protocol runs plain, with guarded averaging (``guard=(200, 0.05)``),
and guarded with groups (``split=3``: nodes that keep declining are averaged apart, streamlearn.sync.groups),
at each learning rate of ``--lrs`` (best by accuracy, seed 0), beside no sync. Reported per stream, in points:

- ``worst_node_vs_nosync``: min over the drifted nodes of (accuracy after the drift - the same node's
  without sync), target >= -1;
- ``undrifted_vs_best_periodic``: the other nodes' accuracy after the drift against the best unguarded
  periodic averaging's, target >= -0.5;
- on the control, guarded (and grouped) against plain accuracy (target >= -0.5) and bytes (target <= 1.2x);
- ``recovery_samples``: mean over the drifted nodes of the samples after the drift until the node's accuracy
  over the last 500 samples first reaches its post-drift accuracy without sync minus 2 points (None: never);
- declines, group changes, and the cost of the guard's check per sync (one batched forward of the window, twice).

Writes bench/results/local_drift.json.

    python bench/local_drift.py [--streams sea-local,beijing-local,sea-global] [--lrs 0.15,0.5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch

from streamlearn.learners import TorchLearner
from streamlearn.sim import build_node_data, simulate
from streamlearn.sim.simulator import NodeData

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
GUARD = (200, 0.05)
PROTOCOLS = ["periodic:b=1", "periodic:b=8", "dynamic:delta=0.3"]
SPLIT = 3  # groups: a node that declined 3 of the last 6 models sent to it leaves its group
VARIANTS = {"": None, " guarded": GUARD, " grouped": GUARD}  # row suffix -> guard; grouped adds split


def sea_local(args):
    data = build_node_data("sea", 16, ["label-permutation@4000"], schedule="subset:0,1,2,3", n=8000, seed=0,
                           source_params={"noise": 0.0})
    return data, [0, 1, 2, 3], 4000, 10


def sea_global(args):
    data = build_node_data("sea", 16, ["label-permutation@4000"], n=8000, seed=0, source_params={"noise": 0.0})
    return data, list(range(16)), 4000, 10


def beijing_local(args):
    from sync_value import beijing

    data = beijing(0, argparse.Namespace(beijing=args.beijing, beijing_n=4380))
    drifted, at = [2, 5, 9], 2000
    y = data.y.copy()
    y[drifted, at:] = 1 - y[drifted, at:]  # the station's sensor reports inverted from then on
    return NodeData(X=data.X, y=y, classes=data.classes, feature_names=data.feature_names), drifted, at, 1


STREAMS = {"sea-local": sea_local, "beijing-local": beijing_local, "sea-global": sea_global}


def run(data, spec, lr, batch, guard, loss_guard=True):
    learner = TorchLearner("mlp", hidden=(32,), lr=lr, scale=True, seed=0)
    return simulate(data, learner, spec, batch_size=batch, progress=False, guard=guard, loss_guard=loss_guard)


def recovery(res, drifted, at, alone_post, window: int = 500):
    """Mean over the drifted nodes of the samples after ``at`` until their accuracy over the last ``window``
    samples first reaches their post-drift accuracy without sync (``alone_post``) minus 2 points; None when
    a node never gets there."""
    if alone_post is None:
        alone_post = res.correct[:, at:].mean(axis=1)
    roll = res.rolling_accuracy(window)
    out = []
    for i in drifted:
        hit = np.flatnonzero(roll[i, at + window:] >= alone_post[i] - 0.02)
        if not hit.size:
            return None
        out.append(int(hit[0]) + window)
    return float(np.mean(out))


def check_cost(data, batch) -> float:
    """Microseconds of one guard check for all m nodes: the window's forward pass with two models."""
    from streamlearn.sync.guard import window_loss

    learner = TorchLearner("mlp", hidden=(32,), lr=0.5, seed=0).clone(
        {"features": list(data.feature_names), "n_features": None, "classes": list(data.classes)})
    forward, _ = learner.functional()
    W = learner.get_flat()[: learner.n_params].repeat(data.m, 1)
    X = torch.from_numpy(data.X[:, :GUARD[0]])
    y = torch.from_numpy(data.y[:, :GUARD[0]])
    t0 = time.perf_counter()
    for _ in range(50):
        for w in (W, W):
            logp = torch.log_softmax(forward(w, X), dim=-1)
            window_loss(logp.gather(-1, y.unsqueeze(-1)).squeeze(-1).exp())
    return (time.perf_counter() - t0) / 50 * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", default=",".join(STREAMS))
    ap.add_argument("--lrs", default="0.15,0.5")
    ap.add_argument("--beijing", default=os.path.join(HERE, "..", "..", "shared", "data", "beijing_air.csv.gz"))
    ap.add_argument("--out", default=os.path.join(HERE, "results", "local_drift.json"))
    ap.add_argument("--no-loss-guard", action="store_true",
                    help="nodes without the loss guard (default: guarded, as nodes are)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    lrs = [float(x) for x in args.lrs.split(",")]
    out = []
    for key in args.streams.split(","):
        data, drifted, at, batch = STREAMS[key](args)
        others = [i for i in range(data.m) if i not in drifted]
        rows = {}
        alone_post = None
        for spec in ["nosync"] + PROTOCOLS:
            for suffix, guard in ({"": None} if spec == "nosync" else VARIANTS).items():
                full_spec = spec + (f",split={SPLIT}" if suffix == " grouped" else "")
                best = max((run(data, full_spec, lr, batch, guard, not args.no_loss_guard) for lr in lrs),
                           key=lambda r: r.accuracy)
                post = best.correct[:, at:].mean(axis=1)
                alone_post = post if spec == "nosync" else alone_post
                name = spec + suffix
                rows[name] = {"config": name, "spec": full_spec, "guard": guard, "accuracy": best.accuracy,
                              "bytes": best.bytes, "transfers": best.transfers, "declines": int(best.comm["declines"]),
                              "group_changes": len(best.groups), "post_drift_node_accuracy": post.tolist(),
                              "recovery_samples": recovery(best, drifted, at, alone_post)}
                print(f"  {key:13} {name:28} acc {best.accuracy:.4f}  drifted after {post[drifted].mean():.4f}  "
                      f"others after {post[others].mean():.4f}  declines {best.comm['declines']:6d}  "
                      f"groups changed {len(best.groups):5d}  recovery {rows[name]['recovery_samples']}  "
                      f"MB {best.bytes / 1e6:7.2f}", flush=True)
        alone = np.array(rows["nosync"]["post_drift_node_accuracy"])
        best_periodic = max((r for k, r in rows.items() if k.startswith("periodic") and r["spec"] == k and not r["guard"]),
                            key=lambda r: np.mean(np.array(r["post_drift_node_accuracy"])[others]))
        bp_others = float(np.mean(np.array(best_periodic["post_drift_node_accuracy"])[others]))
        for r in rows.values():
            post = np.array(r["post_drift_node_accuracy"])
            r["worst_node_vs_nosync"] = float(100 * (post[drifted] - alone[drifted]).min())
            r["undrifted_vs_best_periodic"] = float(100 * (post[others].mean() - bp_others))
        summary = {"stream": key, "drifted_nodes": drifted, "drift_at": at, "batch_size": batch, "rows": rows,
                   "guard_check_us_per_sync": check_cost(data, batch)}
        if key == "sea-global":
            summary["control"] = {
                p + v: {"accuracy_points": 100 * (rows[p + v]["accuracy"] - rows[p]["accuracy"]),
                        "bytes_ratio": rows[p + v]["bytes"] / rows[p]["bytes"] if rows[p]["bytes"] else None}
                for p in PROTOCOLS for v in (" guarded", " grouped")}
        out.append(summary)
    print()
    print(f"{'stream':14} {'config':28} {'worst drifted vs alone':>22} {'others vs best periodic':>24} {'declines':>9} "
          f"{'group changes':>13} {'recovery':>9}")
    for s in out:
        for r in s["rows"].values():
            print(f"{s['stream']:14} {r['config']:28} {r['worst_node_vs_nosync']:>+21.2f}p "
                  f"{r['undrifted_vs_best_periodic']:>+23.2f}p {r['declines']:>9} {r['group_changes']:>13} "
                  f"{str(r['recovery_samples']):>9}")
        if "control" in s:
            for p, c in s["control"].items():
                print(f"{s['stream']:14} control {p:20} guarded - plain: {c['accuracy_points']:+.2f} points, "
                      f"bytes x{c['bytes_ratio']:.2f}")
        print(f"{s['stream']:14} guard check: {s['guard_check_us_per_sync']:.0f} us per sync for {len(s['rows']['nosync']['post_drift_node_accuracy'])} nodes")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"benchmark": "local_drift", "guard": GUARD, "lrs": lrs, "streams": out}, fh, indent=2, default=float)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
