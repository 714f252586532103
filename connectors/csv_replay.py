"""``streamlearn connect csv``: replay a CSV/TSV file (or stdin) into node topics.

The first line names the columns; every column is a feature, the label, the
key, the time or an ``ignore`` field of the schema (checked before the first
row is sent). The delimiter is guessed from the header (the most frequent of
``,`` tab ``;`` ``|``) unless given. Rows are replayed as fast as possible, at
a fixed ``rate``, or at the pace of the schema's time column sped up
``speedup`` times. A bad row (wrong cell count, bad value, invalid UTF-8, an
overlong line) goes to the dead-letter topic with its line number; the replay
goes on. Rows are read one line at a time: quoted cells must not span lines.
"""

from __future__ import annotations

import csv
import threading

from streamlearn.connectors.errors import RecordError
from streamlearn.connectors.ingest import Ingestor
from streamlearn.connectors.lines import close_input, open_binary, read_lines, replay
from streamlearn.connectors.pacing import Pacer
from streamlearn.connectors.publish import ConnectStats, Publisher
from streamlearn.connectors.routing import NodeRouter
from streamlearn.connectors.schema import StreamSchema
from streamlearn.errors import ConfigError
# shared with streamlearn's CSV source, so both read a file the same way
from streamlearn.records import parse_delimiter, sniff_delimiter

__all__ = ["run_csv", "CsvFormat", "sniff_delimiter", "parse_delimiter"]

class CsvFormat:
    """The columns of a CSV file checked against a schema, and the parser of its rows.

    Examples
    --------
    >>> schema = StreamSchema(["a", "b"], label="c", classes=["x", "y"])
    >>> fmt = CsvFormat(b"a;b;c", schema)
    >>> fmt.delimiter, fmt.parse_row(b"1;2.5;y")
    (';', {'a': '1', 'b': '2.5', 'c': 'y'})
    >>> fmt.parse_row(b"1;2")
    Traceback (most recent call last):
    ...
    streamlearn.connectors.errors.RecordError: expected 3 cells, got 2 (field '<row>', value '1;2')
    """

    def __init__(self, header: bytes, schema: StreamSchema, delimiter: str | None = None):
        try:
            text = bytes(header).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"the CSV header is not UTF-8: {exc.reason}") from None
        self.delimiter = delimiter or sniff_delimiter(text)
        try:
            names = [c.strip() for c in next(csv.reader([text], delimiter=self.delimiter))]
        except (csv.Error, StopIteration) as exc:
            raise ConfigError(f"cannot read the CSV header {text[:80]!r}: {exc}") from None
        if len(set(names)) != len(names):
            raise ConfigError(f"the CSV header names a column twice: {names}")
        unknown = [n for n in names if n not in schema.fields()]
        if unknown:
            raise ConfigError(f"CSV columns {unknown} are not in the schema: declare them as features, or list "
                              f"them under ignore (delimiter {self.delimiter!r}; header {names})")
        missing = [n for n in schema.feature_names + [schema.label] if n not in names]
        if missing:
            raise ConfigError(f"the CSV file has no column {missing} declared in the schema (header {names})")
        self.columns = names

    def parse_row(self, line: bytes) -> dict:
        """Cells of one line by column name (stripped); RecordError naming what is wrong."""
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RecordError(f"not UTF-8: {exc.reason}", field="<payload>", value=line[:40]) from None
        try:
            cells = next(csv.reader([text], delimiter=self.delimiter, strict=True))
        except (csv.Error, StopIteration) as exc:
            raise RecordError(f"not a CSV row: {exc}", field="<row>", value=text[:80]) from None
        if len(cells) != len(self.columns):
            raise RecordError(f"expected {len(self.columns)} cells, got {len(cells)}", field="<row>", value=text[:80])
        return {name: cell.strip() for name, cell in zip(self.columns, cells)}


def run_csv(path, schema: StreamSchema, router: NodeRouter, *, delimiter: str | None = None,
            rate: float | None = None, speedup: float | None = None, max_gap: float | None = None,
            limit: int | None = None, bootstrap: str | None = None, prefix: str | None = None, settings=None,
            progress: float = 0.0, stop_event: threading.Event | None = None,
            max_seconds: float | None = None, max_pending: int = 100_000, metrics=None) -> ConnectStats:
    """Replay a CSV file (``-``: stdin; ``.gz``: decompressed) into node topics; return the counts.

    Parameters
    ----------
    path
        The file.
    schema, router
        The stream's schema and the node mapping.
    delimiter
        One character; None: guessed from the header.
    rate, speedup, max_gap
        Pacing (:class:`~streamlearn.connectors.pacing.Pacer`); ``speedup`` needs the schema's ``time``.
    limit
        Stop after this many data lines.
    bootstrap, prefix, settings, progress, metrics
        Kafka and output (:class:`~streamlearn.connectors.publish.Publisher`); ``metrics`` a
        :class:`~streamlearn.metrics.ConnectorMetrics` or None.
    stop_event, max_seconds
        Stop early (the counts so far are returned).
    max_pending
        Unlabelled keyed readings remembered for their late labels.
    """
    if speedup is not None and schema.time is None:
        raise ConfigError("speedup replays the time field: declare time = \"COLUMN\" in the schema")
    stop_event = stop_event or threading.Event()
    pacer = Pacer(rate, speedup, max_gap=max_gap, stop_event=stop_event)
    source = f"csv:{path}"
    fh = open_binary(path)
    try:
        lines = read_lines(fh, schema.max_bytes)
        first = next(lines, None)
        if first is None:
            raise ConfigError(f"{path}: empty file, expected a header line")
        if first[2] is not None:
            raise ConfigError(f"{path}: header line longer than max_bytes {schema.max_bytes}")
        fmt = CsvFormat(first[1], schema, delimiter)
        publisher = Publisher("csv", bootstrap=bootstrap, prefix=prefix, settings=settings,
                              nodes=router.known_nodes(), progress=progress, metrics=metrics)
        ingest = Ingestor(schema, router, publisher, pacer=pacer, max_pending=max_pending)

        def handle(lineno: int, line: bytes, size: int | None) -> None:
            try:
                if size is not None:
                    raise RecordError(f"line too long (limit {schema.max_bytes} bytes)", field="<payload>",
                                      value=f"{size} bytes")
                row = fmt.parse_row(line)
            except RecordError as exc:
                publisher.deadletter(line, exc.with_row(lineno), source=source, offset=lineno)
                return
            ingest.record(row, line, source=source, offset=lineno, text=True)

        reason = "error"
        try:
            reason = replay(lines, handle, stop_event=stop_event, max_seconds=max_seconds, limit=limit,
                            tick=publisher.tick)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: stop, flush, report
            reason = "interrupted"
        finally:
            stats = publisher.close(reason)
        return stats
    finally:
        close_input(fh)
