"""Prequential (test-then-train) accuracy and log loss, cumulative and over a rolling window;
for regression, MAE and RMSE (:class:`RegressionPrequentialBank`, :class:`RegressionPrequential`).

One implementation, :class:`PrequentialBank`, holds the state of ``m`` nodes as ``(m,)`` /
``(m, window)`` arrays so a simulator updates every node with one call; :class:`Prequential`
is the same tracker for a single node.

Positions are counted per node and shared by all nodes of a bank: every update call advances
each node by the same number ``B`` of samples. A sample can be marked not ``valid`` (the model
made no prediction, or the record was skipped): it advances the position but counts in no
accuracy or loss, as river's ``progressive_val_score`` skips a ``None`` prediction. The rolling
window covers the last ``window`` positions; its accuracy is over the valid samples in it.
"""

from __future__ import annotations

import math

import numpy as np

from streamlearn.errors import ConfigError

__all__ = ["PrequentialBank", "Prequential", "RegressionPrequentialBank", "RegressionPrequential", "clipped_log_loss",
           "regression_errors"]


def clipped_log_loss(proba_of_true, eps: float = 1e-15) -> np.ndarray:
    """Log loss ``-log(p)`` of the probability given to the true label, with ``p`` clipped to ``[eps, 1 - eps]``.

    NaN stays NaN (it means "no probability available").

    Examples
    --------
    >>> clipped_log_loss([0.5, 1.0, 0.0]).round(4)
    array([ 0.6931,  0.    , 34.5388])
    """
    p = np.asarray(proba_of_true, dtype=np.float64)
    # np.clip, without its Python-level dispatch (a few microseconds per call of a node's step)
    return -np.log(np.minimum(np.maximum(p, eps), 1.0 - eps))


def _valid_predictions(y_pred: np.ndarray) -> np.ndarray:
    """True where a prediction was made (not ``None``)."""
    if y_pred.dtype != object:
        return np.ones(y_pred.shape, dtype=bool)
    return np.frompyfunc(lambda v: v is not None, 1, 1)(y_pred).astype(bool)


def _nan_div(num, den):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


class PrequentialBank:
    """Prequential accuracy and log loss of ``m`` nodes, updated with ``(m, B)`` mini-batches.

    Parameters
    ----------
    m
        Number of nodes.
    window
        Length of the rolling window, in samples.
    every
        A history point (position, cumulative accuracy and loss, rolling accuracy and loss) is recorded
        each time a node's position reaches a multiple of ``every``.
    eps
        Probabilities are clipped to ``[eps, 1 - eps]`` before the log.

    Examples
    --------
    >>> import numpy as np
    >>> bank = PrequentialBank(m=2, window=2, every=2)
    >>> bank.update(np.array([[1, 1, 0], [0, 0, 1]], dtype=bool))
    >>> bank.accuracy.round(3), bank.rolling_accuracy
    (array([0.667, 0.333]), array([0.5, 0.5]))
    >>> h = bank.history()
    >>> h["position"], h["rolling_accuracy"]
    (array([2, 3]), array([[1. , 0.5],
           [0. , 0.5]]))
    """

    def __init__(self, m: int, window: int = 1000, every: int = 100, eps: float = 1e-15):
        for name, value in (("m", m), ("window", window), ("every", every)):
            if int(value) != value or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 < eps < 0.5:
            raise ConfigError(f"eps must be in (0, 0.5), got {eps!r}")
        self.m = int(m)
        self.window = int(window)
        self.every = int(every)
        self.eps = float(eps)
        self._reset()

    def _reset(self):
        m, w = self.m, self.window
        self.n_ = 0  # positions seen per node (shared)
        # Totals per node, rows as in the ring: correct, scored, loss sum, losses counted. One
        # float64 array (counts stay exact up to 2**53) so an update adds them in one operation.
        self._tot = np.zeros((4, m), dtype=np.float64)
        # Ring buffers over the last `window` positions; slot (n_ % window) is the oldest.
        # Rows: correct, valid, loss, loss-valid (loss is 0 where not valid).
        self._buf = np.zeros((4, m, w), dtype=np.float64)
        self._hist: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def clone(self) -> "PrequentialBank":
        """A fresh tracker with the same settings."""
        return type(self)(self.m, self.window, self.every, self.eps)

    #: Totals kept in a checkpoint, and their row in ``_tot``.
    _STATE = {"n_correct_": 0, "n_scored_": 1, "loss_sum_": 2, "n_loss_": 3}
    #: Curves of :meth:`history`, each ``(m, k)``.
    CURVES = ("accuracy", "loss", "rolling_accuracy", "rolling_loss")

    def get_state(self) -> tuple[dict, dict]:
        """``(arrays, meta)``: counts, sums and the rolling window as numpy arrays, plus plain JSON
        (the history points are not kept). See :meth:`set_state`."""
        arrays = {name: getattr(self, name).copy() for name in self._STATE}
        arrays["buf"] = self._buf.copy()
        return arrays, {"n": int(self.n_), "window": int(self.window)}

    def set_state(self, arrays: dict, meta: dict) -> bool:
        """Load what :meth:`get_state` returned; False (nothing changed) when the window or the
        number of nodes differs."""
        if meta.get("window") != self.window or np.shape(arrays["buf"]) != self._buf.shape:
            return False
        for name, row in self._STATE.items():
            self._tot[row] = np.asarray(arrays[name], dtype=np.float64)
        self._buf = np.array(arrays["buf"], dtype=np.float64)
        self.n_ = int(meta["n"])
        return True

    # -- updates -------------------------------------------------------------------------------

    def update(self, correct, loss=None, valid=None) -> None:
        """Add ``B`` samples per node.

        Parameters
        ----------
        correct
            ``(m, B)`` bool, whether each prediction was right.
        loss
            ``(m, B)`` float per-sample loss, NaN where unknown; ``None`` when no loss is tracked.
        valid
            ``(m, B)`` bool, False where no prediction was made; ``None`` means all valid.
        """
        self._add(np.asarray(correct, dtype=bool), loss, valid)

    def _add(self, correct: np.ndarray, loss, valid) -> None:
        """``update``, with ``correct`` a bool array or (regression) the absolute errors."""
        if correct.ndim != 2 or correct.shape[0] != self.m:
            raise ConfigError(f"correct must have shape ({self.m}, B), got {correct.shape}")
        B = correct.shape[1]
        if B == 0:
            return
        # A node calls this after every mini-batch of a few samples: a handful of whole-batch
        # numpy calls, no temporary stacks or fancy indexing on the common path.
        new = np.empty((4, self.m, B))  # rows: correct, valid, loss (0 where not valid), loss-valid
        if valid is None:
            new[0] = correct
            new[1] = 1.0
        else:
            v = np.asarray(valid, dtype=bool)
            if v.shape != correct.shape:
                raise ConfigError(f"valid must have the shape of correct {correct.shape}, got {v.shape}")
            new[0] = correct
            new[0][~v] = 0.0
            new[1] = v
        if loss is None:
            new[2:] = 0.0
        else:
            lo = np.asarray(loss, dtype=np.float64)
            if lo.shape != correct.shape:
                raise ConfigError(f"loss must have the shape of correct {correct.shape}, got {lo.shape}")
            new[2] = lo
            new[3] = new[1]
        sums = new.sum(axis=2)
        # Every sample valid and every loss known (a finite sum): the common case, one check. Else mask.
        if loss is not None and (valid is not None or not math.isfinite(float(sums[2].sum()))):
            lv = np.isfinite(lo)
            if valid is not None:
                lv &= v
            new[3] = lv
            new[2][~lv] = 0.0
            sums = new.sum(axis=2)

        n0, W = self.n_, self.window
        first = (-n0) % self.every or self.every  # k (1-based) of the first history point here
        if first <= B:
            self._record(new, n0, np.arange(first, B + 1, self.every))

        self._tot += sums
        keep = min(B, W)  # only the last `window` samples can stay in the ring
        start = (n0 + B - keep) % W
        if start + keep <= W:  # one slice of the ring
            self._buf[:, :, start:start + keep] = new[:, :, B - keep:]
        else:  # the ring wraps around
            cut = W - start
            self._buf[:, :, start:] = new[:, :, B - keep:B - keep + cut]
            self._buf[:, :, :keep - cut] = new[:, :, B - keep + cut:]
        self.n_ = n0 + B

    def update_many(self, y_true, y_pred, proba_of_true=None) -> None:
        """Add ``(m, B)`` true labels, predicted labels (``None`` = no prediction) and the probabilities given to the true labels."""
        y_true = np.asarray(y_true)
        y_pred = np.asarray(y_pred)
        valid = _valid_predictions(y_pred)
        correct = (y_true == y_pred) & valid
        loss = None if proba_of_true is None else clipped_log_loss(proba_of_true, self.eps)
        self.update(correct, loss, valid)

    def _record(self, new: np.ndarray, n0: int, ks: np.ndarray) -> None:
        """Append history points after the ``ks``-th (1-based) samples of this batch."""
        W = self.window
        old = np.roll(self._buf, -(n0 % W), axis=2)  # chronological: oldest first
        seq = np.concatenate([old, new], axis=2)
        P = np.concatenate([np.zeros(seq.shape[:2] + (1,)), np.cumsum(seq, axis=2)], axis=2)
        roll = P[:, :, W + ks] - P[:, :, ks]  # sums over the `window` positions ending at k
        cum = P[:, :, W + ks] - P[:, :, W : W + 1]  # sums over this batch up to k
        tot = self._tot[:, :, None] + cum
        acc, loss = _nan_div(tot[0], tot[1]), _nan_div(tot[2], tot[3])
        self._hist.append((n0 + ks, acc, loss, _nan_div(roll[0], roll[1]), _nan_div(roll[2], roll[3])))

    # -- read-outs -----------------------------------------------------------------------------

    @property
    def n(self) -> int:
        """Samples seen per node."""
        return self.n_

    @property
    def n_correct_(self) -> np.ndarray:
        """Right predictions per node, ``(m,)`` int."""
        return self._tot[0].astype(np.int64)

    @property
    def n_scored_(self) -> np.ndarray:
        """Predictions made (valid samples) per node, ``(m,)`` int."""
        return self._tot[1].astype(np.int64)

    @property
    def loss_sum_(self) -> np.ndarray:
        """Sum of the known losses per node, ``(m,)``."""
        return self._tot[2].copy()

    @property
    def n_loss_(self) -> np.ndarray:
        """Known (finite, valid) losses per node, ``(m,)`` int."""
        return self._tot[3].astype(np.int64)

    @property
    def accuracy(self) -> np.ndarray:
        """Cumulative accuracy per node, ``(m,)`` (NaN before any prediction)."""
        return _nan_div(self._tot[0], self._tot[1])

    @property
    def loss(self) -> np.ndarray:
        """Cumulative mean log loss per node, ``(m,)``."""
        return _nan_div(self._tot[2], self._tot[3])

    @property
    def rolling_accuracy(self) -> np.ndarray:
        """Accuracy over the last ``window`` samples per node, ``(m,)``."""
        return _nan_div(self._buf[0].sum(axis=1), self._buf[1].sum(axis=1))

    @property
    def rolling_loss(self) -> np.ndarray:
        """Mean log loss over the last ``window`` samples per node, ``(m,)``."""
        return _nan_div(self._buf[2].sum(axis=1), self._buf[3].sum(axis=1))

    def history(self) -> dict[str, np.ndarray]:
        """Recorded points: ``position`` ``(k,)``; ``(m, k)`` curves: ``accuracy`` and ``loss``
        (cumulative: from the start to that position), ``rolling_accuracy`` and ``rolling_loss``
        (over the last ``window`` positions).

        The current position is appended as a last point when it is not a multiple of ``every``.
        """
        parts = list(self._hist)
        if self.n_ and self.n_ % self.every:
            parts.append((np.array([self.n_]),) + tuple(getattr(self, name)[:, None] for name in self.CURVES))
        if not parts:
            out = {name: np.zeros((self.m, 0)) for name in self.CURVES}
            return {"position": np.zeros(0, dtype=np.int64), **out}
        pos, *curves = zip(*parts)
        out = {"position": np.concatenate(pos).astype(np.int64)}
        out.update({name: np.concatenate(c, axis=1) for name, c in zip(self.CURVES, curves)})
        return out


def _row(a):
    """A ``(B,)`` sequence (or a scalar) as a ``(1, B)`` array; None stays None."""
    return None if a is None else np.asarray(a).reshape(1, -1)


class _OneNode:
    """What the one-node trackers share: a bank of one, its checkpoint state, counts and history."""

    _bank: PrequentialBank

    def get_state(self) -> tuple[dict, dict]:
        """``(arrays, meta)`` for a checkpoint (see :meth:`PrequentialBank.get_state`)."""
        return self._bank.get_state()

    def set_state(self, arrays: dict, meta: dict) -> bool:
        """Load what :meth:`get_state` returned; False (nothing changed) when the window differs."""
        return self._bank.set_state(arrays, meta)

    @property
    def n(self) -> int:
        """Samples seen."""
        return self._bank.n_

    @property
    def n_scored(self) -> int:
        """Samples with a prediction."""
        return int(self._bank.n_scored_[0])

    def _one(self, name: str) -> float:
        return float(getattr(self._bank, name)[0])

    def history(self) -> dict[str, np.ndarray]:
        """Recorded points as ``(k,)`` arrays: ``position`` and the bank's curves (see
        :meth:`PrequentialBank.history`)."""
        h = self._bank.history()
        return {k: (v if v.ndim == 1 else v[0]) for k, v in h.items()}


class Prequential(_OneNode):
    """Prequential accuracy and log loss of one node (a :class:`PrequentialBank` of one).

    Parameters
    ----------
    window
        Length of the rolling window, in samples.
    every
        Record a history point every ``every`` samples.
    eps
        Probabilities are clipped to ``[eps, 1 - eps]`` before the log.

    Examples
    --------
    >>> p = Prequential(window=2, every=2)
    >>> p.update_many(["a", "b", "a"], ["a", "a", None], [0.9, 0.2, 0.5])
    >>> p.n, p.n_scored, p.accuracy, p.rolling_accuracy
    (3, 2, 0.5, 0.0)
    >>> round(p.loss, 4)  # mean of -log(0.9) and -log(0.2)
    0.8574
    """

    def __init__(self, window: int = 1000, every: int = 100, eps: float = 1e-15):
        self.window = window
        self.every = every
        self.eps = eps
        self._bank = PrequentialBank(1, window, every, eps)

    def clone(self) -> "Prequential":
        """A fresh tracker with the same settings."""
        return type(self)(self.window, self.every, self.eps)

    def get_state(self) -> tuple[dict, dict]:
        """``(arrays, meta)`` for a checkpoint (see :meth:`PrequentialBank.get_state`).

        >>> p = Prequential(window=2)
        >>> p.update_many([1, 0, 1], [1, 1, 1])
        >>> q = Prequential(window=2)
        >>> q.set_state(*p.get_state())
        True
        >>> q.n, q.accuracy, q.rolling_accuracy
        (3, 0.6666666666666666, 0.5)
        """
        return super().get_state()

    def update(self, correct, loss=None, valid=None) -> None:
        """Add ``(B,)`` samples: whether each was right, its loss (NaN = unknown) and whether it was predicted."""
        self._bank.update(_row(correct), _row(loss), _row(valid))

    def update_many(self, y_true, y_pred, proba_of_true=None) -> None:
        """Add ``(B,)`` true labels, predicted labels (``None`` = no prediction) and the probabilities given to the true labels."""
        self._bank.update_many(_row(y_true), _row(y_pred), _row(proba_of_true))

    def update_one(self, y_true, y_pred, proba_of_true=None) -> None:
        """Add one sample."""
        self.update_many([y_true], [y_pred], None if proba_of_true is None else [proba_of_true])

    @property
    def accuracy(self) -> float:
        """Cumulative accuracy (NaN before any prediction)."""
        return self._one("accuracy")

    @property
    def loss(self) -> float:
        """Cumulative mean log loss."""
        return self._one("loss")

    @property
    def rolling_accuracy(self) -> float:
        """Accuracy over the last ``window`` samples."""
        return self._one("rolling_accuracy")

    @property
    def rolling_loss(self) -> float:
        """Mean log loss over the last ``window`` samples."""
        return self._one("rolling_loss")



def regression_errors(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    """``(absolute errors, valid)`` of predictions against float targets; ``None`` or a non-finite
    prediction (or target) is not valid and gets error 0.

    >>> regression_errors([1.0, 2.0, 3.0], [1.5, None, 1.0])
    (array([0.5, 0. , 2. ]), array([ True, False,  True]))
    """
    t = np.asarray(y_true)
    p = np.asarray(y_pred)
    if p.dtype == object or t.dtype == object:
        valid = _valid_predictions(p) & _valid_predictions(t)
        p = np.where(valid, p, 0.0).astype(np.float64)
        t = np.where(valid, t, 0.0).astype(np.float64)
    else:
        p, t = p.astype(np.float64), t.astype(np.float64)
        valid = np.ones(p.shape, dtype=bool)
    with np.errstate(invalid="ignore"):
        err = np.abs(p - t)
    valid &= np.isfinite(err)
    return np.where(valid, err, 0.0), valid


class RegressionPrequentialBank(PrequentialBank):
    """Prequential MAE and RMSE of ``m`` regression nodes, cumulative and over a rolling window.

    The same bank as :class:`PrequentialBank`: the absolute error takes the place of "correct"
    and the squared error that of the loss, so ``accuracy`` and ``loss`` there read as MAE and MSE
    here. :meth:`history` gives ``mae``, ``rmse``, ``rolling_mae`` and ``rolling_rmse`` curves.

    Examples
    --------
    >>> import numpy as np
    >>> bank = RegressionPrequentialBank(m=2, window=2, every=2)
    >>> bank.update_many([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], [[2.0, 2.0, 0.0], [1.0, None, 1.0]])
    >>> bank.mae.round(3), bank.rmse.round(3), bank.rolling_mae
    (array([1.333, 1.   ]), array([1.826, 1.   ]), array([1.5, 1. ]))
    >>> bank.n_scored_.tolist()
    [3, 2]
    >>> h = bank.history()
    >>> h["position"].tolist(), h["rolling_rmse"].round(3).tolist()
    ([2, 3], [[0.707, 2.121], [1.0, 1.0]])
    """

    CURVES = ("mae", "rmse", "rolling_mae", "rolling_rmse")

    def get_state(self) -> tuple[dict, dict]:
        """As :meth:`PrequentialBank.get_state`, the error sums kept as floats (not counts)."""
        arrays, meta = super().get_state()
        for name, row in self._STATE.items():
            arrays[name] = self._tot[row].copy()
        return arrays, meta

    def update_errors(self, abs_error, valid=None) -> None:
        """Add ``(m, B)`` absolute errors (``valid`` False where no prediction was made)."""
        e = np.asarray(abs_error, dtype=np.float64)
        if valid is not None:
            valid = np.asarray(valid, dtype=bool)
            e = np.where(valid, e, 0.0)
        self._add(e, e * e, valid)

    def update_many(self, y_true, y_pred) -> None:
        """Add ``(m, B)`` true targets and predictions (``None`` = no prediction)."""
        err, valid = regression_errors(y_true, y_pred)
        self.update_errors(err, valid)

    def _record(self, new: np.ndarray, n0: int, ks: np.ndarray) -> None:
        super()._record(new, n0, ks)
        pos, mae, mse, rmae, rmse = self._hist[-1]
        self._hist[-1] = (pos, mae, np.sqrt(mse), rmae, np.sqrt(rmse))

    @property
    def mae(self) -> np.ndarray:
        """Cumulative mean absolute error per node, ``(m,)`` (NaN before any prediction)."""
        return self.accuracy

    @property
    def rmse(self) -> np.ndarray:
        """Cumulative root mean squared error per node, ``(m,)``."""
        return np.sqrt(self.loss)

    @property
    def rolling_mae(self) -> np.ndarray:
        """MAE over the last ``window`` samples per node, ``(m,)``."""
        return self.rolling_accuracy

    @property
    def rolling_rmse(self) -> np.ndarray:
        """RMSE over the last ``window`` samples per node, ``(m,)``."""
        return np.sqrt(self.rolling_loss)


class RegressionPrequential(_OneNode):
    """Prequential MAE and RMSE of one regression node (a :class:`RegressionPrequentialBank` of one).

    Examples
    --------
    >>> p = RegressionPrequential(window=2, every=2)
    >>> p.update_many([10.0, 20.0, 30.0], [12.0, None, 27.0])
    >>> p.n, p.n_scored, p.mae, round(p.rmse, 3), p.rolling_mae
    (3, 2, 2.5, 2.55, 3.0)
    """

    def __init__(self, window: int = 1000, every: int = 100):
        self.window = window
        self.every = every
        self._bank = RegressionPrequentialBank(1, window, every)

    def clone(self) -> "RegressionPrequential":
        """A fresh tracker with the same settings."""
        return type(self)(self.window, self.every)

    def update_errors(self, abs_error, valid=None) -> None:
        """Add ``(B,)`` absolute errors (``valid`` False where no prediction was made)."""
        self._bank.update_errors(_row(abs_error), _row(valid))

    def update_many(self, y_true, y_pred) -> None:
        """Add ``(B,)`` true targets and predictions (``None`` = no prediction)."""
        self._bank.update_many(_row(y_true), _row(y_pred))

    def update_one(self, y_true, y_pred) -> None:
        """Add one sample."""
        self.update_many([y_true], [y_pred])

    @property
    def mae(self) -> float:
        """Cumulative mean absolute error (NaN before any prediction)."""
        return self._one("mae")

    @property
    def rmse(self) -> float:
        """Cumulative root mean squared error."""
        return self._one("rmse")

    @property
    def rolling_mae(self) -> float:
        """MAE over the last ``window`` samples."""
        return self._one("rolling_mae")

    @property
    def rolling_rmse(self) -> float:
        """RMSE over the last ``window`` samples."""
        return self._one("rolling_rmse")

