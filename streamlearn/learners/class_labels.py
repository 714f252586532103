"""Class labels of a classifier as output indices: the label <-> output mapping and batch encoding."""

from __future__ import annotations

import numpy as np

from streamlearn.errors import BadRecordError, ConfigError
from streamlearn.learners.base import as_label_list, labels_array

__all__ = ["ClassLabelsMixin"]


class ClassLabelsMixin:
    """Maps labels to the outputs of a classifier, the way :class:`~streamlearn.learners.base.FeatureMixin`
    maps features to its inputs (kept apart from the learner: it is the same whatever the model is).

    The class using it has a ``classes`` hyperparameter (None or the labels, in order) and calls
    ``_init_classes(classes)`` in its constructor. It then has ``classes_`` (the labels known, in
    output order), ``_n_out`` (the number of outputs) and ``_classes_arr`` (``classes_`` as a
    numpy array). With ``classes=None`` the problem is binary and the two labels are taken as
    they first appear (``[False, True]`` at once for bool labels); a third label raises
    :class:`~streamlearn.errors.BadRecordError`.
    """

    def _init_classes(self, classes) -> None:
        if classes is None:
            self.classes_ = []
            self._n_out = 2
        else:
            classes = list(classes)
            if len(classes) < 2 or len(set(classes)) != len(classes):
                raise ConfigError(f"classes: need at least 2 distinct labels, got {classes!r}")
            self.classes_ = classes
            self._n_out = len(classes)
        self._set_label_arrays()

    def _add_class(self, label, row: int) -> int:
        if self.classes is not None or len(self.classes_) >= self._n_out:
            raise BadRecordError(
                f"label is not one of the classes {self.classes_!r} (pass classes=[...] for more than two)",
                row=row, value=label,
            )
        if isinstance(label, (bool, np.bool_)) and not self.classes_:
            # Bool labels get a fixed order at once, so every node agrees on it.
            self.classes_ = [False, True]
        else:
            self.classes_.append(label)
        self._set_label_arrays()
        return self._class_index[label]

    def _set_label_arrays(self) -> None:
        self._class_index = {c: i for i, c in enumerate(self.classes_)}
        self._classes_arr = labels_array(self.classes_)
        # numeric labels: sorted once, so a numpy batch of labels is encoded with one searchsorted
        # (faster than a dict lookup per label from about 32 labels on)
        numeric = len(self.classes_) > 0 and self._classes_arr.dtype.kind in "biuf"
        order = np.argsort(self._classes_arr, kind="stable") if numeric else None
        self._label_order = None if order is None else (order.astype(np.int64), self._classes_arr[order])

    def encode_labels(self, y) -> np.ndarray:
        """Labels (a label or an array-like of them) as int64 indices into ``classes_``.

        With ``classes=None`` an unseen label takes the next free output (see ``classes``).
        """
        if self._label_order is not None and isinstance(y, np.ndarray) and y.dtype.kind in "biuf" and y.size > 32:
            order, ranked = self._label_order
            y = y.reshape(-1)
            pos = np.minimum(np.searchsorted(ranked, y), len(ranked) - 1)
            if np.array_equal(ranked[pos], y):
                return order[pos]
            # else some label is not a class (or NaN): the per-label path below adds or rejects it
        labels = as_label_list(y)
        index = self._class_index
        try:
            return np.fromiter((index[v] for v in labels), dtype=np.int64, count=len(labels))
        except (KeyError, TypeError):
            out = np.empty(len(labels), dtype=np.int64)
            for i, v in enumerate(labels):
                try:
                    j = self._class_index.get(v)
                except TypeError:
                    j = None
                out[i] = self._add_class(v, row=i) if j is None else j
            return out
