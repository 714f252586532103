"""The numpy path of small models gives what the torch path gives, to float tolerance, for every learner
that takes it; the torch path stays for the others (and for GPU)."""

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
}


def _pair(params):
    params = {"classes": [0, 1], "n_features": 5, "lr": 0.3, "seed": 3, "device": "cpu", **params}
    fast, slow = TorchLearner(**params), TorchLearner(**params)
    slow._fast = None
    assert fast._fast is not None
    return fast, slow


def _stream(n, k, seed=0):
    rng = np.random.default_rng(seed)
    X = (rng.normal(size=(n, 5)) * [1, 10, 100, 0.1, 1] + [0, 5, 1000, 0, -3]).astype(np.float32)
    y = (X[:, 0] + X[:, 1] / 10 > 0.5).astype(int) + (k > 2) * (X[:, 3] > 0.1)
    return X, y


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("batch", [1, 7, 64])
def test_both_paths_learn_the_same_model_and_predict_the_same(name, batch):
    fast, slow = _pair(CASES[name])
    X, y = _stream(600, len(fast.classes_))
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
