"""Missing feature values: a csv file's empty fields kept as NaN, then imputed or skipped per node, counted."""

import numpy as np
import pytest

from streamlearn.errors import BadRecordError, ConfigError
from streamlearn.streams import BLOCK, CSVSource, node_streams
from streamlearn.streams.arrays import ArrayStream
from streamlearn.streams.nodes import WithMissing


def _gappy(tmp_path):
    path = tmp_path / "g.csv"
    path.write_text("site,a,b,y\n"
                    "p,1,,0\n"      # b never seen yet at p: this row cannot be imputed
                    "q,5,50,1\n"
                    "p,3,10,1\n"
                    "p,,20,0\n"     # a imputed at p: mean(1, 3) = 2
                    "q,7,,0\n"      # b imputed at q: 50
                    "p,4,30,\n"     # no label: left out, counted
                    "q,,70,1\n")    # a imputed at q: mean(5, 7) = 6
    return path


def test_csv_keeps_empty_fields_as_nan_and_counts_unlabelled(tmp_path):
    path = _gappy(tmp_path)
    with pytest.raises(BadRecordError, match="missing value"):
        CSVSource(path, label="y").to_arrays(10)  # the default: an empty field is a bad record
    s = CSVSource(path, label="y", missing="nan")
    X, y = s.to_arrays(10)
    assert s.missing_values == 4 and s.unlabelled == 1 and s.skipped == 0 and len(y) == 6
    assert np.isnan(X).sum() == 4
    with pytest.raises(ConfigError):
        CSVSource(path, label="y", missing="zero")


def test_impute_per_node_with_the_running_mean(tmp_path):
    path = _gappy(tmp_path)
    p, q = node_streams(f"csv:{path}", None, split="key:site", label="y", on_missing="impute")
    Xp, yp = p.to_arrays(10)
    Xq, yq = q.to_arrays(10)
    assert Xp.tolist() == [[3.0, 10.0], [2.0, 20.0]] and yp.tolist() == [1, 0]
    assert Xq.tolist() == [[5.0, 50.0], [7.0, 50.0], [6.0, 70.0]]
    assert p.counts() == {"imputed": 1, "skipped": 1, "rows_with_missing": 2}
    assert q.counts() == {"imputed": 2, "skipped": 0, "rows_with_missing": 2}


def test_skip_drops_rows_with_a_missing_value(tmp_path):
    path = _gappy(tmp_path)
    p, q = node_streams(f"csv:{path}", None, split="key:site", label="y", on_missing="skip")
    assert p.to_arrays(10)[0].tolist() == [[3.0, 10.0]] and q.to_arrays(10)[0].tolist() == [[5.0, 50.0]]
    assert p.counts()["skipped"] == 2 and q.counts()["skipped"] == 2 and p.n_samples == 1


def test_skipping_keeps_whole_blocks_and_replays_alike():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3 * BLOCK + 17, 2))
    X[rng.random(X.shape) < 0.1] = np.nan
    y = rng.integers(0, 2, len(X))
    s = WithMissing(ArrayStream(X, y), "skip")
    sizes = [len(b) for b, _ in s._blocks(None)]
    assert all(n == BLOCK for n in sizes[:-1]) and sum(sizes) == s.n_samples
    keep = ~np.isnan(X).any(axis=1)
    assert np.array_equal(s.to_arrays(10**6)[0], X[keep]) and np.array_equal(s.to_arrays(10**6)[1], y[keep])
    assert s.counts()["skipped"] == int((~keep).sum())
    # iteration and to_arrays give the same rows
    assert np.array_equal([[x["x0"], x["x1"]] for x, _ in s], X[keep])


@pytest.mark.parametrize("policy", ["impute", "skip"])
def test_the_first_n_kept_rows_when_rows_before_them_were_skipped(policy):
    X = np.arange(2 * BLOCK + 10, dtype=float).reshape(-1, 1).repeat(2, axis=1)
    X[:5, 1] = np.nan  # the first rows miss a feature never seen yet: skipped under both policies
    y = np.arange(len(X)) % 2
    s = WithMissing(ArrayStream(X, y), policy)
    n = BLOCK + 3
    Xn, yn = s.to_arrays(n)
    assert len(yn) == n and np.array_equal(Xn, X[5:5 + n]) and np.array_equal(yn, y[5:5 + n])


def test_imputed_values_are_the_means_of_the_values_before(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(2000, 3))
    X[0] = [1.0, 2.0, 3.0]
    hole = rng.random(X.shape) < 0.2
    hole[0] = False
    X[hole] = np.nan
    got = WithMissing(ArrayStream(X, np.zeros(len(X), int)), "impute").to_arrays(10**6)[0]
    for i, j in zip(*np.nonzero(hole)):
        before = X[:i, j]
        assert got[i, j] == pytest.approx(np.nanmean(before))


@pytest.mark.parametrize("policy", ["impute", "skip"])
def test_counting_pass_equals_a_block_by_block_pass(policy, monkeypatch):
    # n_samples counts with MissingValues over chunks of blocks: the same rows and counts as block by block
    from streamlearn.learners.preprocessing import MissingValues
    from streamlearn.streams import nodes

    monkeypatch.setattr(nodes, "_COUNT_CHUNK", 3)  # several chunks, the last one partial
    rng = np.random.default_rng(0)
    X = rng.normal(size=(10 * BLOCK + 77, 4))
    X[rng.random(X.shape) < 0.05] = np.nan
    X[:BLOCK + 5, 3] = np.nan  # a feature first seen in the second block: its rows before cannot be imputed
    y = rng.integers(0, 2, len(X))
    mv = MissingValues(4, policy)
    kept = sum(int(mv.apply(X[i:i + BLOCK])[1].sum()) for i in range(0, len(X), BLOCK))
    s = WithMissing(ArrayStream(X, y), policy)
    assert s.n_samples == kept and s.counts() == mv.counts() and mv.skipped > BLOCK
    assert len(s.to_arrays(len(X))[1]) == kept and s.counts() == mv.counts()
