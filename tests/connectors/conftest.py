"""Real brokers for the connector tests: Tansu (Kafka) and mosquitto (MQTT). Tests that need them never skip."""

from __future__ import annotations

import socket
import subprocess
import time

import pytest
from servers import require

from streamlearn.kafka.broker import free_port

# broker, settings and prefix: tests/conftest.py


@pytest.fixture
def kafka(settings, prefix):
    """Keyword arguments of every run_* function / Publisher for this test's broker and prefix."""
    return {"settings": settings, "prefix": prefix}


def _consume(settings, topic, expected, timeout=30.0, idle=None):
    """Records of partition 0 of ``topic``: until ``expected`` came, or ``idle`` s without any, or ``timeout``."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**settings.consumer_kwargs())
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        records = []
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while (expected is None or len(records) < expected) and time.monotonic() < deadline:
            got = consumer.poll(timeout_ms=200, max_records=100_000).get(tp, [])
            records.extend(got)
            if got:
                last = time.monotonic()
            elif idle is not None and time.monotonic() - last > idle:
                break
        return records
    finally:
        consumer.close()


@pytest.fixture
def consume(settings):
    """consume(topic, expected=None, timeout=30, idle=None) -> records of partition 0 (assign, no group)."""
    return lambda topic, expected=None, **kw: _consume(settings, topic, expected, **kw)


def _wait_port(host: str, port: int, proc, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mosquitto exited with code {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"mosquitto did not listen on {host}:{port} within {timeout} s")


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory):
    """A real mosquitto on a free loopback port: (host, port). Missing binary: fails in CI, else skips."""
    binary = require("mosquitto", "mosquitto")
    host, port = "127.0.0.1", free_port("127.0.0.1")
    folder = tmp_path_factory.mktemp("mosquitto")
    conf = folder / "mosquitto.conf"
    conf.write_text(f"listener {port} {host}\nallow_anonymous true\npersistence false\nlog_dest stderr\n")
    log = open(folder / "mosquitto.log", "wb")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_port(host, port, proc)
        yield host, port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
