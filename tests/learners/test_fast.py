"""The numpy path of small models gives what the torch path gives, to float tolerance, for every learner
that takes it, at every batch size (one row takes its own step: plain Python floats for a small logistic
regression, two-row numpy products otherwise); the torch path stays for the others (and for GPU)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from streamlearn.learners import TorchLearner

CASES = {
    "logreg": dict(arch="logreg"),
    "logreg scaled": dict(arch="logreg", scale=True),
    "logreg 3 classes, decay, lr schedule": dict(arch="logreg", classes=[0, 1, 2], weight_decay=0.01, lr_decay=50),
    "mlp(32) scaled": dict(arch="mlp", hidden=(32,), scale=True),
    "mlp(16,8) 3 classes, decay": dict(arch="mlp", hidden=(16, 8), classes=[0, 1, 2], weight_decay=0.001),
    "mlp(8) unscaled": dict(arch="mlp", hidden=(8,)),
    "mlp(8,4) scaled, decay, lr schedule": dict(arch="mlp", hidden=(8, 4), scale=True, weight_decay=0.01, lr_decay=30),
    # 3 classes x 40 features: past PYTHON_LINEAR, so one row takes the numpy two-row step, not plain Python
    "logreg wide scaled": dict(arch="logreg", classes=[0, 1, 2], n_features=40, scale=True),
}


def _pair(params):
    params = {"classes": [0, 1], "n_features": 5, "lr": 0.3, "seed": 3, "device": "cpu", **params}
    if params["n_features"] > 5:
        params["lr"] = 0.05
    fast, slow = TorchLearner(**params), TorchLearner(**params)
    slow._fast = None
    assert fast._fast is not None
    return fast, slow


def _stream(n, k, seed=0, f=5):
    rng = np.random.default_rng(seed)
    X = (rng.normal(size=(n, 5)) * [1, 10, 100, 0.1, 1] + [0, 5, 1000, 0, -3]).astype(np.float32)
    if f > 5:
        X = np.hstack([X, rng.normal(size=(n, f - 5)).astype(np.float32)])
    y = (X[:, 0] + X[:, 1] / 10 > 0.5).astype(int) + (k > 2) * (X[:, 3] > 0.1)
    return X, y


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_both_paths_learn_the_same_model_and_predict_the_same(name, batch):
    fast, slow = _pair(CASES[name])
    X, y = _stream(600, len(fast.classes_), f=fast.n_features_)
    for i in range(0, len(X), batch):
        Pf = fast.predict_proba_learn_many(X[i:i + batch], y[i:i + batch])
        Ps = slow.predict_proba_learn_many(X[i:i + batch], y[i:i + batch])
        np.testing.assert_allclose(Pf, Ps, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(fast.get_flat().numpy(), slow.get_flat().numpy(), atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(fast.predict_proba_many(X[:50]), slow.predict_proba_many(X[:50]), atol=2e-5, rtol=1e-4)
    assert fast.n_steps_ == slow.n_steps_ and fast.n_samples_seen_ == slow.n_samples_seen_ == len(X)


def test_set_flat_and_a_deep_copy_keep_one_state():
    """What set_flat loads (averaged scaler counts are fractional) the numpy path learns from; a deep copy
    learns on its own parameters, not on the original's."""
    a, b = _pair(CASES["logreg scaled"])
    X, y = _stream(200, 2)
    a.learn_many(X[:100], y[:100])
    v = a.get_flat()
    v[-1] = 60.5  # the scaler's count, as an average of counts
    a.set_flat(v)
    b.set_flat(v)
    for i in range(100, 200):
        twin = copy.deepcopy(a)  # a copy right after a step, when the numpy path holds the statistics
        before = a.get_flat()
        twin.learn_many(X[i:i + 1], y[i:i + 1])
        b.learn_many(X[i:i + 1], y[i:i + 1])
        assert torch.equal(a.get_flat(), before)
        a = twin
    np.testing.assert_allclose(a.get_flat().numpy(), b.get_flat().numpy(), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("params", [dict(arch="logreg", optimizer="adam"), dict(arch="logreg", momentum=0.9),
                                    dict(arch="logreg", loss="hinge"), dict(arch="cnn"),
                                    dict(arch="mlp", hidden=(256, 256))])
def test_others_keep_the_torch_path(params):
    model = TorchLearner(**{"classes": [0, 1], "n_features": 100, "seed": 0, "device": "cpu", **params})
    assert model._fast is None


def test_one_row_paths_are_taken():
    assert _pair(CASES["logreg scaled"])[0]._fast.python_linear
    wide = _pair(CASES["logreg wide scaled"])[0]._fast
    assert wide.row_shape == (1, 40) and not wide.python_linear
    assert not _pair(CASES["mlp(32) scaled"])[0]._fast.python_linear


@pytest.mark.parametrize("name", ["logreg scaled", "mlp(32) scaled", "logreg wide scaled"])
def test_a_row_in_any_form_learns_the_same(name):
    """float32 rows (the hot path), float64 rows (rounded to float32 as the general path does), dicts, and
    predict_proba_many + learn_many against predict_proba_learn_many: one model, bit for bit."""
    learners = [_pair(CASES[name])[0] for _ in range(4)]
    X, y = _stream(120, len(learners[0].classes_), seed=1, f=learners[0].n_features_)
    names = learners[0].feature_names_
    for i in range(len(X)):
        P = [learners[0].predict_proba_learn_many(X[i:i + 1], y[i:i + 1]),
             learners[1].predict_proba_learn_many(X[i:i + 1].astype(np.float64), y[i:i + 1].tolist()),
             learners[2].predict_proba_learn_many([dict(zip(names, X[i].tolist()))], [int(y[i])])]
        P.append(learners[3].predict_proba_many(X[i:i + 1]))
        learners[3].learn_many(X[i:i + 1], y[i:i + 1])
        for Q in P[1:]:
            assert Q.dtype == np.float32 and np.array_equal(Q, P[0])
    proba = learners[0].predict_proba_one(dict(zip(names, X[0].tolist())))
    assert list(proba) == learners[0].classes_
    for other in learners[1:]:
        assert torch.equal(other.get_flat(), learners[0].get_flat())
        assert other.n_steps_ == other.n_samples_seen_ == len(X)


@pytest.mark.parametrize("name", ["logreg scaled", "mlp(32) scaled"])
def test_a_bad_row_is_named_and_changes_nothing(name):
    from streamlearn.errors import BadRecordError

    fast, _ = _pair(CASES[name])
    X, y = _stream(20, 2)
    fast.learn_many(X[:10], y[:10])
    before = fast.get_flat()
    bad = X[10:11].copy()
    bad[0, 2] = np.nan
    with pytest.raises(BadRecordError, match="not a finite number") as e:
        fast.predict_proba_learn_many(bad, y[10:11])
    assert e.value.column == "2"
    with pytest.raises(BadRecordError, match="not one of the classes"):
        fast.learn_many(X[10:11], [7])
    assert torch.equal(fast.get_flat(), before) and fast.n_steps_ == 1


def test_labels_learnt_lazily_at_batch_one():
    """classes=None: the first rows (one label known) take the general path, then the one-row step; the
    torch path gives the same."""
    fast, slow = _pair(dict(arch="logreg", scale=True, classes=None))
    X, y = _stream(200, 2, seed=2)
    labels = np.where(y == 1, "UP", "DOWN")
    for i in range(len(X)):
        Pf = fast.predict_proba_learn_many(X[i:i + 1], labels[i:i + 1])
        Ps = slow.predict_proba_learn_many(X[i:i + 1], labels[i:i + 1])
        np.testing.assert_allclose(Pf, Ps, atol=2e-5, rtol=1e-4)
    assert fast.classes_ == slow.classes_
    np.testing.assert_allclose(fast.get_flat().numpy(), slow.get_flat().numpy(), atol=2e-5, rtol=1e-4)
