"""Line-oriented input for the file connectors: open a path (``-``: stdin, ``.gz``: gzip), read bounded lines."""

from __future__ import annotations

import gzip
import sys
import time
from pathlib import Path
from typing import BinaryIO, Iterator

from streamlearn.errors import ConfigError

__all__ = ["open_binary", "read_lines", "replay", "close_input"]

_SKIP_CHUNK = 1 << 16


def open_binary(path) -> BinaryIO:
    """A binary reader of ``path``: ``-`` is stdin, ``*.gz`` is decompressed. ConfigError if it cannot be opened."""
    if str(path) == "-":
        return sys.stdin.buffer
    path = Path(path)
    try:
        if path.suffix == ".gz":
            fh = gzip.open(path, "rb")
            fh.peek(1)  # a file that is not gzip fails here, not in the middle of the replay
            return fh
        return open(path, "rb")
    except (OSError, EOFError) as exc:
        raise ConfigError(f"cannot read {str(path)!r}: {getattr(exc, 'strerror', None) or exc}") from None


def close_input(fh) -> None:
    """Close what :func:`open_binary` opened (never stdin)."""
    if fh is not sys.stdin.buffer:
        fh.close()


def read_lines(fh: BinaryIO, max_bytes: int) -> Iterator[tuple]:
    """Yield ``(line_number, line, size)`` from 1, without the line ending.

    A line longer than ``max_bytes`` is never held whole: it comes cut to
    ``max_bytes`` with ``size`` its full length (> max_bytes), so the caller
    can dead-letter it; otherwise ``size`` is None.

    Examples
    --------
    >>> import io
    >>> list(read_lines(io.BytesIO(b"a,b\\r\\n" + b"x" * 10 + b"\\nlast"), max_bytes=4))
    [(1, b'a,b', None), (2, b'xxxx', 11), (3, b'last', None)]
    """
    n = 0
    while True:
        line = fh.readline(max_bytes + 2)  # room for the content and "\r\n"
        if not line:
            return
        n += 1
        content = line.rstrip(b"\r\n")
        if len(content) <= max_bytes:
            yield n, content, None
            continue
        size = len(line)
        while not line.endswith(b"\n"):  # drop the rest of the long line, a chunk at a time
            line = fh.readline(_SKIP_CHUNK)
            if not line:
                break
            size += len(line)
        yield n, content[:max_bytes], size


def replay(lines: Iterator[tuple], handle, *, stop_event=None, max_seconds: float | None = None,
           limit: int | None = None, tick=None) -> str:
    """Feed ``(line_number, line, size)`` to ``handle`` until the end, a stop, a time limit or ``limit`` lines.

    Blank lines are skipped and not counted. Returns why it stopped: ``"done"``,
    ``"stop"``, ``"max_seconds"`` or ``"limit"``.

    Examples
    --------
    >>> seen = []
    >>> replay(iter([(1, b"a", None), (2, b"", None), (3, b"b", None)]), lambda n, l, s: seen.append(n), limit=5)
    'done'
    >>> seen
    [1, 3]
    """
    t0 = time.monotonic()
    done = 0
    for lineno, line, size in lines:
        if stop_event is not None and stop_event.is_set():
            return "stop"
        if max_seconds is not None and time.monotonic() - t0 >= max_seconds:
            return "max_seconds"
        if limit is not None and done >= limit:
            return "limit"
        if size is None and not line.strip():
            continue
        done += 1
        handle(lineno, line, size)
        if tick is not None:
            tick()
    return "done"
