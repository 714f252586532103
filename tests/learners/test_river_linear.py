import numpy as np
import pytest
import torch
from learners_data import FEATURES, as_dicts, separable_stream
from river import linear_model, optim

from streamlearn.errors import BadRecordError, ConfigError
from streamlearn.learners import RiverLinear, RiverLocal


def test_learn_many_is_one_mean_gradient_step_like_river():
    lr = 0.3
    model = RiverLinear(linear_model.LogisticRegression(optimizer=optim.SGD(lr), intercept_lr=lr), features=FEATURES)
    X, y = separable_stream(32, seed=0)
    w0 = np.array([0.1, -0.2, 0.3, 0.05], dtype=np.float32)
    model.set_flat(w0)
    model.learn_many(X, y)
    Xd, w = X.astype(np.float64), w0.astype(np.float64)
    g = 1 / (1 + np.exp(-(Xd @ w[:3] + w[3]))) - y  # d(log loss)/d(raw score)
    expected = np.append(w[:3] - lr * (Xd * g[:, None]).mean(0), w[3] - lr * g.mean())
    np.testing.assert_allclose(model.get_flat().numpy(), expected, rtol=1e-6)


def test_batch_of_one_equals_learn_one():
    a = RiverLinear(features=FEATURES)
    b = RiverLinear(features=FEATURES)
    X, y = separable_stream(20, seed=1)
    for x, label in zip(as_dicts(X), y):
        a.learn_one(x, label)
        b.learn_many(x, [label])
    torch.testing.assert_close(a.get_flat(), b.get_flat())


def test_pa_learns_row_by_row():
    a = RiverLinear(linear_model.PAClassifier(), features=FEATURES)
    ref = linear_model.PAClassifier()
    X, y = separable_stream(20, seed=2)
    a.learn_many(X, y)
    for x, label in zip(as_dicts(X), y):
        ref.learn_one(x, bool(label))
    expected = [ref.weights[k] for k in FEATURES] + [ref.intercept]
    np.testing.assert_allclose(a.get_flat().numpy(), np.float32(expected))


def test_named_classes_map_to_river_booleans():
    model = RiverLinear(classes=["DOWN", "UP"], features=FEATURES)
    X, y = separable_stream(300, seed=3)
    labels = np.where(y, "UP", "DOWN")
    model.learn_many(X, labels)
    assert set(model.predict_proba_one(as_dicts(X)[0])) == {"DOWN", "UP"}
    assert (model.predict_many(X) == labels).mean() > 0.9
    with pytest.raises(BadRecordError, match="FLAT"):
        model.learn_one(as_dicts(X)[0], "FLAT")
    with pytest.raises(BadRecordError, match="pass classes"):
        RiverLinear().learn_one({"a": 1.0}, "UP")


def test_lazy_features_and_errors():
    model = RiverLinear()
    assert model.predict_proba_one({"b": 1.0, "a": 2.0}) == {False: 0.5, True: 0.5}
    with pytest.raises(Exception, match="features"):
        model.get_flat()
    model.learn_one({"b": 1.0, "a": 2.0}, True)
    assert model.feature_names_ == ["a", "b"] and model.n_params == 3
    model.learn_one({"b": 1.0, "a": 2.0, "new": 5.0}, False)  # later features are not learnt
    assert set(model.model.weights) == {"a", "b"}
    with pytest.raises(ConfigError, match="RiverLocal"):
        RiverLinear(linear_model.LinearRegression())
    with pytest.raises(ConfigError, match="classes"):
        RiverLinear(classes=["a", "b", "c"])


def test_river_local_takes_matrices_and_keeps_dicts_as_they_are():
    from river import tree

    model = RiverLocal(tree.HoeffdingTreeClassifier(grace_period=20), features=FEATURES)
    X, y = separable_stream(200, seed=4)
    model.learn_many(X, y)
    assert model.classes_ == [bool(y[0]), not bool(y[0])]
    assert model.predict_proba_many(X).shape == (200, 2)
    # category values pass straight to the river model through dicts
    cat = RiverLocal(tree.HoeffdingTreeClassifier(grace_period=20))
    for i in range(100):
        cat.learn_one({"colour": "red" if i % 2 else "blue"}, i % 2 == 1)
    assert cat.predict_one({"colour": "red"}) is True
    with pytest.raises(ConfigError):
        RiverLocal(linear_model.LinearRegression())
