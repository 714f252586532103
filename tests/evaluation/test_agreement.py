"""Our evaluator is a drop-in for river's progressive_val_score with metrics.Accuracy on Elec2."""

import csv
import gzip
import itertools
from pathlib import Path

import pytest
from river import evaluate as river_evaluate
from river import linear_model, metrics, naive_bayes, preprocessing, tree

import streamlearn
from streamlearn.evaluation import evaluate
from streamlearn.streams import make_source

ELEC2 = Path(streamlearn.__file__).parent / "streams" / "data" / "elec2.csv.gz"


def _read_csv():
    """Elec2 straight from the shipped file: drop date and nswprice, label UP -> True."""
    rows = []
    with gzip.open(ELEC2, "rt", newline="") as f:
        for r in csv.DictReader(f):
            y = r.pop("label") == "UP"
            del r["date"], r["nswprice"]
            rows.append(({k: float(v) for k, v in r.items()}, y))
    return rows


@pytest.fixture(scope="module")
def elec2():
    """The shipped Elec2 stream from ``make_source("elec2")``, label UP -> True as in river's Elec2.

    river's binary models (LogisticRegression) need boolean labels.
    """
    rows = [(x, y == "UP") for x, y in make_source("elec2")]
    assert rows[:50] == _read_csv()[:50]  # the same stream either way
    return rows


MODELS = {
    "scaled_logreg": lambda: preprocessing.StandardScaler() | linear_model.LogisticRegression(),
    "hoeffding_tree": lambda: tree.HoeffdingTreeClassifier(),
    "gaussian_nb": lambda: naive_bayes.GaussianNB(),
}


@pytest.mark.parametrize("name,n", [("scaled_logreg", None), ("hoeffding_tree", 10000), ("gaussian_nb", 5000)])
def test_accuracy_equals_progressive_val_score(elec2, name, n):
    data = elec2 if n is None else elec2[:n]
    assert len(elec2) == 45312
    expected = river_evaluate.progressive_val_score(data, MODELS[name](), metrics.Accuracy())
    got = evaluate(data, MODELS[name](), progress=False, detector=None)
    assert got.n == len(data)
    assert got.n_scored == expected.cm.total_weight  # a None prediction is not scored, as in river
    assert got.accuracy == pytest.approx(expected.get(), abs=1e-9)


def test_history_matches_river_checkpoints(elec2):
    data = elec2[:3000]
    steps = river_evaluate.iter_progressive_val_score(data, tree.HoeffdingTreeClassifier(), metrics.Accuracy(), step=250)
    river_curve = [(s["Step"], s["Accuracy"].get()) for s in steps]
    got = evaluate(data, tree.HoeffdingTreeClassifier(), every=250, progress=False, detector=None)
    ours = list(zip(got.history["position"].tolist(), got.history["accuracy"].tolist()))
    assert [p for p, _ in ours] == [p for p, _ in river_curve]
    for (_, a), (_, b) in zip(ours, river_curve):
        assert a == pytest.approx(b, abs=1e-9)


def test_first_prediction_none_is_skipped(elec2):
    # A fresh Hoeffding tree has no prediction for the first sample; logistic regression has one.
    first = list(itertools.islice(elec2, 1))
    assert evaluate(first, tree.HoeffdingTreeClassifier(), progress=False).n_scored == 0
    assert evaluate(first, linear_model.LogisticRegression(), progress=False).n_scored == 1
