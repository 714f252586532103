"""The one error a connector raises for an unusable input record, and its class for the metrics."""

from __future__ import annotations

from streamlearn.errors import BadRecordError

__all__ = ["RecordError", "reason_class"]

_NO_VALUE = object()


def _short(value, limit: int = 80) -> str:
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # an int of more than 4300 digits, a structure nested too deep
        return f"<{type(value).__name__} too large to print>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class RecordError(BadRecordError):
    """An input record cannot be published; the message names the field and the value.

    Connectors never let it escape: the record goes to the dead-letter topic
    with ``str(error)`` as the reason, and is counted. ``field`` is the input
    field (``<payload>`` for the bytes as a whole, ``<root>`` for the record);
    ``row`` is the line or message number in its source, when known.

    Examples
    --------
    >>> str(RecordError("must be a number", field="temp", value="warm"))
    "must be a number (field 'temp', value 'warm')"
    >>> RecordError("missing field", field="temp").field
    'temp'
    """

    def __init__(self, reason: str, *, field: str | None = None, value=_NO_VALUE, row: int | None = None):
        super().__init__(reason, row=row, column=field, value=None if value is _NO_VALUE else value)
        self._value = value
        where = []
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field {field!r}")
        if value is not _NO_VALUE:
            where.append(f"value {_short(value)}")
        self.args = (f"{reason} ({', '.join(where)})" if where else reason,)

    @property
    def field(self) -> str | None:
        return self.column

    def with_row(self, row: int | None) -> "RecordError":
        """The same error, located at ``row`` (line or message number).

        Examples
        --------
        >>> str(RecordError("missing field", field="temp").with_row(12))
        "missing field (row 12, field 'temp')"
        """
        return RecordError(self.reason, field=self.field, value=self._value, row=row)

    def __str__(self) -> str:
        return self.args[0]


# (class, words of the reason), tried in order: the first class with a word in the reason wins. Routing
# and size come first ("missing field (it chooses the node)" is a routing failure, "line too long" a size one).
_CLASSES = (
    ("route", ("node", "label for a key with no unlabelled reading")),
    ("too_large", ("too large", "too long", "longer than", "larger than", "nested deeper")),
    ("nonfinite", ("finite", "out of float range", "nan or inf")),
    ("unknown_label", ("unknown label",)),
    ("unknown_field", ("unknown field", "unknown feature")),
    ("missing", ("missing field", "needs a label")),
    ("malformed", ("json", "utf-8", "unicode", "csv row", "cells", "must be bytes", "duplicate key")),
    ("type", ("must be", "out of range")),
)


def reason_class(error) -> str:
    """The class of a dead-letter reason, one of ``streamlearn.metrics.DEADLETTER_REASONS``.

    ``error`` is a :class:`RecordError` (its reason is classified, not the field
    name or value it quotes) or a reason text; anything unrecognised is ``other``.

    Examples
    --------
    >>> reason_class(RecordError("must be a finite number", field="temp", value=float("nan")))
    'nonfinite'
    >>> reason_class(RecordError("must be a number", field="node", value="x"))  # the field name does not count
    'type'
    >>> reason_class("payload is not valid JSON: Expecting value")
    'malformed'
    """
    text = (error.reason if isinstance(error, RecordError) else str(error)).lower()
    for cls, words in _CLASSES:
        if any(w in text for w in words):
            return cls
    return "other"
