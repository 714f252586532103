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
        RiverLinear(classes=["a", "b", "a"])
    with pytest.raises(ConfigError, match="classes"):
        RiverLinear(classes=["a"])


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


# ---- one-vs-rest (k > 2 classes) ---------------------------------------------------------------------


def three_class_stream(n: int, seed: int):
    """Label = which third of the line x0 falls in (kept away from the boundaries); x1, x2 are noise."""
    rng = np.random.default_rng(seed)
    yi = rng.integers(0, 3, size=n)
    X = rng.normal(size=(n, 3)).astype(np.float32)
    X[:, 0] = (yi - 1) * 2.0 + rng.uniform(-0.6, 0.6, size=n)
    return X, np.array(["lo", "mid", "hi"])[yi]


def test_one_vs_rest_learns_three_classes_and_normalises():
    model = RiverLinear(linear_model.LogisticRegression(optimizer=optim.SGD(0.5), intercept_lr=0.5),
                        features=FEATURES, classes=["lo", "mid", "hi"])
    X, y = three_class_stream(3000, seed=0)
    for i in range(0, 3000, 10):
        model.learn_many(X[i:i + 10], y[i:i + 10])
    Xt, yt = three_class_stream(500, seed=1)
    P = model.predict_proba_many(Xt)
    assert P.shape == (500, 3)
    np.testing.assert_allclose(P.sum(axis=1), 1.0)
    assert (model.predict_many(Xt) == yt).mean() > 0.9
    assert model.predict_one(as_dicts(Xt)[0]) == model.classes_[int(P[0].argmax())]
    np.testing.assert_allclose(list(model.predict_proba_one(as_dicts(Xt)[0]).values()), P[0])
    with pytest.raises(BadRecordError, match="flat"):
        model.learn_one(as_dicts(X)[0], "flat")


def test_one_vs_rest_is_k_binary_models_side_by_side():
    classes = ["lo", "mid", "hi"]
    ovr = RiverLinear(linear_model.LogisticRegression(optimizer=optim.SGD(0.3), intercept_lr=0.3),
                      features=FEATURES, classes=classes)
    binaries = [RiverLinear(linear_model.LogisticRegression(optimizer=optim.SGD(0.3), intercept_lr=0.3),
                            features=FEATURES) for _ in classes]
    X, y = three_class_stream(40, seed=2)
    for i in range(0, 40, 8):  # batched steps, then single samples (the batch-1 shortcut)
        ovr.learn_many(X[i:i + 8], y[i:i + 8])
        for c, b in zip(classes, binaries):
            b.learn_many(X[i:i + 8], y[i:i + 8] == c)
    for x, label in zip(as_dicts(X[:5]), y[:5]):
        ovr.learn_many(x, [label])
        for c, b in zip(classes, binaries):
            b.learn_one(x, label == c)
    flat = ovr.get_flat()
    assert ovr.n_params == 3 * (len(FEATURES) + 1) == flat.numel()
    torch.testing.assert_close(flat, torch.cat([b.get_flat() for b in binaries]))
    # one sample scores through river's own path, a batch through the matrix: the same probabilities
    one = np.array([list(ovr.predict_proba_one(x).values()) for x in as_dicts(X[:4])])
    np.testing.assert_allclose(one, ovr.predict_proba_many(X[:4]), rtol=1e-6)


def test_one_vs_rest_flat_vector_round_trips_and_averages():
    def make():
        return RiverLinear(features=FEATURES, classes=["lo", "mid", "hi"])

    a, b = make(), make()
    X, y = three_class_stream(200, seed=3)
    a.learn_many(X[:100], y[:100])
    b.learn_many(X[100:], y[100:])
    mean = (a.get_flat() + b.get_flat()) / 2
    c = make()
    c.set_flat(mean)
    torch.testing.assert_close(c.get_flat(), mean)
    assert c.models_[1]._weights["x0"] == pytest.approx(float(mean[4]))  # block 1 = class "mid", weight of x0
    with pytest.raises(ConfigError, match="size 12"):
        c.set_flat(mean[:4])


def test_binary_layout_is_unchanged():
    model = RiverLinear(features=FEATURES, classes=["DOWN", "UP"])
    assert model.models_ == [model.model] and model.n_params == len(FEATURES) + 1


def test_registry_builds_one_vs_rest_for_every_river_linear_name():
    from streamlearn.learners import make_learner

    X, y = three_class_stream(300, seed=4)
    for name in ("river-logreg", "river-perceptron", "river-pa"):
        model = make_learner(name, features=FEATURES, classes=["lo", "mid", "hi"])
        model.learn_many(X, y)
        assert model.get_flat().numel() == 12
        assert model.predict_proba_many(X).shape == (300, 3)
        assert (model.predict_many(X) == y).mean() > 0.6, name


def test_scale_lr_scales_every_class_model():
    model = RiverLinear(linear_model.LogisticRegression(optimizer=optim.SGD(0.4), intercept_lr=0.4),
                        features=FEATURES, classes=["lo", "mid", "hi"])
    assert model.scale_lr(0.5) == pytest.approx(0.2)
    assert all(m.optimizer.lr.learning_rate == pytest.approx(0.2) and m.intercept_lr.learning_rate == pytest.approx(0.2)
               for m in model.models_)
    assert RiverLinear(linear_model.PAClassifier(), features=FEATURES).scale_lr(0.5) is None


def test_a_numpy_row_takes_river_s_own_step():
    """A float row (1, f), float32 or float64, learns and predicts as river does on its dict (values rounded
    to float32 as every path rounds them), also through predict_proba_learn_many; a bad row is still named."""
    X, y = separable_stream(50, seed=3)
    river_model = linear_model.LogisticRegression()
    rows = [RiverLinear(features=FEATURES), RiverLinear(features=FEATURES), RiverLinear(features=FEATURES)]
    for i, x in enumerate(as_dicts(X.astype(np.float32))):
        p = river_model.predict_proba_one(x)[True]
        for model, Xi in zip(rows, (X[i:i + 1].astype(np.float32), X[i:i + 1].astype(np.float64))):
            assert model.predict_proba_many(Xi)[0, 1] == p
            model.learn_many(Xi, y[i:i + 1])
        assert rows[2].predict_proba_learn_many(X[i:i + 1], y[i:i + 1]).tolist() == [[1.0 - p, p]]  # fused
        river_model.learn_one(x, bool(y[i]))
    expected = np.append([river_model.weights[k] for k in FEATURES], river_model.intercept).astype(np.float32)
    for model in rows:
        assert np.array_equal(model.get_flat().numpy(), expected) and model.n_samples_seen_ == 50
    bad = X[:1].astype(np.float32)
    bad[0, 1] = np.inf
    with pytest.raises(BadRecordError, match="not a finite number"):
        rows[0].learn_many(bad, y[:1])
