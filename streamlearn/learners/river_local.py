"""RiverLocal: any river classifier as a local-only learner with streamlearn's batch interface."""

from __future__ import annotations

import numpy as np
from river import base

from streamlearn.errors import ConfigError
from streamlearn.learners.base import FeatureMixin, as_label_list, labels_array

__all__ = ["RiverLocal"]


class RiverLocal(FeatureMixin, base.MiniBatchClassifier):
    """Wrap a river classifier so it takes the same inputs as the averageable learners.

    It has no flat parameters (it is not averageable: a node using it learns locally and is
    reported as such). Dict samples go to the model unchanged (trees take categories as they
    are); matrix and dataframe rows become dicts keyed by ``feature_names_``. The ``*_many``
    methods loop over the rows, since most river classifiers learn one sample at a time.

    Parameters
    ----------
    model
        A river classifier, e.g. ``tree.HoeffdingTreeClassifier()``.
    n_features, features
        Names for the columns of matrix input (see :class:`~streamlearn.learners.base.FeatureMixin`).

    Examples
    --------
    >>> from river import naive_bayes
    >>> model = RiverLocal(naive_bayes.GaussianNB())
    >>> model.predict_one({"x": 1.0}) is None
    True
    >>> model.learn_many([{"x": -2.0}, {"x": -1.0}, {"x": 1.0}, {"x": 2.0}], ["lo", "lo", "hi", "hi"])
    >>> model.predict_many([{"x": -1.5}, {"x": 1.5}]).tolist()
    ['lo', 'hi']
    """

    def __init__(self, model, n_features: int | None = None, features: list | None = None):
        if not isinstance(model, base.Classifier):
            raise ConfigError(f"model: need a river classifier, got {type(model).__name__}")
        self.model = model
        self.n_features = n_features
        self.features = features
        self._init_features(features, n_features)
        self.classes_: list = []  # labels in the order they were first learnt
        self._known: set = set()
        self.n_samples_seen_ = 0

    def _rows(self, X, fix: bool) -> list[dict]:
        if isinstance(X, dict):
            return [X]
        if isinstance(X, (list, tuple)) and X and isinstance(X[0], dict):
            return list(X)
        return self._to_dicts(X, fix)

    def _note(self, labels) -> None:
        for v in labels:
            if v not in self._known:
                self._known.add(v)
                self.classes_.append(v)

    def learn_one(self, x, y) -> None:
        self.learn_many(x, [y])

    def learn_many(self, X, y) -> None:
        rows = self._rows(X, fix=True)
        labels = as_label_list(y)
        if len(rows) != len(labels):
            raise ConfigError(f"learn_many: {len(rows)} samples but {len(labels)} labels")
        self._note(labels)
        for x, label in zip(rows, labels):
            self.model.learn_one(x, label)
        self.n_samples_seen_ += len(rows)

    def predict_proba_one(self, x) -> dict:
        return dict(self.model.predict_proba_one(self._rows(x, fix=False)[0]) or {})

    def predict_one(self, x):
        return self.model.predict_one(self._rows(x, fix=False)[0])

    def predict_proba_many(self, X) -> np.ndarray:
        """(B, len(classes_)) probabilities, columns in ``classes_`` order (0 when not given)."""
        rows = self._rows(X, fix=False)
        P = np.zeros((len(rows), len(self.classes_)))
        for i, x in enumerate(rows):
            p = self.model.predict_proba_one(x) or {}
            P[i] = [p.get(c, 0.0) for c in self.classes_]
        return P

    def predict_many(self, X) -> np.ndarray:
        preds = [self.model.predict_one(x) for x in self._rows(X, fix=False)]
        return labels_array(preds) if None not in preds else np.array(preds, dtype=object)
