"""CSV replay: column choice, label types, bad records (raise names line/column/value; skip counts), elec2."""

import gzip

import numpy as np
import pytest

from streamlearn.errors import BadRecordError, ConfigError
from streamlearn.streams import CSVSource, Elec2, make_source

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


def test_skip_many_and_first_error_raised(tmp_path):
    lines = ["a,y"] + [f"{'bad' if i % 3 == 0 else i},L" for i in range(30)]
    path = write(tmp_path, "\n".join(lines) + "\n")
    s = CSVSource(path, label="y", on_bad_record="skip")
    assert s.skipped == 10 and s.n_samples == 20 and [e.row for e in s.skipped_records][:2] == [2, 5]
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
