"""`streamlearn demo` end to end, as a user runs it: its own broker, producer, nodes and sync service."""

import os
import subprocess
import sys


def test_demo_runs_the_pipeline_and_summarises(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_BOOTSTRAP_SERVERS"}
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "streamlearn.cli", "demo", "--nodes", "2", "--duration", "25", "--rate", "400",
         "--drift", "label-permutation@3000", "--out", str(out), "--view-port", "0"],
        capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    assert "live view: http://127.0.0.1:" in text
    final = text[text.rindex("streamlearn demo"):]
    rows = [line.split() for line in final.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 2, final
    samples = [int(r[1]) for r in rows]
    assert all(s > 1000 for s in samples), final
    assert "drifts injected: 2" in final, final  # one event per node
    assert "sync:" in final and "periodic (b=1) would have sent" in final
    assert (out / "demo.png").read_bytes()[:4] == b"\x89PNG"
    for name in ("producer", "sync", "node-0", "node-1"):
        assert (out / "logs" / f"{name}.log").exists()
