"""What the services share: how SIGINT and SIGTERM stop them."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from streamlearn.kafka.broker import free_port
from streamlearn.kafka.service import StopSignals


def test_the_first_ctrl_c_asks_to_stop_and_the_second_interrupts_at_once():
    event = threading.Event()
    with StopSignals(event):
        os.kill(os.getpid(), signal.SIGTERM)
        assert event.wait(5)  # SIGTERM only asks, however often
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # the event already set: now
            time.sleep(5)  # the handler runs at the next bytecode; never reached
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


@pytest.mark.parametrize("command", [["sync"], ["node", "--id", "0", "--source", "sea"],
                                     ["produce", "--source", "sea", "--nodes", "1"]], ids=lambda c: c[0])
def test_a_service_waiting_for_a_broker_that_does_not_answer_quits_on_a_second_ctrl_c(command):
    port = free_port()  # nothing listens there: kafka-python retries for 30 s and more
    proc = subprocess.Popen([sys.executable, "-m", "streamlearn.cli", *command, "--bootstrap", f"127.0.0.1:{port}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 60
        while not any("ECONNREFUSED" in line for line in list(lines)):  # it is trying to connect
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)[-2000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        while not any("Ctrl-C again quits at once" in line for line in list(lines)):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)[-2000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 130  # long before kafka-python's own 30 s bootstrap timeout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(20)  # to the end of its output
    assert "interrupted" in "".join(lines)
