"""How long ``streamlearn demo`` keeps a user waiting before its nodes learn, and the memory its processes take.

The demo on the Beijing air file (12 stations: 12 node processes, the sync service, the producer), run as a
user runs it (``streamlearn demo --source csv:... --label pm25_high --split key:station``, ``--duration``
seconds of learning), against one Tansu broker this script starts (``KAFKA_BOOTSTRAP_SERVERS``); twice per
repeat, in turns:

* **forked** (the default): every process forked from one server that imported streamlearn once
  (:mod:`streamlearn.kafka.launch`);
* **fresh** (``--no-fork``, the baseline, measured in the same run): every process a fresh interpreter, each
  importing torch, numba, river, scipy and kafka-python and loading its compiled code.

Measured from the command's start: when the first and when the last of the 12 nodes reports a learned sample
(its status on ``<prefix>.status``, published every second: so to about a second), and the whole command's
wall time; once every node learns (and 3 s later), the proportional set size (PSS: shared pages split
between the processes that share them) and RSS summed over the demo's process tree (Linux). Ratios are
fresh / forked (``startup_speedup``: last node learning; ``pss_ratio``). The fastest repeat of each is kept.

Writes bench/results/demo_start.json. Not a test: tests never time.

    python bench/demo_start.py [--duration 10] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from streamlearn.kafka.broker import EmbeddedBroker
from streamlearn.kafka.status import StatusReader

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "beijing_air.csv.gz"
OUT = os.path.join(os.path.dirname(__file__), "results", "demo_start.json")
NODES = 12  # stations of the Beijing file


def _tree(pid: int) -> list[int]:
    try:
        kids = [int(c) for t in Path(f"/proc/{pid}/task").iterdir() for c in (t / "children").read_text().split()]
    except OSError:
        return []
    return kids + [d for k in kids for d in _tree(k)]


def _memory(pid: int) -> dict:
    """PSS and RSS in MiB summed over ``pid`` and its descendants, and how many processes."""
    pss = rss = n = 0
    for p in [pid, *_tree(pid)]:
        try:
            text = Path(f"/proc/{p}/smaps_rollup").read_text()
        except OSError:
            continue
        n += 1
        pss += int(re.search(r"^Pss:\s+(\d+)", text, re.M).group(1))
        rss += int(re.search(r"^Rss:\s+(\d+)", text, re.M).group(1))
    return {"processes": n, "pss_mib": pss / 1024, "rss_mib": rss / 1024}


def run_demo(bootstrap: str, fork: bool, duration: float, data: Path) -> dict:
    out = tempfile.mkdtemp(prefix="demo-start-")
    argv = [sys.executable, "-m", "streamlearn.cli", "demo", "--source", f"csv:{data}", "--label", "pm25_high",
            "--split", "key:station", "--duration", str(duration), "--out", out, "--view-port", "-1"]
    if not fork:
        argv.append("--no-fork")
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=bootstrap, PYTHONUNBUFFERED="1")
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    reader = None
    first = last = None
    memory = {}
    try:
        while proc.poll() is None:
            text = "".join(lines)
            if reader is None and "streamlearn demo —" in text:  # the processes started: their topics exist
                prefix = re.search(r"topics: (\S+)\.\*", text).group(1)
                reader = StatusReader(bootstrap, prefix)
            if reader is not None and last is None:
                reader.poll(0.1)
                learning = [n for n, s in reader.nodes.items() if (s.get("samples") or 0) > 0]
                now = time.monotonic() - t0
                if learning and first is None:
                    first = now
                if len(learning) == NODES:
                    last = now
                    time.sleep(3)  # settled: every process past its start
                    memory = _memory(proc.pid)
            else:
                time.sleep(0.1)
            if time.monotonic() - t0 > 600:
                raise RuntimeError("the demo did not end within 600 s")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if reader is not None:
            reader.close()
    wall = time.monotonic() - t0
    if proc.returncode != 0 or last is None:
        raise RuntimeError(f"demo {'forked' if fork else '--no-fork'}: exit {proc.returncode}, every node learning "
                           f"at {last}\n" + "".join(lines)[-3000:])
    return {"first_node_learning_s": first, "last_node_learning_s": last, "wall_s": wall, **memory}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of learning per demo")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args(argv)
    runs = {"forked": [], "fresh": []}
    with EmbeddedBroker() as broker:
        for _ in range(args.repeats):
            for name, fork in (("forked", True), ("fresh", False)):
                r = run_demo(broker.bootstrap, fork, args.duration, args.data)
                runs[name].append(r)
                print(f"{name:7s} first node learning {r['first_node_learning_s']:5.1f} s, all {NODES} "
                      f"{r['last_node_learning_s']:5.1f} s, whole command {r['wall_s']:5.1f} s; "
                      f"{r.get('processes', '?')} processes, PSS {r.get('pss_mib', float('nan')):6.0f} MiB, "
                      f"RSS {r.get('rss_mib', float('nan')):6.0f} MiB", flush=True)
    best = {k: min(v, key=lambda r: r["last_node_learning_s"]) for k, v in runs.items()}
    result = {
        "benchmark": "demo_start",
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "args": {"duration": args.duration, "repeats": args.repeats, "data": args.data.name, "nodes": NODES},
        "startup_speedup": best["fresh"]["last_node_learning_s"] / best["forked"]["last_node_learning_s"],
        "wall_speedup": best["fresh"]["wall_s"] / best["forked"]["wall_s"],
        "pss_ratio": (best["fresh"]["pss_mib"] / best["forked"]["pss_mib"]
                      if best["forked"].get("pss_mib") else None),
        "best": best,
        "runs": runs,
    }
    print(f"every node learning: forked {best['forked']['last_node_learning_s']:.1f} s, fresh interpreters "
          f"{best['fresh']['last_node_learning_s']:.1f} s ({result['startup_speedup']:.1f}x); whole command "
          f"{result['wall_speedup']:.2f}x; PSS fresh/forked {result['pss_ratio'] or float('nan'):.1f}x")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
