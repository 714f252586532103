import numpy as np
import pytest
import torch
from learners_data import FEATURES, separable_stream

from streamlearn.errors import BadRecordError, ConfigError
from streamlearn.learners import NotInitializedError, OnlineScaler, TorchLearner


def learner(**kw):
    kw = {"features": FEATURES, "classes": [False, True], "seed": 0, "device": "cpu", **kw}
    return TorchLearner(**kw)


# -- m separate learners == one (m, d) tensor through functional() + vmap + make_optimizer ----------

CASES = [
    ("logreg", "sgd", "cross_entropy", False),
    ("mlp", "sgd", "cross_entropy", False),
    ("cnn", "sgd", "cross_entropy", False),
    ("logreg", "adam", "cross_entropy", False),
    ("mlp", "adam", "cross_entropy", False),
    ("cnn", "adam", "cross_entropy", False),
    ("mlp", "sgd", "hinge", False),
    ("mlp", "adam", "cross_entropy", True),
]


@pytest.mark.parametrize("arch, opt, loss, scale", CASES)
def test_m_learners_equal_one_vmapped_tensor(arch, opt, loss, scale):
    m, steps, batch = 3, 6, 8
    kw = dict(arch=arch, hidden=(5,), optimizer=opt, loss=loss, scale=scale, lr=0.05)
    if opt == "sgd":
        kw.update(momentum=0.9, weight_decay=1e-3)
    learners = [learner(seed=i, **kw) for i in range(m)]
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(m, steps, batch, 3)) * [1.0, 5.0, 0.1] + 2.0).astype(np.float32)
    Y = rng.integers(0, 2, size=(m, steps, batch)).astype(bool)

    p = learners[0].n_params
    W = torch.stack([lr.get_flat()[:p] for lr in learners]).requires_grad_(True)
    forward, loss_fn = learners[0].functional()
    opt_m = learners[0].make_optimizer([W])
    scaler = OnlineScaler(device="cpu")
    vforward, vloss = torch.func.vmap(forward), torch.func.vmap(loss_fn)
    for t in range(steps):
        for i, lr in enumerate(learners):
            lr.learn_many(X[i, t], Y[i, t])
        Xt = torch.from_numpy(X[:, t])
        if scale:
            Xt = scaler.update(Xt).transform(Xt)
        y_idx = torch.from_numpy(Y[:, t].astype(np.int64))
        opt_m.zero_grad()
        vloss(vforward(W, Xt), y_idx).sum().backward()  # sum of per-node means: each row gets its own gradient
        opt_m.step()
    separate = torch.stack([lr.get_flat() for lr in learners])
    torch.testing.assert_close(W.detach(), separate[:, :p], atol=1e-5, rtol=1e-5)
    assert not torch.equal(separate[0], separate[1])
    if scale:  # the flat vector ends with each learner's scaler statistics: mean, variance, count
        stats = scaler.get_flat(3, lead=(m,))
        torch.testing.assert_close(separate[:, p:], stats)
        assert separate.shape[1] == learners[0].n_flat == p + 2 * 3 + 1


def test_learn_many_is_one_step_on_the_mean_loss():
    model = learner(arch="mlp", hidden=(4,), lr=0.3)
    X, y = separable_stream(16, seed=0)
    w0 = model.get_flat()
    forward, loss_fn = model.functional()
    y_idx = torch.from_numpy(model.encode_labels(y))
    grad = torch.func.grad(lambda w: loss_fn(forward(w, torch.from_numpy(X)), y_idx))(w0)
    model.learn_many(X, y)
    torch.testing.assert_close(model.get_flat(), w0 - 0.3 * grad)
    assert model.n_steps_ == 1 and model.n_samples_seen_ == 16
    model.learn_many(X[:0], y[:0])  # an empty batch is no step
    assert model.n_steps_ == 1


def test_parameters_are_views_into_one_flat_leaf_tensor():
    model = learner(arch="mlp", hidden=(4,))
    w = model._w
    assert w.is_leaf and w.requires_grad and w.dtype == torch.float32 and w.ndim == 1
    assert model._opt.param_groups[0]["params"] == [w]
    views = model.params_
    assert sum(v.numel() for v in views.values()) == model.n_params == 3 * 4 + 4 + 4 * 2 + 2
    assert all(v.untyped_storage().data_ptr() == w.untyped_storage().data_ptr() for v in views.values())
    model.set_flat(torch.arange(model.n_params, dtype=torch.float32))
    assert model.params_["layer0.weight"][0, 0] == 0 and model.params_["layer1.bias"][-1] == model.n_params - 1
    assert model._w is w  # set_flat copies in place: the optimizer keeps its tensor


def test_lazy_initialisation_from_the_first_learnt_dict():
    model = TorchLearner(arch="mlp", hidden=(4,), seed=0, device="cpu")
    x = {"b": 1.0, "a": -1.0}
    assert model.predict_one(x) is None and model.predict_proba_one(x) == {}
    assert model.predict_many([x, x]).tolist() == [None, None]
    assert model.predict_proba_many([x, x]).shape == (2, 0)
    with pytest.raises(NotInitializedError):
        model.get_flat()
    model.learn_one(x, "UP")
    assert model.feature_names_ == ["a", "b"]  # sorted keys
    assert model.classes_ == ["UP"]
    assert model.predict_proba_one(x) == {"UP": 1.0}
    model.learn_one({"a": 1.0, "b": -1.0}, "DOWN")
    assert model.classes_ == ["UP", "DOWN"]
    assert set(model.predict_proba_one(x)) == {"UP", "DOWN"}
    with pytest.raises(BadRecordError, match="classes"):
        model.learn_one(x, "FLAT")
    fresh = model.clone()
    fresh.learn_many(np.zeros((0, 2)), [])
    assert fresh.feature_names_ is None  # an empty batch fixes nothing
    # built lazily or eagerly, the same seed and dims give the same start
    fresh.encode_features(x)
    eager = TorchLearner(arch="mlp", hidden=(4,), features=["a", "b"], seed=0, device="cpu")
    assert torch.equal(fresh.get_flat(), eager.get_flat())


def test_bool_labels_get_a_fixed_order_and_eager_init_with_n_features():
    model = TorchLearner(n_features=3, seed=0, device="cpu")
    assert model.n_params == 3 * 2 + 2  # built at construction: binary by default
    assert model.predict_one(np.zeros(3)) is None  # no label known yet
    model.learn_one(np.ones(3), True)
    assert model.classes_ == [False, True]
    np.testing.assert_array_equal(model.encode_labels([True, False, True]), [1, 0, 1])


def test_encoders_follow_feature_names_order():
    model = learner()
    dicts = [{"x2": 3.0, "x0": 1.0, "x1": 2.0, "extra": 9.0}]
    np.testing.assert_array_equal(model.encode_features(dicts), [[1.0, 2.0, 3.0]])
    np.testing.assert_array_equal(model.encode_features(np.array([1.0, 2.0, 3.0])), [[1.0, 2.0, 3.0]])
    assert model.encode_features(dicts).dtype == np.float32
    np.testing.assert_array_equal(model.encode_labels(np.array([True, False])), [1, 0])


@pytest.mark.parametrize(
    "X, error, match",
    [
        ([{"x0": 1.0, "x1": 2.0}], BadRecordError, "x2"),
        ([{"x0": 1.0, "x1": 2.0, "x2": "red"}], BadRecordError, "red"),
        ([{"x0": 1.0, "x1": float("nan"), "x2": 0.0}], BadRecordError, "x1"),
        (np.ones((2, 4)), ConfigError, "expected 3 columns"),
        ("x0,x1,x2", ConfigError, "cannot read"),
    ],
)
def test_bad_input_raises_clear_errors(X, error, match):
    model = learner()
    w = model.get_flat()
    with pytest.raises(error, match=match):
        model.learn_many(X, [True] * len(X))
    assert torch.equal(model.get_flat(), w)


def test_bad_label_and_length_mismatch():
    model = learner()
    with pytest.raises(BadRecordError, match="maybe"):
        model.learn_one({"x0": 1, "x1": 2, "x2": 3}, "maybe")
    with pytest.raises(ConfigError, match="2 samples but 3 labels"):
        model.learn_many(np.ones((2, 3)), [True, False, True])


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(arch="rnn"), "arch"),
        (dict(optimizer="rmsprop"), "optimizer"),
        (dict(lr=0), "lr"),
        (dict(optimizer="adam", momentum=0.9), "momentum"),
        (dict(loss="mse"), "loss"),
        (dict(classes=[True]), "classes"),
        (dict(arch="mlp", hidden=(0,)), "hidden"),
        (dict(arch="cnn", kernel_size=2), "kernel_size"),
        (dict(features=["a", "a"]), "features"),
        (dict(n_features=2), "n_features"),
    ],
)
def test_bad_hyperparameters_raise_config_error(kw, match):
    with pytest.raises(ConfigError, match=match):
        learner(**kw)


def test_multiclass_and_hinge():
    rng = np.random.default_rng(0)
    centers = np.array([[3, 0], [-3, 0], [0, 3]], dtype=np.float32)
    labels = rng.integers(0, 3, size=1500)
    X = centers[labels] + rng.normal(size=(1500, 2)).astype(np.float32)
    y = np.array(["a", "b", "c"])[labels]
    model = TorchLearner("mlp", hidden=(8,), n_features=2, classes=["a", "b", "c"], loss="hinge", seed=0, device="cpu")
    for i in range(0, 1500, 10):
        model.learn_many(X[i : i + 10], y[i : i + 10])
    assert (model.predict_many(X) == y).mean() > 0.9
    assert model.predict_many(X).dtype.kind == "U"


def test_scaling_uses_current_statistics_and_updates_them_on_learning():
    model = learner(scale=True)
    X = np.array([[1.0, 100.0, -5.0], [3.0, 300.0, 5.0]], dtype=np.float32)
    p_before = model.predict_proba_many(X)
    assert model.scaler_.n_ == 0
    np.testing.assert_array_equal(model.predict_proba_many(X), p_before)  # predicting learns nothing
    model.learn_many(X, [False, True])
    assert model.scaler_.n_ == 2
    np.testing.assert_allclose(model.scaler_.mean_.numpy(), [2.0, 200.0, 0.0])
    # predictions now standardise with those statistics
    forward, _ = model.functional()
    Z = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    expected = torch.softmax(forward(model.get_flat()[: model.n_params], Z), -1).numpy()
    np.testing.assert_allclose(model.predict_proba_many(X), expected, rtol=1e-5)


def test_scaler_statistics_travel_in_the_flat_vector():
    """A synced model standardises the way its averaged weights expect: the flat vector carries the
    scaler's mean, variance and count after the parameters, and set_flat loads them."""
    a, fresh = learner(scale=True, seed=0), learner(scale=True, seed=0)
    X = np.array([[1.0, 100.0, -5.0], [3.0, 300.0, 5.0], [2.0, 250.0, 0.0]], dtype=np.float32)
    assert a.n_flat == a.n_params + 2 * 3 + 1
    assert a.get_flat()[a.n_params:].eq(0).all()  # no statistics yet: the identity
    a.learn_many(X, [False, True, True])
    fresh.set_flat(a.get_flat())
    assert fresh.scaler_.n_ == 3
    np.testing.assert_allclose(fresh.predict_proba_many(X), a.predict_proba_many(X), rtol=1e-6)
    assert torch.equal(fresh.get_flat(), a.get_flat())
    # the average of two nodes' vectors averages their statistics too
    b = learner(scale=True, seed=0)
    b.learn_many(X + 10.0, [False, True, True])
    fresh.set_flat((a.get_flat() + b.get_flat()) / 2)
    np.testing.assert_allclose(fresh.scaler_.mean_.numpy(), X.mean(0) + 5.0, rtol=1e-6)
    # a vector without statistics (the common w0) resets the scaler to the identity
    fresh.set_flat(learner(scale=True, seed=0).get_flat())
    assert fresh.scaler_.n_ == 0 and fresh.scaler_.mean_ is None


def test_dataframe_input_through_narwhals():
    import pandas  # a dev dependency: any dataframe narwhals knows works the same

    data = {"x1": [2.0, 5.0], "x0": [1.0, 4.0], "x2": [3.0, 6.0]}
    frame = pandas.DataFrame(data)
    model = learner()
    np.testing.assert_array_equal(model.encode_features(frame), [[1, 2, 3], [4, 5, 6]])
    model.learn_many(frame, [False, True])
    assert model.predict_many(frame).shape == (2,)


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_cnn_convolution_matches_torch_conv1d(kernel_size):
    from streamlearn.learners.nets import build_net

    net = build_net("cnn", n_features=6, n_classes=3, hidden=(4, 2), kernel_size=kernel_size)
    w = net.init(torch.Generator().manual_seed(0))
    X = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    p = net.views(w)
    h = X.unsqueeze(1)
    for i in range(2):
        h = torch.relu(torch.nn.functional.conv1d(h, p[f"conv{i}.weight"], p[f"conv{i}.bias"], padding=kernel_size // 2))
    expected = torch.nn.functional.linear(h.flatten(1), p["head.weight"], p["head.bias"])
    torch.testing.assert_close(net.forward(w, X), expected)
