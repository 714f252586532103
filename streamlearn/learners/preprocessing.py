"""Online preprocessing that behaves the same at every node: running standardisation, one-hot, missing values.

Both are river transformers (``learn_one``/``transform_one``), so they fit in a river pipeline,
and the scaler also works on whole batches with leading dimensions, so the vectorized
simulator can hold one scaler state per node in a single array.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from river import base

from streamlearn.errors import BadRecordError, ConfigError
from streamlearn.learners.base import feature_order, resolve_device

__all__ = ["OnlineScaler", "OneHotEncoder", "MissingValues", "MISSING_POLICIES"]


class OnlineScaler(base.Transformer):
    """Running mean/variance standardisation (Welford), updated by batches.

    ``update(X)`` merges a batch into the running statistics (Chan et al.'s parallel form of
    Welford's algorithm, in float64); ``transform(X)`` applies the current statistics:
    ``(x - mean) / std``, with the population variance like river's ``StandardScaler``, a zero
    std treated as 1, and the identity before any update. A learner updates the statistics with
    a batch, then transforms it and learns; it predicts with the statistics as they are.

    The state has shape ``(..., f)``: ``update(X)`` with ``X`` of shape ``(..., B, f)`` keeps one
    mean/variance per leading index (e.g. one per node, ``X[m, B, f]``), each updated with its own
    B rows. ``transform`` takes the same layout. Numpy in, numpy out; tensors stay tensors.

    Parameters
    ----------
    with_std
        Divide by the standard deviation (else only centre).
    features
        Feature names for the dict API (``learn_one``/``transform_one``); None: the sorted keys of
        the first dict learnt. Keys that are not features pass through unchanged.
    device
        Where the statistics live; None → cuda when available, else cpu.

    Examples
    --------
    >>> import numpy as np
    >>> sc = OnlineScaler(device="cpu")
    >>> X = np.array([[1.0, 10.0], [3.0, 30.0]], dtype=np.float32)
    >>> sc.update(X).transform(X)
    array([[-1., -1.],
           [ 1.,  1.]], dtype=float32)
    >>> sc.learn_one({"a": 5.0, "b": 50.0})
    >>> {k: round(v, 3) for k, v in sc.transform_one({"a": 3.0, "b": 30.0, "c": 7}).items()}
    {'a': 0.0, 'b': 0.0, 'c': 7}
    """

    def __init__(self, with_std: bool = True, features: list | None = None, device: str | None = None):
        self.with_std = with_std
        self.features = features
        self.device = device
        self.device_ = resolve_device(device)
        self.feature_names_ = None if features is None else list(features)
        self.n_ = 0
        self._mean = None  # float64 (..., f), created by the first update
        self._m2 = None

    # -- array API ---------------------------------------------------------------------------------

    @property
    def mean_(self) -> torch.Tensor | None:
        return self._mean

    @property
    def var_(self) -> torch.Tensor | None:
        """Population variance (M2 / n); None before any update."""
        if self._m2 is None:
            return None
        n = self._count()
        return self._m2 / (n.clamp_min(1) if isinstance(n, torch.Tensor) else max(n, 1))

    def _as_tensor(self, X) -> torch.Tensor:
        if isinstance(X, torch.Tensor):
            return X.to(self.device_)
        return torch.as_tensor(np.asarray(X), device=self.device_)

    def _count(self):
        """n, broadcastable against the (..., f) statistics (a number, or a (..., 1) tensor)."""
        return self.n_.unsqueeze(-1) if isinstance(self.n_, torch.Tensor) else self.n_

    def update(self, X) -> OnlineScaler:
        """Merge a batch ``X[..., B, f]`` into the statistics; returns self."""
        Xt = self._as_tensor(X).double()
        if Xt.ndim < 2:
            raise ConfigError(f"OnlineScaler.update: need (..., B, f), got shape {tuple(Xt.shape)}")
        b = Xt.shape[-2]
        if b == 0:
            return self
        if self._mean is None:
            shape = Xt.shape[:-2] + Xt.shape[-1:]
            self._mean = torch.zeros(shape, dtype=torch.float64, device=self.device_)
            self._m2 = torch.zeros(shape, dtype=torch.float64, device=self.device_)
        elif Xt.shape[:-2] + Xt.shape[-1:] != self._mean.shape:
            raise ConfigError(
                f"OnlineScaler.update: state has shape {tuple(self._mean.shape)}, batch {tuple(Xt.shape)}"
            )
        bmean = Xt.mean(-2)
        bm2 = ((Xt - bmean.unsqueeze(-2)) ** 2).sum(-2)
        n0 = self._count()
        n = n0 + b
        delta = bmean - self._mean
        self._mean = self._mean + delta * (b / n)
        self._m2 = self._m2 + bm2 + delta**2 * (n0 * b / n)
        self.n_ = self.n_ + b
        return self

    def transform(self, X):
        """Standardise ``X[..., B, f]`` with the current statistics (identity before any update)."""
        if self._mean is None:
            return X
        Xt = self._as_tensor(X)
        if Xt.ndim != self._mean.ndim + 1:
            raise ConfigError(
                f"OnlineScaler.transform: need {self._mean.ndim + 1} dims (..., B, f), got shape {tuple(Xt.shape)}"
            )
        out = Xt.double() - self._mean.unsqueeze(-2)
        if self.with_std:
            std = torch.sqrt(self.var_)
            out = out / torch.where(std > 0, std, 1.0).unsqueeze(-2)
        out = out.to(Xt.dtype if Xt.is_floating_point() else torch.float32)
        return out if isinstance(X, torch.Tensor) else out.cpu().numpy()

    # -- flat state (synced with the model) ----------------------------------------------------------

    @staticmethod
    def flat_size(n_features: int) -> int:
        """Length of :meth:`get_flat` for ``n_features`` features: mean, variance, count."""
        return 2 * int(n_features) + 1

    def get_flat(self, n_features: int, lead: tuple = ()) -> torch.Tensor:
        """The statistics as float32 ``[mean (f), variance (f), n]`` (shape ``lead + (2f + 1,)``).

        Before any update: zero mean, zero variance, n = 0, which :meth:`set_flat` reads back as
        "no statistics yet" (the identity). Averaging such vectors averages the running means,
        variances and counts, so synced nodes standardise their inputs the same way.

        >>> sc = OnlineScaler(device="cpu").update(np.array([[1.0], [3.0]]))
        >>> sc.get_flat(1).tolist()
        [2.0, 1.0, 2.0]
        >>> other = OnlineScaler(device="cpu")
        >>> other.set_flat(torch.tensor([2.0, 1.0, 2.0]))
        >>> other.transform(np.array([[4.0]])).tolist()
        [[2.0]]
        """
        if self._mean is None:
            out = torch.zeros(tuple(lead) + (self.flat_size(n_features),), dtype=torch.float32, device=self.device_)
            return out
        n = self.n_ if isinstance(self.n_, torch.Tensor) else torch.full(self._mean.shape[:-1], float(self.n_),
                                                                            dtype=torch.float64, device=self.device_)
        return torch.cat([self._mean, self.var_, n.unsqueeze(-1)], dim=-1).float()

    def set_flat(self, v) -> None:
        """Load statistics written by :meth:`get_flat` (float32, ``(..., 2f + 1)``).

        With one leading index per node (the simulator's layout) each node keeps its own count.
        """
        v = torch.as_tensor(v).to(self.device_, torch.float64)
        f, rem = divmod(v.shape[-1] - 1, 2)
        if rem or f < 1:
            raise ConfigError(f"OnlineScaler.set_flat: need 2f + 1 entries, got shape {tuple(v.shape)}")
        mean, var, n = v[..., :f], v[..., f:2 * f], v[..., 2 * f]
        if not bool((n > 0).any()):  # no statistics yet anywhere: the identity, as before any update
            self._mean = self._m2 = None
            self.n_ = 0
            return
        n = n.clamp_min(0)
        self._mean, self._m2 = mean.clone(), var * n.unsqueeze(-1)
        self.n_ = n.clone() if n.dim() else _number(float(n))

    def set_flat_rows(self, rows, v) -> None:
        """Load :meth:`get_flat` statistics into the leading-index rows ``rows`` only (a slice or index),
        as :meth:`set_flat` would load them into a scaler of those rows alone; the other rows keep theirs.

        >>> sc = OnlineScaler(device="cpu").update(torch.tensor([[[1.0], [3.0]], [[0.0], [2.0]]]))
        >>> sc.set_flat_rows(slice(1, 2), torch.tensor([[5.0, 4.0, 8.0]]))
        >>> sc.get_flat(1, lead=(2,)).tolist()
        [[2.0, 1.0, 2.0], [5.0, 4.0, 8.0]]
        """
        if self._mean is None or self._mean.dim() < 2:
            raise ConfigError("OnlineScaler.set_flat_rows: needs per-row statistics (one leading index per node)")
        v = torch.as_tensor(v).to(self.device_, torch.float64)
        f = self._mean.shape[-1]
        if v.shape[-1] != 2 * f + 1:
            raise ConfigError(f"OnlineScaler.set_flat_rows: need 2f + 1 = {2 * f + 1} entries, got shape "
                              f"{tuple(v.shape)}")
        if not isinstance(self.n_, torch.Tensor):
            self.n_ = torch.full(self._mean.shape[:-1], float(self.n_), dtype=torch.float64, device=self.device_)
        n = v[..., 2 * f].clamp_min(0)
        self._mean[rows] = v[..., :f]
        self._m2[rows] = v[..., f:2 * f] * n.unsqueeze(-1)
        self.n_[rows] = n

    # -- state (checkpoints) -------------------------------------------------------------------------

    def get_state(self) -> dict:
        """``{"n", "mean", "m2"}``: the running statistics as float64 numpy arrays (None before any update).

        >>> s = OnlineScaler()
        >>> _ = s.update(np.array([[1.0, 2.0], [3.0, 6.0]]))
        >>> t = OnlineScaler()
        >>> t.set_state(s.get_state())
        >>> t.n_, t.mean_.tolist()
        (2, [2.0, 4.0])
        """
        arr = lambda t: None if t is None else t.detach().cpu().numpy().copy()  # noqa: E731
        n = self.n_.tolist() if isinstance(self.n_, torch.Tensor) else self.n_
        return {"n": n, "mean": arr(self._mean), "m2": arr(self._m2)}

    def set_state(self, state: dict) -> None:
        """Load what :meth:`get_state` returned."""
        mean, m2 = state.get("mean"), state.get("m2")
        if (mean is None) != (m2 is None) or (mean is not None and np.shape(mean) != np.shape(m2)):
            raise ConfigError(f"OnlineScaler.set_state: mean and m2 must both be arrays of one shape or both None, "
                              f"got shapes {np.shape(mean)} and {np.shape(m2)}")
        to = lambda a: None if a is None else torch.as_tensor(np.array(a, dtype=np.float64)).to(self.device_)  # noqa: E731
        n = state["n"]
        self._mean, self._m2 = to(mean), to(m2)
        self.n_ = to(n) if isinstance(n, (list, tuple, np.ndarray)) else _number(float(n))

    # -- dict API (river) ---------------------------------------------------------------------------

    def _row(self, x: Mapping) -> np.ndarray:
        try:
            return np.array([[float(x[k]) for k in self.feature_names_]])
        except KeyError as e:
            raise BadRecordError("feature missing", column=str(e.args[0])) from None

    def learn_one(self, x: dict) -> None:
        if self.feature_names_ is None:
            self.feature_names_ = feature_order(x.keys())
        self.update(self._row(x))

    def transform_one(self, x: dict) -> dict:
        if self.feature_names_ is None or self._mean is None:
            return dict(x)
        z = self.transform(self._row(x))[0]
        out = dict(x)
        out.update(zip(self.feature_names_, z.tolist()))
        return out


def _number(x: float):
    """An int when ``x`` is whole (counts read back from a float vector), else the float."""
    return int(x) if float(x).is_integer() else float(x)


class OneHotEncoder(base.Transformer):
    """One-hot encoding over categories declared up front, so every node has the same columns.

    Each declared feature ``name`` is replaced by one column ``f"{name}_{category}"`` per declared
    category, in the declared order (``feature_names_out``); other features pass through. The
    output always holds all declared columns (0.0 or 1.0), whatever was seen: dimensions are
    fixed. Categories compare by equality, so ``1`` and ``"1"`` differ.

    Parameters
    ----------
    categories
        ``{feature: [category, ...]}``.
    handle_unknown
        ``"zeros"``: a category that was not declared, or a missing feature, gives all-zero
        columns. ``"error"``: raise :class:`~streamlearn.errors.BadRecordError` naming it.

    Examples
    --------
    >>> enc = OneHotEncoder({"day": [1, 2, 3]})
    >>> enc.transform_one({"day": 2, "load": 0.5})
    {'load': 0.5, 'day_1': 0.0, 'day_2': 1.0, 'day_3': 0.0}
    >>> enc.transform_one({"day": 9, "load": 0.5})
    {'load': 0.5, 'day_1': 0.0, 'day_2': 0.0, 'day_3': 0.0}
    """

    def __init__(self, categories: dict, handle_unknown: str = "zeros"):
        if handle_unknown not in ("zeros", "error"):
            raise ConfigError(f"handle_unknown: 'zeros' or 'error', got {handle_unknown!r}")
        if not isinstance(categories, Mapping) or not categories:
            raise ConfigError("categories: need a non-empty {feature: [categories]} dict")
        for name, cats in categories.items():
            cats = list(cats)
            if not cats or len(set(cats)) != len(cats):
                raise ConfigError(f"categories[{name!r}]: need distinct categories, got {cats!r}")
        self.categories = categories
        self.handle_unknown = handle_unknown
        self._index = {name: {c: i for i, c in enumerate(cats)} for name, cats in categories.items()}
        self._columns = {name: [f"{name}_{c}" for c in cats] for name, cats in categories.items()}

    @property
    def feature_names_out(self) -> list[str]:
        """The one-hot columns, in declared order."""
        return [col for cols in self._columns.values() for col in cols]

    def transform_one(self, x: dict) -> dict:
        out = {k: v for k, v in x.items() if k not in self._index}
        for name, index in self._index.items():
            cols = self._columns[name]
            hot = index.get(x.get(name))
            if hot is None and self.handle_unknown == "error":
                raise BadRecordError("category not declared", column=str(name), value=x.get(name))
            out.update((col, 1.0 if i == hot else 0.0) for i, col in enumerate(cols))
        return out


#: What to do with a missing feature value (an empty CSV field, a JSON ``null``, a NaN): see :class:`MissingValues`.
MISSING_POLICIES = ("impute", "skip")


def check_missing_policy(policy, what: str = "missing") -> str:
    """``policy`` if it is one of :data:`MISSING_POLICIES`, else a ConfigError naming it."""
    if policy not in MISSING_POLICIES:
        raise ConfigError(f"{what} must be one of {', '.join(MISSING_POLICIES)}, got {policy!r}")
    return policy


class MissingValues:
    """Missing feature values (NaN) of one node's stream, handled online, in stream order.

    ``policy="impute"``: a missing value of feature j is replaced by the mean of the values of
    feature j observed so far in this stream (the rows before it; no missing-indicator column, so
    the model layout stays the features of the file). After standardisation an imputed value is
    about 0: it adds nothing to a linear model's score. A row missing a feature that has never been
    observed yet cannot be imputed and is skipped (counted in ``skipped``).
    ``policy="skip"``: a row with any missing value is dropped.
    Infinite values are not missing: they are left for the caller's checks to reject.

    The vectorized simulator, ``evaluate`` and the node service each run one ``MissingValues`` per
    node stream over the same rows in the same order, so they impute the same numbers.

    Parameters
    ----------
    n_features
        Number of feature columns.
    policy
        ``"impute"`` or ``"skip"``.

    Attributes
    ----------
    imputed
        Missing values replaced so far.
    skipped
        Rows dropped so far.
    rows_with_missing
        Rows that had at least one missing value (imputed or skipped).

    Examples
    --------
    >>> import numpy as np
    >>> mv = MissingValues(2)
    >>> X, keep = mv.apply(np.array([[1.0, np.nan], [3.0, 10.0], [np.nan, np.nan], [5.0, 20.0]]))
    >>> X.tolist(), keep.tolist()   # row 0 misses a feature never seen: skipped; row 2 gets the means so far
    ([[3.0, 10.0], [2.0, 10.0], [5.0, 20.0]], [False, True, True, True])
    >>> mv.imputed, mv.skipped, mv.rows_with_missing
    (2, 1, 2)
    >>> MissingValues(2, "skip").apply(np.array([[1.0, np.nan], [3.0, 4.0]]))[0].tolist()
    [[3.0, 4.0]]
    """

    def __init__(self, n_features: int, policy: str = "impute"):
        if isinstance(n_features, bool) or not isinstance(n_features, (int, np.integer)) or n_features < 1:
            raise ConfigError(f"n_features must be a positive integer, got {n_features!r}")
        self.policy = check_missing_policy(policy)
        self.n_features = int(n_features)
        self.sum_ = np.zeros(self.n_features)  # float64: sums of the observed values
        self.count_ = np.zeros(self.n_features, dtype=np.int64)
        self.imputed = self.skipped = self.rows_with_missing = 0

    def counts(self) -> dict:
        """``{"imputed", "skipped", "rows_with_missing"}`` so far."""
        return {"imputed": self.imputed, "skipped": self.skipped, "rows_with_missing": self.rows_with_missing}

    def apply(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(rows kept, with missing values imputed; boolean mask of the kept rows of X)``; updates the means.

        ``X`` (B, f) is not modified; the result has its dtype. Without any NaN, X itself comes back.
        """
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ConfigError(f"MissingValues.apply: need (B, {self.n_features}), got shape {X.shape}")
        missing = np.isnan(X)
        if not missing.any():
            self.sum_ += X.sum(axis=0, dtype=np.float64)
            self.count_ += len(X)
            return X, np.ones(len(X), dtype=bool)
        seen = ~missing
        values = np.where(missing, 0.0, X).astype(np.float64)
        rows_missing = missing.any(axis=1)
        self.rows_with_missing += int(rows_missing.sum())
        if self.policy == "skip":
            keep = ~rows_missing
        else:
            # the mean of each feature over the rows before each row (this block's earlier rows included)
            sums = self.sum_ + np.cumsum(values, axis=0) - values
            counts = self.count_ + np.cumsum(seen, axis=0) - seen
            keep = ~(missing & (counts == 0)).any(axis=1)
            fill = missing & keep[:, None]
            out = X.copy()
            out[fill] = (sums[fill] / counts[fill]).astype(X.dtype)
            self.imputed += int(fill.sum())
        self.sum_ += values.sum(axis=0)
        self.count_ += seen.sum(axis=0)
        self.skipped += int((~keep).sum())
        if self.policy == "skip":
            return X[keep], keep
        return out[keep], keep
