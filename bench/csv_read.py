"""Reading a CSV file in bulk: the CSV source and the whole simulate data path, against a csv.reader loop.

Three timings on the same file in this run (each the best of ``--repeat`` runs, interleaved):

- ``baseline``: the standard library's ``csv.reader`` over the (gzip) file, a ``float`` per numeric field
  (empty: NaN), the text of the text, key and label columns, stacked into arrays: what any record-by-record
  Python reader of the same columns pays at least, before checking or encoding anything.
- ``source``: ``CSVSource(...).to_arrays``: header and look-ahead, every field checked, bad records reported,
  text columns one-hot encoded, the key column kept as text.
- ``simulate_data``: ``streamlearn.sim.build_node_data`` as ``streamlearn simulate`` calls it: the source,
  the split by key (one node per station) and the running-mean imputation of missing values per node.

Ratios are baseline time / our time (> 1: faster than the bare csv.reader loop). Writes
bench/results/csv_read.json.

    python bench/csv_read.py [--path beijing_air.csv.gz] [--label pm25_high] [--split key:station] [--repeat 2]
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import operator
import os
import time

import numpy as np

from streamlearn.sim import build_node_data
from streamlearn.streams import CSVSource

HERE = os.path.dirname(os.path.abspath(__file__))
BEIJING = os.path.join(HERE, "..", "..", "shared", "data", "beijing_air.csv.gz")


def baseline(path: str, label: str, numeric: list, text: list) -> tuple[float, int]:
    """csv.reader, a float per numeric field, the text of the text columns: (seconds, records)."""
    t = time.perf_counter()
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader)]
        cols, words, at = [header.index(c) for c in numeric], [header.index(c) for c in text], header.index(label)
        pick = operator.itemgetter(*words, at, at)  # (at twice: always a tuple)
        rows, texts = [], []
        for r in reader:
            rows.append([float(r[p]) if r[p].strip() else math.nan for p in cols])
            texts.append(pick(r))
    X = np.array(rows)
    assert X.shape[0] == len(texts)
    return time.perf_counter() - t, len(texts)


def read_source(path: str, label: str, key: str | None):
    t = time.perf_counter()
    source = CSVSource(path, label=label, key=key, missing="nan", on_bad_record="raise")
    X, _ = source.to_arrays(source.n_samples)
    return time.perf_counter() - t, source, X


def simulate_data(path: str, label: str, split: str):
    t = time.perf_counter()
    data = build_node_data(f"csv:{path}", None, split=split, missing="impute",
                           source_params={"label": label, "missing": "nan", "on_bad_record": "raise"})
    return time.perf_counter() - t, data


def best(fns: list, repeat: int) -> list:
    """The fastest of ``repeat`` runs of each function, the runs interleaved (a busy machine slows all alike)."""
    runs = [[] for _ in fns]
    for _ in range(repeat):
        for fn, done in zip(fns, runs):
            done.append(fn())
    return [min(done, key=lambda r: r[0]) for done in runs]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--path", default=os.path.normpath(BEIJING), help="CSV file (.gz or plain)")
    ap.add_argument("--label", default="pm25_high")
    ap.add_argument("--split", default="key:station", help="split of the simulate data path")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each timing; the best is kept")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "csv_read.json"))
    args = ap.parse_args()
    if not os.path.exists(args.path):
        raise SystemExit(f"data file not found at {args.path}: pass --path PATH")
    key = args.split.split(":")[1] if args.split.startswith("key:") else None

    probe = CSVSource(args.path, label=args.label, key=key, missing="nan")  # the columns the source reads
    numeric = [c for c in probe.feature_names if c in probe._header]
    text = list(probe.categories) + ([key] if key else [])
    (t_source, source, _), (t_base, base_records), (t_sim, data) = best([
        lambda: read_source(args.path, args.label, key),
        lambda: baseline(args.path, args.label, numeric, text),
        lambda: simulate_data(args.path, args.label, args.split),
    ], args.repeat)
    records = source.n_samples + source.skipped + source.unlabelled
    assert base_records == records, (base_records, records)  # every record seen by both

    result = {
        "benchmark": "csv_read", "file": os.path.basename(args.path), "records": records,
        "samples": int(source.n_samples), "features": len(source.feature_names), "nodes": int(data.m),
        "missing_values": int(source.missing_values), "unlabelled": int(source.unlabelled),
        "repeat": args.repeat,
        "baseline_seconds": t_base, "baseline_rows_per_s": records / t_base,
        "source_seconds": t_source, "source_rows_per_s": records / t_source,
        "simulate_data_seconds": t_sim, "simulate_data_rows_per_s": records / t_sim,
        "source_vs_baseline": t_base / t_source,
        "simulate_data_vs_baseline": t_base / t_sim,
    }
    print(f"{args.path}: {records} records, {result['samples']} samples x {result['features']} features, "
          f"{result['nodes']} nodes")
    for name in ("baseline", "source", "simulate_data"):
        print(f"{name:14s} {result[name + '_seconds']:7.2f} s  {result[name + '_rows_per_s']:12,.0f} rows/s")
    print(f"source vs csv.reader baseline: {result['source_vs_baseline']:.2f}x; "
          f"simulate data path vs baseline: {result['simulate_data_vs_baseline']:.2f}x")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
