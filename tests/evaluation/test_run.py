import json
import math
import random

import numpy as np
import pytest
from river import linear_model, preprocessing

from streamlearn.errors import BadRecordError, ConfigError
from streamlearn.evaluation import evaluate
from streamlearn.streams import DriftEvent


class FlipStream:
    """y = (a > 0.5) until `at`, then y = (a <= 0.5): an abrupt concept drift."""

    def __init__(self, n=3000, at=1500, seed=0):
        self.n, self.at, self.seed = n, at, seed

    def __iter__(self):
        rng = random.Random(self.seed)
        for i in range(self.n):
            a = rng.random()
            yield {"a": a, "b": rng.random()}, (a > 0.5) != (i >= self.at)

    def __len__(self):
        return self.n

    def drift_events(self, n):
        return [DriftEvent(self.at, 0, "abrupt", {})] if self.at < n else []


class Recorder:
    """A non-river learner that logs the order of its calls and always predicts True."""

    def __init__(self):
        self.calls = []

    def predict_one(self, x):
        self.calls.append(("predict", x["i"]))
        return True

    def predict_proba_one(self, x):
        return {True: 0.75, False: 0.25}

    def learn_one(self, x, y):
        self.calls.append(("learn", x["i"]))


class NumpyMajority:
    """A numpy mini-batch learner: predicts the majority label learned so far."""

    classes_ = [False, True]

    def __init__(self):
        self.counts = np.zeros(2)
        self.batches = []

    def predict_one(self, x):
        return bool(self.counts[1] > self.counts[0])

    def learn_one(self, x, y):
        self.counts[int(y)] += 1

    def predict_many(self, X):
        self.batches.append(X.copy())
        return np.full(len(X), self.counts[1] > self.counts[0])

    def predict_proba_many(self, X):
        p = (self.counts + 1) / (self.counts.sum() + 2)
        return np.tile(p, (len(X), 1))

    def learn_many(self, X, y):
        assert y.dtype == bool
        self.counts += [np.sum(~y), np.sum(y)]


def indexed(labels):
    return [({"i": i, "z": 1.0}, y) for i, y in enumerate(labels)]


def test_batch_is_predicted_before_it_is_learned():
    rec = Recorder()
    res = evaluate(indexed([True, False, True, True, False]), rec, batch_size=2, detector=None, progress=False)
    assert rec.calls == [
        ("predict", 0), ("predict", 1), ("learn", 0), ("learn", 1),
        ("predict", 2), ("predict", 3), ("learn", 2), ("learn", 3),
        ("predict", 4), ("learn", 4),
    ]
    assert res.accuracy == pytest.approx(3 / 5)
    assert res.loss == pytest.approx(-(3 * math.log(0.75) + 2 * math.log(0.25)) / 5)
    assert res.score is None and res.events == []


def test_numpy_mini_batches_match_a_hand_loop():
    rng = np.random.default_rng(0)
    labels = (rng.random(103) < 0.7).tolist()
    stream = [({"b": float(i), "a": -float(i)}, y) for i, y in enumerate(labels)]
    learner = NumpyMajority()
    res = evaluate(stream, learner, batch_size=10, window=20, every=25, detector=None, progress=False)
    # the same protocol, by hand
    counts = np.zeros(2)
    correct, losses = [], []
    for s in range(0, 103, 10):
        ys = np.array(labels[s : s + 10])
        pred = counts[1] > counts[0]
        p = (counts + 1) / (counts.sum() + 2)
        correct += (ys == pred).tolist()
        losses += (-np.log(np.where(ys, p[1], p[0]))).tolist()
        counts += [np.sum(~ys), np.sum(ys)]
    assert res.accuracy == pytest.approx(np.mean(correct), abs=1e-12)
    assert res.loss == pytest.approx(np.mean(losses), rel=1e-12)
    assert len(learner.batches) == 11 and learner.batches[0].shape == (10, 2)
    np.testing.assert_array_equal(learner.batches[0][:, 0], -np.arange(10.0))  # columns in sorted order: a, b
    np.testing.assert_array_equal(res.history["position"], [25, 50, 75, 100, 103])
    assert res.history["rolling_accuracy"][-1] == pytest.approx(np.mean(correct[-20:]))


def test_detects_injected_drift_and_scores_it():
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    res = evaluate(FlipStream(), model, detector="adwin", window=200, every=50, progress=False, max_delay=300)
    assert res.n == 3000 and res.n_scored == 3000
    assert res.score is not None and [e.position for e in res.events] == [1500]
    assert res.score.detected == 1 and res.score.delays[0] < 300
    assert res.score.false_alarms <= 1
    racc = res.history["rolling_accuracy"]
    pos = res.history["position"]
    assert racc[pos == 1500][0] > 0.9  # learned the first concept
    assert racc[pos == 1700][0] < racc[pos == 1500][0]  # hit by the drift


def test_one_sided_by_default_with_the_false_alarm_rate():
    def run(**kw):
        model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
        return evaluate(FlipStream(n=6000, at=4000), model, detector="adwin", window=200, every=50, progress=False,
                        max_delay=1000, **kw)

    one, two = run(), run(one_sided=False)
    assert one.settings["one_sided"] and not two.settings["one_sided"]
    assert one.score.detected == two.score.detected == 1
    assert len(one.detections) + one.n_ignored == len(two.detections) and two.n_ignored == 0
    d = one.to_dict()
    assert d["n_ignored"] == one.n_ignored and d["score"]["samples"] == 6000
    assert d["score"]["false_alarms_per_10k"] == one.score.false_alarms * 1e4 / 6000


def test_ground_truth_from_a_streamlearn_stream():
    from streamlearn.streams import inject, make_source

    stream = inject(make_source("sea", seed=0), ["sudden@500"])
    res = evaluate(stream, preprocessing.StandardScaler() | linear_model.LogisticRegression(), n=1000, progress=False)
    assert res.n == 1000 and [e.position for e in res.events] == [500]
    assert res.score is not None and res.score.events == (500,)
    assert res.to_dict()["events"] == [{"position": 500, "node": 0, "kind": "sudden", "params": {}}]


def test_events_override_and_n_limit():
    model = linear_model.LogisticRegression()
    res = evaluate(FlipStream(), model, n=1000, events=[400], detector="page_hinkley", progress=False)
    assert res.n == 1000
    assert res.score.events == (400,)
    assert res.settings["detector"] == "page_hinkley"


@pytest.mark.parametrize("batch_size", [1, 3])
def test_bad_records(batch_size):
    stream = [({"a": 1.0}, True), "garbage", ({"a": 2.0}, None), ({"a": 3.0}, False), ({"a": 0.5}, True)]
    with pytest.raises(BadRecordError) as err:
        evaluate(stream, linear_model.LogisticRegression(), batch_size=batch_size, progress=False)
    assert err.value.row == 1
    res = evaluate(stream, linear_model.LogisticRegression(), batch_size=batch_size, on_bad_record="skip", progress=False)
    assert (res.n, res.n_bad, res.n_scored) == (5, 2, 3)
    with pytest.warns(UserWarning, match="bad record"):
        evaluate(stream, linear_model.LogisticRegression(), on_bad_record="warn", progress=False)


def test_bad_feature_on_numpy_path():
    stream = [({"a": 1.0}, True), ({"a": "x"}, False), ({"b": 1.0}, True)]
    with pytest.raises(BadRecordError) as err:
        evaluate(stream, NumpyMajority(), batch_size=2, progress=False)
    assert err.value.column == "a" and err.value.row == 1
    res = evaluate(stream, NumpyMajority(), batch_size=2, on_bad_record="skip", progress=False)
    assert res.n_bad == 2 and res.n_scored == 1


def test_to_dict_is_strict_json():
    res = evaluate(FlipStream(n=600, at=300), linear_model.LogisticRegression(), window=50, every=100, progress=False)
    d = json.loads(json.dumps(res.to_dict(), allow_nan=False))
    assert d["n"] == 600 and d["events"][0]["position"] == 300 and d["events"][0]["kind"] == "abrupt"
    assert d["history"]["position"] == [100, 200, 300, 400, 500, 600]
    assert d["score"]["max_delay"] == 1000
    assert d["accuracy"] == pytest.approx(res.accuracy)


def test_progress_bar_goes_to_stderr_only_when_asked(capsys):
    evaluate(FlipStream(n=50), linear_model.LogisticRegression(), progress=False)
    assert capsys.readouterr().err == ""
    evaluate(FlipStream(n=50), linear_model.LogisticRegression(), progress=True)
    out = capsys.readouterr()
    assert "50/50" in out.err and out.out == ""


@pytest.mark.parametrize(
    "kwargs",
    [{"batch_size": 0}, {"window": -1}, {"every": 0}, {"n": -5}, {"on_bad_record": "ignore"}, {"detector": "nope"}],
)
def test_bad_settings(kwargs):
    with pytest.raises(ConfigError):
        evaluate(FlipStream(n=10), linear_model.LogisticRegression(), progress=False, **kwargs)


def test_streamlearn_learner_in_numpy_mini_batches():
    from streamlearn.learners import make_learner
    from streamlearn.streams import make_source

    learner = make_learner("river-logreg")
    res = evaluate(make_source("sea", seed=1), learner, n=640, batch_size=32, window=100, progress=False)
    assert res.n == 640 and res.n_scored == 640
    assert res.accuracy > 0.6 and np.isfinite(res.loss)


# ---- values the learner would reject are bad records, named by stream position and feature ----------


def _with_bad_values():
    """30 separable samples; position 7 has a NaN, 12 a text value, 20 an infinite value."""
    stream = [({"a": float(i % 2), "b": 0.5}, "up" if i % 2 else "down") for i in range(30)]
    stream[7] = ({"a": math.nan, "b": 0.5}, "up")
    stream[12] = ({"a": 1.0, "b": "oops"}, "up")
    stream[20] = ({"a": 1.0, "b": math.inf}, "up")
    return stream


@pytest.mark.parametrize("name", ["logreg", "river-logreg"])
@pytest.mark.parametrize("batch_size", [1, 4])
def test_bad_values_are_caught_before_the_learner(name, batch_size):
    from streamlearn.learners import make_learner

    def learner():
        return make_learner(name, features=["a", "b"], classes=["down", "up"])

    with pytest.raises(BadRecordError) as err:
        evaluate(_with_bad_values(), learner(), batch_size=batch_size, detector=None, progress=False)
    assert (err.value.row, err.value.column) == (7, "a") and math.isnan(err.value.value)
    res = evaluate(_with_bad_values(), learner(), batch_size=batch_size, detector=None, progress=False,
                   on_bad_record="skip")
    assert (res.n, res.n_bad, res.n_scored) == (30, 3, 27)
    assert res.to_dict()["n_bad"] == 3
    with pytest.warns(UserWarning) as caught:
        evaluate(_with_bad_values(), learner(), batch_size=batch_size, detector=None, progress=False,
                 on_bad_record="warn")
    assert [str(w.message).split("(")[1] for w in caught] == [
        "row 7, column 'a', value nan)", "row 12, column 'b', value 'oops')", "row 20, column 'b', value inf)"]


def test_numpy_batches_name_the_feature_not_its_index():
    from streamlearn.learners import make_learner

    stream = _with_bad_values()[:10]
    # no feature names given: the learner numbers its matrix columns, the error still names 'a'
    with pytest.raises(BadRecordError) as err:
        evaluate(stream, make_learner("logreg", seed=0), batch_size=4, detector=None, progress=False)
    assert (err.value.row, err.value.column) == (7, "a")


def test_nan_is_a_bad_record_for_river_models_too():
    stream = [({"a": 1.0}, True), ({"a": math.nan}, False), ({"a": 0.0}, False)]
    with pytest.raises(BadRecordError) as err:
        evaluate(stream, linear_model.LogisticRegression(), progress=False)
    assert (err.value.row, err.value.column) == (1, "a")
    res = evaluate(stream, linear_model.LogisticRegression(), progress=False, on_bad_record="skip")
    assert (res.n_bad, res.n_scored) == (1, 2)


def test_text_values_still_reach_river_models_that_take_them():
    from river import tree

    stream = [({"color": "red" if i % 2 else "blue"}, bool(i % 2)) for i in range(200)]
    res = evaluate(stream, tree.HoeffdingTreeClassifier(grace_period=20), detector=None, progress=False)
    assert res.n_bad == 0 and res.n_scored == 199 and res.accuracy > 0.8  # the first sample has no prediction


def test_labels_outside_the_learners_classes_are_bad_records():
    from streamlearn.learners import make_learner

    stream = [({"a": 1.0}, "up"), ({"a": 0.0}, "sideways"), ({"a": 0.0}, "down")]
    with pytest.raises(BadRecordError) as err:
        evaluate(stream, make_learner("logreg", features=["a"], classes=["down", "up"]), progress=False)
    assert (err.value.row, err.value.column, err.value.value) == (1, "y", "sideways")


class PickyLearner(NumpyMajority):
    """Rejects, like a learner would, a batch holding a negative value, naming its place in the batch."""

    def _check(self, X, names=None):
        bad = np.argwhere(X < 0)
        if len(bad):
            row, col = map(int, bad[0])
            raise BadRecordError("negative value", row=row, column=str(col if names is None else names[col]),
                                 value=float(X[row, col]))

    def predict_many(self, X):
        self._check(X)
        return super().predict_many(X)

    def learn_many(self, X, y):
        self._check(X)
        super().learn_many(X, y)


@pytest.mark.parametrize("batch_size", [1, 5])
def test_records_the_learner_rejects_follow_the_policy(batch_size):
    stream = [({"a": float(i), "b": 1.0}, bool(i % 2)) for i in range(12)]
    stream[6] = ({"a": 1.0, "b": -1.0}, True)

    class PickyOne(PickyLearner):
        def predict_one(self, x):
            self._check(np.array([[x["a"], x["b"]]]), names=["a", "b"])
            return super().predict_one(x)

    with pytest.raises(BadRecordError) as err:
        evaluate(stream, PickyOne(), batch_size=batch_size, detector=None, progress=False)
    assert (err.value.row, err.value.column, err.value.value) == (6, "b", -1.0)  # stream position, feature name
    learner = PickyOne()
    res = evaluate(stream, learner, batch_size=batch_size, detector=None, progress=False, on_bad_record="skip")
    assert (res.n, res.n_bad, res.n_scored) == (12, 1, 11)
    assert learner.counts.sum() == 11  # every good sample learned once, the bad one never


def test_settings_name_the_learner_on_one_line():
    from streamlearn.learners import make_learner

    res = evaluate(FlipStream(n=20), make_learner("mlp", hidden=(4,), seed=0), progress=False, detector=None)
    assert res.settings["learner"].startswith('TorchLearner (arch="mlp" hidden=(4,)')
    assert "\n" not in res.settings["learner"] and res.settings["learner"].endswith(")")
    model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    res = evaluate(FlipStream(n=20), model, progress=False, detector=None)
    assert "StandardScaler" in res.settings["learner"] and "LogisticRegression" in res.settings["learner"]
