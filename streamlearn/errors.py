"""The one root exception of streamlearn, and its few kinds."""

from __future__ import annotations

__all__ = ["StreamlearnError", "ConfigError", "BadRecordError"]


class StreamlearnError(Exception):
    """Root of every error streamlearn raises on purpose."""


class ConfigError(StreamlearnError, ValueError):
    """A setting (CLI flag, env var, constructor argument) has a bad value."""


class BadRecordError(StreamlearnError, ValueError):
    """A record of an input stream cannot be used.

    The message names where (``row``), which field (``column``) and the value,
    so a person can find and fix it.
    """

    def __init__(self, reason: str, *, row: int | None = None, column: str | None = None, value=None,
                 skippable: bool = True):
        self.reason = reason
        self.skippable = skippable  # False: not a record a skip policy can pass over (a file's header)
        self.row = row
        self.column = column
        self.value = value
        where = []
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        if value is not None or column is not None:
            where.append(f"value {value!r}")
        super().__init__(f"{reason} ({', '.join(where)})" if where else reason)
