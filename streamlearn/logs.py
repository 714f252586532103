"""Logging set up once, at the edge of every command: ``--log-level`` and ``--log-format text|json``.

:func:`add_log_args` puts both options on a parser and on every one of its subcommands (so
``streamlearn --log-level DEBUG node ...`` and ``streamlearn node ... --log-level DEBUG`` both work);
``main()`` then calls :func:`setup_logging` with what was parsed, before the command runs. The defaults
come from ``STREAMLEARN_LOG_LEVEL`` and ``STREAMLEARN_LOG_FORMAT``, so processes a command starts (the
demo's nodes) log the same way when it exports them (:func:`export_log_env`).

In ``json`` every record is one JSON object on one line of stderr, with ``time`` (UTC, ISO 8601),
``level``, ``logger``, ``message`` and, when the record carries one, ``exception`` (the traceback text).

kafka-python (logger ``kafka``) logs an ERROR each time a broker goes away and the services retry and say
so themselves: it is held at WARNING (or the chosen level, when higher) unless the level is DEBUG, and the
tracebacks it attaches to its lines (one per connection a vanished broker reset) and the ERROR of a closing
client's cancelled metadata refresh show only at DEBUG.

Examples
--------
>>> import io, json, logging
>>> out = io.StringIO()
>>> setup_logging("INFO", "json", stream=out)
>>> logging.getLogger("streamlearn.demo").info("node %d up", 3)
>>> logging.getLogger("streamlearn.demo").debug("not shown")
>>> line = json.loads(out.getvalue())
>>> line["level"], line["logger"], line["message"]
('INFO', 'streamlearn.demo', 'node 3 up')
>>> logging.getLogger("kafka").getEffectiveLevel() == logging.WARNING
True
>>> setup_logging("loud", "text")
Traceback (most recent call last):
...
streamlearn.errors.ConfigError: --log-level: expected one of DEBUG, INFO, WARNING, ERROR, got 'loud'
>>> reset_logging()
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import datetime, timezone

from streamlearn.errors import ConfigError

__all__ = ["FORMATS", "LEVELS", "JsonFormatter", "add_log_args", "export_log_env", "reset_logging",
           "setup_logging"]

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMATS = ("text", "json")
LEVEL_ENV = "STREAMLEARN_LOG_LEVEL"
FORMAT_ENV = "STREAMLEARN_LOG_FORMAT"
TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
#: loggers of third-party libraries held at WARNING unless the level is DEBUG
NOISY = ("kafka",)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time``, ``level``, ``logger``, ``message``, ``exception`` when any."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def _choice(value: str | None, choices: tuple, flag: str, upper: bool) -> str:
    text = (value or "").strip()
    text = text.upper() if upper else text.lower()
    if text not in choices:
        raise ConfigError(f"{flag}: expected one of {', '.join(choices)}, got {value!r}")
    return text


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a record comes (a test's capture may have replaced it since)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _QuietKafka(logging.Filter):
    """kafka-python's lines without what only repeats them or reports nothing (both kept for DEBUG).

    It attaches a traceback to the ERROR it logs for every connection a vanished broker reset: the line says
    what happened, the traceback only repeats it many times over. It logs an ERROR when a client that closes
    cancels its own metadata refresh (``Metadata refresh: failed Cancelled``): nothing failed (the demo's
    producer, a thread of the demo, printed it on the terminal as it ended)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".", 1)[0] not in NOISY:
            return True
        if record.name == "kafka.cluster" and str(record.msg).startswith("Metadata refresh: failed") \
                and isinstance(record.args, tuple) and record.args and type(record.args[0]).__name__ == "Cancelled":
            return False
        if record.exc_info:
            record.exc_info, record.exc_text = None, None
        return True


def _mark(handler: logging.Handler) -> logging.Handler:
    handler._streamlearn = True  # type: ignore[attr-defined]  # ours: replaced, never stacked, on a second setup
    return handler


_before: list[int] = []  # the root level before the first setup_logging, for reset_logging


def reset_logging() -> None:
    """Undo :func:`setup_logging`: its handler removed, the root and noisy loggers' levels as before."""
    root = logging.getLogger()
    for h in [h for h in root.handlers if getattr(h, "_streamlearn", False)]:
        root.removeHandler(h)
    if _before:
        root.setLevel(_before.pop())
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.NOTSET)


def setup_logging(level: str | None = None, fmt: str | None = None, stream=None) -> None:
    """Send every record at ``level`` or above to ``stream`` (stderr), as text or JSON lines.

    Parameters
    ----------
    level
        ``DEBUG``, ``INFO``, ``WARNING`` or ``ERROR`` (any case); default ``STREAMLEARN_LOG_LEVEL``,
        else ``INFO``.
    fmt
        ``text`` or ``json``; default ``STREAMLEARN_LOG_FORMAT``, else ``text``.
    stream
        Where to write; default ``sys.stderr`` (the one current when each record comes).

    Calling it again replaces the previous setup (one handler, never two).
    Raises :class:`~streamlearn.errors.ConfigError` naming the option and the value when one is unknown.
    """
    flag = "--log-level" if level is not None else LEVEL_ENV
    level = _choice(level if level is not None else os.environ.get(LEVEL_ENV, "INFO"), LEVELS, flag, True)
    flag = "--log-format" if fmt is not None else FORMAT_ENV
    fmt = _choice(fmt if fmt is not None else os.environ.get(FORMAT_ENV, "text"), FORMATS, flag, False)
    reset_logging()
    _before.append(logging.getLogger().level)
    handler = _mark(_StderrHandler() if stream is None else logging.StreamHandler(stream))
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    if level != "DEBUG":
        handler.addFilter(_QuietKafka())
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(level)
    noisy = logging.DEBUG if level == "DEBUG" else max(logging.WARNING, logging.getLevelName(level))
    for name in NOISY:
        logging.getLogger(name).setLevel(noisy)


def export_log_env(level: str | None, fmt: str | None) -> None:
    """Put the chosen level and format in the environment, for the processes a command starts."""
    if level is not None:
        os.environ[LEVEL_ENV] = level.upper()
    if fmt is not None:
        os.environ[FORMAT_ENV] = fmt.lower()


def _upper(text: str) -> str:
    return text.upper()


def add_log_args(parser: argparse.ArgumentParser) -> None:
    """``--log-level`` and ``--log-format`` on ``parser`` and, recursively, on each of its subcommands.

    The value given last on the command line wins; an option not given leaves ``None`` (the environment,
    else the default, is read by :func:`setup_logging`).

    Examples
    --------
    >>> p = argparse.ArgumentParser(prog="x")
    >>> sub = p.add_subparsers(dest="command")
    >>> _ = sub.add_parser("run")
    >>> add_log_args(p)
    >>> a = p.parse_args(["--log-level", "debug", "run", "--log-format", "json"])
    >>> a.log_level, a.log_format
    ('DEBUG', 'json')
    >>> p.parse_args(["run"]).log_level is None
    True
    """
    _add(parser, top=True)


def _add(parser: argparse.ArgumentParser, top: bool) -> None:
    # On a subcommand the default is SUPPRESS: a value given before the subcommand is then kept.
    default = None if top else argparse.SUPPRESS
    if not any("--log-level" in a.option_strings for a in parser._actions):
        g = parser.add_argument_group("logging")
        g.add_argument("--log-level", type=_upper, choices=LEVELS, default=default,
                       help=f"log records at this level and above, on stderr (default: {LEVEL_ENV}, else INFO)")
        g.add_argument("--log-format", type=str.lower, choices=FORMATS, default=default,
                       help=f"text lines, or one JSON object per line (default: {FORMAT_ENV}, else text)")
    seen = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                if id(child) not in seen:  # an alias names the same parser
                    seen.add(id(child))
                    _add(child, top=False)
