"""One check suite, run over every learner in the registry."""

import inspect

import numpy as np
import pytest
import torch
from learners_data import FEATURES, as_dicts, separable_stream

from streamlearn.errors import ConfigError
from streamlearn.learners import LEARNERS, is_averageable, make_learner

# Small, fast settings per learner; the wrappers get the feature names so numpy input works.
PARAMS = {
    "logreg": dict(classes=[False, True], features=FEATURES, seed=0, lr=0.1, device="cpu"),
    "mlp": dict(classes=[False, True], features=FEATURES, hidden=(8,), seed=0, lr=0.1, device="cpu"),
    "cnn": dict(classes=[False, True], features=FEATURES, hidden=(4,), seed=0, lr=0.1, device="cpu"),
    "river-logreg": dict(features=FEATURES, lr=0.1),
    "river-perceptron": dict(features=FEATURES),
    "river-pa": dict(features=FEATURES),
    "hoeffding-tree": dict(features=FEATURES, grace_period=50),
    "naive-bayes": dict(features=FEATURES),
    "adaptive-random-forest": dict(features=FEATURES, n_models=3, seed=0),
}
NAMES = sorted(LEARNERS)
AVERAGEABLE = [n for n in NAMES if "averageable" in LEARNERS[n]]


def test_every_registered_learner_has_test_settings():
    assert set(PARAMS) == set(LEARNERS)


def make(name, **overrides):
    return make_learner(name, **{**PARAMS[name], **overrides})


def takes_seed(name):
    return "seed" in PARAMS[name]


@pytest.mark.parametrize("name", NAMES)
def test_registry_says_which_are_averageable(name):
    assert is_averageable(make(name)) == (name in AVERAGEABLE)
    assert ("local only" in LEARNERS[name]) == (name not in AVERAGEABLE)


def test_unknown_learner_and_bad_params_raise_config_error():
    with pytest.raises(ConfigError, match="learner"):
        make_learner("svm")
    with pytest.raises(ConfigError, match="no_such_param"):
        make_learner("naive-bayes", no_such_param=1)
    with pytest.raises(ConfigError, match="no_such_param"):
        make_learner("mlp", no_such_param=1)


@pytest.mark.parametrize("name", NAMES)
def test_predict_before_any_learning(name):
    model = make(name)
    X, _ = separable_stream(4, seed=1)
    x = as_dicts(X)[0]
    proba = model.predict_proba_one(x)
    assert isinstance(proba, dict)
    if proba:
        assert sum(proba.values()) == pytest.approx(1.0)
        assert model.predict_one(x) in proba
    else:
        assert model.predict_one(x) is None
    assert len(model.predict_many(X)) == 4
    assert model.predict_proba_many(as_dicts(X)).shape[0] == 4


@pytest.mark.parametrize("name", NAMES)
def test_learn_one_and_learn_many_then_predict(name):
    model = make(name)
    X, y = separable_stream(64, seed=2)
    for x, label in zip(as_dicts(X[:16]), y[:16]):
        model.learn_one(x, label)
    model.learn_many(X[16:48], y[16:48])  # numpy batch
    model.learn_many(as_dicts(X[48:]), y[48:].tolist())  # list of dicts
    assert model.n_samples_seen_ == 64
    assert set(model.classes_) == {False, True}
    assert model.predict_one(as_dicts(X)[0]) in (False, True)
    P = model.predict_proba_many(X)
    assert P.shape == (64, len(model.classes_))
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=1e-5)
    preds = model.predict_many(X)
    assert preds.shape == (64,)
    assert set(preds.tolist()) <= {False, True}
    # predict_many agrees with predict_one
    assert [model.predict_one(x) for x in as_dicts(X[:8])] == preds[:8].tolist()


@pytest.mark.parametrize("name", NAMES)
def test_clone_resets_to_the_initial_state(name):
    fresh = make(name)
    model = make(name)
    X, y = separable_stream(200, seed=3)
    model.learn_many(X[:100], y[:100])
    for x, label in zip(as_dicts(X[100:]), y[100:]):
        model.learn_one(x, label)
    clone = model.clone()
    assert clone.n_samples_seen_ == 0
    probe = as_dicts(X[:5])
    assert [clone.predict_proba_one(x) for x in probe] == [fresh.predict_proba_one(x) for x in probe]
    if name in AVERAGEABLE:
        assert not torch.equal(model.get_flat(), fresh.get_flat())
        assert torch.equal(clone.get_flat(), fresh.get_flat())


@pytest.mark.parametrize("name", AVERAGEABLE)
def test_flat_parameters_round_trip_exactly(name):
    model = make(name)
    X, y = separable_stream(50, seed=4)
    model.learn_many(X, y)
    v = model.get_flat()
    assert v.ndim == 1 and v.dtype == torch.float32 and v.shape[0] == model.n_params
    model.set_flat(model.get_flat())
    assert torch.equal(model.get_flat(), v)
    r = torch.randn(model.n_params, generator=torch.Generator().manual_seed(0))
    model.set_flat(r)
    assert torch.equal(model.get_flat(), r)
    # get_flat is a copy, not a view
    model.get_flat().zero_()
    assert torch.equal(model.get_flat(), r)
    # the model uses what was set: predictions change with the parameters
    model.set_flat(torch.zeros(model.n_params))
    assert model.predict_proba_many(X) == pytest.approx(np.full((50, 2), 0.5))
    with pytest.raises(ConfigError, match=f"{model.n_params}.*{model.n_params + 1}"):
        model.set_flat(torch.zeros(model.n_params + 1))


@pytest.mark.parametrize("name", [n for n in NAMES if takes_seed(n)])
def test_same_seed_same_start_different_seed_different_start(name):
    X, y = separable_stream(100, seed=5)
    a, b, c = make(name, seed=7), make(name, seed=7), make(name, seed=8)
    if name in AVERAGEABLE:
        assert torch.equal(a.get_flat(), b.get_flat())
        assert not torch.equal(a.get_flat(), c.get_flat())
    for m in (a, b, c):
        m.learn_many(X, y)
    # same seed, same data: the same model afterwards too
    np.testing.assert_array_equal(a.predict_proba_many(X), b.predict_proba_many(X))


@pytest.mark.parametrize("name", NAMES)
def test_learns_a_separable_stream(name):
    model = make(name)
    X, y = separable_stream(600, seed=6)
    for x, label in zip(as_dicts(X), y):
        model.learn_one(x, label)
    Xt, yt = separable_stream(300, seed=7)
    accuracy = float((model.predict_many(Xt) == yt).mean())
    assert accuracy > 0.9, accuracy


@pytest.mark.parametrize("name", NAMES)
def test_signature_params_are_stored_under_their_names(name):
    # river's clone() and repr read each constructor argument back from the attribute of that name.
    model = make(name)
    for p in inspect.signature(type(model).__init__).parameters:
        if p != "self":
            assert hasattr(model, p)


@pytest.mark.parametrize("name", NAMES)
def test_test_then_train_at_batch_one_on_every_path(name):
    """Test-then-train one row at a time (``streamlearn evaluate``, a node at mini-batch 1): a learner's fused
    ``predict_proba_learn_many`` (when it has one) gives what ``predict_proba_many`` then ``learn_many`` give,
    and a learner with a numpy path for small models gives what its torch path gives, to float rounding."""
    X, y = separable_stream(150, seed=8)
    a, b = make(name), make(name)
    torch_path = None
    if getattr(a, "_fast", None) is not None:
        torch_path = make(name)
        torch_path._fast = None
    fused = getattr(a, "predict_proba_learn_many", None)
    for i in range(len(X)):
        Xi, yi = X[i:i + 1], y[i:i + 1]
        expected = b.predict_proba_many(Xi)
        b.learn_many(Xi, yi)
        if fused is not None:
            P = fused(Xi, yi)
        else:
            P = a.predict_proba_many(Xi)
            a.learn_many(Xi, yi)
        np.testing.assert_array_equal(P, expected)
        if torch_path is not None:
            np.testing.assert_allclose(torch_path.predict_proba_learn_many(Xi, yi), P, atol=2e-5, rtol=1e-4)
    assert a.n_samples_seen_ == b.n_samples_seen_ == len(X)
    if name in AVERAGEABLE:
        assert torch.equal(a.get_flat(), b.get_flat())
    if torch_path is not None:
        np.testing.assert_allclose(torch_path.get_flat().numpy(), a.get_flat().numpy(), atol=2e-5, rtol=1e-4)
