"""The demo's live page in a real headless Chromium: it loads, draws its charts, and updates."""

import math
import re
import shutil
import subprocess
import threading
import time

import pytest

from streamlearn.kafka.liveview import LiveView

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1200,800"]


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed (Debian package chromium; .ci/run installs it)")
    return path


def state(tick: int) -> dict:
    history = {str(n): [{"samples": 100 * i, "rolling_accuracy": 0.5 + 0.4 * math.tanh(i / 5) - 0.05 * n,
                         "divergence": 0.1 * (i % 7)} for i in range(tick)] for n in range(3)}
    return {"title": "3 nodes", "summary": f"tick {tick}", "history": history, "drifts": [500], "detected": [700],
            "delta": 0.5, "sync_history": [{"t": i, "full_syncs": i, "partial_syncs": i // 2, "bytes": i * 1e5,
                                            "periodic_bytes": i * 1e6} for i in range(tick)]}


@pytest.fixture
def live_page():
    view = LiveView(port=0)
    stop = threading.Event()

    def feed():
        tick = 1
        while not stop.is_set():
            view.update(state(tick))
            tick += 1
            time.sleep(0.1)

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    time.sleep(0.3)
    yield view
    stop.set()
    thread.join()
    view.close()


def run_chromium(tmp_path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                          capture_output=True, text=True, timeout=120)


def test_page_loads_draws_and_updates(live_page, tmp_path):
    out = run_chromium(tmp_path, "--virtual-time-budget=4000", "--dump-dom", live_page.url)
    dom = out.stdout
    body = re.search(r"<body([^>]*)>", dom)
    assert body, out.stderr[-2000:]
    updates = int(re.search(r'data-updates="(\d+)"', body.group(1)).group(1))
    series = int(re.search(r'data-series="(\d+)"', body.group(1)).group(1))
    assert updates >= 2, "the page refreshes its charts without a reload"
    assert series == 3 + 3 + 2 + 2, "accuracy and divergence per node, syncs (2), communication (2)"
    assert dom.count('class="series"') == 10
    assert dom.count('class="marker"') == 2, "one injected and one detected drift marker"
    tick = int(re.search(r'<div id="meta">3 nodes — tick (\d+)<', dom).group(1))
    assert tick > 1


def test_screenshot_is_saved(live_page, tmp_path):
    png = tmp_path / "liveview.png"
    run_chromium(tmp_path, "--virtual-time-budget=3000", f"--screenshot={png}", live_page.url)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000  # charts, not a blank page


def test_state_and_unknown_paths(live_page):
    import json
    import urllib.error
    import urllib.request

    st = json.load(urllib.request.urlopen(live_page.url + "state.json"))
    assert st["title"] == "3 nodes" and st["delta"] == 0.5
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(live_page.url + "nope")
    assert err.value.code == 404
    assert live_page.url.startswith("http://127.0.0.1:")
