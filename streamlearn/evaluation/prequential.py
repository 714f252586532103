"""Prequential (test-then-train) accuracy and log loss, cumulative and over a rolling window.

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

import numpy as np

from streamlearn.errors import ConfigError

__all__ = ["PrequentialBank", "Prequential", "clipped_log_loss"]


def clipped_log_loss(proba_of_true, eps: float = 1e-15) -> np.ndarray:
    """Log loss ``-log(p)`` of the probability given to the true label, with ``p`` clipped to ``[eps, 1 - eps]``.

    NaN stays NaN (it means "no probability available").

    Examples
    --------
    >>> clipped_log_loss([0.5, 1.0, 0.0]).round(4)
    array([ 0.6931,  0.    , 34.5388])
    """
    p = np.asarray(proba_of_true, dtype=np.float64)
    return -np.log(np.clip(p, eps, 1.0 - eps))


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
        A history point (position, cumulative accuracy, rolling accuracy, rolling loss) is recorded
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
        self.n_scored_ = np.zeros(m, dtype=np.int64)
        self.n_correct_ = np.zeros(m, dtype=np.int64)
        self.n_loss_ = np.zeros(m, dtype=np.int64)
        self.loss_sum_ = np.zeros(m, dtype=np.float64)
        # Ring buffers over the last `window` positions; slot (n_ % window) is the oldest.
        # Rows: correct, valid, loss, loss-valid (loss is 0 where not valid).
        self._buf = np.zeros((4, m, w), dtype=np.float64)
        self._hist: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    def clone(self) -> "PrequentialBank":
        """A fresh tracker with the same settings."""
        return type(self)(self.m, self.window, self.every, self.eps)

    _STATE = ("n_scored_", "n_correct_", "n_loss_", "loss_sum_")

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
        for name in self._STATE:
            setattr(self, name, np.array(arrays[name], dtype=getattr(self, name).dtype))
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
        correct = np.asarray(correct, dtype=bool)
        if correct.ndim != 2 or correct.shape[0] != self.m:
            raise ConfigError(f"correct must have shape ({self.m}, B), got {correct.shape}")
        B = correct.shape[1]
        if B == 0:
            return
        v = np.ones_like(correct) if valid is None else np.asarray(valid, dtype=bool)
        if loss is None:
            lv = np.zeros_like(correct)
            lo = np.zeros(correct.shape)
        else:
            lo = np.asarray(loss, dtype=np.float64)
            lv = v & np.isfinite(lo)
            lo = np.where(lv, lo, 0.0)
        if v.shape != correct.shape or lo.shape != correct.shape:
            raise ConfigError("correct, loss and valid must have the same shape")
        new = np.stack([correct & v, v, lo, lv]).astype(np.float64)  # (4, m, B)

        n0, W = self.n_, self.window
        first = (-n0) % self.every or self.every  # k (1-based) of the first history point here
        ks = np.arange(first, B + 1, self.every)
        if ks.size:
            self._record(new, n0, ks)

        self.n_correct_ += new[0].sum(axis=1).astype(np.int64)
        self.n_scored_ += new[1].sum(axis=1).astype(np.int64)
        self.loss_sum_ += new[2].sum(axis=1)
        self.n_loss_ += new[3].sum(axis=1).astype(np.int64)
        keep = min(B, W)  # only the last `window` samples can stay in the ring
        slots = (n0 + np.arange(B - keep, B)) % W
        self._buf[:, :, slots] = new[:, :, B - keep :]
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
        acc = _nan_div(self.n_correct_[:, None] + cum[0], self.n_scored_[:, None] + cum[1])
        self._hist.append((n0 + ks, acc, _nan_div(roll[0], roll[1]), _nan_div(roll[2], roll[3])))

    # -- read-outs -----------------------------------------------------------------------------

    @property
    def n(self) -> int:
        """Samples seen per node."""
        return self.n_

    @property
    def accuracy(self) -> np.ndarray:
        """Cumulative accuracy per node, ``(m,)`` (NaN before any prediction)."""
        return _nan_div(self.n_correct_.astype(np.float64), self.n_scored_)

    @property
    def loss(self) -> np.ndarray:
        """Cumulative mean log loss per node, ``(m,)``."""
        return _nan_div(self.loss_sum_, self.n_loss_)

    @property
    def rolling_accuracy(self) -> np.ndarray:
        """Accuracy over the last ``window`` samples per node, ``(m,)``."""
        return _nan_div(self._buf[0].sum(axis=1), self._buf[1].sum(axis=1))

    @property
    def rolling_loss(self) -> np.ndarray:
        """Mean log loss over the last ``window`` samples per node, ``(m,)``."""
        return _nan_div(self._buf[2].sum(axis=1), self._buf[3].sum(axis=1))

    def history(self) -> dict[str, np.ndarray]:
        """Recorded points: ``position`` ``(k,)``; ``accuracy``, ``rolling_accuracy``, ``rolling_loss`` ``(m, k)``.

        The current position is appended as a last point when it is not a multiple of ``every``.
        """
        parts = list(self._hist)
        if self.n_ and self.n_ % self.every:
            parts.append((np.array([self.n_]), self.accuracy[:, None], self.rolling_accuracy[:, None], self.rolling_loss[:, None]))
        if not parts:
            empty = np.zeros((self.m, 0))
            return {"position": np.zeros(0, dtype=np.int64), "accuracy": empty, "rolling_accuracy": empty.copy(), "rolling_loss": empty.copy()}
        pos, acc, racc, rloss = zip(*parts)
        return {
            "position": np.concatenate(pos).astype(np.int64),
            "accuracy": np.concatenate(acc, axis=1),
            "rolling_accuracy": np.concatenate(racc, axis=1),
            "rolling_loss": np.concatenate(rloss, axis=1),
        }


class Prequential:
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
        return self._bank.get_state()

    def set_state(self, arrays: dict, meta: dict) -> bool:
        """Load what :meth:`get_state` returned; False (nothing changed) when the window differs."""
        return self._bank.set_state(arrays, meta)

    def update(self, correct, loss=None, valid=None) -> None:
        """Add ``(B,)`` samples: whether each was right, its loss (NaN = unknown) and whether it was predicted."""
        row = lambda a: None if a is None else np.atleast_1d(np.asarray(a))[None, :]  # noqa: E731
        self._bank.update(row(correct), row(loss), row(valid))

    def update_many(self, y_true, y_pred, proba_of_true=None) -> None:
        """Add ``(B,)`` true labels, predicted labels (``None`` = no prediction) and the probabilities given to the true labels."""
        row = lambda a: None if a is None else np.atleast_1d(np.asarray(a))[None, :]  # noqa: E731
        self._bank.update_many(row(y_true), row(y_pred), row(proba_of_true))

    def update_one(self, y_true, y_pred, proba_of_true=None) -> None:
        """Add one sample."""
        self.update_many([y_true], [y_pred], None if proba_of_true is None else [proba_of_true])

    @property
    def n(self) -> int:
        """Samples seen."""
        return self._bank.n_

    @property
    def n_scored(self) -> int:
        """Samples with a prediction."""
        return int(self._bank.n_scored_[0])

    @property
    def accuracy(self) -> float:
        """Cumulative accuracy (NaN before any prediction)."""
        return float(self._bank.accuracy[0])

    @property
    def loss(self) -> float:
        """Cumulative mean log loss."""
        return float(self._bank.loss[0])

    @property
    def rolling_accuracy(self) -> float:
        """Accuracy over the last ``window`` samples."""
        return float(self._bank.rolling_accuracy[0])

    @property
    def rolling_loss(self) -> float:
        """Mean log loss over the last ``window`` samples."""
        return float(self._bank.rolling_loss[0])

    def history(self) -> dict[str, np.ndarray]:
        """Recorded points as ``(k,)`` arrays: ``position``, ``accuracy``, ``rolling_accuracy``, ``rolling_loss``."""
        h = self._bank.history()
        return {k: (v if v.ndim == 1 else v[0]) for k, v in h.items()}
