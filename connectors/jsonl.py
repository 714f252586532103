"""``streamlearn connect jsonl``: JSON lines from a file or stdin into node topics.

One JSON object per line: a reading (flat, or features under ``x``) or a
label record (key and label, no features); see :mod:`streamlearn.connectors.schema`.
Blank lines are skipped. A bad line (invalid JSON or UTF-8, NaN, a wrong or
missing field, an unknown label, a line over the schema's ``max_bytes``) goes
to the dead-letter topic with its line number, and the next line is read.
Reading stdin, the connector runs until the input ends (or Ctrl-C).
"""

from __future__ import annotations

import threading

from streamlearn.connectors.errors import RecordError
from streamlearn.connectors.ingest import Ingestor
from streamlearn.connectors.lines import close_input, open_binary, read_lines, replay
from streamlearn.connectors.pacing import Pacer
from streamlearn.connectors.publish import ConnectStats, Publisher
from streamlearn.connectors.routing import NodeRouter
from streamlearn.connectors.schema import StreamSchema
from streamlearn.errors import ConfigError

__all__ = ["run_jsonl"]


def run_jsonl(path, schema: StreamSchema, router: NodeRouter, *, rate: float | None = None,
              speedup: float | None = None, max_gap: float | None = None, limit: int | None = None,
              bootstrap: str | None = None, prefix: str | None = None, settings=None, progress: float = 0.0,
              stop_event: threading.Event | None = None, max_seconds: float | None = None,
              max_pending: int = 100_000, metrics=None) -> ConnectStats:
    """Publish the JSON lines of ``path`` (``-``: stdin; ``.gz``: decompressed); return the counts.

    Parameters are those of :func:`streamlearn.connectors.csv_replay.run_csv` (no delimiter).
    """
    if speedup is not None and schema.time is None:
        raise ConfigError("speedup replays the time field: declare time = \"FIELD\" in the schema")
    stop_event = stop_event or threading.Event()
    pacer = Pacer(rate, speedup, max_gap=max_gap, stop_event=stop_event)
    source = "jsonl:stdin" if str(path) == "-" else f"jsonl:{path}"
    fh = open_binary(path)
    try:
        publisher = Publisher("jsonl", bootstrap=bootstrap, prefix=prefix, settings=settings,
                              nodes=router.known_nodes(), progress=progress, metrics=metrics)
        ingest = Ingestor(schema, router, publisher, pacer=pacer, max_pending=max_pending)

        def handle(lineno: int, line: bytes, size: int | None) -> None:
            if size is not None:
                exc = RecordError(f"line too long (limit {schema.max_bytes} bytes)", field="<payload>",
                                  value=f"{size} bytes", row=lineno)
                publisher.deadletter(line, exc, source=source, offset=lineno)
                return
            if lineno == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]  # a byte order mark, as editors on Windows write
            ingest.payload(line, source=source, offset=lineno, batch=False)

        reason = "error"
        try:
            reason = replay(read_lines(fh, schema.max_bytes), handle, stop_event=stop_event,
                            max_seconds=max_seconds, limit=limit, tick=publisher.tick)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: stop, flush, report
            reason = "interrupted"
        finally:
            stats = publisher.close(reason)
        return stats
    finally:
        close_input(fh)
