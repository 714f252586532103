"""Every source honours the Stream contract; the generators match river and keep samples aligned across concepts."""

import itertools

import numpy as np
import pytest
from river.datasets import synth

from streamlearn.errors import ConfigError
from streamlearn.streams import BLOCK, AgrawalStream, HyperplaneStream, RBFStream, SEAStream, STAGGERStream
from streamlearn.streams import make_source

N = 700  # more than one block, so block boundaries are crossed

SOURCE_NAMES = ["sea", "hyperplane", "rbf", "agrawal", "stagger", "elec2"]


def as_arrays(stream, n):
    pairs = list(stream.take(n))
    X = np.array([[x[k] for k in stream.feature_names] for x, _ in pairs], dtype=float)
    return X, np.array([y for _, y in pairs])


@pytest.mark.parametrize("name", SOURCE_NAMES)
def test_contract_iteration_matches_to_arrays_and_replays(name):
    s = make_source(name, seed=3)
    X, y = s.to_arrays(N)
    assert X.dtype == np.float64 and X.shape == (N, len(s.feature_names)) and y.shape == (N,)
    Xi, yi = as_arrays(s, N)
    assert np.array_equal(X, Xi) and np.array_equal(y, yi)
    X2, y2 = s.to_arrays(N)
    assert np.array_equal(X, X2) and np.array_equal(y, y2)  # replay
    assert set(np.unique(y).tolist()) <= set(s.classes)
    x, label = next(iter(s))
    assert list(x) == s.feature_names and all(type(v) is float for v in x.values())
    assert s.drift_events() == [] if s.n_samples is not None else s.drift_events(N) == []


@pytest.mark.parametrize("name", ["sea", "hyperplane", "rbf", "agrawal", "stagger"])
def test_seed_changes_samples(name):
    a, b, c = (make_source(name, seed=s).to_arrays(200)[0] for s in (0, 0, 1))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert make_source(name).n_samples is None


@pytest.mark.parametrize("name", ["sea", "hyperplane", "agrawal", "stagger"])
def test_alternate_concept_keeps_points_and_changes_labels(name):
    s = make_source(name, seed=2, **({"noise_percentage": 0.0} if name == "hyperplane" else {}))
    X0, y0 = s.to_arrays(2000)
    X1, y1 = s.concept(1).to_arrays(2000)
    assert np.array_equal(X0, X1)
    assert 0 < np.mean(y0 != y1) < 1
    assert s.concept(0) is s


def test_rbf_alternate_concept_has_other_centroids():
    s = RBFStream(seed=1, n_features=3, n_centroids=4)
    assert s.concept(1).model_seed == 2 and not np.array_equal(s.to_arrays(50)[0], s.concept(1).to_arrays(50)[0])


def test_sea_variants_are_river_thresholds():
    X, _ = SEAStream(seed=4).to_arrays(1500)
    for k, threshold in enumerate([8, 9, 7, 9.5]):
        _, y = SEAStream(seed=4).concept(k).to_arrays(1500)
        assert np.array_equal(y, X[:, 0] + X[:, 1] > threshold)


def test_sea_and_stagger_are_river_samples():
    ours = SEAStream(seed=9, variant=2, noise=0.1).to_arrays(BLOCK + 5)
    ref = list(itertools.islice(synth.SEA(variant=2, noise=0.1, seed=9), BLOCK + 5))
    assert np.array_equal(ours[0], [[x[0], x[1], x[2]] for x, _ in ref])
    assert np.array_equal(ours[1], [y for _, y in ref])
    X, y = STAGGERStream(seed=1, classification_function=2, balance_classes=True).to_arrays(300)
    ref = list(itertools.islice(synth.STAGGER(classification_function=2, seed=1, balance_classes=True), 300))
    assert np.array_equal(X, [[x["size"], x["color"], x["shape"]] for x, _ in ref])
    assert np.array_equal(y, [v for _, v in ref]) and y.mean() == 0.5


@pytest.mark.parametrize("kw", [{}, {"balance_classes": True}, {"perturbation": 0.2, "classification_function": 7}])
def test_agrawal_fast_path_equals_river(kw):
    X, y = AgrawalStream(seed=5, **kw).to_arrays(600)
    ref = list(itertools.islice(synth.Agrawal(seed=5, **kw), 600))
    assert np.array_equal(X, [[x[k] for k in AgrawalStream().feature_names] for x, _ in ref])
    assert np.array_equal(y, [v for _, v in ref])


def test_rbf_equals_river_random_rbf_drift():
    s = RBFStream(seed=2, n_features=3, n_centroids=5, change_speed=0.01, n_drift_centroids=2, model_seed=8)
    ref = list(itertools.islice(synth.RandomRBFDrift(seed_model=8, seed_sample=2, n_features=3, n_centroids=5,
                                                     change_speed=0.01, n_drift_centroids=2), 300))
    X, y = s.to_arrays(300)
    assert np.array_equal(X, [[x[i] for i in range(3)] for x, _ in ref]) and np.array_equal(y, [v for _, v in ref])


def test_hyperplane_drifting_weights_match_a_plain_loop():
    s = HyperplaneStream(seed=1, n_features=4, n_drift_features=2, mag_change=0.01, sigma=0.1,
                         noise_percentage=0.0, model_seed=5)
    X, y = s.to_arrays(2 * BLOCK + 10)
    # the same recurrence, one sample at a time
    from streamlearn.streams.base import rng_for
    model_rng = rng_for(5, 12)
    w = s.weights()
    direction = np.ones(2)
    expected = []
    flips = np.concatenate([model_rng.random((BLOCK, 2)) for _ in range(3)])
    for t in range(len(y)):
        expected.append(int(X[t] @ w >= 0.5 * w.sum()))
        w[:2] += 0.01 * direction
        direction = np.where(flips[t] < 0.1, -direction, direction)
    assert np.array_equal(y, expected)
    assert 0.2 < y.mean() < 0.8


def test_hyperplane_model_seed_is_the_concept():
    a = HyperplaneStream(seed=0, model_seed=4)
    assert np.array_equal(a.weights(), HyperplaneStream(seed=9, model_seed=4).weights())
    assert np.array_equal(HyperplaneStream(seed=4).weights(), a.weights())  # default model_seed = seed


@pytest.mark.parametrize("factory,kw", [
    (SEAStream, {"variant": 4}), (SEAStream, {"noise": 2.0}), (AgrawalStream, {"classification_function": 10}),
    (STAGGERStream, {"classification_function": -1}), (HyperplaneStream, {"mag_change": 2}),
    (RBFStream, {"n_classes": 1}), (SEAStream, {"seed": "x"}),
])
def test_bad_parameters_are_config_errors(factory, kw):
    with pytest.raises(ConfigError):
        factory(**kw)


def test_to_arrays_of_zero_and_bad_n():
    X, y = SEAStream().to_arrays(0)
    assert X.shape == (0, 3) and y.shape == (0,)
    with pytest.raises(ConfigError):
        SEAStream().to_arrays(-1)
