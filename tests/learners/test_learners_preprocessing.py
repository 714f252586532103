import numpy as np
import pytest
import torch

from streamlearn.errors import BadRecordError, ConfigError
from streamlearn.learners import OneHotEncoder, OnlineScaler


def data(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=shape) * [1.0, 10.0, 0.01] + [0.0, 100.0, -3.0]).astype(np.float32)


def test_batched_updates_equal_per_sample_updates_and_numpy():
    X = data((60, 3))
    batched, single = OnlineScaler(device="cpu"), OnlineScaler(device="cpu")
    for lo, hi in [(0, 1), (1, 17), (17, 20), (20, 60)]:
        batched.update(X[lo:hi])
    for row in X:
        single.update(row[None, :])
    X64 = X.astype(np.float64)
    for sc in (batched, single):
        assert sc.n_ == 60
        np.testing.assert_allclose(sc.mean_.numpy(), X64.mean(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(sc.var_.numpy(), X64.var(0), rtol=1e-10)
    np.testing.assert_allclose(batched.transform(X), single.transform(X), rtol=1e-6)
    np.testing.assert_allclose(batched.transform(X), (X64 - X64.mean(0)) / X64.std(0), rtol=1e-4, atol=1e-5)


def test_leading_dimensions_index_independent_states():
    X = data((4, 10, 3))  # 4 nodes, batches of 10
    together = OnlineScaler(device="cpu")
    alone = [OnlineScaler(device="cpu") for _ in range(4)]
    for lo in (0, 5):
        together.update(torch.from_numpy(X[:, lo : lo + 5]))
        for i in range(4):
            alone[i].update(X[i, lo : lo + 5])
    assert together.mean_.shape == (4, 3)
    out = together.transform(torch.from_numpy(X))
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    for i in range(4):
        np.testing.assert_allclose(out[i].numpy(), alone[i].transform(X[i]), rtol=1e-6)
    with pytest.raises(ConfigError, match="dims"):
        together.transform(X[0])
    with pytest.raises(ConfigError, match="state has shape"):
        together.update(X[:2])


def test_identity_before_update_and_constant_features():
    sc = OnlineScaler(device="cpu")
    X = np.array([[1.0, 5.0], [2.0, 5.0]], dtype=np.float32)
    assert sc.transform(X) is X
    sc.update(X)
    np.testing.assert_array_equal(sc.transform(X)[:, 1], [0.0, 0.0])  # std 0: no division by zero
    centre = OnlineScaler(with_std=False, device="cpu").update(X)
    np.testing.assert_array_equal(centre.transform(X), [[-0.5, 0.0], [0.5, 0.0]])


def test_dict_api_matches_array_api():
    X = data((20, 3))
    names = ["c", "a", "b"]
    by_dict = OnlineScaler(features=names, device="cpu")
    for row in X:
        by_dict.learn_one(dict(zip(names, row.tolist())))
    by_array = OnlineScaler(device="cpu").update(X)
    z = by_dict.transform_one({"a": float(X[0, 1]), "b": float(X[0, 2]), "c": float(X[0, 0]), "other": "kept"})
    assert z["other"] == "kept"
    np.testing.assert_allclose([z[k] for k in names], by_array.transform(X[:1])[0], rtol=1e-5)
    with pytest.raises(BadRecordError, match="'b'"):
        by_dict.learn_one({"a": 1.0, "c": 2.0})


def test_one_hot_has_fixed_dimensions():
    enc = OneHotEncoder({"day": [1, 2, 3], "kind": ["x", "y"]})
    cols = ["day_1", "day_2", "day_3", "kind_x", "kind_y"]
    assert enc.feature_names_out == cols
    outs = [enc.transform_one(x) for x in ({"day": 1, "kind": "y", "v": 0.5}, {"day": 3}, {"v": 1.0, "day": 7})]
    for out in outs:
        assert [c for c in out if c != "v"] == cols  # every declared column, always, in order
    assert [outs[0][c] for c in cols] == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert outs[0]["v"] == 0.5
    assert [outs[1][c] for c in cols] == [0.0, 0.0, 1.0, 0.0, 0.0]  # missing kind: zeros
    assert [outs[2][c] for c in cols] == [0.0] * 5  # unknown day: zeros


def test_one_hot_unknown_can_be_an_error():
    enc = OneHotEncoder({"day": [1, 2]}, handle_unknown="error")
    with pytest.raises(BadRecordError, match="day"):
        enc.transform_one({"day": 3})
    with pytest.raises(ConfigError):
        OneHotEncoder({"day": [1, 1]})
    with pytest.raises(ConfigError):
        OneHotEncoder({"day": [1]}, handle_unknown="ignore")


def test_one_hot_then_learner_in_a_river_pipeline():
    from streamlearn.learners import TorchLearner

    enc = OneHotEncoder({"c": ["a", "b"]})
    model = enc | TorchLearner(features=["c_a", "c_b"], classes=["A", "B"], lr=0.5, seed=0, device="cpu")
    for _ in range(50):
        model.learn_one({"c": "a"}, "A")
        model.learn_one({"c": "b"}, "B")
    assert model.predict_one({"c": "a"}) == "A" and model.predict_one({"c": "b"}) == "B"
