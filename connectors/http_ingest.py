"""``streamlearn connect http``: an HTTP endpoint that publishes POSTed readings into node topics.

==========================  ==================================================================
Request                     Answer
==========================  ==================================================================
``POST /ingest``            body: one JSON reading or label record, or an array of them; the
                            node comes from the router (fixed, round-robin, a field)
``POST /ingest/<value>``    the same; ``<value>`` chooses the node (a node id, or through
                            ``nodes`` / the node map)
``GET /health``             ``200`` and the counts
==========================  ==================================================================

``200 {"accepted": n, "delivered": n}`` once every record of the request is
acknowledged by Kafka. A bad record is a ``400`` naming the field::

    {"error": "must be a number (field 'temp', value 'warm')", "field": "temp",
     "accepted": 2, "rejected": 1,
     "errors": [{"index": 1, "field": "temp", "error": "must be a number (field 'temp', value 'warm')"}]}

The good records of a batch are delivered all the same; the bad ones go to
the dead-letter topic and are counted. A body over ``max_body`` bytes is a
``413``, dead-lettered (its first bytes) and counted. With a token, requests
without ``Authorization: Bearer <token>`` get ``401`` and are not published.
Kafka unreachable: ``503``. The server binds 127.0.0.1 unless told otherwise.

Connections: every read and write waits at most ``read_timeout`` seconds, so
an idle keep-alive connection is closed and a body that stops arriving is
answered ``408`` (nothing of it is published). A declared ``Content-Length``
over ``max_body`` is answered ``413`` at once, without waiting for the body
(what has already arrived is dead-lettered). ``max_connections`` worker
threads serve one connection each; further connections wait in the listen
queue. Requests are checked and published in parallel, so a large body does
not hold up a small one. Clients that hang up or time out are counted
(``GET /health`` -> ``http``) and logged at debug level only.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import queue
import re
import selectors
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import unquote

from streamlearn.connectors.errors import RecordError
from streamlearn.connectors.ingest import DEFAULT_MAX_BATCH_BYTES, Ingestor
from streamlearn.connectors.publish import ConnectError, ConnectStats, Publisher
from streamlearn.connectors.routing import NodeRouter
from streamlearn.connectors.schema import StreamSchema
from streamlearn.errors import ConfigError

__all__ = ["IngestServer", "run_http", "INGEST_PATH", "DEFAULT_READ_TIMEOUT", "DEFAULT_MAX_CONNECTIONS"]

log = logging.getLogger(__name__)

INGEST_PATH = "/ingest"
ACK_TIMEOUT = 15.0  # seconds to wait for Kafka's acknowledgement of a request's records
DEFAULT_READ_TIMEOUT = 10.0
DEFAULT_MAX_CONNECTIONS = 64
_HEAD_BYTES = 64 << 10  # of an oversized body, what is dead-lettered (only what has already arrived)
_CHUNK = 64 << 10
_LISTEN_QUEUE = 512  # connections waiting for a free worker wait here, in the kernel
# Closing a socket with unread input makes the kernel send RST, which can destroy our answer before the client
# reads it; so after answering we discard what still comes, for a short, bounded while ("lingering close").
_LINGER_SECONDS = 2.0
_LINGER_BYTES = 4 << 20
_LENGTH_RE = re.compile(r"[0-9]+")  # str.isdigit() also takes '²' and other digits int() refuses
_HANGUPS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)


class _Handler(BaseHTTPRequestHandler):
    server_version = "streamlearn-ingest/1"
    protocol_version = "HTTP/1.1"
    ingest_server: "IngestServer"  # set on the subclass made per server
    timeout = DEFAULT_READ_TIMEOUT  # every read and write on the socket; set per server (read_timeout)
    unread = False  # answered without reading the body: the server lingers before closing (IngestServer._close)

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's name
        log.debug("%s - %s", self.address_string(), format % args)

    def _reply(self, status: int, body: dict, headers=()) -> None:
        data = json.dumps(body, ensure_ascii=True).encode("ascii")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        token = self.ingest_server.token
        if token is None:
            return True
        given = self.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode("utf-8", "replace"),
                                                                token.encode("utf-8"))
        if not ok:
            self.close_connection = self.unread = True
            self._reply(401, {"error": "missing or wrong bearer token"},
                        [("WWW-Authenticate", 'Bearer realm="streamlearn"')])
        return ok

    def _arrived(self, limit: int) -> bytes:
        """Up to ``limit`` bytes of the body that have already arrived, without waiting for more."""
        parts, got = [], 0
        self.connection.settimeout(0.0)
        try:
            while got < limit:
                chunk = self.rfile.read1(min(limit - got, _CHUNK))
                if not chunk:  # nothing more buffered (or the client closed)
                    break
                parts.append(chunk)
                got += len(chunk)
        except (BlockingIOError, OSError):
            pass
        finally:
            self.connection.settimeout(self.timeout)
        return b"".join(parts)

    def _read_body(self, length: int) -> bytes | None:
        """The body, read in chunks (a declared length is never allocated up front); None if it did not come."""
        srv = self.ingest_server
        parts, got = [], 0
        try:
            while got < length:
                chunk = self.rfile.read1(min(length - got, _CHUNK))
                if not chunk:
                    break
                parts.append(chunk)
                got += len(chunk)
        except TimeoutError:
            srv._count("timeouts")
            log.debug("%s: body stopped arriving (%d of %d bytes)", self.address_string(), got, length)
            self.close_connection = True
            self._answer_quietly(408, {"error": f"request body stopped arriving: {got} of {length} bytes, nothing "
                                                f"for {self.timeout:g} s; nothing of it was published",
                                       "field": "<payload>"})
            return None
        if got < length:
            srv._count("hangups")
            log.debug("%s: body ended after %d of %d bytes", self.address_string(), got, length)
            self.close_connection = True
            self._answer_quietly(400, {"error": f"request body ended after {got} of {length} bytes; nothing of "
                                                f"it was published", "field": "<payload>"})
            return None
        return b"".join(parts)

    def _answer_quietly(self, status: int, body: dict) -> None:
        try:  # the client may be gone already: that is what we are telling it about
            self._reply(status, body)
        except OSError:
            pass

    def do_GET(self):  # noqa: N802 - the stdlib's name
        if self.path.split("?")[0] != "/health":
            self._reply(404, {"error": f"no such resource; POST readings to {INGEST_PATH}"})
            return
        if not self._authorized():
            return
        srv = self.ingest_server
        self._reply(200, {"status": "ok", **srv.stats.to_dict(), "http": srv.connections()})

    def do_POST(self):  # noqa: N802
        srv = self.ingest_server
        path = self.path.split("?")[0]
        if path != INGEST_PATH and not path.startswith(INGEST_PATH + "/"):
            self.close_connection = self.unread = True
            self._reply(404, {"error": f"POST readings to {INGEST_PATH} or {INGEST_PATH}/<node>"})
            return
        if not self._authorized():
            return
        if self.headers.get("Transfer-Encoding") is not None:
            self.close_connection = self.unread = True
            self._reply(411, {"error": "Content-Length required (chunked bodies are not accepted)"})
            return
        text = (self.headers.get("Content-Length") or "").strip()
        if not _LENGTH_RE.fullmatch(text):
            self.close_connection = self.unread = True
            self._reply(411, {"error": "Content-Length required"})
            return
        digits = text.lstrip("0") or "0"
        length = int(digits) if len(digits) <= 18 else None  # longer: over any limit (int() of 5,000 digits raises)
        if length is None or length > srv.max_body:
            # Answered at once: the body is not awaited (a Content-Length of 10^30 with 5 bytes sent would wait
            # forever); what has already arrived is dead-lettered.
            head = self._arrived(_HEAD_BYTES)
            self.close_connection = self.unread = True
            size = f"{digits} bytes" if len(digits) <= 40 else f"a {len(digits)}-digit number of bytes"
            error = RecordError(f"payload too large (limit {srv.max_body} bytes)", field="<payload>", value=size)
            srv.deadletter(head, error, offset=srv.next_request())
            self._reply(413, {"error": str(error), "field": "<payload>"})
            return
        body = self._read_body(length)
        if body is None:
            return
        route = {}
        if path != INGEST_PATH:
            route = {"route_value": unquote(path[len(INGEST_PATH) + 1:]), "route_field": "<path>"}
        try:
            outcome = srv.ingest(body, **route)
            for future in outcome.futures:
                future.get(timeout=ACK_TIMEOUT)
        except ConnectError as exc:
            self._reply(503, {"error": str(exc)})
            return
        except Exception as exc:  # kafka.errors.KafkaError from future.get: not delivered
            self._reply(503, {"error": f"Kafka did not acknowledge the records: {exc!r}"})
            return
        if outcome.ok:
            self._reply(200, {"accepted": outcome.accepted, "delivered": outcome.accepted})
            return
        errors = [{"index": i, "field": exc.field, "error": str(exc)} for i, exc in outcome.errors]
        first = outcome.errors[0][1]
        self._reply(400, {"error": str(first), "field": first.field, "accepted": outcome.accepted,
                          "rejected": len(errors), "errors": errors[:100]})


class _HTTPServer(HTTPServer):
    request_queue_size = _LISTEN_QUEUE

    def finish_request(self, request, client_address):
        return self.RequestHandlerClass(request, client_address, self)  # the handler: did it leave a body unread?


class IngestServer:
    """The HTTP ingest endpoint: :meth:`start` serves in threads, :meth:`run` until stopped.

    ``max_connections`` worker threads serve one connection each; further
    connections wait in the listen queue until a worker is free. Requests are
    parsed, checked and published in parallel (the publisher, the router's
    turn and the late-label table take short locks of their own).

    Parameters
    ----------
    schema, router
        The stream's schema and the node mapping.
    host, port
        Where to listen; port 0 picks a free one (see :attr:`url`).
    token
        Bearer token every request must carry; None: no authentication.
    max_body
        Largest request body, in bytes.
    read_timeout
        Seconds any read or write on a connection may wait: an idle keep-alive
        connection is then closed, a body that stops arriving answered ``408``.
    max_connections
        Connections served at once (worker threads).
    bootstrap, prefix, settings, progress, max_pending, metrics
        As for :func:`streamlearn.connectors.csv_replay.run_csv`.
    """

    def __init__(self, schema: StreamSchema, router: NodeRouter, *, host: str = "127.0.0.1", port: int = 8080,
                 token: str | None = None, max_body: int = DEFAULT_MAX_BATCH_BYTES,
                 read_timeout: float = DEFAULT_READ_TIMEOUT, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 bootstrap: str | None = None, prefix: str | None = None, settings=None, progress: float = 0.0,
                 max_pending: int = 100_000, metrics=None):
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError(f"port must be 0..65535, got {port!r}")
        if token is not None and (not isinstance(token, str) or not token.strip()):
            raise ConfigError("token must be a non-empty string (or None: no authentication)")
        if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 2:
            raise ConfigError(f"max_body must be an integer >= 2, got {max_body!r}")
        if isinstance(read_timeout, bool) or not isinstance(read_timeout, (int, float)) \
                or not math.isfinite(read_timeout) or read_timeout <= 0:
            raise ConfigError(f"read_timeout must be a number of seconds > 0, got {read_timeout!r}")
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) or max_connections < 1:
            raise ConfigError(f"max_connections must be an integer >= 1, got {max_connections!r}")
        self.token = None if token is None else token.strip()
        self.max_body = max_body
        self.read_timeout = float(read_timeout)
        self.max_connections = max_connections
        self.publisher = Publisher("http", bootstrap=bootstrap, prefix=prefix, settings=settings,
                                   nodes=router.known_nodes(), progress=progress, metrics=metrics)
        self._ingestor = Ingestor(schema, router, self.publisher, max_pending=max_pending,
                                  max_batch_bytes=max_body)
        # No lock around a whole request: the ingestor locks what requests share (late labels, the turn).
        self._lock = threading.Lock()  # the counters below
        self._requests = 0
        self._counts = {"timeouts": 0, "hangups": 0}
        self._active = self._peak = 0
        self._conns: set = set()
        handler = type("Handler", (_Handler,), {"ingest_server": self, "timeout": self.read_timeout})
        try:
            self._httpd = _HTTPServer((host, port), handler)
        except OSError as exc:
            self.publisher.close("error")
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._slots = threading.Semaphore(max_connections)  # taken before accept, given back when a connection ends
        self._stopping = threading.Event()
        self._acceptor: threading.Thread | None = None
        self._workers: list[threading.Thread] = []

    @property
    def stats(self) -> ConnectStats:
        return self.publisher.stats

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def connections(self) -> dict:
        """Connection counts: ``active`` now, ``peak``, ``max``; ``timeouts`` (a request's body or its
        answer waited ``read_timeout``; idle keep-alive connections closed are not counted) and ``hangups``
        (the client closed or reset the connection mid-request)."""
        with self._lock:
            return {"active": self._active, "peak": self._peak, "max": self.max_connections, **self._counts}

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def next_request(self) -> int:
        with self._lock:
            self._requests += 1
            return self._requests

    def ingest(self, body: bytes, **route):
        return self._ingestor.payload(body, source=f"http:{INGEST_PATH}", offset=self.next_request(), **route)

    def deadletter(self, raw: bytes, error, offset: int) -> None:
        self.publisher.deadletter(raw, error, source=f"http:{INGEST_PATH}", offset=offset)

    # ---- connections ---------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        sock = self._httpd.socket
        with selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_READ)
            while not self._stopping.is_set():
                if not self._slots.acquire(timeout=0.2):
                    continue  # every worker busy: new connections wait in the listen queue
                handed = False
                try:
                    if selector.select(0.2):
                        try:
                            conn, addr = sock.accept()
                        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                            pass
                        except OSError as exc:  # out of file descriptors: back off instead of spinning
                            log.warning("HTTP ingest: accept failed: %s", exc)
                            self._stopping.wait(0.5)
                        else:
                            self._queue.put((conn, addr))
                            handed = True
                finally:
                    if not handed:
                        self._slots.release()

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self._serve(*item)
            finally:
                self._slots.release()

    def _serve(self, conn: socket.socket, addr) -> None:
        with self._lock:
            if self._stopping.is_set():
                conn.close()
                return
            self._conns.add(conn)
            self._active += 1
            self._peak = max(self._peak, self._active)
        linger = False
        try:
            handler = self._httpd.finish_request(conn, addr)  # every request of this connection
            linger = handler.unread
        except _HANGUPS as exc:
            self._count("hangups")
            log.debug("HTTP ingest: client %s hung up: %r", addr[0], exc)
        except TimeoutError:
            self._count("timeouts")
            log.debug("HTTP ingest: client %s: a write waited %g s", addr[0], self.read_timeout)
        except Exception:  # a bug, not a client: say so, and keep serving
            log.exception("HTTP ingest: error serving %s", addr[0])
        finally:
            with self._lock:
                self._conns.discard(conn)
                self._active -= 1
            self._close(conn, linger)

    def _close(self, conn: socket.socket, linger: bool) -> None:
        try:
            conn.shutdown(socket.SHUT_WR)  # our last answer is complete
            if not linger:
                return
            deadline = time.monotonic() + min(_LINGER_SECONDS, self.read_timeout)
            drained = 0
            while drained < _LINGER_BYTES:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                conn.settimeout(left)
                data = conn.recv(_CHUNK)
                if not data:
                    break
                drained += len(data)
        except OSError:
            pass
        finally:
            conn.close()

    # ---- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> "IngestServer":
        """Serve in background threads: one accepting, ``max_connections`` serving."""
        if self._acceptor is not None:
            return self
        self._httpd.socket.setblocking(False)
        self._workers = [threading.Thread(target=self._work, name=f"streamlearn-ingest-{i}", daemon=True)
                         for i in range(self.max_connections)]
        for worker in self._workers:
            worker.start()
        self._acceptor = threading.Thread(target=self._accept_loop, name="streamlearn-ingest", daemon=True)
        self._acceptor.start()
        return self

    def stop(self, reason: str = "stop") -> ConnectStats:
        """Stop accepting, let the requests being ingested finish, flush Kafka, return the counts."""
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join()
            self._acceptor = None
        self._httpd.server_close()
        with self._lock:
            for conn in self._conns:
                try:  # idle keep-alive connections end now; a request past its body still gets its answer
                    conn.shutdown(socket.SHUT_RD)
                except OSError:
                    pass
        for _ in self._workers:
            self._queue.put(None)
        deadline = time.monotonic() + ACK_TIMEOUT + 2 * self.read_timeout + _LINGER_SECONDS
        for worker in self._workers:
            worker.join(timeout=max(0.0, deadline - time.monotonic()))
        self._workers = []
        return self.publisher.close(reason)

    def run(self, stop_event: threading.Event | None = None, max_seconds: float | None = None) -> ConnectStats:
        """Serve until ``stop_event``, ``max_seconds`` or Ctrl-C; return the counts."""
        stop_event = stop_event or threading.Event()
        self.start()
        t0, reason = time.monotonic(), "stop"
        try:
            while not stop_event.wait(0.2):
                if max_seconds is not None and time.monotonic() - t0 >= max_seconds:
                    reason = "max_seconds"
                    break
                self.publisher.tick()
        except KeyboardInterrupt:
            reason = "interrupted"
        return self.stop(reason)

    def __enter__(self) -> "IngestServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def run_http(schema: StreamSchema, router: NodeRouter, *, stop_event: threading.Event | None = None,
             max_seconds: float | None = None, **options) -> ConnectStats:
    """Serve an :class:`IngestServer` (``options``: its parameters) until stopped; return the counts."""
    server = IngestServer(schema, router, **options)
    print(f"ingest endpoint: POST {server.url}{INGEST_PATH}", flush=True)
    return server.run(stop_event, max_seconds)
