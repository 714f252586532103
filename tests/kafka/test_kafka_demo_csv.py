"""`streamlearn demo` from a file, as a user types it: a slice of Beijing air (3 stations, their real gaps),
one node per station (first seen, first numbered), missing values imputed at the nodes exactly as the
simulator's node streams impute them, dead letters and missing counts in the terminal view."""

import csv
import json
import gzip
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from streamlearn.cli import main
from streamlearn.streams import node_streams

DATA = Path(__file__).resolve().parents[1] / "data" / "beijing_slice.csv.gz"
STATIONS = ["Huairou", "Dingling", "Aotizhongxin"]  # numbered as the file has them: Aotizhongxin, Dingling, Huairou
ROWS = 400  # per station


def _slice(path: Path, rows_per_station: int = ROWS) -> None:
    """The first rows of each of three stations, in file order (time, then station)."""
    with gzip.open(DATA, "rt", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        seen = dict.fromkeys(STATIONS, 0)
        rows = []
        for row in reader:
            if row[1] in seen and seen[row[1]] < rows_per_station:
                seen[row[1]] += 1
                rows.append(row)
    with gzip.open(path, "wt", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def _final_rows(text: str) -> dict:
    """The last terminal table: node -> its columns."""
    table = text[text.rindex("streamlearn demo"):]
    return {int(r[0]): r for r in (line.split() for line in table.splitlines()) if r and r[0].isdigit()}


def _run_demo(tmp_path, path, expected, *args) -> str:
    """Run the demo as a user types it until every node has learned all of its rows, then Ctrl-C: its stdout."""
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    env["PYTHONUNBUFFERED"] = "1"
    out = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlearn.cli", "demo", "--source", f"csv:{path}", *args,
         "--split", "key:station", "--duration", "0", "--rate", "200", "--out", str(out), "--view-port", "-1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    try:
        deadline = time.monotonic() + 180
        while True:  # until every node has learned all of its rows (the view is printed every 5 s)
            text = "".join(list(lines))
            rows = _final_rows(text) if "streamlearn demo" in text else {}
            if len(rows) == len(expected) and [int(rows[k][1]) for k in range(len(expected))] == expected:
                break
            assert proc.poll() is None and time.monotonic() < deadline, text[-3000:] + (proc.stderr.read()
                                                                                      if proc.poll() is not None else "")
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(lines)
    assert proc.returncode == 0, text[-3000:] + err
    node_log = (out / "logs" / "node-0.log").read_text()
    assert "Traceback" not in node_log
    assert (out / "demo.png").stat().st_size > 0
    return text


def test_demo_from_a_csv_file_one_node_per_station(tmp_path):
    path = tmp_path / "air.csv.gz"
    _slice(path)
    # what the simulator's node streams hold: the nodes must learn exactly these rows and impute as many values
    streams = node_streams(f"csv:{path}", None, split="key:station", label="pm25_high", on_missing="impute")
    assert len(streams) == 3
    expected = [s.n_samples for s in streams]
    imputed = [s.counts()["imputed"] for s in streams]
    assert sum(imputed) > 0 and min(expected) > 300

    text = _run_demo(tmp_path, path, expected, "--label", "pm25_high")
    # one node per station, numbered in order of first appearance
    assert "split key:station: 3 nodes, one per value (Aotizhongxin -> 0, Dingling -> 1, Huairou -> 2)" in text
    final = text[text.rindex("streamlearn demo"):]
    assert "3 nodes" in final.splitlines()[0] and "drifts injected: none yet" in final  # a file: no drift by default
    header = next(line for line in final.splitlines() if line.strip().startswith("node"))
    assert header.split()[-2:] == ["dead", "imputed"]
    rows = _final_rows(text)
    assert [int(rows[k][1]) for k in range(3)] == expected
    assert [int(rows[k][-2]) for k in range(3)] == [0, 0, 0]  # no dead letters
    assert [int(rows[k][-1]) for k in range(3)] == imputed  # the same imputations as the simulator's streams
    assert f"dead letters: 0; missing values: {sum(imputed)} imputed" in final
    assert all(0.5 < float(rows[k][4]) <= 1.0 for k in range(3)), final  # accuracy: the nodes learned


def test_demo_learns_a_float_label_and_shows_mae(tmp_path):
    """--task regression: a sensor reading (ozone, µg/m³) as the label, one node per station, MAE in the view,
    as low as the simulator's on the same rows and settings."""
    path = tmp_path / "air.csv.gz"
    _slice(path, 1500)
    streams = node_streams(f"csv:{path}", None, split="key:station", label="o3", task="regression",
                           on_missing="impute")
    expected = [s.n_samples for s in streams]
    assert len(streams) == 3 and min(expected) > 1300
    baseline = []  # what always predicting a node's own mean (known in hindsight) scores
    for s in streams:
        _, y = s.to_arrays(s.n_samples)
        baseline.append(float(np.mean(np.abs(y - y.mean()))))
    sim = tmp_path / "sim.json"
    assert main(["simulate", "--source", f"csv:{path}", "--label", "o3", "--task", "regression", "--split",
                 "key:station", "--learner", "logreg", "--protocol", "dynamic:delta=0.5,b=1", "--batch-size", "10",
                 "--no-progress", "--json", str(sim)]) == 0  # the demo's defaults
    sim_mae = json.loads(sim.read_text())["mae"]

    text = _run_demo(tmp_path, path, expected, "--label", "o3", "--task", "regression")
    final = text[text.rindex("streamlearn demo"):]
    header = next(line for line in final.splitlines() if line.strip().startswith("node"))
    assert "rolling MAE" in header and "MAE" in header.split() and "accuracy" not in header
    rows = _final_rows(text)
    assert [int(rows[k][1]) for k in range(3)] == expected
    assert [int(rows[k][-2]) for k in range(3)] == [0, 0, 0]  # no dead letters: every float label was taken
    mae = [float(rows[k][4]) for k in range(3)]
    print(f"MAE per node {mae}, simulate {sim_mae:.3f}, mean predictor {baseline}")
    assert all(m < 0.95 * b for m, b in zip(mae, baseline)), (mae, baseline)  # the nodes learned
    # the simulator stops every node at the shortest stream (1,400 rows here); the nodes learn all of theirs
    assert float(np.mean(mae)) == pytest.approx(sim_mae, rel=0.15), (mae, sim_mae)


def test_demo_with_a_sharded_sync_layer_runs_one_sync_service_per_shard(tmp_path):
    """--protocol ...,shards=3,root=1: three sync processes, one station each, a root averaging them."""
    path = tmp_path / "air.csv.gz"
    _slice(path)
    streams = node_streams(f"csv:{path}", None, split="key:station", label="pm25_high", on_missing="impute")
    expected = [s.n_samples for s in streams]
    text = _run_demo(tmp_path, path, expected, "--label", "pm25_high", "--protocol", "periodic:b=4,shards=3,root=1")
    logs = tmp_path / "demo" / "logs"
    assert sorted(f.name for f in logs.glob("sync*.log")) == ["sync-0.log", "sync-1.log", "sync-2.log"]
    assert all("Traceback" not in f.read_text() for f in logs.glob("sync*.log"))
    final = text[text.rindex("streamlearn demo"):]
    full = int(re.search(r"sync: (\d+) full", final).group(1))
    assert full >= 3, final  # the shards' own full syncs, added up: each shard synced its node
    rows = _final_rows(text)
    assert all(int(rows[k][-4]) >= 1 for k in range(3)), final  # every node got its shard's syncs
    # shard 0's service is the root: it averaged the shards once they made 3 full syncs between them
    assert "root average 1 of 3 shards" in (logs / "sync-0.log").read_text()
