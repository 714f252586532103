"""Step sizes that settle while a stream is stable and wake up when it drifts.

The schedule, in learner steps (mini-batch updates) ``t``, restarted at step ``t_reset``::

    eta_t = eta_0 / sqrt(1 + (t - t_reset) / tau)

:func:`decayed_lr` is the formula (floats, numpy arrays, torch tensors alike), the one place the
learner (:class:`~streamlearn.learners.TorchLearner`, ``lr_decay=tau``), the vectorised
simulator and the node service take it from. A restart is for a *rise* of the error only:
river's detectors (ADWIN above all) also fire when the error drops while a model learns, and
that is no reason to take large steps again. :func:`error_rose` is that one-sided rule, on the
node's recent 0/1 errors; :class:`RiseFilter` keeps those errors for a stream seen one
mini-batch at a time. The rule is applied in one place, the one-sided
:class:`~streamlearn.evaluation.DriftMonitor` (the default): every reported detection is a rise,
and the node service and the simulator restart the schedule at a reported detection.
"""

from __future__ import annotations

import numbers

import numpy as np

from streamlearn.errors import ConfigError

__all__ = ["RISE_WINDOW", "RISE_HISTORY", "RISE_Z", "RISE_SPAN", "check_lr_decay", "decayed_lr", "error_rose",
           "RiseFilter"]

#: :func:`error_rose`: the last ``RISE_WINDOW`` errors up to a detection are compared with the
#: ``RISE_HISTORY * RISE_WINDOW`` before them, and must exceed them by ``RISE_Z`` standard errors.
RISE_WINDOW = 200
RISE_HISTORY = 4
RISE_Z = 1.0
#: The most recent errors :func:`error_rose` looks at (with the defaults).
RISE_SPAN = (1 + RISE_HISTORY) * RISE_WINDOW


def check_lr_decay(tau, name: str = "lr_decay") -> None:
    """Raise :class:`~streamlearn.errors.ConfigError` naming ``name`` and the value unless
    ``tau`` is None (constant step size) or a finite number > 0 (steps).

    >>> check_lr_decay(0)
    Traceback (most recent call last):
    ...
    streamlearn.errors.ConfigError: lr_decay: need a finite number > 0 (tau, in steps) or None, got 0
    """
    if tau is None:
        return
    if not isinstance(tau, numbers.Real) or isinstance(tau, bool) or not np.isfinite(tau) or tau <= 0:
        raise ConfigError(f"{name}: need a finite number > 0 (tau, in steps) or None, got {tau!r}")


def decayed_lr(lr0, t, t_reset, tau):
    """The step size of step ``t``: ``lr0 / sqrt(1 + (t - t_reset) / tau)``.

    Parameters
    ----------
    lr0
        The step size right after a (re)start, ``eta_0``.
    t
        The step: how many updates the learner made before this one (0 for the first).
    t_reset
        The step of the last restart (0 at the start); ``t >= t_reset``.
    tau
        Steps over which the step size falls to ``lr0 / sqrt(2)``: after ``k * tau`` steps it is
        ``lr0 / sqrt(1 + k)``. None: a constant step size, ``lr0``.

    Any argument may be a Python number, a numpy array or a torch tensor (broadcast as usual):
    the simulator takes one factor per node with ``lr0=1``.

    Returns
    -------
    float, numpy.ndarray or torch.Tensor
        ``lr0`` times ``(1 + (t - t_reset) / tau) ** -0.5``.

    Examples
    --------
    >>> decayed_lr(0.5, 0, 0, 100)
    0.5
    >>> round(decayed_lr(0.5, 300, 0, 100), 6)  # 0.5 / sqrt(4)
    0.25
    >>> decayed_lr(0.5, 300, 300, 100)  # restarted at step 300
    0.5
    >>> decayed_lr(0.5, 300, 0, None)
    0.5
    >>> import numpy as np, torch
    >>> rng = np.random.default_rng(0)
    >>> t_reset = rng.integers(0, 50, size=4)  # one restart step per node
    >>> f = decayed_lr(1.0, 50, t_reset, 10.0)
    >>> t_reset.tolist(), np.round(f, 4).tolist()
    ([42, 31, 25, 13], [0.7454, 0.5872, 0.5345, 0.4613])
    >>> ft = decayed_lr(1.0, torch.tensor(50), torch.from_numpy(t_reset), 10.0)  # float32, torch's default
    >>> ft.dtype, bool(np.allclose(ft.numpy(), f))
    (torch.float32, True)
    """
    if tau is None:
        return lr0
    return lr0 / (1 + (t - t_reset) / tau) ** 0.5


def error_rose(errors, window: int = RISE_WINDOW, history: int = RISE_HISTORY, z: float = RISE_Z) -> bool:
    """Did the error go up? The last ``window`` of ``errors`` against the ``history * window`` before.

    The one-sided rule that turns a drift detection into a step-size restart: ``errors`` are a
    node's most recent 0/1 errors (1 = wrong), oldest first, ending with the sample at which the
    detector fired. The error rose when the mean of the last ``window`` exceeds the mean of (up to)
    ``history * window`` errors before them by more than ``z`` standard errors (a one-sided
    two-proportion test, pooled). A history shorter than ``2 * window`` is split in halves;
    fewer than 2 samples: False.

    Why these defaults (ADWIN on 16 nodes x 20 runs: MLP, nosync and periodic, SEA with label
    permutations and sudden drifts, Agrawal, Hyperplane): a detector also fires long after a fall
    of the error, when the last two windows are both low, and a plain "last 200 above the 200
    before" then calls half of those alarms a rise: 27 restarts away from any drift (264 within
    800 samples after one). The longer history before and the margin of one standard error gave
    none away from a drift, and restarted 260 of the 291 (node, drift) pairs that ADWIN detected.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> worse = np.r_[rng.random(800) < 0.2, rng.random(200) < 0.4]  # a drift
    >>> better = np.r_[rng.random(800) < 0.4, rng.random(200) < 0.2]  # a model that learns
    >>> same = rng.random(1000) < 0.3
    >>> error_rose(worse), error_rose(better), error_rose(same)
    (True, False, False)
    >>> error_rose([0, 1], window=5), error_rose([1])
    (True, False)

    Real-valued errors (absolute errors of a regression) are compared by the same rule, with the
    pooled sample variance:

    >>> error_rose(np.r_[np.abs(rng.normal(size=800)), 2 * np.abs(rng.normal(size=200))])
    True
    """
    e = np.asarray(errors, dtype=np.float64).ravel()
    h = min(int(window), e.size // 2)
    if h < 1:
        return False
    recent, before = e[-h:], e[max(0, e.size - h - int(history) * int(window)):-h]
    a, b = recent.mean(), before.mean()
    p = (a * h + b * before.size) / (h + before.size)
    var = p * (1 - p)  # pooled variance of 0/1 errors
    if var < 0 or ((recent != 0) & (recent != 1)).any() or ((before != 0) & (before != 1)).any():
        # real-valued errors (a regression's absolute errors): the pooled sample variance instead
        var = float(np.concatenate([before, recent]).var())
    return bool(a - b > z * np.sqrt(var * (1 / h + 1 / before.size)))


def _rose_at(P: np.ndarray, ends: np.ndarray, window: int, history: int, z: float) -> np.ndarray:
    """:func:`error_rose` of ``e[max(0, end - span):end]`` for every ``end`` of ``ends``, where ``P`` holds
    the prefix sums of 0/1 errors ``e`` (``P[i] = e[:i].sum()``, exact integers in float64): the means,
    pooled variance and test of error_rose in the same float operations, so the same answers."""
    span = (1 + history) * window
    size = np.minimum(span, ends)
    h = np.minimum(window, size // 2)
    hs = np.maximum(h, 1)
    start = ends - size + np.maximum(0, size - hs - history * window)
    nb = ends - hs - start  # >= 1 wherever h >= 1
    a = (P[ends] - P[ends - hs]) / hs
    b = (P[ends - hs] - P[start]) / nb
    p = (a * hs + b * nb) / (hs + nb)
    var = p * (1 - p)
    return (h >= 1) & (a - b > z * np.sqrt(var * (1 / hs + 1 / nb)))


class RiseFilter:
    """Keeps a node's last ``(1 + history) * window`` errors and says whether a detection in a batch is a rise.

    For a node that sees its stream one mini-batch at a time: feed every batch's errors with the
    indices (within the batch) where the detector fired, as :meth:`DriftMonitor.update_many
    <streamlearn.evaluation.DriftMonitor.update_many>` finds them.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> errors = np.r_[rng.random(500) < 0.2, rng.random(500) < 0.5].astype(float)
    >>> rise = RiseFilter(window=100)
    >>> [rise.update(errors[i:i + 10], [5] if i in (400, 600) else []) for i in range(0, 1000, 10)].count(True)
    1
    """

    def __init__(self, window: int = RISE_WINDOW, history: int = RISE_HISTORY, z: float = RISE_Z):
        for name, v, low in (("window", window, 1), ("history", history, 1)):
            if not isinstance(v, numbers.Integral) or isinstance(v, bool) or v < low:
                raise ConfigError(f"{name}: need an int >= {low}, got {v!r}")
        if not isinstance(z, numbers.Real) or isinstance(z, bool) or not np.isfinite(z) or z < 0:
            raise ConfigError(f"z: need a finite number >= 0, got {z!r}")
        self.window, self.history, self.z = int(window), int(history), float(z)
        self._span = (1 + self.history) * self.window
        self._recent = np.zeros(0, dtype=np.float64)

    def update(self, errors, detections=(), valid=None) -> bool:
        """Add a batch's ``(B,)`` errors; True when the error rose at one of ``detections``.

        ``detections`` are indices into this batch; samples with ``valid`` False (no prediction)
        are not errors and are left out, as the detector leaves them out.
        """
        return any(self.rises(errors, detections, valid))

    def rises(self, errors, detections=(), valid=None) -> list[bool]:
        """Add a batch's ``(B,)`` errors; per index of ``detections``, whether the error rose there.

        What :class:`~streamlearn.evaluation.DriftMonitor` (``one_sided=True``) reports by.
        """
        e = np.asarray(errors, dtype=np.float64).ravel()
        keep = None if valid is None else np.asarray(valid, dtype=bool).ravel()
        fed = e if keep is None else e[keep]
        out = []
        seen = np.concatenate([self._recent, fed])
        if len(detections):
            counts = None if keep is None else np.cumsum(keep)  # fed samples up to each index
            # where each detection's errors end in `seen`; error_rose looks at the last `span` before it
            ends = self._recent.size + (np.asarray(detections, dtype=np.int64) + 1 if counts is None
                                        else counts[np.asarray(detections, dtype=np.int64)])
            if ((seen == 0) | (seen == 1)).all():  # 0/1 errors: all at once, the same sums exactly
                out = _rose_at(np.concatenate([[0.0], np.cumsum(seen)]), ends, self.window, self.history,
                               self.z).tolist()
            else:
                out = [error_rose(seen[max(0, e - self._span):e], self.window, self.history, self.z)
                       for e in ends.tolist()]
        self._recent = seen[-self._span:]
        return out
