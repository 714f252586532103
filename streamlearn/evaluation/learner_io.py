"""How the evaluator asks any river-style classifier for a label and the probability of the true label.

Per sample: river's ``progressive_val_score`` scores accuracy on ``predict_one``. When a model's
``predict_one`` is river's default (argmax of ``predict_proba_one``), we call ``predict_proba_one``
once and take the argmax the same way, so the label is river's and the model is asked once (this
matters under ``compose.learn_during_predict``). Otherwise we call ``predict_one`` and, for the
loss, ``predict_proba_one`` when the model has one.

Mini-batch: learners outside river with ``predict_many``/``learn_many`` get numpy arrays
``X (B, d)``, ``y (B,)``. river's own mini-batch models want dataframes (pandas is not installed),
so river models are always run per sample. Columns follow :func:`feature_order`.
"""

from __future__ import annotations

import numpy as np
from river import base, compose

__all__ = ["OnePredictor", "uses_numpy_batches", "feature_order", "predict_batch"]


def _is_default_predict_one(model) -> bool:
    """True when ``model.predict_one`` is river's argmax of ``model.predict_proba_one``."""
    cls = type(model)
    if isinstance(model, compose.Pipeline):
        if cls.predict_one is not compose.Pipeline.predict_one or cls.predict_proba_one is not compose.Pipeline.predict_proba_one:
            return False
        return _is_default_predict_one(list(model.steps.values())[-1])
    return (
        isinstance(model, base.Classifier)
        and cls.predict_one is base.Classifier.predict_one
        and cls.predict_proba_one is not base.Classifier.predict_proba_one
    )


class OnePredictor:
    """``__call__(x) -> (label or None, proba dict or None)`` for one sample, calling the model as river would.

    Examples
    --------
    >>> from river import linear_model
    >>> predict = OnePredictor(linear_model.LogisticRegression())
    >>> predict({"a": 1.0})
    (False, {False: 0.5, True: 0.5})
    """

    def __init__(self, model):
        self.model = model
        self._from_proba = _is_default_predict_one(model)
        self._has_proba = callable(getattr(model, "predict_proba_one", None))

    def __call__(self, x):
        model = self.model
        if self._from_proba:
            proba = model.predict_proba_one(x)
            return (max(proba, key=proba.get) if proba else None), proba
        label = model.predict_one(x)
        proba = None
        if self._has_proba and not (isinstance(model, compose.Pipeline) and model._LEARN_UNSUPERVISED_DURING_PREDICT):
            try:
                proba = model.predict_proba_one(x)
            except NotImplementedError:
                self._has_proba = False
        return label, proba


def uses_numpy_batches(model) -> bool:
    """True when mini-batches go to ``predict_many``/``learn_many`` as numpy arrays."""
    if type(model).__module__.split(".")[0] == "river":
        return False
    return callable(getattr(model, "predict_many", None)) and callable(getattr(model, "learn_many", None))


def feature_order(model, x: dict) -> list:
    """Column order of numpy batches: the learner's ``feature_names_`` when fixed, else ``x``'s keys sorted
    (first-seen order when they cannot be sorted), the rule of :mod:`streamlearn.learners`.

    >>> feature_order(object(), {"b": 1.0, "a": 2.0})
    ['a', 'b']
    """
    names = getattr(model, "feature_names_", None)
    if names is not None:
        return list(names)
    try:
        return sorted(x)
    except TypeError:
        return list(x)


def _to_numpy(a) -> np.ndarray:
    if hasattr(a, "detach"):  # torch tensor
        return a.detach().cpu().numpy()
    if hasattr(a, "to_numpy"):
        return a.to_numpy()
    return np.asarray(a)


def _proba_of_true(P, y: np.ndarray, model) -> np.ndarray:
    """Probability given to each true label, from whatever ``predict_proba_many`` returned (NaN when unreadable)."""
    B = len(y)
    if isinstance(P, (list, tuple)) and (not P or isinstance(P[0], dict)):
        return np.array([float(p.get(t, 0.0)) if p else np.nan for p, t in zip(P, y.tolist())])
    if hasattr(P, "columns") and hasattr(P, "to_numpy"):  # a dataframe with one column per class
        cols, arr = list(P.columns), _to_numpy(P)
        classes = cols
    else:
        arr = _to_numpy(P).astype(np.float64)
        if arr.ndim == 1:  # binary: probability of the positive class
            return np.where(y.astype(bool), arr, 1.0 - arr)
        classes = getattr(model, "classes_", None)
        if classes is None and arr.shape[1] == 2:
            classes = [False, True]  # sorted binary labels, as in scikit-learn
    if classes is None or arr.ndim != 2 or arr.shape != (B, len(classes)):
        return np.full(B, np.nan)
    index = {c: i for i, c in enumerate(list(classes))}
    out = np.zeros(B)  # a label the model never saw gets probability 0
    for row, t in enumerate(y.tolist()):
        col = index.get(t)
        if col is not None:
            out[row] = arr[row, col]
    return out


def predict_batch(model, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels ``(B,)`` (object, ``None`` = no prediction) and probabilities of the true labels ``(B,)`` for a numpy batch."""
    labels = _to_numpy(model.predict_many(X)).ravel()
    if labels.shape[0] != len(y):
        raise ValueError(f"predict_many returned {labels.shape[0]} labels for {len(y)} samples")
    proba = np.full(len(y), np.nan)
    if callable(getattr(model, "predict_proba_many", None)):
        try:
            proba = _proba_of_true(model.predict_proba_many(X), y, model)
        except NotImplementedError:
            pass
    return labels.astype(object), proba
