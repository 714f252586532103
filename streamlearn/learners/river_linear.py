"""RiverLinear: river's linear classifiers with their weights exposed as one flat vector (one-vs-rest for k > 2)."""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
from river import base, linear_model, optim

from streamlearn.errors import BadRecordError, ConfigError
from streamlearn.learners.base import (
    FeatureMixin,
    NotInitializedError,
    as_label_list,
    labels_array,
)

__all__ = ["RiverLinear"]

_F32 = np.dtype(np.float32)

# Binary linear models: LogisticRegression and Perceptron keep weights in a VectorDict `_weights`
# (GLM), PAClassifier in a dict `weights`; both have a float `intercept`.
SUPPORTED = (linear_model.LogisticRegression, linear_model.Perceptron, linear_model.PAClassifier)


class RiverLinear(FeatureMixin, base.MiniBatchClassifier):
    """A river linear classifier whose weights form one flat float32 vector.

    Learning and prediction are river's (``model.learn_one`` etc.). The flat vector is
    ``[w[feature_names_[0]], ..., w[feature_names_[f-1]], intercept]`` (d = f + 1), as float32
    (river computes in float64; a ``set_flat`` rounds the weights to float32). Samples are
    validated and restricted to ``feature_names_`` (fixed as in
    :class:`~streamlearn.learners.base.FeatureMixin`), so every weight is in the flat vector.

    With k > 2 ``classes`` it is one-vs-rest: k binary copies of ``model`` (``models_``; model i
    learns "the label is ``classes[i]``"), the flat vector their k blocks of f + 1 one after the
    other (d = k (f + 1), so averaging across nodes averages each class's model), and the
    probabilities the k models' scores normalised to sum to 1.

    ``learn_many`` takes one mean-gradient step, as river's ``LogisticRegression.learn_many``
    (without needing a dataframe); ``PAClassifier`` has no batch form and learns row by row.

    Parameters
    ----------
    model
        ``linear_model.LogisticRegression`` (default), ``Perceptron`` or ``PAClassifier``.
    n_features, features
        Fix the feature order up front (see :class:`~streamlearn.learners.base.FeatureMixin`).
    classes
        ``[negative, positive]``: the labels mapped to river's False/True; k > 2 labels: one-vs-rest.
        None: labels must be bool (or 0/1); ``classes_`` is then ``[False, True]``.

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

    Three classes, one-vs-rest:

    >>> ovr = RiverLinear(linear_model.LogisticRegression(optimizer=optim.SGD(0.5)),
    ...                   features=["a", "b"], classes=["lo", "mid", "hi"])
    >>> for i in range(600):
    ...     a = (i % 9) / 4 - 1
    ...     ovr.learn_one({"a": a, "b": 1.0}, "lo" if a < -0.3 else "hi" if a > 0.3 else "mid")
    >>> [ovr.predict_one({"a": a, "b": 1.0}) for a in (-1.0, 0.0, 1.0)]
    ['lo', 'mid', 'hi']
    >>> ovr.n_params, round(sum(ovr.predict_proba_one({"a": 0.2, "b": 1.0}).values()), 6)
    (9, 1.0)
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
            self._index = {False: 0, True: 1}  # 0/1 hash as False/True
        else:
            classes = list(classes)
            try:
                distinct = len(set(classes)) == len(classes)
            except TypeError:  # unhashable labels
                distinct = False
            if len(classes) < 2 or not distinct:
                raise ConfigError(f"classes: need [negative, positive] or k > 2 distinct labels, got {classes!r}")
            self.classes_ = classes
            self._index = {c: i for i, c in enumerate(classes)}
        # binary: the model itself (False/True); k > 2: a fresh copy per class (one-vs-rest)
        self.models_ = [model] if len(self.classes_) == 2 else [model.clone() for _ in self.classes_]
        self._classes_arr = labels_array(self.classes_)
        self._init_features(features, n_features)
        self.n_samples_seen_ = 0

    @property
    def _glm(self) -> bool:
        return hasattr(self.model, "_weights")

    @property
    def _ovr(self) -> bool:
        return len(self.models_) > 1

    # -- labels ---------------------------------------------------------------------------------------

    def encode_labels(self, y) -> np.ndarray:
        """Labels as int64 indices into ``classes_`` (binary: 0 = negative, 1 = positive)."""
        labels = as_label_list(y)
        out = np.empty(len(labels), dtype=np.int64)
        for i, v in enumerate(labels):
            try:
                out[i] = self._index[v]
            except (KeyError, TypeError):
                raise BadRecordError(
                    f"label is not one of the classes {self.classes_!r} (pass classes=[negative, positive] "
                    f"or all k labels)",
                    row=i, value=v,
                ) from None
        return out

    # -- flat parameters ------------------------------------------------------------------------------

    @property
    def n_params(self) -> int:
        """d = n_features + 1 (binary), k (n_features + 1) with k > 2 classes."""
        if self.feature_names_ is None:
            raise NotInitializedError("RiverLinear: features unknown; pass features/n_features or learn first")
        return len(self.models_) * (len(self.feature_names_) + 1)

    def _weights(self, model=None) -> np.ndarray:
        model = self.model if model is None else model
        names = self.feature_names_
        if self._glm:
            return model._weights.to_numpy(names)
        return np.array([model.weights.get(k, 0.0) for k in names], dtype=np.float64)

    def get_flat(self) -> torch.Tensor:
        """``[weights in feature_names_ order, intercept]`` per class model as a float32 tensor (cpu), a copy."""
        self.n_params  # noqa: B018 - raises when features are unknown
        v = np.concatenate([np.append(self._weights(m), m.intercept) for m in self.models_])
        return torch.from_numpy(v.astype(np.float32))

    def set_flat(self, v) -> None:
        """Write ``v`` (shape (d,)) into the river models' weights and intercepts."""
        d = self.n_params
        v = torch.as_tensor(v).detach().cpu().numpy().astype(np.float64)
        if v.shape != (d,):
            raise ConfigError(f"set_flat: expected a vector of size {d}, got shape {v.shape}")
        for m, block in zip(self.models_, v.reshape(len(self.models_), -1)):
            weights = m._weights if self._glm else m.weights
            for k, wk in zip(self.feature_names_, block[:-1].tolist()):
                weights[k] = wk
            m.intercept = float(block[-1])

    def scale_lr(self, factor: float) -> float | None:
        """Multiply the step size of every class model by ``factor`` (the optimizer's and the intercept's
        constant rates); the new step size, or None when the model has no constant one (PA, a schedule)."""
        lr = None
        for m in self.models_:
            opt = getattr(m, "optimizer", None)
            rate = getattr(opt, "lr", None)
            if not isinstance(rate, optim.schedulers.Constant):
                return None  # PA (no step size) or a decaying schedule
            rate.learning_rate = lr = rate.learning_rate * factor
            if isinstance(m.intercept_lr, optim.schedulers.Constant):
                m.intercept_lr.learning_rate *= factor
            elif isinstance(m.intercept_lr, (int, float)):
                m.intercept_lr = m.intercept_lr * factor
        return lr

    # -- learning -------------------------------------------------------------------------------------

    def learn_one(self, x, y) -> None:
        yi = int(self.encode_labels([y])[0])
        (row,) = self._to_dicts(x, fix=True)
        if not self._ovr:
            self.model.learn_one(row, bool(yi))
        else:
            for c, m in enumerate(self.models_):
                m.learn_one(row, c == yi)
        self.n_samples_seen_ += 1

    def _row_dict(self, X) -> dict | None:
        """A numpy float row (1, f) of the fixed features as the dict river learns from, its values rounded
        to float32 as the general path rounds them; None for anything else (or a value not finite), which
        the general path converts, checks and names. A batch of one is what test-then-train at batch 1
        passes: this spares it the batch machinery river itself does not have."""
        names = self.feature_names_
        if (type(X) is not np.ndarray or names is None or X.shape != (1, len(names)) or X.dtype.kind != "f"):
            return None
        row = (X if X.dtype is _F32 else X.astype(np.float32)).tolist()[0]
        if not math.isfinite(sum(row)):  # one sum: all finite
            return None
        return dict(zip(names, row))

    def learn_many(self, X, y) -> None:
        """One mean-gradient step for LogisticRegression/Perceptron; row by row for PA (per class model)."""
        if not self._ovr:
            row = self._row_dict(X)
            yi = None if row is None else self._row_label(y)
            if yi is not None:  # one row: river's own step on its dict
                self.model.learn_one(row, bool(yi))
                self.n_samples_seen_ += 1
                return
        M, names = self._to_matrix(X, fix=True)
        yi = self.encode_labels(y)
        if len(M) != len(yi):
            raise ConfigError(f"learn_many: {len(M)} samples but {len(yi)} labels")
        if not len(M):
            return
        if not self._ovr:
            self._learn_binary(self.model, M, names, yi.astype(bool))
        else:
            for c, m in enumerate(self.models_):
                self._learn_binary(m, M, names, yi == c)
        self.n_samples_seen_ += len(M)

    def _row_label(self, y) -> int | None:
        """The class index of a batch of one label; None for anything else (the general path names it)."""
        label = y.tolist() if type(y) is np.ndarray else y
        if type(label) is not list or len(label) != 1:
            return None
        try:
            return self._index.get(label[0])
        except TypeError:  # unhashable
            return None

    def predict_proba_learn_many(self, X, y) -> np.ndarray:
        """Test-then-train in one call: ``predict_proba_many(X)``, then ``learn_many(X, y)``; the
        probabilities before the step. A binary model given one numpy row makes river's dict once and
        predicts and learns on it, as river itself does.

        >>> import numpy as np
        >>> a, b = RiverLinear(n_features=2), RiverLinear(n_features=2)
        >>> X = np.array([[1.0, -2.0]], dtype=np.float32)
        >>> P = a.predict_proba_learn_many(X, [True])
        >>> bool(np.array_equal(P, b.predict_proba_many(X))), P.tolist()
        (True, [[0.5, 0.5]])
        >>> b.learn_many(X, [True])
        >>> bool(a.get_flat().equal(b.get_flat()))
        True
        """
        if not self._ovr and self._glm:
            row = self._row_dict(X)
            yi = None if row is None else self._row_label(y)
            if yi is not None:
                p = self.model.predict_proba_one(row)[True]
                self.model.learn_one(row, bool(yi))
                self.n_samples_seen_ += 1
                return np.array([[1.0 - p, p]])
        P = self.predict_proba_many(X)
        self.learn_many(X, y)
        return P

    def _learn_binary(self, model, M: np.ndarray, names: list, yb: np.ndarray) -> None:
        if len(M) == 1:  # river's own per-sample step: the batch machinery costs more than the step here
            model.learn_one(dict(zip(names, M[0].tolist())), bool(yb[0]))
        elif self._glm and hasattr(model, "_eval_gradient_many"):
            # What river's GLM.learn_many does once it has a numpy matrix (it wants a dataframe).
            # w=1 as river's default: Perceptron's hinge gradient is an int array, a float w fails.
            saved = model._enter_learn_mode(set(names))
            try:
                model._fit(x=names, y=yb, w=1,
                           get_grad=functools.partial(model._eval_gradient_many, M.astype(np.float64)))
            finally:
                model._exit_learn_mode(saved)
        else:
            for row, label in zip((dict(zip(names, r)) for r in M.tolist()), yb.tolist()):
                model.learn_one(row, label)

    # -- prediction -----------------------------------------------------------------------------------

    def _p_true(self, X, model=None) -> np.ndarray:
        """P(True) of a binary model (``model``, default ``self.model``) for every row of X."""
        model = self.model if model is None else model
        if self._glm:
            row = self._row_dict(X)
            if row is not None:  # one row, as river predicts one sample
                return np.array([model.predict_proba_one(row)[True]])
        M, names = self._to_matrix(X, fix=False)
        if self.feature_names_ is None:  # nothing learnt: all weights are zero
            raw = np.full(len(M), float(model.intercept))
        elif len(M) == 1 and self._glm:  # a dot over the weight dict, as river predicts one sample
            return np.array([model.predict_proba_one(dict(zip(names, M[0].tolist())))[True]])
        else:
            raw = M.astype(np.float64) @ self._weights(model) + model.intercept
        if self._glm:
            return model.loss.mean_func(raw)
        return 1.0 / (1.0 + np.exp(-raw))

    def _ovr_proba(self, X) -> np.ndarray:
        """(B, k): each class model's P(its class), normalised over the k models (uniform when all are 0)."""
        S = np.column_stack([self._p_true(X, m) for m in self.models_])
        total = S.sum(axis=1, keepdims=True)
        return np.divide(S, total, out=np.full_like(S, 1.0 / S.shape[1]), where=total > 0)

    def predict_proba_many(self, X) -> np.ndarray:
        """(B, k) probabilities, columns in ``classes_`` order (k = 2 when binary)."""
        if self._ovr:
            return self._ovr_proba(X)
        if self._glm:
            row = self._row_dict(X)
            if row is not None:  # one row, as river predicts one sample
                p = self.model.predict_proba_one(row)[True]
                return np.array([[1.0 - p, p]])
        p = self._p_true(X)
        P = np.empty((len(p), 2))
        P[:, 0], P[:, 1] = 1.0 - p, p
        return P

    def predict_many(self, X) -> np.ndarray:
        if self._ovr:
            return self._classes_arr[self._ovr_proba(X).argmax(axis=1)]
        return self._classes_arr[(self._p_true(X) > 0.5).astype(np.int64)]

    def predict_proba_one(self, x) -> dict:
        if self._ovr:
            return dict(zip(self.classes_, self._ovr_proba(x)[0].tolist()))
        p = float(self._p_true(x)[0])
        return {self.classes_[0]: 1.0 - p, self.classes_[1]: p}

    def predict_one(self, x):
        if self._ovr:
            return self.classes_[int(self._ovr_proba(x)[0].argmax())]
        return self.classes_[int(self._p_true(x)[0] > 0.5)]
