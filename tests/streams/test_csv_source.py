"""CSV replay: column choice, label types, bad records (raise names line/column/value; skip counts), elec2."""

import csv
import gzip
import io

import numpy as np
import pytest

from streamlearn.errors import BadRecordError, ConfigError
from streamlearn.streams import CSVSource, Elec2, csv_source, make_source
from streamlearn.streams.base import label_array
from streamlearn.streams.csv_source import MAX_KEPT_ERRORS, _note, _open, _Parsed

GOOD = "a,b,c,y\n1,2,3,UP\n4,5,6,DOWN\n\n7,8,9,UP\n"


def write(tmp_path, text, name="d.csv"):
    path = tmp_path / name
    if name.endswith(".gz"):
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


def test_features_and_label_by_name(tmp_path):
    s = CSVSource(write(tmp_path, GOOD), label="y", features=["c", "a"])
    assert s.feature_names == ["c", "a"] and s.n_samples == 3 and s.classes == ["DOWN", "UP"]
    assert list(s) == [({"c": 3.0, "a": 1.0}, "UP"), ({"c": 6.0, "a": 4.0}, "DOWN"), ({"c": 9.0, "a": 7.0}, "UP")]
    X, y = s.to_arrays(2)
    assert X.tolist() == [[3.0, 1.0], [6.0, 4.0]] and y.tolist() == ["UP", "DOWN"]
    assert list(s) == list(s)  # replay


def test_default_features_gz_and_integer_labels(tmp_path):
    path = write(tmp_path, "y,f1,f2\n1,0.5,1e3\n0,-2,3\n", "x.csv.gz")
    s = make_source(f"csv:{path}", label="y")
    assert s.feature_names == ["f1", "f2"] and s.classes == [0, 1]
    X, y = s.to_arrays(10)
    assert X.tolist() == [[0.5, 1000.0], [-2.0, 3.0]] and y.tolist() == [1, 0] and y.dtype.kind == "i"


def test_declared_classes_keep_their_type(tmp_path):
    s = CSVSource(write(tmp_path, "x,y\n1,1\n2,0\n"), label="y", classes=[0, 1])
    assert s.to_arrays(5)[1].tolist() == [1, 0] and s.classes == [0, 1]


BAD = [  # (file, expected line, column, value, reason fragment)
    ("a,b,y\n1,2,UP\n3,x1,DOWN\n", 3, "b", "x1", "non-numeric"),
    ("a,b,y\n1,2,UP\n3,nan,DOWN\n", 3, "b", "nan", "NaN or infinite"),
    ("a,b,y\n1,2,UP\n\n3,-inf,DOWN\n", 4, "b", "-inf", "NaN or infinite"),
    ("a,b,y\n1,,UP\n", 2, "b", "", "missing value"),
    ("a,b,y\n1,2,UP\n3,4\n", 3, "y", None, "missing value"),
    ("a,b,y\n1,2,UP\n3,4,SIDEWAYS\n", 3, "y", "SIDEWAYS", "unknown label"),
    ("a,b,y\n1,2,\n", 2, "y", "", "missing label"),
    ("a,b,y\n1,2,UP\n1,2,UP,9\n", 3, None, "9", "extra field"),
    # the leftmost bad field is named (the columns are mostly numbers, so q and r are not categories)
    ("a,b,y\n1,2,UP\nq,r,UP\n", 3, "a", "q", "non-numeric"),
]


@pytest.mark.parametrize("text,line,column,value,reason", BAD)
def test_bad_record_raises_with_line_column_value(tmp_path, text, line, column, value, reason):
    s = CSVSource(write(tmp_path, text), label="y", classes=["UP", "DOWN"])
    with pytest.raises(BadRecordError) as info:
        s.to_arrays(10)
    err = info.value
    assert (err.row, err.column, err.value) == (line, column, value)
    assert reason in str(err) and f"row {line}" in str(err)
    assert isinstance(err, ValueError)


@pytest.mark.parametrize("text,line,column,value,reason", BAD)
def test_bad_record_skip_counts(tmp_path, text, line, column, value, reason):
    s = CSVSource(write(tmp_path, text), label="y", classes=["UP", "DOWN"], on_bad_record="skip")
    X, y = s.to_arrays(10)
    data_lines = [ln for ln in text.splitlines()[1:] if ln.strip()]
    assert s.skipped == 1 and len(y) == s.n_samples == len(data_lines) - 1
    assert s.skipped_records[0].row == line and s.skipped_records[0].column == column
    assert np.isfinite(X).all() and set(y.tolist()) <= {"UP", "DOWN"}
    assert len(list(s)) == len(y)


def test_skip_many_and_first_error_raised(tmp_path, capsys):
    lines = ["a,y"] + [f"{'bad' if i % 3 == 0 else i},L" for i in range(30)]
    path = write(tmp_path, "\n".join(lines) + "\n")
    s = CSVSource(path, label="y", on_bad_record="skip")
    assert s.skipped == 10 and s.n_samples == 20 and [e.row for e in s.skipped_records][:2] == [2, 5]
    # whoever reads the file (a producer, the demo) says so: how many, and the first with its row, column, value
    assert (f"note: {path}: 10 bad records skipped (on_bad_record=skip); the first: non-numeric value (row 2, "
            f"column 'a', value 'bad')") in capsys.readouterr().err
    with pytest.raises(BadRecordError) as info:
        CSVSource(path, label="y").n_samples
    assert info.value.row == 2


def test_missing_column_in_header(tmp_path):
    path = write(tmp_path, GOOD)
    with pytest.raises(BadRecordError) as info:
        CSVSource(path, label="y", features=["a", "zz"], on_bad_record="skip")
    assert info.value.column == "zz" and info.value.row == 1
    with pytest.raises(BadRecordError):
        CSVSource(path, label="label")


def test_bad_settings(tmp_path):
    path = write(tmp_path, GOOD)
    with pytest.raises(ConfigError):
        CSVSource(path, label="y", on_bad_record="ignore")
    with pytest.raises(ConfigError):
        CSVSource(path, label="y", features=["a", "y"])
    with pytest.raises(ConfigError):
        CSVSource(tmp_path / "nope.csv", label="y")
    with pytest.raises(ConfigError):
        make_source(f"csv:{path}")  # label is required


def test_alternate_concept_is_a_label_shift(tmp_path):
    s = CSVSource(write(tmp_path, GOOD), label="y")
    assert s.concept(1).to_arrays(3)[1].tolist() == ["DOWN", "UP", "DOWN"]
    assert s.concept(2).to_arrays(3)[1].tolist() == s.to_arrays(3)[1].tolist()


def test_elec2_loads_45312_rows_with_6_features():
    s = make_source("elec2")
    X, y = s.to_arrays(10**6)
    assert X.shape == (45312, 6) and y.shape == (45312,)
    assert s.feature_names == ["day", "period", "nswdemand", "vicprice", "vicdemand", "transfer"]
    assert s.n_samples == 45312 and set(y.tolist()) == {"UP", "DOWN"} and s.skipped == 0
    # same first record as the shared data file
    assert X[0].tolist() == [2.0, 0.0, 0.439155, 0.003467, 0.422915, 0.414912] and y[0] == "DOWN"
    assert isinstance(s, Elec2)


def test_quoted_field_spanning_lines_keeps_file_line_numbers(tmp_path):
    s = CSVSource(write(tmp_path, 'a,b,y\n1,"2",UP\n"3\n",4,DOWN\n5,x,UP\n'), label="y")
    with pytest.raises(BadRecordError) as info:
        s.to_arrays(5)
    assert (info.value.row, info.value.column, info.value.value) == (5, "b", "x")


# ---- delimiters, text columns, dates ---------------------------------------------------------------

MIXED = "\n".join(
    ["date;kind;load;y"]
    + [f"2024-01-{d:02d} {h:02d}:00;{['gas', 'coal', 'wind'][(d + h) % 3]};{d + h / 10};{'UP' if h % 2 else 'DOWN'}"
       for d in range(1, 11) for h in range(6)]
) + "\n"


def test_semicolons_text_category_and_dates(tmp_path, capsys):
    s = CSVSource(write(tmp_path, MIXED), label="y")
    assert s.delimiter == ";"
    assert s.feature_names == ["kind_coal", "kind_gas", "kind_wind", "load"]  # sorted categories, in place
    assert s.categories == {"kind": ["coal", "gas", "wind"]} and s.dropped == ["date"]
    err = capsys.readouterr().err
    assert "note:" in err and "'date'" in err and "dates or times" in err
    X, y = s.to_arrays(10**6)
    assert X.shape == (60, 4) and s.n_samples == 60 and s.skipped == 0
    kinds = [line.split(";")[1] for line in MIXED.splitlines()[1:]]
    loads = [float(line.split(";")[2]) for line in MIXED.splitlines()[1:]]
    expected = [[float(k == "coal"), float(k == "gas"), float(k == "wind"), v] for k, v in zip(kinds, loads)]
    assert X.tolist() == expected
    assert s.unseen_categories == {"kind": 0}
    first = next(iter(s))[0]
    assert first == dict(zip(s.feature_names, expected[0]))


def test_tabs_and_pipes_are_guessed(tmp_path):
    for delim in ("\t", "|"):
        s = CSVSource(write(tmp_path, MIXED.replace(";", delim), name=f"d{ord(delim)}.csv"), label="y")
        assert s.delimiter == delim and s.feature_names == ["kind_coal", "kind_gas", "kind_wind", "load"]
        assert s.n_samples == 60


def test_many_distinct_text_values_are_dropped_not_exploded(tmp_path, capsys):
    lines = ["ref,x,y"] + [f"id{i},{i},{i % 2}" for i in range(80)]
    s = CSVSource(write(tmp_path, "\n".join(lines) + "\n"), label="y")
    assert s.feature_names == ["x"] and s.dropped == ["ref"]
    assert "80 distinct values" in capsys.readouterr().err
    # more categories allowed: one-hot
    assert len(CSVSource(write(tmp_path, "\n".join(lines) + "\n"), label="y", max_categories=100).feature_names) == 81
    # asked for by name without its categories: an error naming it
    with pytest.raises(ConfigError, match="'ref'"):
        CSVSource(write(tmp_path, "\n".join(lines) + "\n"), label="y", features=["ref", "x"])


def test_declared_categories_and_unseen_values_counted(tmp_path):
    path = write(tmp_path, MIXED)
    s = CSVSource(path, label="y", categorical="kind=gas|coal")  # wind is not declared
    assert s.feature_names == ["kind_gas", "kind_coal", "load"]  # declared order
    X, _ = s.to_arrays(10**6)
    wind = np.array([line.split(";")[1] == "wind" for line in MIXED.splitlines()[1:]])
    assert (X[wind, :2] == 0).all() and (X[~wind, :2].sum(axis=1) == 1).all()
    assert s.unseen_categories == {"kind": int(wind.sum())} and s.skipped == 0
    # a declared date column is kept as categories
    d = CSVSource(path, label="y", features=["date", "load"], categorical={"date": ["2024-01-01 00:00"]})
    assert d.feature_names == ["date_2024-01-01 00:00", "load"]
    assert d.to_arrays(10**6)[0][:, 0].sum() == 1.0
    with pytest.raises(ConfigError, match="date"):
        CSVSource(path, label="y", features=["date", "load"])
    with pytest.raises(ConfigError):
        CSVSource(path, label="y", categorical="kind")  # not COLUMN=a|b
    with pytest.raises(ConfigError):
        CSVSource(path, label="y", features=["load"], categorical="kind=gas")  # not a feature


def test_categories_come_from_a_bounded_lookahead_and_no_record_is_lost(tmp_path):
    lines = ["c,x,y"] + [f"{'a' if i < 5 else 'b'},{i},{i % 2}" for i in range(12)]
    s = CSVSource(write(tmp_path, "\n".join(lines) + "\n"), label="y", lookahead=5)
    assert s.categories == {"c": ["a"]}
    X, y = s.to_arrays(100)
    assert len(y) == 12 and X[:, 1].tolist() == list(range(12))  # the look-ahead records are replayed too
    assert X[:5, 0].tolist() == [1.0] * 5 and X[5:, 0].tolist() == [0.0] * 7
    assert s.unseen_categories == {"c": 7}


def test_bad_records_in_text_columns(tmp_path):
    lines = ["c;x;y", "a;1;UP", "b;2;DOWN", ";3;UP", "a;oops;UP", "a;4"]
    path = write(tmp_path, "\n".join(lines) + "\n")
    with pytest.raises(BadRecordError) as info:
        CSVSource(path, label="y").to_arrays(10)
    assert (info.value.row, info.value.column, info.value.value) == (4, "c", "")
    s = CSVSource(path, label="y", on_bad_record="skip")
    assert s.n_samples == 2 and s.skipped == 3
    assert [(e.row, e.column) for e in s.skipped_records] == [(4, "c"), (5, "x"), (6, "y")]


def test_byte_order_mark_is_not_part_of_the_first_column(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfa,y\n1,0\n2,1\n")
    assert CSVSource(path, label="y").feature_names == ["a"]


def test_elec2_loads_exactly_the_shipped_file():
    from streamlearn.streams.csv_source import ELEC2_PATH

    with gzip.open(ELEC2_PATH, "rt") as f:
        header = f.readline().strip().split(",")
        rows = [line.strip().split(",") for line in f]
    cols = [header.index(c) for c in ["day", "period", "nswdemand", "vicprice", "vicdemand", "transfer"]]
    expected = np.array([[float(r[c]) for c in cols] for r in rows])
    X, y = Elec2().to_arrays(10**6)
    assert np.array_equal(X, expected) and y.tolist() == [r[-1] for r in rows]
    assert Elec2().feature_names == [header[c] for c in cols] and Elec2().categories == {}


# ---- the bulk parse against the record-by-record reference ----------------------------------------------


class RowByRow(CSVSource):
    """The parse as it was before the bulk path, kept verbatim as the reference: the csv module's reader,
    a Python list per record, columns by ``zip``, labels one by one."""

    _fast = False

    def _parse(self):
        with _open(self.path) as f:
            text = f.read()
        records = list(csv.reader(io.StringIO(text), delimiter=self.delimiter))
        if len(records) == text.count("\n") + (0 if text.endswith("\n") else 1):
            numbered = enumerate(records, start=1)  # one record per line: line number = index + 1
        else:  # quoted fields span lines: ask the reader for line numbers
            reader = csv.reader(io.StringIO(text), delimiter=self.delimiter)
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

        wanted = [pos for _, pos, _ in self._columns] + [header.index(self.label)]
        wanted += [header.index(c) for c in self._text_columns]
        regular = set(map(len, rows)) <= {ncol}
        for i, row in enumerate(() if regular else rows):
            if len(row) < ncol:
                missing = sorted(p for p in wanted if p >= len(row))
                if missing:
                    bad(i, missing[0], "missing value (the line has fewer fields than the header)",
                        header[missing[0]], None)
                # short rows whose wanted fields are present are fine
            elif len(row) > ncol:
                bad(i, ncol, f"extra field (the line has {len(row)} fields, the header {ncol})", None,
                    self.delimiter.join(row[ncol:]))
        n = len(rows)
        if regular:
            columns = list(zip(*rows)) or [()] * ncol

            def column(pos):
                return columns[pos]
        else:
            def column(pos):
                return [row[pos] if pos < len(row) else "" for row in rows]

        X = np.empty((n, len(self.feature_names)))
        j = 0
        unseen_rows = {}
        keep_nan = self.missing == "nan"
        for name, pos, enc in self._columns:
            texts = column(pos)
            if enc is not None:
                j = self._one_hot(X, j, name, pos, enc, texts, bad, unseen_rows, keep_nan)
                continue
            try:
                values = np.array(texts, dtype=np.float64)
            except ValueError:
                values = None
                stripped = [t.strip() for t in texts]
                empty = [i for i, t in enumerate(stripped) if not t]
                if empty:  # empty fields (missing readings) only: parse the rest at once, not one by one
                    try:
                        values = np.array([t or "nan" for t in stripped], dtype=np.float64)
                    except ValueError:
                        pass
                    else:
                        for i in ([] if keep_nan else empty):
                            bad(i, pos, "missing value", name, texts[i])
            if values is None:  # find the culprits one by one
                values = np.full(n, np.nan)
                for i, t in enumerate(texts):
                    try:
                        values[i] = float(t)
                    except ValueError:
                        if not t.strip():
                            if not keep_nan:
                                bad(i, pos, "missing value", name, t)
                        else:
                            bad(i, pos, "non-numeric value", name, t)
            for i in np.flatnonzero(np.isinf(values) if keep_nan else ~np.isfinite(values)):
                bad(int(i), pos, "NaN or infinite value", name, texts[i])
            X[:, j] = values
            j += 1

        raw = {}
        for name in self._text_columns:
            pos = header.index(name)
            raw[name] = np.array([t.strip() for t in column(pos)], dtype=object)
            if name == self.key:
                for i in np.flatnonzero(raw[name] == ""):
                    bad(int(i), pos, "missing value", name, column(pos)[i])

        unlabelled = np.zeros(n, dtype=bool)
        labels, classes = self._labels(column(header.index(self.label)), header.index(self.label), bad,
                                       unlabelled if keep_nan else None)
        if errors and self.on_bad_record == "raise":
            raise errors[min(errors)][1]
        bad_rows = np.zeros(n, dtype=bool)
        bad_rows[list(errors)] = True
        keep = ~unlabelled & ~bad_rows
        n_unlabelled = int((unlabelled & ~bad_rows).sum())  # a bad record is counted as such, not here
        n_missing = int(np.isnan(X[keep]).sum()) if keep_nan else 0
        kept_errors = [errors[i][1] for i in sorted(errors)[:MAX_KEPT_ERRORS]]
        y = label_array([labels[i] for i in np.flatnonzero(keep)]) if not keep.all() else label_array(labels)
        if len(y) == 0:
            y = label_array(classes)[:0]
        unseen = {name: int(mask[keep].sum()) for name, mask in unseen_rows.items()}
        for name, count in unseen.items():
            if count:
                _note(f"{count} values of text column {name!r} of {self.path} are outside its "
                      f"{len(self.categories[name])} categories: one-hot all zeros")
        if keep_nan and (n_unlabelled or n_missing):
            _note(f"{self.path}: {n_missing} missing feature values kept as missing (NaN) for the learner to "
                  f"impute or skip; {n_unlabelled} records without a label left out")
        self._data = _Parsed(np.ascontiguousarray(X[keep]), y, classes, len(errors), kept_errors, unseen,
                             {name: values[keep] for name, values in raw.items()}, n_missing, n_unlabelled)

    def _one_hot(self, X, j, name, pos, enc, texts, bad, unseen_rows, keep_nan=False) -> int:
        """Write the one-hot columns of one text column from ``X[:, j]`` on; returns the next free column."""
        cols = enc.feature_names_out
        stripped = np.array([t.strip() for t in texts], dtype=object)
        # encode each distinct value once
        distinct, inverse = np.unique(stripped, return_inverse=True)
        table = np.array([[enc.transform_one({name: v})[c] for c in cols] for v in distinct.tolist()])
        X[:, j:j + len(cols)] = table.reshape(len(distinct), len(cols))[inverse.reshape(-1)]
        empty = np.flatnonzero(stripped == "")
        if keep_nan:  # a missing category: NaN in every column of it, for the consumer to impute or skip
            X[empty, j:j + len(cols)] = np.nan
        else:
            for i in empty:
                bad(int(i), pos, "missing value", name, texts[i])
        known = set(self.categories[name])
        outside = np.array([v != "" and v not in known for v in distinct.tolist()], dtype=bool)
        unseen_rows[name] = outside[inverse.reshape(-1)]
        return j + len(cols)

    def _targets(self, texts, pos, bad, unlabelled=None):
        """task='regression': the labels as floats (a label that is not a finite number is a bad record)."""
        out = np.zeros(len(texts))
        for i, t in enumerate(texts):
            t = t.strip()
            if not t:
                if unlabelled is not None:
                    unlabelled[i] = True
                else:
                    bad(i, pos, "missing label", self.label, t)
                continue
            try:
                out[i] = float(t)
            except ValueError:
                bad(i, pos, "label is not a number (task='regression')", self.label, t)
                continue
            if not np.isfinite(out[i]):
                bad(i, pos, "label is NaN or infinite", self.label, t)
        return out.tolist(), []

    def _labels(self, texts, pos, bad, unlabelled=None):
        if self.task == "regression":
            return self._targets(texts, pos, bad, unlabelled)
        """Labels and classes; an empty label is a bad record, or (``unlabelled`` given) marked there."""
        texts = [t.strip() for t in texts]
        if self._declared is not None:
            lookup = {str(c): c for c in self._declared}
            labels = [lookup.get(t) for t in texts]
            for i, (t, v) in enumerate(zip(texts, labels)):
                if v is None:
                    if not t and unlabelled is not None:
                        unlabelled[i] = True
                    else:
                        bad(i, pos, "missing label" if not t else "unknown label", self.label, t)
            return labels, list(self._declared)
        for i, t in enumerate(texts):
            if not t:
                if unlabelled is not None:
                    unlabelled[i] = True
                else:
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


def messy_csv(seed, n=240, delimiter=",", eol="\n", regression=False, odd_lines=True):
    """A seeded file with every kind of bad record, empty and blank fields, text and key columns
    (``odd_lines=False``: every line as wide as the header, no blank line)."""
    rng = np.random.default_rng(seed)
    odd_values = ["", "", " ", " 2.5 ", "nan", "-inf", "oops", "1_0", "\t", "DOWN", "-nan"]
    lines = [delimiter.join(["a", "b", "kind", "m", "y"])]
    for _ in range(n):
        label = f"{rng.normal():.2f}" if regression else ["UP", "DOWN"][int(rng.integers(2))]
        fields = [f"{rng.normal():.3f}", f"{rng.integers(-2, 2)}", ["gas", "coal", "wind", " gas "][int(rng.integers(4))],
                  ["press-1", "lathe", "7"][int(rng.integers(3))], label]
        if rng.random() < 0.2:
            fields[int(rng.integers(5))] = odd_values[int(rng.integers(len(odd_values)))]
        if rng.random() < 0.03:
            fields[4] = ["", "SIDEWAYS", "x", "inf"][int(rng.integers(4))]
        r = rng.random() if odd_lines else 1.0
        if r < 0.03:
            fields = fields[:int(rng.integers(0, 5))]  # short (or a line without a delimiter)
        elif r < 0.06:
            fields = fields + ["extra", "more"][:int(rng.integers(1, 3))]
        elif r < 0.08:
            lines.append(["", "  ", "\t"][int(rng.integers(3))])  # a blank line
        lines.append(delimiter.join(fields))
    return eol.join(lines) + (eol if seed % 2 else "")


def outcome(source, text_column=None):
    """Everything a parse gives: arrays, label set, counts, reports (or the error raised)."""
    try:
        X, y = source.to_arrays(10**6)
    except BadRecordError as e:
        return ("raised", str(e), e.row, e.column, e.value)
    keys = source.key_values(text_column) if text_column else None
    return (X.shape, X.tobytes(), y.dtype.str, y.tolist(), source.classes, source.n_samples, source.skipped,
            [(str(e), e.row, e.column, e.value) for e in source.skipped_records], source.missing_values,
            source.unlabelled, source.unseen_categories, None if keys is None else (keys.dtype.str, keys.tolist()))


SETTINGS = [
    {"on_bad_record": "skip"},
    {"on_bad_record": "skip", "missing": "nan"},
    {"on_bad_record": "skip", "missing": "nan", "key": "m", "classes": ["UP", "DOWN"]},
    {"on_bad_record": "skip", "categorical": "kind=gas|coal", "features": "a,b,kind"},
    {"on_bad_record": "raise", "missing": "nan"},
    {"on_bad_record": "raise", "features": ["a"]},
    {"on_bad_record": "skip", "missing": "nan", "task": "regression", "key": "m"},
]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_bulk_parse_equals_the_record_by_record_reference(tmp_path, seed, settings, monkeypatch):
    if seed >= 3:  # repeating numbers converted once per distinct text (in files of thousands of records)
        monkeypatch.setattr(csv_source, "_SAMPLE", 8)
    delimiter, eol = [(",", "\n"), (";", "\r\n"), ("\t", "\n")][seed % 3]
    regression = settings.get("task") == "regression"
    text = messy_csv(seed, delimiter=delimiter, eol=eol, regression=regression, odd_lines=seed % 3 != 2)
    path = write(tmp_path, text, "m.csv.gz" if seed % 2 else "m.csv")
    fast, ref = CSVSource(path, label="y", **settings), RowByRow(path, label="y", **settings)
    got, want = outcome(fast, "kind"), outcome(ref, "kind")
    assert got == want
    if settings["on_bad_record"] == "skip":
        assert fast.skipped > 0 and fast.n_samples > 0  # the file does have bad and good records


@pytest.mark.parametrize("seed", range(8))
def test_fast_record_cut_equals_the_csv_module(seed):
    from streamlearn.streams.csv_source import _records_csv, _records_fast

    delimiter, eol = [(",", "\n"), ("|", "\r\n")][seed % 2]
    text = messy_csv(seed, n=120, delimiter=delimiter, eol=eol)
    fast, ref = _records_fast(text, delimiter, 5), _records_csv(text, delimiter, 5)
    assert fast is not None
    assert (fast.lines.tolist(), fast.flat, fast.widths, fast.extra) == (ref.lines.tolist(), ref.flat, ref.widths,
                                                                          ref.extra)


@pytest.mark.parametrize("text", ['a,b,y\n1,"2",UP\n3,4,DOWN\n', "a,b,y\r1,2,UP\r", "a,b,y\n1,2\x00,UP\n",
                                  "a,b,y\n1,2,UP\r\n3,4\r,DOWN\n"])
def test_quotes_and_bare_carriage_returns_go_to_the_csv_module(tmp_path, text):
    from streamlearn.streams.csv_source import _records_fast

    assert _records_fast(text, ",", 3) is None
    path = tmp_path / "q.csv"
    path.write_bytes(text.encode())
    def result(cls):
        try:
            return outcome(cls(path, label="y", on_bad_record="skip"))
        except (csv.Error, ConfigError, BadRecordError) as e:  # the csv module's own errors stay what they were
            return type(e), str(e)

    assert result(CSVSource) == result(RowByRow)


def test_bulk_parse_reports_as_before(tmp_path):
    # the reports a person reads, spelled out: file line, column, raw value; the leftmost bad field of a record
    text = "a,b,kind,y\n1,2,gas,UP\n\n3,,coal,DOWN\n4, ,gas\n5,6,gas,UP,x\n 7 ,oops,,UP\n8,9,wind,\n9,9\n"
    s = CSVSource(write(tmp_path, text), label="y", on_bad_record="skip")
    assert [(e.reason, e.row, e.column, e.value) for e in s.skipped_records] == [
        ("missing value", 4, "b", ""),
        ("missing value", 5, "b", " "),
        ("extra field (the line has 5 fields, the header 4)", 6, None, "x"),
        ("non-numeric value", 7, "b", "oops"),
        ("missing label", 8, "y", ""),
        ("missing value (the line has fewer fields than the header)", 9, "kind", None),
    ]
    assert s.feature_names == ["a", "b", "kind_coal", "kind_gas", "kind_wind"]
    assert s.to_arrays(9)[0].tolist() == [[1.0, 2.0, 0.0, 1.0, 0.0]]
    kept = CSVSource(write(tmp_path, text), label="y", on_bad_record="skip", missing="nan")
    X, y = kept.to_arrays(9)
    assert y.tolist() == ["UP", "DOWN"] and kept.unlabelled == 1 and kept.missing_values == 1 and kept.skipped == 4
    assert np.isnan(X[1, 1]) and X[1, [0, 2, 3, 4]].tolist() == [3.0, 1.0, 0.0, 0.0]
