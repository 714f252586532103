"""RiverLinear: river's linear classifiers with their weights exposed as one flat vector."""

from __future__ import annotations

import functools

import numpy as np
import torch
from river import base, linear_model

from streamlearn.errors import BadRecordError, ConfigError
from streamlearn.learners.base import FeatureMixin, NotInitializedError, as_label_list, labels_array

__all__ = ["RiverLinear"]

# Binary linear models: LogisticRegression and Perceptron keep weights in a VectorDict `_weights`
# (GLM), PAClassifier in a dict `weights`; both have a float `intercept`.
SUPPORTED = (linear_model.LogisticRegression, linear_model.Perceptron, linear_model.PAClassifier)


class RiverLinear(FeatureMixin, base.MiniBatchClassifier):
    """A river linear binary classifier whose weights form one flat float32 vector.

    Learning and prediction are river's (``model.learn_one`` etc.). The flat vector is
    ``[w[feature_names_[0]], ..., w[feature_names_[f-1]], intercept]`` (d = f + 1), as float32
    (river computes in float64; a ``set_flat`` rounds the weights to float32). Samples are
    validated and restricted to ``feature_names_`` (fixed as in
    :class:`~streamlearn.learners.base.FeatureMixin`), so every weight is in the flat vector.

    ``learn_many`` takes one mean-gradient step, as river's ``LogisticRegression.learn_many``
    (without needing a dataframe); ``PAClassifier`` has no batch form and learns row by row.

    Parameters
    ----------
    model
        ``linear_model.LogisticRegression`` (default), ``Perceptron`` or ``PAClassifier``.
    n_features, features
        Fix the feature order up front (see :class:`~streamlearn.learners.base.FeatureMixin`).
    classes
        ``[negative, positive]``: the labels mapped to river's False/True. None: labels must be
        bool (or 0/1); ``classes_`` is then ``[False, True]``.

    Examples
    --------
    >>> from river import linear_model, optim
    >>> model = RiverLinear(linear_model.LogisticRegression(optimizer=optim.SGD(0.5)),
    ...                     features=["a", "b"], classes=["DOWN", "UP"])
    >>> for i in range(200):
    ...     a = (i % 7) / 3 - 1
    ...     model.learn_one({"a": a, "b": 1.0}, "UP" if a > 0 else "DOWN")
    >>> model.predict_one({"a": 0.8, "b": 1.0}), model.predict_one({"a": -0.8, "b": 1.0})
    ('UP', 'DOWN')
    >>> v = model.get_flat(); v.shape
    torch.Size([3])
    >>> model.set_flat(v); bool(model.get_flat().equal(v))
    True
    """

    def __init__(self, model=None, n_features: int | None = None, features: list | None = None, classes=None):
        if model is None:
            model = linear_model.LogisticRegression()
        if not isinstance(model, SUPPORTED):
            names = ", ".join(c.__name__ for c in SUPPORTED)
            raise ConfigError(f"model: RiverLinear wraps {names}; got {type(model).__name__} (use RiverLocal)")
        self.model = model
        self.n_features = n_features
        self.features = features
        self.classes = classes
        if classes is None:
            self.classes_ = [False, True]
            self._to_bool = {False: False, True: True}  # 0/1 hash as False/True
        else:
            classes = list(classes)
            if len(classes) != 2 or classes[0] == classes[1]:
                raise ConfigError(f"classes: need [negative, positive], got {classes!r}")
            self.classes_ = classes
            self._to_bool = {classes[0]: False, classes[1]: True}
        self._classes_arr = labels_array(self.classes_)
        self._init_features(features, n_features)
        self.n_samples_seen_ = 0

    @property
    def _glm(self) -> bool:
        return hasattr(self.model, "_weights")

    # -- labels ---------------------------------------------------------------------------------------

    def encode_labels(self, y) -> np.ndarray:
        """Labels as int64 indices into ``classes_`` (0 = negative, 1 = positive)."""
        labels = as_label_list(y)
        out = np.empty(len(labels), dtype=np.int64)
        for i, v in enumerate(labels):
            try:
                out[i] = self._to_bool[v]
            except (KeyError, TypeError):
                raise BadRecordError(
                    f"label is not one of the classes {self.classes_!r} (pass classes=[negative, positive])",
                    row=i, value=v,
                ) from None
        return out

    # -- flat parameters ------------------------------------------------------------------------------

    @property
    def n_params(self) -> int:
        """d = n_features + 1."""
        if self.feature_names_ is None:
            raise NotInitializedError("RiverLinear: features unknown; pass features/n_features or learn first")
        return len(self.feature_names_) + 1

    def _weights(self) -> np.ndarray:
        names = self.feature_names_
        if self._glm:
            return self.model._weights.to_numpy(names)
        return np.array([self.model.weights.get(k, 0.0) for k in names], dtype=np.float64)

    def get_flat(self) -> torch.Tensor:
        """``[weights in feature_names_ order, intercept]`` as a float32 tensor (cpu), a copy."""
        self.n_params  # noqa: B018 - raises when features are unknown
        return torch.from_numpy(np.append(self._weights(), self.model.intercept).astype(np.float32))

    def set_flat(self, v) -> None:
        """Write ``v`` (shape (d,)) into the river model's weights and intercept."""
        d = self.n_params
        v = torch.as_tensor(v).detach().cpu().numpy().astype(np.float64)
        if v.shape != (d,):
            raise ConfigError(f"set_flat: expected a vector of size {d}, got shape {v.shape}")
        weights = self.model._weights if self._glm else self.model.weights
        for k, wk in zip(self.feature_names_, v[:-1].tolist()):
            weights[k] = wk
        self.model.intercept = float(v[-1])

    # -- learning -------------------------------------------------------------------------------------

    def learn_one(self, x, y) -> None:
        label = bool(self.encode_labels([y])[0])
        (row,) = self._to_dicts(x, fix=True)
        self.model.learn_one(row, label)
        self.n_samples_seen_ += 1

    def learn_many(self, X, y) -> None:
        """One mean-gradient step for LogisticRegression/Perceptron; row by row for PA."""
        M, names = self._to_matrix(X, fix=True)
        yb = self.encode_labels(y).astype(bool)
        if len(M) != len(yb):
            raise ConfigError(f"learn_many: {len(M)} samples but {len(yb)} labels")
        if not len(M):
            return
        if len(M) == 1:  # river's own per-sample step: the batch machinery costs more than the step here
            self.model.learn_one(dict(zip(names, M[0].tolist())), bool(yb[0]))
        elif self._glm and hasattr(self.model, "_eval_gradient_many"):
            # What river's GLM.learn_many does once it has a numpy matrix (it wants a dataframe).
            # w=1 as river's default: Perceptron's hinge gradient is an int array, a float w fails.
            m = self.model
            saved = m._enter_learn_mode(set(names))
            try:
                m._fit(x=names, y=yb, w=1, get_grad=functools.partial(m._eval_gradient_many, M.astype(np.float64)))
            finally:
                m._exit_learn_mode(saved)
        else:
            for row, label in zip((dict(zip(names, r)) for r in M.tolist()), yb.tolist()):
                self.model.learn_one(row, label)
        self.n_samples_seen_ += len(M)

    # -- prediction -----------------------------------------------------------------------------------

    def _p_true(self, X) -> np.ndarray:
        M, names = self._to_matrix(X, fix=False)
        if self.feature_names_ is None:  # nothing learnt: all weights are zero
            raw = np.full(len(M), float(self.model.intercept))
        elif len(M) == 1 and self._glm:  # a dot over the weight dict, as river predicts one sample
            return np.array([self.model.predict_proba_one(dict(zip(names, M[0].tolist())))[True]])
        else:
            raw = M.astype(np.float64) @ self._weights() + self.model.intercept
        if self._glm:
            return self.model.loss.mean_func(raw)
        return 1.0 / (1.0 + np.exp(-raw))

    def predict_proba_many(self, X) -> np.ndarray:
        """(B, 2) probabilities, columns in ``classes_`` order."""
        p = self._p_true(X)
        P = np.empty((len(p), 2))
        P[:, 0], P[:, 1] = 1.0 - p, p
        return P

    def predict_many(self, X) -> np.ndarray:
        return self._classes_arr[(self._p_true(X) > 0.5).astype(np.int64)]

    def predict_proba_one(self, x) -> dict:
        p = float(self._p_true(x)[0])
        return {self.classes_[0]: 1.0 - p, self.classes_[1]: p}

    def predict_one(self, x):
        return self.classes_[int(self._p_true(x)[0] > 0.5)]
