"""Benchmark: learning throughput of TorchLearner vs river's LogisticRegression, in one run.

Both learn the same SEA stream (``river.datasets.synth.SEA(seed=1)``, materialised to numpy
and to dicts before timing). river learns sample by sample (``learn_one``); TorchLearner
'logreg' and 'mlp' take one optimizer step per mini-batch (``learn_many``) at several batch
sizes. Prints samples/s and the ratio to river, plus hold-out accuracy as a sanity check, and
writes ``bench/results/learners.json``.

Then test-then-train at batch 1 (predict, then learn, sample by sample: what ``streamlearn evaluate``
and a node at mini-batch 1 do) on the same rows: river's ``StandardScaler | LogisticRegression`` on
dicts against TorchLearner ``logreg`` and ``mlp(32)`` with ``scale=True`` on float32 rows (the numpy
path of small models, and the torch path beside it), and the RiverLinear wrapper (through
``predict_proba_learn_many``, as a node runs it) against river's ``LogisticRegression`` alone. The
ratios go to the top-level keys ``vs_river_*`` of the JSON file. SEA, and Elec2 when ``--elec2`` names
its CSV (default ``../shared/data/elec2.csv`` if present).

Times are the process's CPU time (``time.process_time``), best of ``--repeats`` runs taken in turn (every
learner once, then again): on a shared machine, wall time also counts the moments other processes hold
the core, which lands on one learner or another at random; everything here runs on one thread.

    python bench/learners.py [--n 20000] [--batch-sizes 1 32 256] [--repeats 3] [--threads 1] [--elec2 PATH]
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
from streamlearn.learners.river_linear import RiverLinear

OUT = Path(__file__).parent / "results" / "learners.json"


def sea(n: int, seed: int):
    rows = list(itertools.islice(synth.SEA(seed=seed), n))
    X = np.array([[x[k] for k in sorted(x)] for x, _ in rows], dtype=np.float32)
    y = np.array([label for _, label in rows], dtype=bool)
    return X, y, [x for x, _ in rows]


CLOCK = time.process_time  # CPU time of this process (see the module docstring)


def best_time(run, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = CLOCK()
        run()
        times.append(CLOCK() - t0)
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


def elec2(path: Path, n: int):
    import csv

    with open(path, newline="") as f:
        rows = list(itertools.islice(csv.DictReader(f), n))
    names = [k for k in rows[0] if k not in ("date", "label")]
    X = np.array([[float(r[k]) for k in names] for r in rows], dtype=np.float32)
    y = np.array([r["label"] == "UP" for r in rows], dtype=bool)
    return X, y, [dict(zip(names, r)) for r in X.tolist()]


def test_then_train(X, y, dicts, repeats):
    """Samples/s and prequential accuracy of each learner predicting, then learning, one sample at a time."""
    from river import preprocessing

    labels = y.tolist()

    def river_run(make):
        def run():
            model, hits = make(), 0
            for x, label in zip(dicts, labels):
                p = model.predict_proba_one(x)
                hits += (p.get(True, 0.0) > 0.5) == label
                model.learn_one(x, label)
            return hits
        return run

    def torch_run(arch, fast):
        def run():
            model = TorchLearner(arch, hidden=(32,), n_features=X.shape[1], classes=[False, True], scale=True, seed=0)
            if not fast:
                model._fast = None
            hits = 0
            for i in range(len(X)):
                P = model.predict_proba_learn_many(X[i:i + 1], y[i:i + 1])
                hits += P.shape[1] == 2 and (P[0, 1] > 0.5) == labels[i]
            return hits
        return run

    def wrapper_run():  # through predict_proba_learn_many, as the node runs a learner that has it
        model, hits = RiverLinear(n_features=X.shape[1]), 0
        for i in range(len(X)):
            hits += (model.predict_proba_learn_many(X[i:i + 1], y[i:i + 1])[0, 1] > 0.5) == labels[i]
        return hits

    runs = {
        "river StandardScaler | LogisticRegression": river_run(
            lambda: preprocessing.StandardScaler() | linear_model.LogisticRegression()),
        "TorchLearner logreg scale (numpy path)": torch_run("logreg", True),
        "TorchLearner logreg scale (torch path)": torch_run("logreg", False),
        "TorchLearner mlp(32) scale (numpy path)": torch_run("mlp", True),
        "TorchLearner mlp(32) scale (torch path)": torch_run("mlp", False),
        "river LogisticRegression": river_run(linear_model.LogisticRegression),
        "RiverLinear (wrapped river LogisticRegression)": wrapper_run,
    }
    # Repeats interleaved (every learner once, then again): on a shared machine a burst of load then
    # hits each learner alike instead of all the repeats of one; the best time of each is kept.
    times, hits = {name: [] for name in runs}, {}
    for _ in range(repeats):
        for name, run in runs.items():
            t0 = CLOCK()
            hits[name] = run()
            times[name].append(CLOCK() - t0)
    return {name: (len(X) / min(times[name]), hits[name] / len(X)) for name in runs}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20_000, help="training samples")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32, 256])
    ap.add_argument("--repeats", type=int, default=3, help="runs per configuration; the best is kept")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads; 1 because these models are tiny and on shared cores "
                         "more threads only wait for each other (river is single-threaded too)")
    ap.add_argument("--out", type=Path, default=OUT)
    default_elec2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "elec2.csv"
    ap.add_argument("--elec2", type=Path, default=default_elec2 if default_elec2.exists() else None,
                    help="Elec2 CSV for the test-then-train rows (beside SEA)")
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

    streams = {"SEA": (X, y, dicts)}
    if args.elec2 is not None:
        streams["Elec2"] = elec2(args.elec2, args.n)
    ttt, ratios = {}, {}
    for stream, (Xs, ys, ds) in streams.items():
        got = test_then_train(Xs, ys, ds, args.repeats)
        ttt[stream] = {name: dict(samples_per_s=r, prequential_accuracy=a) for name, (r, a) in got.items()}
        base, plain = got["river StandardScaler | LogisticRegression"][0], got["river LogisticRegression"][0]
        key = stream.lower()
        ratios[f"vs_river_logreg_b1_{key}"] = got["TorchLearner logreg scale (numpy path)"][0] / base
        ratios[f"vs_river_mlp32_b1_{key}"] = got["TorchLearner mlp(32) scale (numpy path)"][0] / base
        ratios[f"vs_river_wrapper_b1_{key}"] = got["RiverLinear (wrapped river LogisticRegression)"][0] / plain
        print(f"\ntest-then-train at batch 1, {stream} ({len(Xs)} samples)")
        print(f"{'learner':48} {'samples/s':>10} {'accuracy':>9}")
        for name, (r, a) in got.items():
            print(f"{name:48} {r:>10,.0f} {a:>9.3f}")
    print("\n" + "\n".join(f"{k:28} {v:6.2f}x" for k, v in ratios.items()))
    print("targets: logreg >= 1.0x and mlp(32) >= 0.5x river's StandardScaler | LogisticRegression")

    result = dict(
        benchmark="learners", stream="river.datasets.synth.SEA(seed=1)", n_samples=args.n,
        clock="process CPU time (time.process_time), best of the repeats, taken in turn",
        holdout="SEA(seed=2), 5000 samples", repeats=args.repeats, device=device,
        torch_threads=torch.get_num_threads(), torch=torch.__version__, river=river.__version__,
        python=platform.python_version(), machine=platform.machine(), rows=rows,
        test_then_train_b1=ttt, **ratios,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
