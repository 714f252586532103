"""The demo's launcher: commands forked from one preloaded server, answering as subprocess.Popen would."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from streamlearn.kafka.launch import Launcher


def _wait_for(condition, what, timeout=60.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _tansu_pid(log) -> int:
    text = log.read_text()  # "... on 127.0.0.1:PORT, storage ...; pid N, log PATH"
    return int(text[text.index("; pid ") + 6:].split(",")[0])


@pytest.fixture(scope="module", params=[True, False], ids=["forked", "fresh-interpreter"])
def launcher(request):
    """Both ways of starting a command answer the same (``--no-fork``: each a fresh interpreter)."""
    with Launcher(fork=request.param) as launcher:
        yield launcher


def test_a_command_writes_its_output_to_its_log_and_ends_with_its_exit_code(launcher, tmp_path):
    log = tmp_path / "streams.log"
    log.write_text("an older run's lines\n")
    child = launcher.start("streams", ["streams"], str(log), dict(os.environ))
    assert child.wait(60) == 0 and child.poll() == 0 and child.returncode == 0
    text = log.read_text()
    assert "older run" not in text  # truncated, as subprocess with open(path, "w") did
    # the same text as the command run on its own
    alone = subprocess.run([sys.executable, "-m", "streamlearn.cli", "streams"], capture_output=True, text=True)
    assert text == alone.stdout and alone.returncode == 0


def test_a_bad_command_line_ends_with_2_and_its_error_in_the_log(launcher, tmp_path):
    log = tmp_path / "bad.log"
    child = launcher.start("bad", ["node", "--batch-size", "0"], str(log), dict(os.environ))
    assert child.wait(60) == 2
    assert "streamlearn node: error: the following arguments are required: --id" in log.read_text()


def test_a_running_command_gets_its_environment_name_and_session_and_stops_on_sigint(launcher, tmp_path):
    log = tmp_path / "broker.log"
    env = dict(os.environ, STREAMLEARN_BROKER_STORAGE="memory://tansu/", SL_LAUNCH_TEST="yes")
    child = launcher.start("broker-x", ["broker", "--port", "0"], str(log), env)
    try:
        _runs_then_stops(child, log, forked=launcher._server is not None)
    finally:
        child.kill()  # after a failure above; a no-op once it ended


def _runs_then_stops(child, log, forked):
    _wait_for(lambda: "Ctrl-C or SIGTERM stops it" in log.read_text(), "the broker command to run")
    assert child.poll() is None
    if forked:  # named as in the logs (a fresh interpreter is "python")
        assert Path(f"/proc/{child.pid}/comm").read_text().strip() == "broker-x"
    # the environment it was given: what it starts inherits it (its Tansu process)
    assert b"SL_LAUNCH_TEST=yes" in Path(f"/proc/{_tansu_pid(log)}/environ").read_bytes().split(b"\0")
    assert os.getsid(child.pid) == child.pid != os.getsid(0)  # Ctrl-C in the terminal reaches the parent only
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(0.1)
    child.send_signal(signal.SIGINT)
    assert child.wait(60) == 0
    assert "broker stopped" in log.read_text()
    child.send_signal(signal.SIGINT)  # ended: a no-op, as Popen's


def test_a_killed_command_ends_with_minus_the_signal(launcher, tmp_path):
    log = tmp_path / "killed.log"
    child = launcher.start("killed", ["broker", "--port", "0"], str(log), dict(os.environ))
    try:
        _wait_for(lambda: "Ctrl-C or SIGTERM stops it" in log.read_text(), "the broker command to run")
    finally:
        child.kill()
        assert child.wait(60) == -signal.SIGKILL
        if "; pid " in log.read_text():
            os.kill(_tansu_pid(log), signal.SIGKILL)  # its broker process, which a killed command cannot stop


def test_children_run_on_after_the_launcher_closes(tmp_path):
    log = tmp_path / "broker.log"
    with Launcher() as launcher:
        child = launcher.start("orphan", ["broker", "--port", "0"], str(log), dict(os.environ))
    try:
        _wait_for(lambda: "Ctrl-C or SIGTERM stops it" in log.read_text(), "the broker command to run")
        os.kill(child.pid, 0)  # still there: closing the launcher never kills what it started
    finally:
        os.kill(child.pid, signal.SIGINT)
    _wait_for(lambda: "broker stopped" in log.read_text(), "the orphaned broker command to stop on SIGINT")


def test_a_child_whose_server_died_is_still_seen_to_end(tmp_path):
    log = tmp_path / "broker.log"
    launcher = Launcher()
    child = launcher.start("orphan2", ["broker", "--port", "0"], str(log), dict(os.environ))
    try:
        _wait_for(lambda: "Ctrl-C or SIGTERM stops it" in log.read_text(), "the broker command to run")
        launcher._server.kill()  # the server gone: no exit codes come any more
        launcher._server.wait()
        _wait_for(lambda: launcher._closed, "the launcher to see its server gone")
        assert child.poll() is None  # still running
        child.send_signal(signal.SIGINT)
        assert child.wait(60) == -1  # ended; its code unknown without its server
    finally:
        child.kill()
        launcher.close()
    assert "broker stopped" in log.read_text()
