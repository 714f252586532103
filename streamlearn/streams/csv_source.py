"""Finite sources replayed from a CSV file (plain or ``.gz``), and the shipped Elec2 stream.

The file is read and checked once per stream object, on first use, and kept as arrays.
Bad records are reported with ``row`` = the **file line number** (1-based; the header is line 1, so the
first data record is line 2), the column name and the raw value as text.
"""

from __future__ import annotations

import csv
import gzip
import io
from pathlib import Path

import numpy as np

from streamlearn.errors import BadRecordError, ConfigError
from streamlearn.streams.base import BLOCK, Stream, check_count, label_array

__all__ = ["CSVSource", "Elec2", "ELEC2_PATH"]

ELEC2_PATH = Path(__file__).resolve().parent / "data" / "elec2.csv.gz"

# How many skipped-record errors a source keeps for inspection (the count is always exact).
MAX_KEPT_ERRORS = 100


def _open(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", newline="", encoding="utf-8")
    return open(path, newline="", encoding="utf-8")


def _as_names(value, what) -> list | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    names = [str(v).strip() for v in value]
    if len(set(names)) != len(names):
        raise ConfigError(f"{what} lists a column twice: {names}")
    return names


class CSVSource(Stream):
    """Replay a CSV file: features and label chosen by column name.

    Parameters
    ----------
    path
        CSV file with a header line; ``.gz`` files are decompressed.
    label
        Name of the label column.
    features
        Names of the feature columns (list, or a comma-separated string); default every other column.
    classes
        The declared label set. Labels outside it are bad records. Labels keep the type of the declared
        classes (a file label matches a class when ``str(class)`` equals it). Undeclared: the sorted
        labels found in the file, as int when every label is an integer, else as str.
    on_bad_record
        ``"raise"`` (default): the first bad record raises ``BadRecordError``; ``"skip"``: bad records are
        left out and counted in ``skipped`` (the first few kept in ``skipped_records``).
    seed
        Kept for the contract (a replay has no randomness; injected drifts use it).

    A bad record is a data line with a missing or extra field, an empty, non-numeric, NaN or infinite
    feature value, an empty label, or a label outside the declared ``classes``. A header that lacks a
    requested column raises ``BadRecordError`` (row 1) at construction, whatever ``on_bad_record`` says.

    Examples
    --------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "t.csv")
    >>> _ = open(path, "w").write("a,b,y\\n1,2,yes\\n3,oops,no\\n5,6,no\\n")
    >>> s = CSVSource(path, label="y", on_bad_record="skip")
    >>> list(s), s.skipped, s.classes
    ([({'a': 1.0, 'b': 2.0}, 'yes'), ({'a': 5.0, 'b': 6.0}, 'no')], 1, ['no', 'yes'])
    >>> CSVSource(path, label="y").to_arrays(10)
    Traceback (most recent call last):
    ...
    streamlearn.errors.BadRecordError: non-numeric value (row 3, column 'b', value 'oops')
    """

    def __init__(self, path, label: str, features=None, classes=None, on_bad_record: str = "raise",
                 seed: int = 0):
        self.path = Path(path)
        if on_bad_record not in ("raise", "skip"):
            raise ConfigError(f"on_bad_record must be 'raise' or 'skip', got {on_bad_record!r}")
        if not isinstance(label, str) or not label:
            raise ConfigError(f"label must be a column name, got {label!r}")
        self.label = label
        self.on_bad_record = on_bad_record
        self.seed = int(seed)
        self._declared = None if classes is None else list(classes)
        if self._declared is not None and len(self._declared) == 0:
            raise ConfigError("classes, when given, must not be empty")
        self._header = self._read_header()
        for column in [label] + (_as_names(features, "features") or []):
            if column not in self._header:
                raise BadRecordError(f"missing column (the header has {self._header})", row=1, column=column)
        names = _as_names(features, "features")
        if names is None:
            names = [c for c in self._header if c != label]
        if label in names:
            raise ConfigError(f"column {label!r} cannot be both the label and a feature")
        self.feature_names = names
        self._data = None  # (X, y, classes, skipped, skipped_records), parsed on first use

    def __repr__(self):
        return f"CSVSource({str(self.path)!r}, label={self.label!r}, features={self.feature_names!r})"

    def _read_header(self) -> list:
        if not self.path.is_file():
            raise ConfigError(f"no such CSV file: {self.path}")
        with _open(self.path) as f:
            header = next(csv.reader(f), None)
        if not header:
            raise BadRecordError("empty file, no header line", row=1)
        header = [h.strip() for h in header]
        if len(set(header)) != len(header):
            raise BadRecordError("duplicate column name in the header", row=1, value=",".join(header))
        return header

    # -- parsing, once --------------------------------------------------------------------------
    def _parse(self):
        with _open(self.path) as f:
            text = f.read()
        records = list(csv.reader(io.StringIO(text)))
        if len(records) == text.count("\n") + (0 if text.endswith("\n") else 1):
            numbered = enumerate(records, start=1)  # one record per line: line number = index + 1
        else:  # quoted fields span lines: ask the reader for line numbers
            reader = csv.reader(io.StringIO(text))
            numbered = ((reader.line_num, r) for r in reader)
        next(numbered, None)  # the header
        kept = [(line, r) for line, r in numbered if r and (len(r) > 1 or r[0].strip())]  # blank lines go
        lines = [line for line, _ in kept]
        rows = [r for _, r in kept]
        header, ncol = self._header, len(self._header)
        # errors[i] = (column position in the file, error); a record reports its leftmost bad field
        errors: dict = {}

        def bad(i, pos, reason, column, value):
            if i not in errors or pos < errors[i][0]:
                errors[i] = (pos, BadRecordError(reason, row=lines[i], column=column, value=value))

        wanted = [header.index(c) for c in self.feature_names] + [header.index(self.label)]
        regular = set(map(len, rows)) <= {ncol}
        for i, row in enumerate(() if regular else rows):
            if len(row) < ncol:
                missing = [p for p in wanted if p >= len(row)]
                if missing:
                    bad(i, missing[0], "missing value (the line has fewer fields than the header)",
                        header[missing[0]], None)
                # short rows whose wanted fields are present are fine
            elif len(row) > ncol:
                bad(i, ncol, f"extra field (the line has {len(row)} fields, the header {ncol})", None,
                    ",".join(row[ncol:]))
        n = len(rows)
        if regular:
            columns = list(zip(*rows)) or [()] * ncol

            def column(pos):
                return columns[pos]
        else:
            def column(pos):
                return [row[pos] if pos < len(row) else "" for row in rows]

        X = np.empty((n, len(self.feature_names)))
        for j, name in enumerate(self.feature_names):
            pos = header.index(name)
            texts = column(pos)
            try:
                values = np.array(texts, dtype=np.float64)
            except ValueError:  # find the culprits one by one
                values = np.full(n, np.nan)
                for i, t in enumerate(texts):
                    try:
                        values[i] = float(t)
                    except ValueError:
                        reason = "missing value" if not t.strip() else "non-numeric value"
                        bad(i, pos, reason, name, t)
            for i in np.flatnonzero(~np.isfinite(values)):
                bad(int(i), pos, "NaN or infinite value", name, texts[i])
            X[:, j] = values

        labels, classes = self._labels(column(header.index(self.label)), header.index(self.label), bad)
        if errors and self.on_bad_record == "raise":
            raise errors[min(errors)][1]
        keep = np.ones(n, dtype=bool)
        keep[list(errors)] = False
        kept_errors = [errors[i][1] for i in sorted(errors)[:MAX_KEPT_ERRORS]]
        y = label_array([labels[i] for i in np.flatnonzero(keep)]) if not keep.all() else label_array(labels)
        if len(y) == 0:
            y = label_array(classes)[:0]
        self._data = (np.ascontiguousarray(X[keep]), y, classes, len(errors), kept_errors)

    def _labels(self, texts, pos, bad):
        texts = [t.strip() for t in texts]
        if self._declared is not None:
            lookup = {str(c): c for c in self._declared}
            labels = [lookup.get(t) for t in texts]
            for i, (t, v) in enumerate(zip(texts, labels)):
                if v is None:
                    bad(i, pos, "missing label" if not t else "unknown label", self.label, t)
            return labels, list(self._declared)
        for i, t in enumerate(texts):
            if not t:
                bad(i, pos, "missing label", self.label, t)
        found = {t for t in texts if t}

        def is_int(t):
            try:
                int(t)
                return True
            except ValueError:
                return False

        if found and all(is_int(t) for t in found):
            as_int = {t: int(t) for t in found}
            return [as_int.get(t) for t in texts], sorted(set(as_int.values()))
        return texts, sorted(found)

    def _loaded(self):
        if self._data is None:
            self._parse()
        return self._data

    # -- the contract ---------------------------------------------------------------------------
    @property
    def classes(self) -> list:
        return list(self._loaded()[2])

    @property
    def n_samples(self) -> int:
        return len(self._loaded()[1])

    @property
    def skipped(self) -> int:
        """How many bad records were skipped (``on_bad_record="skip"``)."""
        return self._loaded()[3]

    @property
    def skipped_records(self) -> list:
        """The ``BadRecordError`` of the first skipped records (up to 100), in file order."""
        return list(self._loaded()[4])

    def _blocks(self, n):
        X, y = self._loaded()[:2]
        for start in range(0, len(y), BLOCK):
            yield X[start:start + BLOCK], y[start:start + BLOCK]

    def to_arrays(self, n):
        n = check_count(n)
        X, y = self._loaded()[:2]
        return X[:n].copy(), y[:n].copy()


ELEC2_FEATURES = ["day", "period", "nswdemand", "vicprice", "vicdemand", "transfer"]


class Elec2(CSVSource):
    """The Electricity (Elec2) stream shipped with streamlearn: 45,312 half-hours of the NSW market.

    Features ``day, period, nswdemand, vicprice, vicdemand, transfer`` (the usual practice drops
    ``date`` and ``nswprice``), label ``'UP'``/``'DOWN'``. Its alternate concept swaps the labels.

    Examples
    --------
    >>> s = Elec2()
    >>> s.n_samples, s.feature_names[:2], s.classes
    (45312, ['day', 'period'], ['DOWN', 'UP'])
    """

    _shared = None  # the shipped file never changes: parse it once per process

    def __init__(self, seed: int = 0):
        super().__init__(ELEC2_PATH, label="label", features=ELEC2_FEATURES, classes=["DOWN", "UP"], seed=seed)

    def _loaded(self):
        if self._data is None:
            if Elec2._shared is None:
                self._parse()
                Elec2._shared = self._data
            self._data = Elec2._shared
        return self._data

    def __repr__(self):
        return f"Elec2(seed={self.seed})"
