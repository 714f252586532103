"""Benchmark: learning throughput of TorchLearner vs river's LogisticRegression, in one run.

Both learn the same SEA stream (``river.datasets.synth.SEA(seed=1)``, materialised to numpy
and to dicts before timing). river learns sample by sample (``learn_one``); TorchLearner
'logreg' and 'mlp' take one optimizer step per mini-batch (``learn_many``) at several batch
sizes. Prints samples/s and the ratio to river, plus hold-out accuracy as a sanity check, and
writes ``bench/results/learners.json``.

    python bench/learners.py [--n 20000] [--batch-sizes 1 32 256] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import time
from pathlib import Path

import numpy as np
import river
import torch
from river import linear_model
from river.datasets import synth

from streamlearn.learners import TorchLearner

OUT = Path(__file__).parent / "results" / "learners.json"


def sea(n: int, seed: int):
    rows = list(itertools.islice(synth.SEA(seed=seed), n))
    X = np.array([[x[k] for k in sorted(x)] for x, _ in rows], dtype=np.float32)
    y = np.array([label for _, label in rows], dtype=bool)
    return X, y, [x for x, _ in rows]


def best_time(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_river(dicts, y, test_dicts, test_y, repeats):
    model = None

    def run():
        nonlocal model
        model = linear_model.LogisticRegression()
        for x, label in zip(dicts, y.tolist()):
            model.learn_one(x, label)

    seconds = best_time(run, repeats)
    acc = float(np.mean([model.predict_one(x) == label for x, label in zip(test_dicts, test_y.tolist())]))
    return seconds, acc


def bench_torch(arch, batch, X, y, Xt, yt, repeats):
    model = None

    def run():
        nonlocal model
        model = TorchLearner(arch, hidden=(32,), n_features=X.shape[1], classes=[False, True], seed=0)
        for i in range(0, len(X), batch):
            model.learn_many(X[i : i + batch], y[i : i + batch])

    seconds = best_time(run, repeats)
    return seconds, float((model.predict_many(Xt) == yt).mean()), str(model.device_)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000, help="training samples")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32, 256])
    ap.add_argument("--repeats", type=int, default=3, help="runs per configuration; the best is kept")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads; 1 because these models are tiny and on shared cores "
                         "more threads only wait for each other (river is single-threaded too)")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    X, y, dicts = sea(args.n, seed=1)
    Xt, yt, test_dicts = sea(5_000, seed=2)
    # Warm-up (torch.optim's first use imports a lot), outside every timing.
    TorchLearner("mlp", n_features=3, classes=[False, True], seed=0).learn_many(X[:8], y[:8])

    river_s, river_acc = bench_river(dicts, y, test_dicts, yt, args.repeats)
    river_rate = args.n / river_s
    rows = [dict(learner="river LogisticRegression", method="learn_one", batch=1,
                 samples_per_s=river_rate, ratio_vs_river=1.0, holdout_accuracy=river_acc)]
    device = None
    for arch in ("logreg", "mlp"):
        for b in args.batch_sizes:
            s, acc, device = bench_torch(arch, b, X, y, Xt, yt, args.repeats)
            rows.append(dict(learner=f"TorchLearner {arch}", method="learn_many", batch=b,
                             samples_per_s=args.n / s, ratio_vs_river=(args.n / s) / river_rate,
                             holdout_accuracy=acc))

    print(f"SEA(seed=1), {args.n} samples, device {device}, torch threads {torch.get_num_threads()}")
    print(f"{'learner':28} {'method':10} {'batch':>5} {'samples/s':>12} {'vs river':>9} {'accuracy':>9}")
    for r in rows:
        print(f"{r['learner']:28} {r['method']:10} {r['batch']:>5} {r['samples_per_s']:>12,.0f} "
              f"{r['ratio_vs_river']:>8.2f}x {r['holdout_accuracy']:>9.3f}")

    result = dict(
        benchmark="learners", stream="river.datasets.synth.SEA(seed=1)", n_samples=args.n,
        holdout="SEA(seed=2), 5000 samples", repeats=args.repeats, device=device,
        torch_threads=torch.get_num_threads(), torch=torch.__version__, river=river.__version__,
        python=platform.python_version(), machine=platform.machine(), rows=rows,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
