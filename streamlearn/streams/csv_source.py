"""Finite sources replayed from a CSV file (plain or ``.gz``; ``,`` tab ``;`` or ``|``), and the shipped Elec2 stream.

The header and the first records (a bounded look-ahead) are read at construction, to fix the features;
the whole file is read and checked once per stream object, on first use, and kept as arrays. It is parsed
column by column: a file without quotes is cut into fields over its whole text at once (``str`` methods, no
Python step per record), a file with quotes by the csv module; each column is converted whole by numpy.
Bad records are reported with ``row`` = the **file line number** (1-based; the header is line 1, so the
first data record is line 2), the column name and the raw value as text.
"""

from __future__ import annotations

import csv
import gzip
import io
import itertools
import operator
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from streamlearn.errors import BadRecordError, ConfigError
from streamlearn.records import parse_delimiter, sniff_delimiter
from streamlearn.streams.base import BLOCK, Stream, check_count, factorize, label_array

__all__ = ["CSVSource", "Elec2", "ELEC2_PATH"]

ELEC2_PATH = Path(__file__).resolve().parent / "data" / "elec2.csv.gz"

# How many skipped-record errors a source keeps for inspection (the count is always exact).
MAX_KEPT_ERRORS = 100
# Records read ahead to tell text columns from numeric ones, and the most categories a text column may get.
LOOKAHEAD = 1000
MAX_CATEGORIES = 50
# 2024-01-05, 05/01/2024, 2024-01-05T10:00, 10:30:00 ...: a date or time, not a category
_TIME = re.compile(r"^\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}([ T]|$)|^\d{1,2}:\d{2}")
_NOTED: set = set()


def _open(path: Path):
    # utf-8-sig: a byte-order mark (spreadsheets write one) must not become part of the first column name
    if path.suffix == ".gz":
        return gzip.open(path, "rt", newline="", encoding="utf-8-sig")
    return open(path, newline="", encoding="utf-8-sig")


def _note(text: str) -> None:
    """Tell the person running this, once per process."""
    if text not in _NOTED:
        _NOTED.add(text)
        print(f"note: {text}", file=sys.stderr)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _is_int(text: str) -> bool:
    try:
        int(text)
        return True
    except ValueError:
        return False


def _label_values(codes: np.ndarray, values: list) -> np.ndarray:
    """``label_array([values[c] for c in codes])``, building one label per distinct value, not per record."""
    present = np.flatnonzero(np.bincount(codes, minlength=len(values)))
    arr = label_array([values[k] for k in present.tolist()])
    remap = np.zeros(len(values), dtype=np.int64)
    remap[present] = np.arange(len(present))
    return arr[remap[codes]]


# Fields looked at to tell whether a numeric column's texts repeat (see _repeating_floats).
_SAMPLE = 2000


def _floats(texts: list, keep_nan: bool) -> tuple[np.ndarray, dict]:
    """``(values, problems)``: the texts as floats (NaN where not a number) and ``{index: reason}`` of the
    bad ones (with ``keep_nan`` an empty field or ``NaN`` is a missing value, not a bad field).

    The whole list is converted at once (numpy parses text as ``float`` does); only when that fails is
    it converted again with empty fields as NaN, and only when that fails too one by one.

    >>> _floats(["1", "", " 2 ", "x", "inf"], keep_nan=False)
    (array([ 1., nan,  2., nan, inf]), {1: 'missing value', 3: 'non-numeric value', 4: 'NaN or infinite value'})
    """
    problems: dict = {}
    try:
        values = np.array(texts, dtype=np.float64)
    except ValueError:
        values = None
        try:  # empty fields (missing readings) only: parse the rest at once, not one by one
            values = np.array([t or "nan" for t in texts], dtype=np.float64)
        except ValueError:  # blank (whitespace) fields, or a non-numeric one
            try:
                values = np.array([t or "nan" for t in map(str.strip, texts)], dtype=np.float64)
            except ValueError:
                values = None
        if values is not None and not keep_nan:
            for i in np.flatnonzero(np.isnan(values)).tolist():
                if not texts[i].strip():
                    problems[i] = "missing value"
    if values is None:  # find the culprits one by one
        values = np.full(len(texts), np.nan)
        for i, t in enumerate(texts):
            try:
                values[i] = float(t)
            except ValueError:
                if t.strip():
                    problems[i] = "non-numeric value"
                elif not keep_nan:
                    problems[i] = "missing value"
    for i in np.flatnonzero(np.isinf(values) if keep_nan else ~np.isfinite(values)).tolist():
        problems.setdefault(i, "NaN or infinite value")  # a field reports its first problem
    return values, problems


def _repeating_floats(texts: list, keep_nan: bool) -> tuple[np.ndarray, dict]:
    """:func:`_floats`, converting each distinct text once when the texts repeat.

    Readings repeat (a sensor's few hundred values): a dict pass costs less than a float parse, so this
    is about twice as fast as converting every field. Mostly distinct texts are converted directly.
    """
    if len(texts) <= 2 * _SAMPLE or len(set(texts[:_SAMPLE])) > _SAMPLE // 2:
        return _floats(texts, keep_nan)
    codes, distinct, _ = factorize(texts)
    values, problems = _floats(distinct, keep_nan)
    if problems:
        flagged = np.zeros(len(distinct), dtype=bool)
        flagged[list(problems)] = True
        problems = {i: problems[int(codes[i])] for i in np.flatnonzero(flagged[codes]).tolist()}
    return values[codes], problems


def _looks_like_time(text: str) -> bool:
    return bool(_TIME.match(text))


def _as_categories(value) -> dict:
    """``categorical`` as ``{column: [category text, ...]}``: a dict, or ``"COL=a|b|c"`` texts (one or a list).

    >>> _as_categories(["kind=gas|coal", "day = mon|tue"])
    {'kind': ['gas', 'coal'], 'day': ['mon', 'tue']}
    """
    if value is None:
        return {}
    if isinstance(value, Mapping):
        items = [(str(k).strip(), v) for k, v in value.items()]
    else:
        items = []
        for text in [value] if isinstance(value, str) else list(value):
            column, eq, cats = str(text).partition("=")
            if not eq or not column.strip():
                raise ConfigError(f"categorical: expected COLUMN=a|b|c, got {text!r}")
            items.append((column.strip(), cats))
    out = {}
    for column, cats in items:
        cats = [str(c).strip() for c in (cats.split("|") if isinstance(cats, str) else cats)]
        if column in out:
            raise ConfigError(f"categorical: column {column!r} declared twice")
        if not cats or "" in cats or len(set(cats)) != len(cats):
            raise ConfigError(f"categorical {column!r}: need distinct, non-empty categories, got {cats}")
        out[column] = cats
    return out


@dataclass
class _Parsed:
    """A parsed file: the kept records and what was left out."""

    X: np.ndarray
    y: np.ndarray
    classes: list
    skipped: int
    errors: list  # the first skipped records' errors
    unseen: dict  # text column -> kept records whose value is outside its categories
    text: dict  # column -> raw text of the kept records (the key column, and columns asked for)
    missing: int = 0  # empty feature fields kept as NaN (missing="nan")
    unlabelled: int = 0  # records with an empty label left out (missing="nan")


def _as_names(value, what) -> list | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [v for v in value.split(",") if v.strip()]
    names = [str(v).strip() for v in value]
    if len(set(names)) != len(names):
        raise ConfigError(f"{what} lists a column twice: {names}")
    return names


@dataclass
class _Records:
    """The data records of a file (blank lines left out), cut to the header's width, field by field.

    ``flat[i * ncol + p]`` is field ``p`` of record ``i`` (``""`` where the record is short), so a column is
    the slice ``flat[p::ncol]``; ``lines[i]`` is the file line number of record ``i``.
    """

    lines: np.ndarray
    flat: list
    ncol: int
    widths: dict  # record index -> its number of fields, for records whose width is not the header's
    extra: dict  # record index -> its fields beyond the header's, joined by the delimiter

    def column(self, pos: int) -> list:
        return self.flat[pos::self.ncol]

    def floats(self, pos: int, keep_nan: bool) -> tuple[np.ndarray, dict]:
        """Column ``pos`` as floats, and ``{record: (reason, raw text)}`` of its bad fields."""
        texts = self.column(pos)
        values, problems = _repeating_floats(texts, keep_nan)
        return values, {i: (reason, texts[i]) for i, reason in problems.items()}


def _records_fast(text: str, delimiter: str, ncol: int) -> _Records | None:
    """The records of ``text`` when they are plainly its lines cut at ``delimiter``, else None.

    Without a quote, a NUL or a bare carriage return, the csv module's reader gives exactly each line
    split at the delimiter, so the whole file is cut with a few ``str`` methods (C loops) instead of a
    Python list per record: the body joined by the delimiter and split once.
    """
    if '"' in text or "\0" in text:
        return None
    if "\r" in text:
        if text.count("\r") != text.count("\r\n"):
            return None
        text = text.replace("\r\n", "\n")
    body = text.split("\n")
    if body[-1] == "":
        body.pop()  # the newline that ends the last line
    body = body[1:]  # the header (line 1) was read at construction
    width = np.fromiter(map(str.count, body, itertools.repeat(delimiter, len(body))), np.int64, len(body)) + 1
    odd = np.flatnonzero(width != ncol).tolist()
    widths, extra = {}, {}
    if not odd:
        lines = np.arange(2, len(body) + 2)
    else:  # blank lines go (as the csv module gives them: [] or one blank field); the rest cut to ncol fields
        blank = [i for i in odd if width[i] == 1 and not body[i].strip()]
        keep = np.ones(len(body), dtype=bool)
        keep[blank] = False
        lines = np.flatnonzero(keep) + 2
        renumber = np.cumsum(keep) - 1
        for i in odd:
            if not keep[i]:
                continue
            k, w = int(renumber[i]), int(width[i])
            widths[k] = w
            if w < ncol:
                body[i] += delimiter * (ncol - w)
            else:
                fields = body[i].split(delimiter)
                extra[k] = delimiter.join(fields[ncol:])
                body[i] = delimiter.join(fields[:ncol])
        if blank:
            body = [line for line, kept in zip(body, keep.tolist()) if kept]
    joined = delimiter.join(body)
    del body  # memory: the lines go before the fields are made
    flat = joined.split(delimiter) if len(lines) else []
    return _Records(lines, flat, ncol, widths, extra)


def _records_csv(text: str, delimiter: str, ncol: int) -> _Records:
    """The records of ``text`` by the csv module's reader, one by one (quoted fields, fields spanning lines)."""
    records = list(csv.reader(io.StringIO(text), delimiter=delimiter))
    if len(records) == text.count("\n") + (0 if text.endswith("\n") else 1):
        numbered = enumerate(records, start=1)  # one record per line: line number = index + 1
    else:  # quoted fields span lines: ask the reader for line numbers
        reader = csv.reader(io.StringIO(text), delimiter=delimiter)
        numbered = ((reader.line_num, r) for r in reader)
    next(numbered, None)  # the header
    kept = [(line, r) for line, r in numbered if r and (len(r) > 1 or r[0].strip())]  # blank lines go
    widths, extra, flat = {}, {}, []
    for i, (_, r) in enumerate(kept):
        if len(r) != ncol:
            widths[i] = len(r)
            if len(r) > ncol:
                extra[i] = delimiter.join(r[ncol:])
            r = r[:ncol] + [""] * (ncol - len(r))
        flat.extend(r)
    return _Records(np.array([line for line, _ in kept], dtype=np.int64), flat, ncol, widths, extra)


class CSVSource(Stream):
    """Replay a CSV file: features and label chosen by column name; text columns one-hot encoded.

    Parameters
    ----------
    path
        CSV file with a header line; ``.gz`` files are decompressed.
    label
        Name of the label column.
    features
        Names of the feature columns (list, or a comma-separated string); default every other column
        (but the label and the ``key``; text columns with too many distinct values are then dropped, see below).
    classes
        The declared label set. Labels outside it are bad records. Labels keep the type of the declared
        classes (a file label matches a class when ``str(class)`` equals it). Undeclared: the sorted
        labels found in the file, as int when every label is an integer, else as str.
    on_bad_record
        ``"raise"`` (default): the first bad record raises ``BadRecordError``; ``"skip"``: bad records are
        left out and counted in ``skipped`` (the first few kept in ``skipped_records``).
    seed
        Kept for the contract (a replay has no randomness; injected drifts use it).
    key
        A column kept as raw text for a split by key (:class:`~streamlearn.streams.Split`), e.g. a machine
        id. It is not a feature unless listed in ``features``; an empty key is a bad record.
    categorical
        Declared categories of text columns: ``{column: [category, ...]}`` or ``"COLUMN=a|b|c"`` texts
        (one, or a list). Values are compared as stripped text.
    delimiter
        One character, or ``comma``/``tab``/``semicolon``/``pipe``; default: guessed from the header.
    lookahead
        Records read at construction to tell text columns from numeric ones and to collect categories.
    max_categories
        A text column with more distinct values than this in the look-ahead is not one-hot encoded.
    task
        ``"classification"`` (default) or ``"regression"``: the label column holds numbers, read as
        floats (``classes`` is then None; an empty label is missing, a non-numeric one a bad record).
    missing
        ``"bad"`` (default): an empty feature field is a bad record (``on_bad_record`` decides).
        ``"nan"``: an empty (or ``NaN``) feature field is a missing value, kept as NaN for the consumer to
        impute or skip (:class:`~streamlearn.learners.preprocessing.MissingValues`; an empty text field
        gives NaN in all its one-hot columns), counted in ``missing``; a record with an empty label is
        left out and counted in ``unlabelled`` (a reading without its label cannot be learned).

    Column types: a feature column is numeric unless more than half of its non-empty values in the
    look-ahead are not numbers (then a stray ``oops`` in a numeric column is a bad record). A text
    column is categorical: one-hot encoded by
    :class:`~streamlearn.learners.preprocessing.OneHotEncoder` into columns ``f"{column}_{category}"``
    over the declared categories, else the sorted distinct values of the look-ahead; a later value
    outside them gives all-zero columns and is counted in ``unseen_categories``. A text column that
    looks like dates or times, or has more than ``max_categories`` distinct values, is dropped from
    the default features with a note on stderr (kept in ``notes``); listed in ``features`` without
    declared categories it is a ``ConfigError``.

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
    >>> _ = open(path, "w").write("load;kind;y\\n0.5;gas;1\\n0.7;coal;0\\n")
    >>> s = CSVSource(path, label="y")
    >>> s.delimiter, s.feature_names, s.to_arrays(2)[0].tolist()
    (';', ['load', 'kind_coal', 'kind_gas'], [[0.5, 0.0, 1.0], [0.7, 1.0, 0.0]])
    """

    # A file without quotes is cut into fields by str methods over the whole text; False: always the csv
    # module's reader, record by record (the reference the tests compare the fast path with)
    _fast = True

    def __init__(self, path, label: str, features=None, classes=None, on_bad_record: str = "raise",
                 seed: int = 0, key: str | None = None, categorical=None, delimiter: str | None = None,
                 lookahead: int = LOOKAHEAD, max_categories: int = MAX_CATEGORIES, missing: str = "bad",
                 task: str = "classification"):
        self.path = Path(path)
        if on_bad_record not in ("raise", "skip"):
            raise ConfigError(f"on_bad_record must be 'raise' or 'skip', got {on_bad_record!r}")
        if missing not in ("bad", "nan"):
            raise ConfigError(f"missing must be 'bad' or 'nan', got {missing!r}")
        self.missing = missing
        if task not in ("classification", "regression"):
            raise ConfigError(f"task must be 'classification' or 'regression', got {task!r}")
        if task == "regression" and classes is not None:
            raise ConfigError(f"classes: a regression source (task='regression') has none, got {classes!r}")
        self.task = task
        if not isinstance(label, str) or not label:
            raise ConfigError(f"label must be a column name, got {label!r}")
        if key is not None and (not isinstance(key, str) or not key.strip()):
            raise ConfigError(f"key must be a column name, got {key!r}")
        for name, value in (("lookahead", lookahead), ("max_categories", max_categories)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        self.label = label
        self.key = None if key is None else key.strip()
        self.on_bad_record = on_bad_record
        self.seed = int(seed)
        self._declared = None if classes is None else list(classes)
        if self._declared is not None and len(self._declared) == 0:
            raise ConfigError("classes, when given, must not be empty")
        declared = _as_categories(categorical)
        self._header, sample = self._read_head(delimiter, int(lookahead))
        listed = _as_names(features, "features")
        for column in [label] + ([self.key] if self.key else []) + (listed or []) + list(declared):
            if column not in self._header:
                raise BadRecordError(f"missing column (the header has {self._header})", row=1, column=column,
                                     skippable=False)
        if self.key == label:
            raise ConfigError(f"column {label!r} cannot be both the label and the key")
        names = listed if listed is not None else [c for c in self._header if c not in (label, self.key)]
        if label in names:
            raise ConfigError(f"column {label!r} cannot be both the label and a feature")
        outside = [c for c in declared if c not in names]
        if outside:
            raise ConfigError(f"categorical columns {outside} are not features (features: {names})")
        self._plan(names, listed is not None, declared, sample, int(max_categories))
        self._text_columns = {self.key} if self.key else set()  # columns also kept as raw text
        self._data = None  # a _Parsed, on first use

    def __repr__(self):
        return f"CSVSource({str(self.path)!r}, label={self.label!r}, features={self.feature_names!r})"

    def _read_head(self, delimiter, lookahead: int) -> tuple[list, list]:
        """The header and the first ``lookahead`` non-blank records; guesses the delimiter."""
        if not self.path.is_file():
            raise ConfigError(f"no such CSV file: {self.path}")
        sample = []
        with _open(self.path) as f:
            first = f.readline()
            self.delimiter = parse_delimiter(delimiter) or sniff_delimiter(first)
            f.seek(0)
            reader = csv.reader(f, delimiter=self.delimiter)
            header = next(reader, None)
            try:
                for r in reader:
                    if r and (len(r) > 1 or r[0].strip()):
                        sample.append(r)
                        if len(sample) >= lookahead:
                            break
            except csv.Error:
                pass  # the full parse reports the record
        if not header:
            raise BadRecordError("empty file, no header line", row=1, skippable=False)
        header = [h.strip() for h in header]
        if len(set(header)) != len(header):
            raise BadRecordError("duplicate column name in the header", row=1, value=self.delimiter.join(header),
                                 skippable=False)
        return header, sample

    def _plan(self, names, explicit: bool, declared: dict, sample: list, max_categories: int) -> None:
        """Fix the type of every feature column from the look-ahead: ``_columns``, ``feature_names``, ``categories``."""
        self._columns = []  # (name, position in the file, OneHotEncoder or None for numeric)
        self.categories: dict = {}
        self.dropped: list = []
        self.notes: list = []
        out = []
        for name in names:
            pos = self._header.index(name)
            cats = declared.get(name)
            if cats is None:
                values = [r[pos].strip() for r in sample if pos < len(r) and r[pos].strip()]
                text = [v for v in values if not _is_number(v)]
                if 2 * len(text) > len(values):
                    cats = sorted(set(values))
                    why = None
                    if sum(map(_looks_like_time, text)) * 2 > len(text):
                        why = "looks like dates or times"
                    elif len(cats) > max_categories:
                        why = f"has {len(cats)} distinct values in its first {len(sample)} records " \
                              f"(max_categories={max_categories})"
                    if why is not None:
                        msg = f"text column {name!r} of {self.path} {why}"
                        if explicit:
                            raise ConfigError(f"{msg}: declare its categories (categorical {name}=a|b|...) "
                                              "or leave it out of the features")
                        self.dropped.append(name)
                        self.notes.append(f"{msg}: dropped, not a feature (declare its categories to keep it)")
                        continue
            if cats is None:
                self._columns.append((name, pos, None))
                out.append(name)
            else:
                from streamlearn.learners.preprocessing import OneHotEncoder  # torch: only for text columns

                enc = OneHotEncoder({name: cats})
                self._columns.append((name, pos, enc))
                self.categories[name] = list(cats)
                out += enc.feature_names_out
        twice = sorted({c for c in out if out.count(c) > 1})
        if twice:
            raise ConfigError(f"one-hot columns clash with other columns: {twice}")
        if not out:
            raise ConfigError(f"{self.path}: no feature column left (header {self._header})")
        self.feature_names = out
        for text in self.notes:
            _note(text)

    # -- parsing, once --------------------------------------------------------------------------
    def _parse(self):
        with _open(self.path) as f:
            text = f.read()
        header, ncol = self._header, len(self._header)
        records = _records_fast(text, self.delimiter, ncol) if self._fast else None
        if records is None:
            records = _records_csv(text, self.delimiter, ncol)
        del text
        lines = records.lines
        n = len(lines)
        column = records.column
        # errors[i] = (column position in the file, error); a record reports its leftmost bad field
        errors: dict = {}

        def bad(i, pos, reason, column, value):
            if i not in errors or pos < errors[i][0]:
                errors[i] = (pos, BadRecordError(reason, row=int(lines[i]), column=column, value=value))

        wanted = [pos for _, pos, _ in self._columns] + [header.index(self.label)]
        wanted += [header.index(c) for c in self._text_columns]
        for i, width in records.widths.items():
            if width < ncol:
                missing = sorted(p for p in wanted if p >= width)
                if missing:
                    bad(i, missing[0], "missing value (the line has fewer fields than the header)",
                        header[missing[0]], None)
                # short rows whose wanted fields are present are fine
            else:
                bad(i, ncol, f"extra field (the line has {width} fields, the header {ncol})", None,
                    records.extra[i])

        X = np.empty((n, len(self.feature_names)))
        j = 0
        unseen_rows = {}
        keep_nan = self.missing == "nan"
        for name, pos, enc in self._columns:
            if enc is not None:
                j = self._one_hot(X, j, name, pos, enc, column(pos), bad, unseen_rows, keep_nan)
                continue
            X[:, j], problems = records.floats(pos, keep_nan)
            for i, (reason, text) in problems.items():
                bad(i, pos, reason, name, text)
            j += 1

        raw = {}
        for name in self._text_columns:
            pos = header.index(name)
            texts = column(pos)
            raw[name] = np.array(list(map(str.strip, texts)), dtype=object)
            if name == self.key:
                for i in np.flatnonzero(raw[name] == ""):
                    bad(int(i), pos, "missing value", name, texts[i])

        unlabelled = np.zeros(n, dtype=bool)
        pos = header.index(self.label)
        if self.task == "regression":
            targets, classes = self._targets(column(pos), pos, bad, unlabelled if keep_nan else None), []
        else:
            codes, values, classes = self._labels(column(pos), pos, bad, unlabelled if keep_nan else None)
        del records, column
        if errors and self.on_bad_record == "raise":
            raise errors[min(errors)][1]
        bad_rows = np.zeros(n, dtype=bool)
        bad_rows[list(errors)] = True
        keep = ~unlabelled & ~bad_rows
        n_unlabelled = int((unlabelled & ~bad_rows).sum())  # a bad record is counted as such, not here
        every = bool(keep.all())
        X = X if every else X[keep]
        n_missing = int(np.isnan(X).sum()) if keep_nan else 0
        kept_errors = [errors[i][1] for i in sorted(errors)[:MAX_KEPT_ERRORS]]
        if self.task == "regression":
            y = targets if every else targets[keep]
        else:
            y = _label_values(codes if every else codes[keep], values)
        if len(y) == 0:
            y = label_array(classes)[:0]
        unseen = {name: int(mask[keep].sum()) for name, mask in unseen_rows.items()}
        for name, count in unseen.items():
            if count:
                _note(f"{count} values of text column {name!r} of {self.path} are outside its "
                      f"{len(self.categories[name])} categories: one-hot all zeros")
        if errors:  # skipped, not silently: how many and what the first one was
            _note(f"{self.path}: {len(errors)} bad record{'s' if len(errors) > 1 else ''} skipped "
                  f"(on_bad_record=skip); the first: {kept_errors[0]}")
        if keep_nan and (n_unlabelled or n_missing):
            _note(f"{self.path}: {n_missing} missing feature values kept as missing (NaN) for the learner to "
                  f"impute or skip; {n_unlabelled} records without a label left out")
        self._data = _Parsed(X, y, classes, len(errors), kept_errors,
                             unseen, {name: t if every else t[keep] for name, t in raw.items()},
                             n_missing, n_unlabelled)

    def _one_hot(self, X, j, name, pos, enc, texts, bad, unseen_rows, keep_nan=False) -> int:
        """Write the one-hot columns of one text column from ``X[:, j]`` on; returns the next free column."""
        cols = enc.feature_names_out
        # encode each distinct value once
        codes, distinct, _ = factorize(map(str.strip, texts))
        table = np.array([[enc.transform_one({name: v})[c] for c in cols] for v in distinct])
        X[:, j:j + len(cols)] = table.reshape(len(distinct), len(cols))[codes]
        empty = np.flatnonzero(codes == distinct.index("")) if "" in distinct else np.empty(0, dtype=np.int64)
        if keep_nan:  # a missing category: NaN in every column of it, for the consumer to impute or skip
            X[empty, j:j + len(cols)] = np.nan
        else:
            for i in empty.tolist():
                bad(i, pos, "missing value", name, texts[i])
        known = set(self.categories[name])
        outside = np.array([v != "" and v not in known for v in distinct], dtype=bool)
        unseen_rows[name] = outside[codes]
        return j + len(cols)

    def _targets(self, texts, pos, bad, unlabelled=None) -> np.ndarray:
        """task='regression': the labels as floats (a label that is not a finite number is a bad record)."""
        stripped = list(map(str.strip, texts))
        empty = np.fromiter(map(operator.not_, stripped), bool, len(stripped))
        try:
            out = np.array([t or "0" for t in stripped], dtype=np.float64)
        except ValueError:  # find the culprits one by one
            out = np.zeros(len(stripped))
            for i, t in enumerate(stripped):
                if t:
                    try:
                        out[i] = float(t)
                    except ValueError:
                        bad(i, pos, "label is not a number (task='regression')", self.label, t)
                        out[i] = 0.0
        for i in np.flatnonzero(empty).tolist():
            if unlabelled is not None:
                unlabelled[i] = True
            else:
                bad(i, pos, "missing label", self.label, "")
        for i in np.flatnonzero(~np.isfinite(out)).tolist():
            bad(i, pos, "label is NaN or infinite", self.label, stripped[i])
        return out

    def _labels(self, texts, pos, bad, unlabelled=None):
        """``(codes, values, classes)``: label of record i = ``values[codes[i]]``; an empty label is a bad
        record, or (``unlabelled`` given) marked there. Each distinct label text is looked at once."""
        codes, distinct, _ = factorize(map(str.strip, texts))
        if self._declared is not None:
            lookup = {str(c): c for c in self._declared}
            values = [lookup.get(t) for t in distinct]
            classes = list(self._declared)
        else:
            found = sorted(t for t in distinct if t)
            if found and all(_is_int(t) for t in found):
                values = [int(t) if t else None for t in distinct]
                classes = sorted({v for v in values if v is not None})
            else:
                values, classes = list(distinct), found
        for k, t in enumerate(distinct):
            if (values[k] is not None) if self._declared is not None else t:
                continue
            rows = np.flatnonzero(codes == k).tolist()
            if not t and unlabelled is not None:
                unlabelled[rows] = True
            else:
                for i in rows:
                    bad(i, pos, "missing label" if not t else "unknown label", self.label, t)
        return codes, values, classes

    def _loaded(self) -> "_Parsed":
        if self._data is None:
            self._parse()
        return self._data

    # -- the contract ---------------------------------------------------------------------------
    @property
    def classes(self) -> list | None:
        if self.task == "regression":
            return None  # float labels: no label set
        return list(self._loaded().classes)

    @property
    def n_samples(self) -> int:
        return len(self._loaded().y)

    @property
    def skipped(self) -> int:
        """How many bad records were skipped (``on_bad_record="skip"``)."""
        return self._loaded().skipped

    @property
    def skipped_records(self) -> list:
        """The ``BadRecordError`` of the first skipped records (up to 100), in file order."""
        return list(self._loaded().errors)

    @property
    def missing_values(self) -> int:
        """``missing="nan"``: how many feature values of the kept records are missing (NaN)."""
        return self._loaded().missing

    @property
    def unlabelled(self) -> int:
        """``missing="nan"``: how many records had an empty label and were left out."""
        return self._loaded().unlabelled

    @property
    def unseen_categories(self) -> dict:
        """Per text column, how many kept records had a value outside its categories (encoded as all zeros)."""
        return dict(self._loaded().unseen)

    def key_values(self, name: str):
        """The stripped raw text of column ``name`` for every sample (object array), or None if no such column."""
        if name not in self._header:
            return None
        if name not in self._text_columns:
            self._text_columns = self._text_columns | {name}
            self._data = None  # parse again, keeping that column's text this time
        return self._loaded().text[name]

    def _blocks(self, n):
        data = self._loaded()
        for start in range(0, len(data.y), BLOCK):
            yield data.X[start:start + BLOCK], data.y[start:start + BLOCK]

    def to_arrays(self, n):
        n = check_count(n)
        data = self._loaded()
        return data.X[:n].copy(), data.y[:n].copy()


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
            if self._text_columns:  # raw text asked for: a parse of its own
                self._parse()
            else:
                if Elec2._shared is None:
                    self._parse()
                    Elec2._shared = self._data
                self._data = Elec2._shared
        return self._data

    def __repr__(self):
        return f"Elec2(seed={self.seed})"
