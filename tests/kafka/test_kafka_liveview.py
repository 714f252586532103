"""The demo's live page in a real headless Chromium, fed by a real `streamlearn demo`: it loads, draws a series per
node with the drift markers, updates without a reload, and a screenshot is kept.

Chromium is driven through chromedriver's W3C WebDriver HTTP API with the standard library (no selenium).
The screenshot goes to the test's tmp dir and to ``$STREAMLEARN_ARTIFACTS`` (default ``test-artifacts/`` at
the repository root), so it survives the run.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from servers import require

from streamlearn.cli import main
from streamlearn.kafka.broker import free_port
from streamlearn.kafka.liveview import LiveView

REPO = Path(__file__).resolve().parents[2]
NODES = 2
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1280,900"]


def _tool(*names: str) -> str:
    return require("chromium-driver" if names[0] == "chromedriver" else "chromium", *names)


def artifacts_dir() -> Path:
    return Path(os.environ.get("STREAMLEARN_ARTIFACTS") or REPO / "test-artifacts")


class Browser:
    """Headless Chromium through chromedriver's WebDriver HTTP API (one session)."""

    def __init__(self, folder: Path):
        port = free_port()
        self._log = open(folder / "chromedriver.log", "w")
        self._proc = subprocess.Popen([_tool("chromedriver"), f"--port={port}"], stdout=self._log,
                                      stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if self._call("GET", "/status")["ready"]:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline and self._proc.poll() is None, "chromedriver did not start"
            time.sleep(0.1)
        options = {"binary": _tool("chromium", "chromium-browser"),
                   "args": CHROMIUM_FLAGS + [f"--user-data-dir={folder / 'profile'}"]}
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": options}}}
        self._session = self._call("POST", "/session", caps)["sessionId"]

    def _call(self, method: str, path: str, body: dict | None = None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self._base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.load(r)["value"]
        except urllib.error.HTTPError as e:
            raise AssertionError(f"WebDriver {method} {path}: {e.code} {e.read()[:500]!r}") from None

    def open(self, url: str) -> None:
        self._call("POST", f"/session/{self._session}/url", {"url": url})

    def js(self, script: str):
        return self._call("POST", f"/session/{self._session}/execute/sync", {"script": script, "args": []})

    def screenshot(self) -> bytes:
        return base64.b64decode(self._call("GET", f"/session/{self._session}/screenshot"))

    def close(self) -> None:
        try:
            self._call("DELETE", f"/session/{self._session}")
        finally:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._log.close()


# What the page drew, read from the DOM: per chart the svg's record plus the drawn paths and marker positions.
SNAPSHOT_JS = """
const charts = {};
for (const svg of document.querySelectorAll("svg")) {
  const w = svg.clientWidth;
  charts[svg.id] = Object.assign({}, svg.dataset, {
    paths: Array.from(svg.querySelectorAll("path.series")).map(p => (p.getAttribute("d").match(/[ML]/g) || []).length),
    marker_x: Array.from(svg.querySelectorAll("line.marker")).map(l => Number(l.getAttribute("x1")) / w),
    injected: svg.querySelectorAll('line.marker[stroke="red"]').length});
}
return {updates: Number(document.body.dataset.updates), token: window.__token || null, charts: charts,
        status: document.getElementById("status").textContent, text: document.body.innerText};
"""


@pytest.fixture
def demo(broker, tmp_path):
    """A real `streamlearn demo` (2 nodes, a drift at sample 1500) on the session's broker; its live page URL."""
    env = dict(os.environ, KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap, PYTHONUNBUFFERED="1")
    env.pop("KAFKA_TOPIC_PREFIX", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlearn.cli", "demo", "--nodes", str(NODES), "--rate", "300", "--duration", "90",
         "--drift", "label-permutation@1500", "--view-port", "0", "--out", str(tmp_path / "demo")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, env=env, cwd=tmp_path)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    deadline = time.monotonic() + 30
    url = None
    while url is None:
        found = [m.group(1) for line in list(lines) for m in [re.match(r"live view: (http://\S+)", line)] if m]
        url = found[0] if found else None
        assert proc.poll() is None and time.monotonic() < deadline, "no live view URL:\n" + "".join(lines)
        time.sleep(0.1)
    yield proc, url, lines, tmp_path / "demo"
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    reader.join(5)


@pytest.fixture
def browser(tmp_path):
    b = Browser(tmp_path)
    yield b
    b.close()


def _wait(browser: Browser, ok, what: str, timeout: float, proc) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        snap = browser.js(SNAPSHOT_JS)
        if ok(snap):
            return snap
        assert proc.poll() is None, f"the demo exited while waiting for {what}"
        assert time.monotonic() < deadline, f"not reached: {what}; page: {json.dumps(snap)[:3000]}"
        time.sleep(0.5)


def test_live_page_of_a_real_demo_draws_updates_and_is_screenshotted(demo, browser, tmp_path):
    proc, url, lines, out = demo
    assert url.startswith("http://127.0.0.1:")
    browser.open(url)
    browser.js("window.__token = 'loaded once'; return null;")  # a reload would drop it

    def drawn(s):
        acc = s["charts"]["acc"]
        return (len(acc["paths"]) == NODES and min(acc["paths"]) >= 3 and acc["injected"] >= 1
                and len(s["charts"]["div"]["paths"]) == NODES and s["status"] == "running")

    t1 = _wait(browser, drawn, "a series per node with 3+ points and the injected drift marker", 45, proc)
    acc1 = t1["charts"]["acc"]
    assert all(0 < x < 1 for x in acc1["marker_x"]), f"drift markers outside the chart: {acc1['marker_x']}"
    assert "node 0" in t1["text"] and "node 1" in t1["text"]
    assert "full syncs" in t1["text"] and "partial syncs" in t1["text"], "the sync chart has a legend"
    assert "periodic averaging every step (b=1)" in t1["text"]

    # The command the page (and the terminal) shows reaches this demo's producer.
    command = re.search(r"inject a drift: (streamlearn drift .+)", t1["text"]).group(1).strip()
    assert "--prefix streamlearn-demo-" in command and "--bootstrap " in command
    assert main(shlex.split(command)[1:]) == 0, "the printed drift command was not applied by the demo's producer"

    # Later data without a reload: more samples learned, more redraws, and the live drift marked.
    t2 = _wait(browser, lambda s: (float(s["charts"]["acc"]["xmax"]) > float(acc1["xmax"])
                                   and s["updates"] >= t1["updates"] + 2
                                   and s["charts"]["acc"]["injected"] > acc1["injected"]),
               "newer data and the live drift's marker", 30, proc)
    assert t2["token"] == "loaded once", "the page was reloaded"
    assert max(t2["charts"]["acc"]["paths"]) > max(acc1["paths"])
    assert all(0 < x < 1 for x in t2["charts"]["acc"]["marker_x"])

    png = browser.screenshot()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "liveview.png").write_bytes(png)
    keep = artifacts_dir()
    keep.mkdir(parents=True, exist_ok=True)
    (keep / "liveview.png").write_bytes(png)

    proc.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop, summary and plot
    assert proc.wait(60) == 0, "".join(lines)[-3000:]
    text = "".join(lines)
    assert "stopped after" in text and "(Ctrl-C)" in text
    assert (out / "demo.png").read_bytes()[:4] == b"\x89PNG"


def _dump_dom(tmp_path, url: str) -> str:
    return subprocess.run([_tool("chromium", "chromium-browser"), *CHROMIUM_FLAGS,
                           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=3000", "--dump-dom", url],
                          capture_output=True, text=True, timeout=120).stdout


def test_drift_markers_stay_in_range_when_the_history_starts_later(tmp_path):
    # The audit's case: nodes first reported at ~5,800 samples, the drift was injected at 4,000.
    history = {str(n): [{"samples": 5800 + 100 * i, "rolling_accuracy": 0.8, "divergence": 0.1} for i in range(20)]
               for n in range(2)}
    with LiveView(port=0) as view:
        view.update({"title": "t", "status": "running", "history": history, "drifts": [4000], "detected": [6500],
                     "delta": 0.5, "sync_history": [{"t": 1, "full_syncs": 1, "partial_syncs": 0, "bytes": 10,
                                                     "periodic_bytes": 100}]})
        dom = _dump_dom(tmp_path, view.url)
    svg = re.search(r'<svg id="acc"[^>]*>', dom)
    assert svg, dom[-2000:]
    assert 'data-markers="2"' in svg.group(0) and 'data-series="2"' in svg.group(0)
    acc = dom[svg.start():dom.index("</svg>", svg.start())]
    xs = [float(x) for x in re.findall(r'<line x1="([\d.]+)"[^>]*class="marker"', acc)]
    assert len(xs) == 2 and all(48 <= x for x in xs), xs  # right of the y axis: inside the plotting area


def test_detections_and_false_alarms_are_drawn_apart(tmp_path):
    history = {"0": [{"samples": 100 * i, "rolling_accuracy": 0.8, "divergence": 0.1} for i in range(100)]}
    with LiveView(port=0) as view:
        view.update({"title": "t", "status": "running", "history": history, "drifts": [4000], "detected": [4050],
                     "false_alarms": [1200, 7000], "max_delay": 1000})
        dom = _dump_dom(tmp_path, view.url)
    svg = re.search(r'<svg id="acc"[^>]*>', dom)
    assert svg, dom[-2000:]
    assert 'data-markers="4"' in svg.group(0)
    acc = dom[svg.start():dom.index("</svg>", svg.start())]
    strokes = re.findall(r'<line [^>]*stroke="([^"]+)"[^>]*class="marker"', acc)
    assert strokes.count("red") == 1 and strokes.count("#ff7f0e") == 1 and strokes.count("#888") == 2, strokes
    assert acc.count("▲") == 1 and acc.count("×") == 2
    legend = dom[dom.index('id="acc-legend"'):]
    assert "detected drift (within 1000)" in legend[:2000] and "false alarm" in legend[:2000]


def test_state_and_unknown_paths():
    with LiveView(port=0) as view:
        view.update({"title": "3 nodes", "delta": 0.5, "x": float("nan")})
        st = json.load(urllib.request.urlopen(view.url + "state.json"))
        assert st == {"title": "3 nodes", "delta": 0.5, "x": None}
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(view.url + "nope")
        assert err.value.code == 404
        assert view.url.startswith("http://127.0.0.1:")


def test_groups_colour_the_accuracy_lines_and_the_legend_lists_their_nodes(tmp_path):
    # Nodes 0 and 1 start in the whole; node 1 is averaged apart (group 2) from 2,000 samples on.
    history = {str(n): [{"samples": 100 * i, "rolling_accuracy": 0.8, "divergence": 0.1,
                         "group": 2 if n == 1 and i >= 20 else 0} for i in range(40)] for n in range(2)}
    with LiveView(port=0) as view:
        view.update({"title": "t", "status": "running", "history": history})
        dom = _dump_dom(tmp_path, view.url)
    svg = re.search(r'<svg id="acc"[^>]*>', dom)
    assert svg, dom[-2000:]
    assert 'data-series="3"' in svg.group(0)  # node 0; node 1 in the whole, then in group 2
    acc = dom[svg.start():dom.index("</svg>", svg.start())]
    strokes = re.findall(r'<path [^>]*stroke="([^"]+)"[^>]*class="series"', acc)
    assert strokes == ["#1f77b4", "#1f77b4", "#2ca02c"], strokes  # group 0's colour twice, then group 2's
    legend = dom[dom.index('id="acc-legend"'):][:2000]
    assert "group 0: nodes 0" in legend and "group 2: nodes 1" in legend, legend


def test_a_regression_draws_rolling_mae_in_the_labels_units(tmp_path):
    history = {"0": [{"samples": 100 * i, "rolling_mae": 30.0 - 0.1 * i, "divergence": 0.1} for i in range(50)]}
    with LiveView(port=0) as view:
        view.update({"title": "t", "status": "running", "history": history, "score": "rolling_mae",
                     "score_title": "Rolling MAE per node"})
        dom = _dump_dom(tmp_path, view.url)
    assert '<h2 id="acc-title">Rolling MAE per node</h2>' in dom, dom[-2000:]
    svg = re.search(r'<svg id="acc"[^>]*>', dom)
    assert svg and 'data-series="1"' in svg.group(0) and 'data-points="50"' in svg.group(0), dom[-2000:]
    acc = dom[svg.start():dom.index("</svg>", svg.start())]
    ticks = re.findall(r'font-size="10">([\d.]+)</text>', acc)
    assert "30.0" in ticks, ticks  # the y axis reaches the largest MAE, not 1
