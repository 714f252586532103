"""`streamlearn demo` end to end, as a user runs it: its own broker, producer, nodes and sync service; its producer
thread as a child process (pure logic)."""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from streamlearn.errors import ConfigError


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
    assert "sync:" in final and "for periodic averaging every step (b=1) over the same steps" in final
    # the saving line says what it compares with: a fixed schedule, not periodic averaging at matched accuracy
    assert re.search(r"this run sent \d+\.\dx (fewer|more) bytes", final), final
    assert "not periodic averaging at this run's accuracy" in final, final
    assert re.search(r"stopped after \d+ s \(--duration\)", final), final
    assert "streamlearn drift --bootstrap 127.0.0.1:" in text and "--prefix streamlearn-demo-" in text
    assert (out / "demo.png").read_bytes()[:4] == b"\x89PNG"
    for name in ("producer", "sync", "node-0", "node-1"):
        assert (out / "logs" / f"{name}.log").exists()


def _descendants(pid: int) -> list[int]:
    out = [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]
    return out + [d for c in out for d in _descendants(c)]


def test_a_dead_child_is_named_and_the_summary_and_plot_still_written(broker, tmp_path):
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap, PYTHONUNBUFFERED="1")
    out = tmp_path / "demo"
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlearn.cli", "demo", "--nodes", "2", "--duration", "90", "--rate", "300",
         "--out", str(out), "--view-port", "-1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    try:
        deadline = time.monotonic() + 60
        while not any(re.search(r" s of 90  running", line) for line in list(lines)):  # every process reports
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)[-3000:]
            time.sleep(0.2)
        # the demo's processes are named as in its logs (forked from one preloaded server, see streamlearn.kafka.launch)
        [node1] = [c for c in _descendants(proc.pid) if Path(f"/proc/{c}/comm").read_text().strip() == "node-1"]
        os.kill(node1, signal.SIGKILL)
        proc.wait(60)
        err = proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = "".join(lines)
    assert proc.returncode == 2, text[-3000:] + err
    assert "a process died: node-1 (exit -9)" in err
    final = text[text.rindex("streamlearn demo"):]
    assert "failed: node-1 (exit -9) died" in final
    table = final[:final.index("wrote ")]
    assert len([line for line in table.splitlines() if line.strip()[:1].isdigit()]) == 2, final  # the summary
    assert "--- last lines of" in final and "node-1.log ---" in final
    assert (out / "demo.png").read_bytes()[:4] == b"\x89PNG"


def test_the_demos_producer_thread_answers_as_a_child_process(tmp_path, monkeypatch):
    # the producer runs in the demo's process (it sends the streams the demo read): the demo watches and stops it
    # as it does its child processes; an error ends it with exit code 1 and its traceback in its log
    import logging

    from streamlearn.kafka.demo import _Processes, _ProducerThread
    from streamlearn.kafka.producer import Producer, ProducerConfig
    from streamlearn.streams import node_streams

    def broken_run(self, *a, **k):
        raise RuntimeError("the broker said no")

    monkeypatch.setattr(Producer, "run", broken_run)
    log = tmp_path / "producer.log"
    procs = _Processes(None, str(tmp_path), {})
    procs.add("producer", _ProducerThread(ProducerConfig(source="sea", nodes=2), node_streams("sea", 2), str(log)))
    [(_, thread)] = procs.procs
    assert thread.wait(10) == 1
    assert procs.dead() == ["producer (exit 1)"]
    assert "RuntimeError: the broker said no" in procs.tail("producer")
    assert logging.getLogger("streamlearn.kafka.producer").handlers == []  # its log handler removed
    procs.stop()  # ended already: nothing to stop, no error
    with pytest.raises(ConfigError, match="one stream per node"):
        _ProducerThread(ProducerConfig(source="sea", nodes=2), node_streams("sea", 1), str(log))
