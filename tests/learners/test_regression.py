"""TorchLearner with a regression loss (squared, Huber): float targets, one output, target standardised."""

import numpy as np
import pytest
import torch

from streamlearn.errors import BadRecordError, ConfigError
from streamlearn.learners import OnlineScaler, TorchLearner, make_learner


def linear_stream(n=4000, seed=0, noise=5.0, outliers=0.0):
    """y = 300 + 40 x0 - 25 x1 + 10 x2 + noise, features on different scales."""
    rng = np.random.default_rng(seed)
    X = (rng.normal(size=(n, 3)) * [1.0, 3.0, 0.2] + [0.0, 10.0, -1.0]).astype(np.float32)
    y = 300.0 + X @ np.array([40.0, -25.0, 10.0]) + rng.normal(scale=noise, size=n)
    if outliers:
        hit = rng.random(n) < outliers
        y[hit] += rng.choice([-1.0, 1.0], size=hit.sum()) * 2000.0
    return X, y


def prequential_mae(model, X, y, batch=10, start=2000):
    errs = []
    for i in range(0, len(X), batch):
        pred = model.predict_learn_many(X[i:i + batch], y[i:i + batch])
        errs.append(np.abs(pred - y[i:i + batch]))
    return float(np.concatenate(errs)[start:].mean())


@pytest.mark.parametrize("loss", ["squared", "huber"])
@pytest.mark.parametrize("arch", ["logreg", "mlp"])
def test_fits_a_noisy_linear_target(loss, arch):
    X, y = linear_stream()
    model = TorchLearner(arch, hidden=(16,), n_features=3, loss=loss, scale=True, lr=0.05, seed=0, device="cpu")
    assert model.task_ == "regression"
    mae = prequential_mae(model, X, y)
    # The noise alone gives E|N(0, 5)| = 4.0; predicting the mean gives about 68.
    assert mae < 10.0, mae
    pred = model.predict_many(X[:5])
    assert pred.dtype == np.float32 and pred.shape == (5,)
    assert isinstance(model.predict_one({0: 0.0, 1: 10.0, 2: -1.0}), float)


def test_huber_shrugs_off_outliers_that_squared_follows():
    X, y = linear_stream(outliers=0.02)
    clean = linear_stream()[1]
    res = {}
    for loss in ("squared", "huber"):
        model = TorchLearner("logreg", n_features=3, loss=loss, scale=True, lr=0.05, seed=0, device="cpu")
        for i in range(0, len(X), 10):
            model.learn_many(X[i:i + 10], y[i:i + 10])
        res[loss] = float(np.abs(model.predict_many(X) - clean).mean())
    assert res["huber"] < res["squared"], res


@pytest.mark.parametrize("arch, loss", [("mlp", "squared"), ("logreg", "huber")])
def test_target_standardisation_is_what_makes_raw_units_learnable(arch, loss):
    X, y = linear_stream()
    kw = {"hidden": (16,), "n_features": 3, "loss": loss, "scale": True, "lr": 0.05, "seed": 0, "device": "cpu"}
    with np.errstate(all="ignore"):
        mae_off = prequential_mae(TorchLearner(arch, scale_target=False, **kw), X, y)
    assert prequential_mae(TorchLearner(arch, **kw), X, y) < 8.0
    # on raw units (y ~ 300) the same lr diverges (mlp, squared) or crawls (Huber's linear part)
    assert not mae_off < 20.0


def test_flat_vector_carries_the_target_statistics():
    X, y = linear_stream(n=200)
    a = TorchLearner("mlp", hidden=(4,), n_features=3, loss="squared", scale=True, seed=0, device="cpu")
    for i in range(0, 200, 20):
        a.learn_many(X[i:i + 20], y[i:i + 20])
    p = a.n_params
    assert a.n_flat == p + OnlineScaler.flat_size(3) + OnlineScaler.flat_size(1)
    flat = a.get_flat()
    mean, var, n = flat[-3:].tolist()
    assert n == 200 and mean == pytest.approx(float(y.mean()), rel=1e-5)
    assert var == pytest.approx(float(y.var()), rel=1e-4)
    b = a.clone()
    b.set_flat(flat)
    np.testing.assert_allclose(b.predict_many(X), a.predict_many(X), rtol=1e-5, atol=1e-3)
    # without feature scaling the target statistics follow the parameters directly
    c = TorchLearner("logreg", n_features=3, loss="huber", seed=0, device="cpu")
    assert c.n_flat == c.n_params + 3
    assert TorchLearner("logreg", n_features=3, loss="huber", scale_target=False, device="cpu").n_flat == 4


def test_functional_path_equals_the_learner():
    """What the simulator does: forward + loss on standardised targets, stepped by make_optimizer."""
    X, y = linear_stream(n=120)
    model = TorchLearner("mlp", hidden=(5,), n_features=3, loss="huber", scale=True, lr=0.05, seed=0, device="cpu")
    p = model.n_params
    W = model.get_flat()[:p].clone().requires_grad_(True)
    forward, loss_fn = model.functional()
    opt = model.make_optimizer([W])
    xs, ts = OnlineScaler(device="cpu"), OnlineScaler(device="cpu")
    for i in range(0, 120, 12):
        Xb, yb = torch.from_numpy(X[i:i + 12]), torch.from_numpy(y[i:i + 12].astype(np.float32))
        model.learn_many(X[i:i + 12], y[i:i + 12])
        Xb = xs.update(Xb).transform(Xb)
        yb = ts.update(yb[:, None]).transform(yb[:, None])[:, 0]
        opt.zero_grad()
        loss_fn(forward(W, Xb), yb).backward()
        opt.step()
    torch.testing.assert_close(W.detach(), model.get_flat()[:p], atol=1e-5, rtol=1e-5)


def test_bad_targets_and_settings_are_named():
    model = TorchLearner("logreg", n_features=2, loss="squared", device="cpu")
    with pytest.raises(BadRecordError, match="target is not a number.*row 1.*'high'"):
        model.learn_many(np.zeros((2, 2), dtype=np.float32), [1.0, "high"])
    with pytest.raises(BadRecordError, match="not a finite number"):
        model.learn_many(np.zeros((2, 2), dtype=np.float32), np.array([1.0, np.nan]))
    with pytest.raises(ConfigError, match="classes: a regression model"):
        TorchLearner("logreg", n_features=2, loss="huber", classes=[0, 1])
    with pytest.raises(ConfigError, match="gives no class probabilities"):
        model.predict_proba_one({0: 1.0, 1: 2.0})
    with pytest.raises(ConfigError, match="loss: one of"):
        TorchLearner(loss="absolute")
    with pytest.raises(ConfigError, match="scale_target"):
        TorchLearner(loss="squared", scale_target="yes")


def test_unfitted_and_registry():
    model = make_learner("mlp", loss="squared", seed=0)
    assert model.predict_one({"a": 1.0}) is None  # no features known yet, as river's unfitted models
    model.learn_one({"a": 1.0, "b": 2.0}, 3.5)
    assert isinstance(model.predict_one({"a": 1.0, "b": 2.0}), float)
    with pytest.raises(ConfigError, match="predict_learn_many: for regression models"):
        make_learner("logreg", n_features=2, classes=[0, 1]).predict_learn_many(np.zeros((1, 2)), [0])
