"""Prediction rows written by compiled code equal Python's text byte for byte (streamlearn.kafka.proba_text)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamlearn.kafka import proba_text
from streamlearn.kafka.predictions import PredictionPublisher, decode_predictions

pytestmark = pytest.mark.skipif(not proba_text.AVAILABLE, reason="needs numba (pip install numba)")


def python_rows(seqs, P, labels, tails, tail_of):
    rows = []
    for s, p, t in zip(seqs.tolist(), P, tail_of.tolist()):
        if np.isfinite(p).all():
            pred, proba = labels[int(p.argmax())], "[" + ",".join("%.6g" % v for v in p.tolist()) + "]"
        else:
            pred = proba = "null"
        rows.append('{"seq":%d,"prediction":%s,"proba":%s%s' % (s, pred, proba, tails[t]))
    return rows


def check(P, labels=('0', '1'), seq0=0):
    P = np.asarray(P, dtype=np.float64)
    n = len(P)
    seqs = np.arange(seq0, seq0 + n)
    tails = [',"epoch":"\\"é","syncs":2,"step":%d}' % i for i in range(n // 3 + 1)]
    tail_of = np.arange(n) // 3
    text, ends = proba_text.prediction_rows(seqs, P, list(labels), tails, tail_of, "%.6g")
    rows = python_rows(seqs, P, labels, tails, tail_of)
    assert text == (",".join(rows) + ",").encode()
    starts = np.concatenate([[0], ends[:-1] + 1])
    assert [text[a:b].decode() for a, b in zip(starts.tolist(), ends.tolist())] == rows


def test_random_probabilities_and_the_edges_of_six_digits():
    rng = np.random.default_rng(0)
    P = rng.dirichlet([1.0, 1.0, 1.0], size=20000)
    P[::5, 0] = 10.0 ** rng.uniform(-320, 0, size=len(P[::5]))  # every exponent form, subnormals (to Python)
    edges = [0.0, -0.0, 1.0, 0.5, 1e-4, 9.999995e-5, 0.0001, 1e-5, 0.1, 0.099999996, 0.9999996, 0.99999949999,
             123456.5, 999999.5, 1e6, 1.5e-7, 5e-324, 2.5, 100.0, 1e300, 1e-300, 3.4e38]
    P[:len(edges), 1] = edges
    P[len(edges):2 * len(edges), 2] = edges
    P[::17] = np.nan  # no prediction possible: null
    P[5::23, 1] = np.inf
    check(P, labels=('"DOWN"', '"UP"', '"[]\\u00e9"'), seq0=10 ** 15)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=2, max_size=2), min_size=1,
                max_size=30))
def test_any_float_is_written_as_python_writes_it(values):
    check(values)


def test_the_publisher_sends_the_same_records_with_and_without_compiled_rows(monkeypatch):
    """Runs and mini-batches, epochs, late rows, NaN rows, max_rows and halving: byte-equal records."""
    from streamlearn.kafka import predictions

    monkeypatch.setattr(predictions, "MAX_PREDICTION_RECORD_BYTES", 2500)  # records of 37 rows get halved
    sent = []
    for compiled in (True, False):
        monkeypatch.setattr(proba_text, "AVAILABLE", compiled)
        rng = np.random.default_rng(4)
        records = []

        class Producer:
            def send(self, topic, value, key=None, partition=None):
                records.append(value)

        pub = PredictionPublisher(Producer(), "p", node=2, classes=["a", "b", 7], max_rows=37)
        seq = 0
        for t in range(40):
            n = int(rng.integers(1, 60))
            P = rng.dirichlet([0.3, 0.3, 0.3], size=n)
            P[rng.random(n) < 0.1] = np.nan
            step = np.repeat(np.arange(t * 10, t * 10 + n // 4 + 1), 4)[:n] if t % 2 else t  # a run, or a batch
            pub.add(np.arange(seq, seq + n), P, step=step, syncs=t // 4, epoch=None if t < 9 else f"e{t // 9}\"",
                    late=t % 7 == 3)
            seq += n
            if t % 13 == 12:
                pub.flush()
        pub.flush()
        sent.append(records)
    assert sent[0] == sent[1] and len(sent[0]) > 40
    assert max(len(r) for r in sent[0]) <= 2500
    assert sum(len(decode_predictions(r)["predictions"]) for r in sent[0]) == seq


def test_a_negative_sequence_number_is_left_to_python():
    assert proba_text.prediction_rows(np.array([3, -1]), np.full((2, 2), 0.5), ["0", "1"], ["}"], np.zeros(2, int),
                                      "%.6g") is None
