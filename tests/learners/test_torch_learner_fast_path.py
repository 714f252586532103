"""TorchLearner's fast paths give what the plain paths give: fused test-then-train, closed-form
logreg gradient, the hand-made SGD step, vectorized label encoding, the no-copy get_flat."""

import numpy as np
import pytest
import torch
from learners_data import FEATURES, separable_stream

from streamlearn.errors import BadRecordError
from streamlearn.learners import TorchLearner
from streamlearn.learners.losses import cross_entropy


def learner(**kw):
    kw = {"features": FEATURES, "classes": [False, True], "seed": 0, "device": "cpu", **kw}
    return TorchLearner(**kw)


SETTINGS = [
    dict(arch="logreg"),
    dict(arch="logreg", weight_decay=1e-2),
    dict(arch="logreg", momentum=0.9),
    dict(arch="logreg", optimizer="adam", lr=0.01),
    dict(arch="logreg", scale=True),
    dict(arch="logreg", loss="hinge"),
    dict(arch="mlp", hidden=(5,)),
    dict(arch="mlp", hidden=(5,), optimizer="adam", lr=0.01, scale=True),
    dict(arch="cnn", hidden=(2,)),
]


@pytest.mark.parametrize("kw", SETTINGS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_predict_proba_learn_many_is_predict_then_learn(kw):
    fused, plain = learner(**kw), learner(**kw)
    X, y = separable_stream(200, seed=1)
    for i in range(0, 200, 20):
        Xb, yb = X[i:i + 20], y[i:i + 20]
        expected = plain.predict_proba_many(Xb)
        plain.learn_many(Xb, yb)
        P = fused.predict_proba_learn_many(Xb, yb)
        np.testing.assert_array_equal(P, expected)  # the very same forward pass: bit for bit
        torch.testing.assert_close(fused.get_flat(), plain.get_flat(), rtol=0, atol=0)
    assert fused.n_steps_ == plain.n_steps_ == 10 and fused.n_samples_seen_ == 200


def test_fused_step_while_unfitted_answers_like_predict_proba_many():
    model = TorchLearner("logreg", seed=0, device="cpu")  # features and labels learnt lazily
    x = {"a": 1.0, "b": 2.0}
    assert model.predict_proba_learn_many([x, x], ["UP", "UP"]).shape == (2, 0)  # nothing known before
    P = model.predict_proba_learn_many([x], ["DOWN"])
    assert P.shape == (1, 1) and P[0, 0] == 1.0  # only "UP" was known: probability 1, as predict_proba_many
    assert model.classes_ == ["UP", "DOWN"]
    assert model.predict_proba_learn_many([x], ["UP"]).shape == (1, 2)
    assert model.predict_proba_learn_many(np.zeros((0, 2), dtype=np.float32), []).shape == (0, 2)


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_closed_form_logreg_step_equals_autograd(weight_decay):
    model = learner(arch="logreg", lr=0.3, weight_decay=weight_decay)
    forward, loss_fn = model.functional()
    assert loss_fn is cross_entropy
    X, y = separable_stream(32, seed=2)
    w0 = model.get_flat()
    y_idx = torch.from_numpy(model.encode_labels(y))
    grad = torch.func.grad(lambda w: loss_fn(forward(w, torch.from_numpy(X)), y_idx))(w0)
    model.learn_many(X, y)
    torch.testing.assert_close(model.get_flat(), w0 - 0.3 * (grad + weight_decay * w0), rtol=1e-6, atol=1e-7)


def test_multiclass_closed_form_learns():
    rng = np.random.default_rng(0)
    centres = np.array([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0]], dtype=np.float32)
    y = rng.integers(0, 3, size=3000)
    X = centres[y] + rng.normal(size=(3000, 3)).astype(np.float32)
    model = TorchLearner("logreg", features=FEATURES, classes=["a", "b", "c"], lr=0.5, seed=0, device="cpu")
    labels = np.array(["a", "b", "c"])[y]
    for i in range(0, 3000, 50):
        model.learn_many(X[i:i + 50], labels[i:i + 50])
    assert (model.predict_many(X) == labels).mean() > 0.95


def test_vectorized_label_encoding_agrees_with_the_per_label_path():
    # numpy batches of more than 32 labels take one searchsorted; lists take a dict lookup per label
    model = TorchLearner("logreg", n_features=1, classes=[3, 1, 2], seed=0, device="cpu")
    y = np.array([2, 3, 1, 1, 2] * 10)
    expected = [2, 0, 1, 1, 2] * 10
    assert model.encode_labels(y).tolist() == expected
    assert model.encode_labels(y.astype(np.float64)).tolist() == expected
    assert model.encode_labels(y.tolist()).tolist() == expected
    with pytest.raises(BadRecordError, match="classes"):
        model.encode_labels(np.r_[y, 4])
    with pytest.raises(BadRecordError):
        model.encode_labels(np.r_[y, np.nan])
    bools = TorchLearner("logreg", n_features=1, classes=[False, True], seed=0, device="cpu")
    assert bools.encode_labels(np.array([1, 0] * 20)).tolist() == [1, 0] * 20  # 1 == True, as for a dict
    lazy = TorchLearner("logreg", n_features=1, seed=0, device="cpu")
    assert lazy.encode_labels(np.array([7, 7, 5] * 20)).tolist() == [0, 0, 1] * 20  # labels as they come
    assert lazy.encode_labels(np.array([5, 7] * 20)).tolist() == [1, 0] * 20
    with pytest.raises(BadRecordError):
        lazy.encode_labels(np.array([5, 9] * 20))


def test_get_flat_without_copy_is_the_live_vector():
    model = learner(arch="logreg")
    live, copy = model.get_flat(copy=False), model.get_flat()
    X, y = separable_stream(20, seed=3)
    model.learn_many(X, y)
    assert torch.equal(live, model.get_flat()) and not torch.equal(copy, live)
    assert not live.requires_grad
