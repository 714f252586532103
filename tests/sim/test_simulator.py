import numpy as np
import pytest
import torch

from streamlearn.errors import ConfigError
from streamlearn.learners import TorchLearner
from streamlearn.sim import NodeData, simulate
from streamlearn.streams import DriftEvent


def make_data(m=3, n=300, f=4, seed=0, flip_at=None):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(m, n, f)).astype(np.float32) * np.arange(1, f + 1, dtype=np.float32)
    w = rng.normal(size=f)
    y = (X @ w > 0).astype(np.int64)
    events = []
    if flip_at is not None:
        y[:, flip_at:] = 1 - y[:, flip_at:]
        events = [DriftEvent(flip_at, node, "label-permutation", {}) for node in range(m)]
    return NodeData(X=X, y=y, classes=[0, 1], feature_names=[f"x{i}" for i in range(f)], events=events)


@pytest.mark.parametrize("arch", ["logreg", "mlp"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("scale", [False, True])
def test_vectorized_equals_a_loop_of_separate_learners(arch, optimizer, scale):
    data = make_data()
    template = TorchLearner(arch, hidden=(8,), optimizer=optimizer, lr=0.05, scale=scale, seed=3, device="cpu")
    res = simulate(data, template, "nosync", batch_size=10, progress=False)

    B = 10
    for node in range(data.m):
        learner = template.clone({"features": data.feature_names, "classes": data.classes})
        correct = []
        for start in range(0, data.n, B):
            Xb, yb = data.X[node, start:start + B], data.y[node, start:start + B]
            correct.append(learner.predict_many(Xb) == yb)
            learner.learn_many(Xb, yb)
        np.testing.assert_array_equal(res.correct[node], np.concatenate(correct))
        torch.testing.assert_close(res.final_models[node], learner.get_flat().cpu(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale", [False, True])
def test_vectorized_periodic_equals_a_loop_that_averages_flat_vectors(scale):
    """With syncs too: the simulator equals separate learners whose get_flat() vectors (scaler
    statistics included) are averaged and set back every b rounds."""
    data, b, B = make_data(m=3, n=240), 3, 10
    template = TorchLearner("mlp", hidden=(8,), lr=0.1, scale=scale, seed=2, device="cpu")
    res = simulate(data, template, f"periodic:b={b}", batch_size=B, progress=False)

    learners = [template.clone({"features": data.feature_names, "classes": data.classes}) for _ in range(data.m)]
    correct = np.zeros((data.m, data.n), dtype=bool)
    for r, start in enumerate(range(0, data.n, B), start=1):
        for node, learner in enumerate(learners):
            Xb, yb = data.X[node, start:start + B], data.y[node, start:start + B]
            correct[node, start:start + B] = learner.predict_many(Xb) == yb
            learner.learn_many(Xb, yb)
        if r % b == 0:
            mean = torch.stack([lr.get_flat() for lr in learners]).mean(0)
            for learner in learners:
                learner.set_flat(mean)
    np.testing.assert_array_equal(res.correct, correct)
    loop = torch.stack([lr.get_flat().cpu() for lr in learners])
    torch.testing.assert_close(res.final_models, loop, rtol=1e-5, atol=1e-5)
    if scale:  # the scaler statistics were averaged with the weights: equal at every node after the last sync
        p = template.clone({"features": data.feature_names, "classes": data.classes}).n_params
        assert res.final_models.shape[1] == p + 2 * 4 + 1
        assert torch.equal(res.final_models[0, p:], res.final_models[2, p:])


def test_same_seed_same_result_and_all_nodes_start_equal():
    data = make_data(m=4)
    learner = TorchLearner("mlp", hidden=(8,), lr=0.1, seed=1, device="cpu")
    a = simulate(data, learner, "dynamic:delta=0.05,b=1", progress=False, seed=5)
    b = simulate(data, learner, "dynamic:delta=0.05,b=1", progress=False, seed=5)
    assert a.comm == b.comm and a.syncs == b.syncs
    torch.testing.assert_close(a.final_models, b.final_models, rtol=0, atol=0)
    assert a.transfers > 0


def test_periodic_counts_every_transfer_and_leaves_nodes_equal():
    data = make_data(m=4, n=200)
    res = simulate(data, TorchLearner("logreg", lr=0.1, seed=0, device="cpu"), "periodic:b=5", batch_size=10,
                   progress=False)
    rounds = 200 // 10
    syncs = rounds // 5
    assert res.comm["models_up"] == syncs * 4 and res.comm["models_down"] == syncs * 4
    assert res.bytes == res.transfers * (52 + res.d * 4)  # model header + float32 payload
    assert [s for s, kind, _ in res.syncs] == [5, 10, 15, 20]
    # The last round was a full sync: every node holds the same model.
    assert torch.equal(res.final_models[0], res.final_models[3])


def test_dynamic_sends_nothing_below_delta_and_syncs_after_drift():
    data = make_data(m=4, n=2000, flip_at=1000)
    learner = TorchLearner("logreg", lr=0.1, seed=0, device="cpu")
    quiet = simulate(data, learner, "dynamic:delta=1e9,b=1", progress=False)
    assert quiet.transfers == 0
    res = simulate(data, learner, "dynamic:delta=0.5,b=1", progress=False)
    assert res.transfers > 0
    first_after = [s * 10 for s, _, _ in res.syncs if s * 10 > 1000]
    assert first_after, "a sync follows the drift"
    assert res.events and res.events[0].position == 1000


def test_non_torch_learner_and_bad_batch_are_clear_errors():
    data = make_data()
    with pytest.raises(ConfigError, match="TorchLearner"):
        simulate(data, object(), progress=False)
    with pytest.raises(ConfigError, match="batch_size"):
        simulate(data, TorchLearner("logreg", seed=0), batch_size=0, progress=False)
