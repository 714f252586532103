"""What every streamlearn learner shares: the device rule and the feature order.

A learner sees features as dicts (river's way), numpy matrices, lists of either, or any
eager dataframe narwhals understands. :class:`FeatureMixin` turns all of them into one float32
matrix whose columns follow ``feature_names_``, so every node and the vectorized simulator
lay features out the same way.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from streamlearn.errors import BadRecordError, ConfigError, StreamlearnError

__all__ = ["NotInitializedError", "FeatureMixin", "resolve_device", "feature_order"]


class NotInitializedError(StreamlearnError, RuntimeError):
    """The learner's dimensions are not known yet (no ``n_features``/``features`` and no data)."""


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` → ``cuda`` when available, else ``cpu``; anything else is passed to ``torch.device``."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"device: {device!r} is not a torch device ({e})") from None


def feature_order(keys) -> list:
    """Sorted keys when they can be compared, else the order they were first seen in.

    Sorting makes the order independent of how each node's source happened to build its dicts.

    >>> feature_order({"b": 1, "a": 2})
    ['a', 'b']
    >>> feature_order([2, "x"])
    [2, 'x']
    """
    keys = list(keys)
    try:
        return sorted(keys)
    except TypeError:
        return keys


def _check_finite(M: np.ndarray, names: Sequence) -> None:
    # One NaN would poison a model, and through averaging every node's model.
    if not np.isfinite(M.sum()) and not np.isfinite(M).all():  # one reduction when all is well
        row, col = np.argwhere(~np.isfinite(M))[0]
        raise BadRecordError("feature value is not a finite number", row=int(row), column=str(names[col]), value=float(M[row, col]))


def _rows_to_matrix(rows: Sequence[Mapping], names: Sequence) -> np.ndarray:
    try:
        M = np.array([[x[k] for k in names] for x in rows], dtype=np.float32)
    except (KeyError, TypeError, ValueError):
        # Slow path, only to name the bad record.
        for i, x in enumerate(rows):
            for k in names:
                if k not in x:
                    raise BadRecordError("feature missing", row=i, column=str(k)) from None
                v = x[k]
                if isinstance(v, (bool, np.bool_)) or not isinstance(v, (numbers.Real, np.number)):
                    try:
                        float(v)
                    except (TypeError, ValueError):
                        raise BadRecordError(
                            "feature value is not a number (one-hot encode categories first)",
                            row=i, column=str(k), value=v,
                        ) from None
        raise
    return M.reshape(len(rows), len(names))


def _as_frame(X):
    """A narwhals DataFrame when X is an eager dataframe of any backend, else None."""
    try:
        import narwhals.stable.v2 as nw
    except ImportError:  # pragma: no cover - narwhals comes with river
        return None
    frame = nw.from_native(X, eager_only=True, pass_through=True)
    return frame if isinstance(frame, nw.DataFrame) else None


class FeatureMixin:
    """Feature order and batch encoding for a learner.

    The order is fixed, in this priority: ``features`` (names, in the given order), else
    ``n_features`` (the names are ``0 .. n_features-1``, for positional numpy input), else the
    first batch the learner *learns* from: the sorted keys of its first dict (first-seen order
    when the keys cannot be sorted), the sorted columns of a dataframe, or ``0 .. f-1`` for a
    matrix. Matrix columns are always taken positionally, in ``feature_names_`` order.

    Inputs: a dict (one sample), a list of dicts, a numpy array or tensor of shape (B, f) or
    (f,), or an eager dataframe (pandas, polars, pyarrow, ... through narwhals). Features that
    are not in ``feature_names_`` are ignored; a missing feature or a value that is not a
    finite number raises :class:`~streamlearn.errors.BadRecordError`.
    """

    feature_names_: list | None

    def _init_features(self, features, n_features) -> None:
        if features is not None:
            names = list(features)
            if not names or len(set(names)) != len(names):
                raise ConfigError(f"features: need distinct names, got {names!r}")
            if n_features is not None and n_features != len(names):
                raise ConfigError(f"n_features={n_features} but {len(names)} features were named")
        elif n_features is not None:
            if isinstance(n_features, bool) or not isinstance(n_features, numbers.Integral) or n_features < 1:
                raise ConfigError(f"n_features: need a positive int, got {n_features!r}")
            names = list(range(int(n_features)))
        else:
            names = None
        self.feature_names_ = names

    @property
    def n_features_(self) -> int | None:
        """Number of features, or None while the order is not fixed."""
        return None if self.feature_names_ is None else len(self.feature_names_)

    def _on_features_fixed(self) -> None:
        """Hook: called once, when the feature order gets fixed from data."""

    def _fix_features(self, names: list) -> None:
        self.feature_names_ = list(names)
        self._on_features_fixed()

    def _to_matrix(self, X, fix: bool) -> tuple[np.ndarray, list]:
        """(float32 matrix (B, f), names); fixes the feature order from X when ``fix``."""
        names = self.feature_names_
        if type(X) is np.ndarray and X.dtype == np.float32 and X.ndim == 2:  # the hot path: no conversion
            if names is not None and X.shape[1] != len(names):
                raise ConfigError(f"features: expected {len(names)} columns, got {X.shape[1]}")
            names = list(range(X.shape[1])) if names is None else names
            _check_finite(X, names)
            if fix and self.feature_names_ is None and len(X):
                self._fix_features(names)
            return X, names
        if isinstance(X, (np.ndarray, torch.Tensor)):
            rows, M = None, X
        elif isinstance(X, Mapping):
            rows, M = [X], None
        elif isinstance(X, (list, tuple)):
            if X and isinstance(X[0], Mapping):
                rows, M = X, None
            else:
                rows, M = None, np.asarray(X, dtype=np.float32)
                if M.size == 0:
                    M = M.reshape(0, 0 if names is None else len(names))
        else:
            frame = _as_frame(X)
            if frame is None:
                raise ConfigError(f"cannot read features from a {type(X).__name__}")
            cols = list(frame.columns)
            if names is None:
                names = feature_order(cols)
            missing = [k for k in names if k not in cols]
            if missing:
                raise BadRecordError("feature column missing", column=str(missing[0]))
            M = np.asarray(frame.select(names).to_numpy(), dtype=np.float32)
            rows = None
        if rows is not None:
            if names is None:
                names = feature_order(rows[0].keys())
            M = _rows_to_matrix(rows, names)
        else:
            if isinstance(M, torch.Tensor):
                M = M.detach().cpu().numpy()
            M = np.asarray(M, dtype=np.float32)
            if M.ndim == 1:
                M = M[None, :]
            if M.ndim != 2:
                raise ConfigError(f"features: need a (B, f) matrix, got shape {M.shape}")
            if names is None:
                names = list(range(M.shape[1]))
            elif M.shape[1] != len(names):
                raise ConfigError(f"features: expected {len(names)} columns, got {M.shape[1]}")
        _check_finite(M, names)
        if fix and self.feature_names_ is None and len(M):
            self._fix_features(names)
        return M, names

    def encode_features(self, X) -> np.ndarray:
        """Features as a float32 matrix (B, f) in ``feature_names_`` order.

        Fixes the feature order from ``X`` if it is not fixed yet, so a simulator can pre-encode
        a whole stream with the learner's own layout.
        """
        return self._to_matrix(X, fix=True)[0]

    def _to_dicts(self, X, fix: bool) -> list[dict]:
        """Validated samples as dicts {name: float} over ``feature_names_``."""
        M, names = self._to_matrix(X, fix)
        return [dict(zip(names, r)) for r in M.tolist()]


def as_label_list(y) -> list:
    """Labels as a Python list: a scalar label becomes a list of one."""
    if isinstance(y, torch.Tensor):
        y = y.detach().cpu().numpy()
    if isinstance(y, np.ndarray):
        return y.reshape(-1).tolist()
    if isinstance(y, (list, tuple)):
        return list(y)
    if isinstance(y, (str, bytes, numbers.Number, np.generic)) or y is None:
        return [y]
    frame_col = _as_series(y)
    if frame_col is not None:
        return frame_col
    return list(y)


def _as_series(y):
    try:
        import narwhals.stable.v2 as nw
    except ImportError:  # pragma: no cover
        return None
    s = nw.from_native(y, series_only=True, pass_through=True)
    return s.to_list() if isinstance(s, nw.Series) else None


def labels_array(labels: Sequence) -> np.ndarray:
    """A numpy array of labels, object dtype when they mix types (so 1 never becomes '1')."""
    if len({type(c) for c in labels}) > 1:
        out = np.empty(len(labels), dtype=object)
        out[:] = list(labels)
        return out
    return np.asarray(list(labels))
