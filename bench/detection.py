"""Do detections mean a drift? One-sided against two-sided detection, scored against injected drifts.

ADWIN on a node's 0/1 error stream also fires when the error falls while a model learns. The
one-sided monitor (:class:`streamlearn.evaluation.DriftMonitor`, ``one_sided=True``, the default)
reports a firing only where the error rose. Per stream, the nodes learn in the simulator (without
sync unless said), and the same error streams are scored both ways (``streamlearn.sim.run.detect``):

- ``demo``: the stream ``streamlearn demo`` builds: SEA, 4 nodes, the demo's learner (logreg,
  batch 10), labels permuted at 20,000 and the features rotated by 90 degrees at 40,000, on every
  node; 60,000 samples per node (the demo's 60 s at 1,000 samples/s).
- ``demo-dynamic``: the demo stream with the demo's protocol (``dynamic:delta=0.5,b=1``).
- ``beijing``: Beijing air, 12 stations (one node each), learning every reading, labels permuted
  at reading 2,000 of every station; ``--beijing-n`` readings per station (half a year).

Targets: at most 1 false alarm per 10,000 samples per node, every injected drift found within
1,000 samples (``max_delay``). Writes bench/results/detection.json and prints a table.

    python bench/detection.py [--streams demo,beijing] [--detector adwin] [--max-delay 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import time

from streamlearn.learners import make_learner
from streamlearn.sim import build_node_data, simulate
from streamlearn.sim.run import detect
from streamlearn.sim.simulator import load_node_data

HERE = os.path.dirname(os.path.abspath(__file__))
BEIJING = os.path.join(HERE, "..", "..", "shared", "data", "beijing_air.csv.gz")
STATIONS = ["Aotizhongxin", "Changping", "Dingling", "Dongsi", "Guanyuan", "Gucheng", "Huairou", "Nongzhanguan",
            "Shunyi", "Tiantan", "Wanliu", "Wanshouxigong"]
TARGET_RATE = 1.0  # false alarms per 10,000 samples per node


def demo_data(args):
    from streamlearn.kafka.demo import DemoConfig

    cfg = DemoConfig().check()  # its defaults filled in (drifts, nodes), as `streamlearn demo` runs it
    data = build_node_data(cfg.source, cfg.nodes, cfg.drifts, cfg.schedule, n=args.demo_n, seed=cfg.seed)
    return data, cfg.batch_size, f"demo: {cfg.source}, {cfg.nodes} nodes, {', '.join(cfg.drifts)}"


def beijing_data(args):
    from streamlearn.streams import node_streams

    if not os.path.exists(args.beijing):
        raise SystemExit(f"Beijing air data not found at {args.beijing}: pass --beijing PATH")
    drift = f"label-permutation@{args.beijing_drift}"
    streams = node_streams(f"csv:{args.beijing}", 12, split="key:station",
                           key_map={s: i for i, s in enumerate(STATIONS)}, label="pm25_high", on_bad_record="skip",
                           drifts=[drift])
    return load_node_data(streams, args.beijing_n), 1, f"beijing air: 12 stations, {drift}"


# name -> (data, protocol): the brief's runs are without sync; demo-dynamic is the demo's own protocol.
STREAMS = {"demo": (demo_data, "nosync"), "beijing": (beijing_data, "nosync"),
           "demo-dynamic": (demo_data, "dynamic:delta=0.5,b=1")}


def run_stream(name: str, args) -> dict:
    make, protocol = STREAMS[name]
    data, batch, what = make(args)
    learner = make_learner("logreg", seed=0, scale=True)  # the demo's learner, as the CLI builds it
    t0 = time.perf_counter()
    res = simulate(data, learner, protocol, batch_size=batch, progress=False)
    out = {"stream": what, "protocol": protocol, "nodes": res.m, "samples_per_node": res.n, "batch_size": batch, "accuracy": res.accuracy,
           "drifts_injected": len(res.events), "max_delay": args.max_delay}
    for one_sided in (True, False):
        det = detect(res, args.detector, max_delay=args.max_delay, one_sided=one_sided)
        det.pop("positions")
        det["meets_targets"] = {
            "false_alarm_rate": det["false_alarms_per_10k"] <= TARGET_RATE,
            "all_drifts_found": det["drifts_detected"] == det["drifts_injected"],
        }
        out["one_sided" if one_sided else "two_sided"] = det
    out["seconds"] = time.perf_counter() - t0
    return out


def table(results: dict) -> str:
    header = ["stream", "detection", "alarms", "false", "false/10k/node", "found <= max_delay", "mean delay",
              "ignored", "targets"]
    rows = []
    for name, r in results.items():
        for key in ("one_sided", "two_sided"):
            d = r[key]
            met = d["meets_targets"]
            said = "met" if all(met.values()) else "MISSED: " + ", ".join(k for k, v in met.items() if not v)
            rows.append([name, key.replace("_", "-"), str(d["detections"]), str(d["false_alarms"]),
                         f"{d['false_alarms_per_10k']:.2f}", f"{d['drifts_detected']}/{d['drifts_injected']}",
                         "-" if d["mean_delay"] is None else f"{d['mean_delay']:.0f}", str(d["ignored"]), said])
    cells = [header] + rows
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", default="demo,beijing,demo-dynamic")
    ap.add_argument("--detector", default="adwin")
    ap.add_argument("--max-delay", type=int, default=1000, help="a drift counts as found within this many samples")
    ap.add_argument("--demo-n", type=int, default=60_000, help="samples per node of the demo stream")
    ap.add_argument("--beijing", default=BEIJING, help="path of beijing_air.csv.gz")
    ap.add_argument("--beijing-n", type=int, default=4380, help="readings per station (default: half a year)")
    ap.add_argument("--beijing-drift", type=int, default=2000, help="reading at which the labels are permuted")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "detection.json"))
    args = ap.parse_args(argv)
    results = {}
    for name in args.streams.split(","):
        results[name] = run_stream(name.strip(), args)
    print(table(results))
    print(f"targets: <= {TARGET_RATE:g} false alarm per 10,000 samples per node; every injected drift found "
          f"within {args.max_delay} samples")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"detector": args.detector, "target_false_alarms_per_10k": TARGET_RATE, "streams": results}, fh,
                  indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
