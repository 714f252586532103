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
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

from connectors.errors import RecordError
from connectors.ingest import DEFAULT_MAX_BATCH_BYTES, Ingestor
from connectors.publish import ConnectError, ConnectStats, Publisher
from connectors.routing import NodeRouter
from connectors.schema import StreamSchema
from streamlearn.errors import ConfigError

__all__ = ["IngestServer", "run_http", "INGEST_PATH"]

log = logging.getLogger(__name__)

INGEST_PATH = "/ingest"
ACK_TIMEOUT = 15.0  # seconds to wait for Kafka's acknowledgement of a request's records
_HEAD_BYTES = 64 << 10  # of an oversized body, what is read and dead-lettered


class _Handler(BaseHTTPRequestHandler):
    server_version = "streamlearn-ingest/1"
    protocol_version = "HTTP/1.1"
    ingest_server: "IngestServer"  # set on the subclass made per server

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's name
        log.debug("%s - %s", self.address_string(), format % args)

    def _reply(self, status: int, body: dict, headers=()) -> None:
        data = json.dumps(body, ensure_ascii=True).encode("ascii")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
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
            self.close_connection = True
            self._reply(401, {"error": "missing or wrong bearer token"},
                        [("WWW-Authenticate", 'Bearer realm="streamlearn"')])
        return ok

    def do_GET(self):  # noqa: N802 - the stdlib's name
        if self.path.split("?")[0] != "/health":
            self._reply(404, {"error": f"no such resource; POST readings to {INGEST_PATH}"})
            return
        if not self._authorized():
            return
        self._reply(200, {"status": "ok", **self.ingest_server.stats.to_dict()})

    def do_POST(self):  # noqa: N802
        srv = self.ingest_server
        path = self.path.split("?")[0]
        if path != INGEST_PATH and not path.startswith(INGEST_PATH + "/"):
            self.close_connection = True
            self._reply(404, {"error": f"POST readings to {INGEST_PATH} or {INGEST_PATH}/<node>"})
            return
        if not self._authorized():
            return
        length = self.headers.get("Content-Length")
        if length is None or not length.strip().isdigit():
            self.close_connection = True
            self._reply(411, {"error": "Content-Length required"})
            return
        length = int(length)
        if length > srv.max_body:
            head = self.rfile.read(min(length, _HEAD_BYTES))
            self.close_connection = True  # the rest of the body is not read
            error = RecordError(f"payload too large (limit {srv.max_body} bytes)", field="<payload>",
                                value=f"{length} bytes")
            srv.deadletter(head, error, offset=srv.next_request())
            self._reply(413, {"error": str(error), "field": "<payload>"})
            return
        body = self.rfile.read(length)
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


class IngestServer:
    """The HTTP ingest endpoint: :meth:`start` serves in a thread, :meth:`run` until stopped.

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
    bootstrap, prefix, settings, progress, max_pending, metrics
        As for :func:`connectors.csv_replay.run_csv`.
    """

    def __init__(self, schema: StreamSchema, router: NodeRouter, *, host: str = "127.0.0.1", port: int = 8080,
                 token: str | None = None, max_body: int = DEFAULT_MAX_BATCH_BYTES, bootstrap: str | None = None,
                 prefix: str | None = None, settings=None, progress: float = 0.0, max_pending: int = 100_000,
                 metrics=None):
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError(f"port must be 0..65535, got {port!r}")
        if token is not None and (not isinstance(token, str) or not token.strip()):
            raise ConfigError("token must be a non-empty string (or None: no authentication)")
        if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 2:
            raise ConfigError(f"max_body must be an integer >= 2, got {max_body!r}")
        self.token = None if token is None else token.strip()
        self.max_body = max_body
        self.publisher = Publisher("http", bootstrap=bootstrap, prefix=prefix, settings=settings,
                                   nodes=router.known_nodes(), progress=progress, metrics=metrics)
        self._ingestor = Ingestor(schema, router, self.publisher, max_pending=max_pending, max_batch_bytes=max_body)
        self._lock = threading.Lock()  # one request at a time through the ingestor (seq, round-robin, labels)
        self._requests = 0
        handler = type("Handler", (_Handler,), {"ingest_server": self})
        try:
            self._httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            self.publisher.close("error")
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def stats(self) -> ConnectStats:
        return self.publisher.stats

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def next_request(self) -> int:
        with self._lock:
            self._requests += 1
            return self._requests

    def ingest(self, body: bytes, **route):
        with self._lock:
            self._requests += 1
            return self._ingestor.payload(body, source=f"http:{INGEST_PATH}", offset=self._requests, **route)

    def deadletter(self, raw: bytes, error, offset: int) -> None:
        self.publisher.deadletter(raw, error, source=f"http:{INGEST_PATH}", offset=offset)

    def start(self) -> "IngestServer":
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="streamlearn-ingest", daemon=True)
        self._thread.start()
        return self

    def stop(self, reason: str = "stop") -> ConnectStats:
        """Stop serving, flush Kafka, return the counts."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._httpd.server_close()
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
