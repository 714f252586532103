"""Endless synthetic sources built on river's drifting generators, each seeded, replayable and with alternate concepts.

Features are named ``x0, x1, ...`` for river's numbered features (SEA, Hyperplane, RBF) and keep river's names
otherwise (Agrawal, STAGGER; categorical attributes stay numeric codes). Labels are what river gives
(SEA: bool; the others: int). For every source, concept k keeps the sample-drawing seed and changes only what
defines the concept, so ``concept(k)`` draws its samples the same way:

- SEA: variant ``(variant + k) % 4`` (same points, another threshold),
- Agrawal: ``classification_function (f + k) % 10``, STAGGER: ``(f + k) % 3`` (same points, another rule),
- Hyperplane: ``model_seed + k`` (same points, another hyperplane),
- RBF: ``model_seed + k`` (another set of centroids, drawn with the same sample seed).
"""

from __future__ import annotations

import itertools
import random

import numpy as np

from streamlearn.errors import ConfigError
from streamlearn.streams.base import BLOCK, Stream, label_array, rng_for

__all__ = ["SEAStream", "HyperplaneStream", "RBFStream", "AgrawalStream", "STAGGERStream"]


def _check_int(name, value, lo=None, hi=None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{name} must be in [{lo}, {hi}], got {value!r}")
    return int(value)


def _check_float(name, value, lo=None, hi=None):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{name} must be in [{lo}, {hi}], got {value!r}")
    return float(value)


class _RiverSource(Stream):
    """A river generator read in blocks; subclasses say how to build it and which keys are the features."""

    _keys: list

    def _river(self):
        raise NotImplementedError

    def _params(self) -> dict:
        raise NotImplementedError

    def _with(self, **changes) -> "Stream":
        return type(self)(seed=self.seed, **{**self._params(), **changes})

    def _blocks(self, n):
        it = iter(self._river())
        keys = self._keys
        while True:
            chunk = list(itertools.islice(it, BLOCK))
            X = np.array([[x[k] for k in keys] for x, _ in chunk], dtype=np.float64)
            yield X, label_array([y for _, y in chunk])

    def __repr__(self):
        inner = ", ".join(f"{k}={v!r}" for k, v in self._params().items())
        return f"{type(self).__name__}(seed={self.seed}, {inner})"


class SEAStream(_RiverSource):
    """River's SEA: 3 uniform features in [0, 10], label ``x0 + x1 > threshold`` (variant 0-3: 8, 9, 7, 9.5).

    Parameters
    ----------
    seed
        Sample seed.
    variant
        Threshold variant, 0 to 3.
    noise
        Fraction of labels flipped.

    Examples
    --------
    >>> s = SEAStream(seed=1)
    >>> X, y = s.to_arrays(1000)
    >>> X.shape, s.classes, bool(np.all(y == (X[:, 0] + X[:, 1] > 8)))
    ((1000, 3), [False, True], True)
    >>> X1, y1 = s.concept(1).to_arrays(1000)   # variant 1: same points, threshold 9
    >>> bool(np.array_equal(X, X1)), bool(np.all(y1 == (X[:, 0] + X[:, 1] > 9)))
    (True, True)
    """

    def __init__(self, seed: int = 0, variant: int = 0, noise: float = 0.0):
        self.seed = _check_int("seed", seed)
        self.variant = _check_int("variant", variant, 0, 3)
        self.noise = _check_float("noise", noise, 0.0, 1.0)
        self.feature_names = ["x0", "x1", "x2"]
        self._keys = [0, 1, 2]
        self.classes = [False, True]

    def _params(self):
        return {"variant": self.variant, "noise": self.noise}

    def _river(self):
        from river.datasets import synth

        return synth.SEA(variant=self.variant, noise=self.noise, seed=self.seed)

    def _concept(self, k):
        return self._with(variant=(self.variant + k) % 4)


class HyperplaneStream(Stream):
    """River's rotating Hyperplane, reimplemented with numpy and a model seed apart from the sample seed.

    ``x`` is uniform in [0, 1]^d; ``y = 1`` when ``w . x >= sum(w) / 2``. With ``mag_change > 0`` the first
    ``n_drift_features`` weights move by ``mag_change`` per sample and reverse direction with probability
    ``sigma`` (river's incremental drift); ``noise_percentage`` of labels are flipped. Differences from
    river: the weights and their drift come from ``model_seed`` and the points from ``seed`` (so nodes can
    share a concept and not their samples), and the flip probabilities are exactly ``noise_percentage`` and ``sigma``.

    Parameters
    ----------
    seed
        Sample seed.
    n_features, n_drift_features, mag_change, noise_percentage, sigma
        As in ``river.datasets.synth.Hyperplane``.
    model_seed
        Seed of the hyperplane (the concept); None uses ``seed``.

    Examples
    --------
    >>> a = HyperplaneStream(seed=0, model_seed=7, noise_percentage=0.0)
    >>> b = HyperplaneStream(seed=1, model_seed=7, noise_percentage=0.0)
    >>> Xa, ya = a.to_arrays(500); Xb, yb = b.to_arrays(500)
    >>> bool(np.array_equal(Xa, Xb))    # other points ...
    False
    >>> w = a.weights(); bool(np.all(ya == (Xa @ w >= w.sum() / 2))), bool(np.all(yb == (Xb @ w >= w.sum() / 2)))
    (True, True)
    """

    def __init__(self, seed: int = 0, n_features: int = 10, n_drift_features: int = 2, mag_change: float = 0.0,
                 noise_percentage: float = 0.05, sigma: float = 0.1, model_seed: int | None = None):
        self.seed = _check_int("seed", seed)
        self.n_features = _check_int("n_features", n_features, 1)
        self.n_drift_features = _check_int("n_drift_features", n_drift_features, 0, self.n_features)
        self.mag_change = _check_float("mag_change", mag_change, 0.0, 1.0)
        self.noise_percentage = _check_float("noise_percentage", noise_percentage, 0.0, 1.0)
        self.sigma = _check_float("sigma", sigma, 0.0, 1.0)
        self.model_seed = self.seed if model_seed is None else _check_int("model_seed", model_seed)
        self.feature_names = [f"x{i}" for i in range(self.n_features)]
        self.classes = [0, 1]

    def _params(self):
        return {"n_features": self.n_features, "n_drift_features": self.n_drift_features,
                "mag_change": self.mag_change, "noise_percentage": self.noise_percentage, "sigma": self.sigma,
                "model_seed": self.model_seed}

    def __repr__(self):
        return f"HyperplaneStream(seed={self.seed}, " + ", ".join(f"{k}={v!r}" for k, v in self._params().items()) + ")"

    def _concept(self, k):
        return HyperplaneStream(seed=self.seed, **{**self._params(), "model_seed": self.model_seed + k})

    def weights(self) -> np.ndarray:
        """The initial weight vector of the hyperplane."""
        return rng_for(self.model_seed, 11).random(self.n_features)

    def _blocks(self, n):
        d, k, mag = self.n_features, self.n_drift_features, self.mag_change
        model_rng = rng_for(self.model_seed, 12)
        sample_rng = rng_for(self.seed, 13)
        w = self.weights()
        direction = np.ones(k)
        while True:
            X = sample_rng.random((BLOCK, d))
            flip = sample_rng.random(BLOCK) < self.noise_percentage
            if mag == 0.0 or k == 0:
                y = X @ w >= 0.5 * w.sum()
            else:
                # weights at every row of the block: w_{t+1} = w_t + mag * dir_t, dir_{t+1} = dir_t * flip_t
                F = np.where(model_rng.random((BLOCK, k)) < self.sigma, -1.0, 1.0)
                D = direction * np.vstack([np.ones((1, k)), np.cumprod(F[:-1], axis=0)])
                W = w[:k] + mag * np.vstack([np.zeros((1, k)), np.cumsum(D[:-1], axis=0)])
                score = (X[:, :k] * W).sum(axis=1) + X[:, k:] @ w[k:]
                y = score >= 0.5 * (W.sum(axis=1) + w[k:].sum())
                w = w.copy()
                w[:k] = W[-1] + mag * D[-1]
                direction = D[-1] * F[-1]
            yield X, (y ^ flip).astype(np.int64)


class RBFStream(_RiverSource):
    """River's RandomRBFDrift: points around random centroids, label of the centroid; centroids may move.

    Parameters
    ----------
    seed
        Sample seed (river's ``seed_sample``).
    n_classes, n_features, n_centroids, change_speed, n_drift_centroids
        As in ``river.datasets.synth.RandomRBFDrift`` (``change_speed=0``: river's faster RandomRBF, same samples).
    model_seed
        Seed of the centroids (river's ``seed_model``, the concept); None uses ``seed``.

    Examples
    --------
    >>> s = RBFStream(seed=3, n_features=4, n_centroids=5)
    >>> X, y = s.to_arrays(300)
    >>> X.shape, s.classes, sorted(set(y.tolist()))
    ((300, 4), [0, 1], [0, 1])
    """

    def __init__(self, seed: int = 0, n_classes: int = 2, n_features: int = 10, n_centroids: int = 50,
                 change_speed: float = 0.0, n_drift_centroids: int = 50, model_seed: int | None = None):
        self.seed = _check_int("seed", seed)
        self.n_classes = _check_int("n_classes", n_classes, 2)
        self.n_features = _check_int("n_features", n_features, 1)
        self.n_centroids = _check_int("n_centroids", n_centroids, 1)
        self.change_speed = _check_float("change_speed", change_speed, 0.0)
        self.n_drift_centroids = _check_int("n_drift_centroids", n_drift_centroids, 0)
        self.model_seed = self.seed if model_seed is None else _check_int("model_seed", model_seed)
        self.feature_names = [f"x{i}" for i in range(self.n_features)]
        self._keys = list(range(self.n_features))
        self.classes = list(range(self.n_classes))

    def _params(self):
        return {"n_classes": self.n_classes, "n_features": self.n_features, "n_centroids": self.n_centroids,
                "change_speed": self.change_speed, "n_drift_centroids": self.n_drift_centroids,
                "model_seed": self.model_seed}

    def _river(self):
        from river.datasets import synth

        common = dict(seed_model=self.model_seed, seed_sample=self.seed, n_classes=self.n_classes,
                      n_features=self.n_features, n_centroids=self.n_centroids)
        if self.change_speed == 0.0 or self.n_drift_centroids == 0:
            return synth.RandomRBF(**common)  # identical samples, without moving every centroid by 0
        return synth.RandomRBFDrift(**common, change_speed=self.change_speed,
                                    n_drift_centroids=min(self.n_drift_centroids, self.n_centroids))

    def _concept(self, k):
        return self._with(model_seed=self.model_seed + k)


_AGRAWAL_FEATURES = ["salary", "commission", "age", "elevel", "car", "zipcode", "hvalue", "hyears", "loan"]


def _fast_agrawal(dataset):
    """River's Agrawal.__iter__, line for line, without its per-feature ``eval`` (about 6x faster, same samples)."""
    rng = dataset._rng = random.Random(dataset.seed)
    functions = dataset._classification_functions
    want_zero = False
    perturb = dataset._perturb_value
    while True:
        while True:
            salary = 20000 + 130000 * rng.random()
            commission = 0 if (salary >= 75000) else (10000 + 75000 * rng.random())
            age = rng.randint(20, 80)
            elevel = rng.randint(0, 4)
            car = rng.randint(1, 20)
            zipcode = rng.randint(0, 8)
            hvalue = (8 - zipcode) * 100000 * (0.5 + rng.random())
            hyears = rng.randint(1, 30)
            loan = rng.random() * 500000
            y = functions[dataset.classification_function](
                salary, commission, age, elevel, car, zipcode, hvalue, hyears, loan)
            if not dataset.balance_classes:
                break
            if (want_zero and y == 0) or (not want_zero and y == 1):
                want_zero = not want_zero
                break
        if dataset.perturbation > 0.0:
            salary = perturb(salary, 20000, 150000)
            if commission > 0:
                commission = perturb(commission, 10000, 75000)
            age = round(perturb(age, 20, 80))
            hvalue = perturb(hvalue, (9 - zipcode) * 100000, 0, 135000)  # sic, as in river
            hyears = round(perturb(hyears, 1, 30))
            loan = perturb(loan, 0, 500000)
        yield (salary, commission, age, elevel, car, zipcode, hvalue, hyears, loan), y


class AgrawalStream(Stream):
    """River's Agrawal loan-application generator (9 features, 10 classification functions).

    Parameters
    ----------
    seed
        Sample seed.
    classification_function
        The concept, 0 to 9.
    balance_classes, perturbation
        As in ``river.datasets.synth.Agrawal``.

    Examples
    --------
    >>> s = AgrawalStream(seed=0)
    >>> X, y = s.to_arrays(200)
    >>> age = X[:, s.feature_names.index("age")]
    >>> bool(np.all(y == ((age < 40) | (age >= 60))))   # function 0
    True
    """

    def __init__(self, seed: int = 0, classification_function: int = 0, balance_classes: bool = False,
                 perturbation: float = 0.0):
        self.seed = _check_int("seed", seed)
        self.classification_function = _check_int("classification_function", classification_function, 0, 9)
        self.balance_classes = bool(balance_classes)
        self.perturbation = _check_float("perturbation", perturbation, 0.0, 1.0)
        self.feature_names = list(_AGRAWAL_FEATURES)
        self.classes = [0, 1]

    def _params(self):
        return {"classification_function": self.classification_function,
                "balance_classes": self.balance_classes, "perturbation": self.perturbation}

    __repr__ = _RiverSource.__repr__

    def _concept(self, k):
        return AgrawalStream(seed=self.seed, **{**self._params(),
                                                "classification_function": (self.classification_function + k) % 10})

    def _river(self):
        from river.datasets import synth

        return synth.Agrawal(classification_function=self.classification_function, seed=self.seed,
                             balance_classes=self.balance_classes, perturbation=self.perturbation)

    def _blocks(self, n):
        it = _fast_agrawal(self._river())
        while True:
            chunk = list(itertools.islice(it, BLOCK))
            yield np.array([x for x, _ in chunk], dtype=np.float64), np.array([y for _, y in chunk], dtype=np.int64)


class STAGGERStream(_RiverSource):
    """River's STAGGER concepts: size, color, shape codes in {0, 1, 2}; three boolean rules.

    Parameters
    ----------
    seed
        Sample seed.
    classification_function
        The concept, 0 to 2.
    balance_classes
        As in ``river.datasets.synth.STAGGER``.

    Examples
    --------
    >>> X, y = STAGGERStream(seed=0).to_arrays(100)
    >>> bool(np.all(y == ((X[:, 0] == 0) & (X[:, 1] == 0))))   # rule 0: small and red
    True
    """

    def __init__(self, seed: int = 0, classification_function: int = 0, balance_classes: bool = False):
        self.seed = _check_int("seed", seed)
        self.classification_function = _check_int("classification_function", classification_function, 0, 2)
        self.balance_classes = bool(balance_classes)
        self.feature_names = ["size", "color", "shape"]
        self._keys = list(self.feature_names)
        self.classes = [0, 1]

    def _params(self):
        return {"classification_function": self.classification_function, "balance_classes": self.balance_classes}

    def _river(self):
        from river.datasets import synth

        return synth.STAGGER(classification_function=self.classification_function, seed=self.seed,
                             balance_classes=self.balance_classes)

    def _concept(self, k):
        return self._with(classification_function=(self.classification_function + k) % 3)
