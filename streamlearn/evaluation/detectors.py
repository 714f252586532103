"""Drift detection on a node's 0/1 error stream with river's detectors, chosen by name.

river's detectors take one value at a time; :class:`DriftMonitor` feeds them a ``(B,)`` error
vector and returns the positions (0-based sample index in the node's stream) where they fired.

A detection means the error went *up*: river's detectors (ADWIN above all) also fire when the
error falls while a model learns, so by default (``one_sided=True``) a firing is reported only
when :func:`~streamlearn.learners.schedule.error_rose` says the error rose there; the others are
counted (``n_ignored_``), not reported. Everything that acts on or scores detections (the node
service, its step-size restarts, the simulator, ``streamlearn evaluate``) goes through this rule.

Regression: the error stream is the absolute error in standard deviations of the target seen so
far (:class:`TargetScale`), so one detector setting fits targets of any unit; only the detectors
that take real values (:data:`REAL_VALUED`) run on it.
"""

from __future__ import annotations

import numpy as np
from river import drift
from river.drift import binary

from streamlearn.errors import ConfigError
from streamlearn.evaluation.adwin import compiled_adwin_for
from streamlearn.learners.schedule import RISE_WINDOW, RiseFilter

__all__ = ["DETECTORS", "REAL_VALUED", "make_detector", "DriftMonitor", "DriftMonitorBank", "false_alarm_rate",
           "TargetScale", "check_regression_detector"]

#: False alarms are counted per this many samples (per node).
RATE_PER = 10_000
#: A firing where the error did not (yet) rise is reported later if the error rises within this many
#: samples after it: a detector that fires at the first few samples of a new concept has not seen
#: a window of them yet.
CONFIRM_WITHIN = RISE_WINDOW


def false_alarm_rate(false_alarms: int, samples: int) -> float | None:
    """False alarms per 10,000 samples per node: ``false_alarms`` over all nodes' ``samples`` (summed).

    None when no sample was seen.

    Examples
    --------
    >>> false_alarm_rate(6, 4 * 60_000)  # 6 false alarms on 4 nodes of 60,000 samples
    0.25
    """
    return None if samples <= 0 else RATE_PER * float(false_alarms) / float(samples)

#: Detector names (and aliases) -> river classes. river's FHDDM is left out: it fires when the
#: mean of its input *drops*, so on an error stream it would flag improvements.
DETECTORS = {
    "adwin": drift.ADWIN,
    "page_hinkley": drift.PageHinkley,
    "pagehinkley": drift.PageHinkley,
    "ph": drift.PageHinkley,
    "kswin": drift.KSWIN,
    "ddm": binary.DDM,
    "eddm": binary.EDDM,
    "hddm_a": binary.HDDMA,
    "hddm_w": binary.HDDMW,
}


#: Detectors that take any real value (a regression's scaled absolute errors); the others want 0/1 errors.
REAL_VALUED = ("adwin", "page_hinkley", "kswin")


def check_regression_detector(detector) -> None:
    """ConfigError when ``detector`` (a name) needs 0/1 errors, so it cannot watch a regression's errors.

    >>> check_regression_detector("adwin")
    >>> check_regression_detector("ddm")
    Traceback (most recent call last):
    ...
    streamlearn.errors.ConfigError: detector 'ddm' watches 0/1 errors; a regression's error stream is real-valued: use one of ('adwin', 'page_hinkley', 'kswin')
    """
    if not isinstance(detector, str) or detector.strip().lower() == "none":
        return
    key = detector.strip().lower().replace("-", "_")
    if DETECTORS.get(key) is not None and DETECTORS[key] not in {DETECTORS[k] for k in REAL_VALUED}:
        raise ConfigError(f"detector {detector!r} watches 0/1 errors; a regression's error stream is real-valued: "
                          f"use one of {REAL_VALUED}")


class TargetScale:
    """Running standard deviation of ``m`` nodes' targets, to put a regression's errors in its units.

    ``scale(errors, y)`` divides each absolute error by the standard deviation of the targets seen
    *before* it (1 until there are two, or while they are all equal), then takes the batch's targets
    in: the error stream a detector watches is then scale-free (PM2.5 in µg/m³ or a temperature in
    °C give the same detector settings) and still rises when a target shifts.

    Examples
    --------
    >>> import numpy as np
    >>> ts = TargetScale()
    >>> ts.scale([[1.0, 1.0, 1.0, 4.0]], [[10.0, 12.0, 14.0, 20.0]]).round(3).tolist()
    [[1.0, 1.0, 1.0, 2.449]]
    """

    def __init__(self, m: int = 1):
        self.m = int(m)
        self._n = np.zeros(self.m)
        self._shift = np.full(self.m, np.nan)  # first target seen: sums of y - shift keep float64 exact
        self._s1 = np.zeros(self.m)
        self._s2 = np.zeros(self.m)

    def scale(self, errors, y, valid=None) -> np.ndarray:
        """``(m, B)`` absolute errors over the std of the targets before each; targets not ``valid`` are not taken in."""
        e = np.asarray(errors, dtype=np.float64).reshape(self.m, -1)
        t = np.asarray(y, dtype=object if valid is not None else np.float64).reshape(self.m, -1)
        v = np.ones(e.shape, dtype=bool) if valid is None else np.asarray(valid, dtype=bool).reshape(self.m, -1)
        t = np.where(v, t, 0.0).astype(np.float64)
        v &= np.isfinite(t)
        first = np.where(v.any(axis=1), t[np.arange(self.m), v.argmax(axis=1)], np.nan)
        self._shift = np.where(np.isnan(self._shift), first, self._shift)
        d = np.where(v, t - np.nan_to_num(self._shift)[:, None], 0.0)
        # sums over the targets strictly before each sample
        n = self._n[:, None] + np.cumsum(v, axis=1) - v
        s1 = self._s1[:, None] + np.cumsum(d, axis=1) - d
        s2 = self._s2[:, None] + np.cumsum(d * d, axis=1) - d * d
        with np.errstate(invalid="ignore", divide="ignore"):
            var = s2 / n - (s1 / n) ** 2
            std = np.sqrt(np.maximum(var, 0.0))
        std = np.where((n >= 2) & (std > 0), std, 1.0)
        self._n += v.sum(axis=1)
        self._s1 += d.sum(axis=1)
        self._s2 += (d * d).sum(axis=1)
        return e / std


def make_detector(detector="adwin", **params):
    """A fresh river drift detector from a name (see ``DETECTORS``) and its parameters, or a clone of an instance.

    KSWIN samples at random; it gets ``seed=0`` unless a seed is given, so runs replay.

    Examples
    --------
    >>> make_detector("page-hinkley", threshold=20.0)
    PageHinkley (
      min_instances=30
      delta=0.005
      threshold=20.
      alpha=0.9999
      mode="both"
    )
    """
    if not isinstance(detector, str):
        if not hasattr(detector, "update") or not hasattr(detector, "clone"):
            raise ConfigError(f"detector must be a name or a river drift detector, got {detector!r}")
        return detector.clone(params) if params else detector.clone()
    key = detector.strip().lower().replace("-", "_")
    if key not in DETECTORS:
        names = sorted({k for k in DETECTORS if k not in ("pagehinkley", "ph")})
        raise ConfigError(f"unknown drift detector {detector!r}; choose one of {names}")
    cls = DETECTORS[key]
    if cls is drift.KSWIN:
        params.setdefault("seed", 0)
    try:
        return cls(**params)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"bad parameters for drift detector {detector!r}: {e}") from e


class DriftMonitor:
    """Feeds one node's error stream (1 = wrong, 0 = right) to a river drift detector.

    Parameters
    ----------
    detector
        A name from ``DETECTORS`` (``"adwin"``, ``"page_hinkley"``, ``"kswin"``, ``"ddm"``, ...) or a
        river detector instance (cloned).
    params
        Parameters of the detector, by river's names.
    one_sided
        True (default): report a firing only when the error rose there (the last 200 errors above
        the up-to-800 before by more than one standard error,
        :func:`~streamlearn.learners.schedule.error_rose`); firings where it did not are counted in
        ``n_ignored_``. A firing that is no rise yet is reported at the first of the next
        ``CONFIRM_WITHIN`` (200) samples where the error has risen, if any (a detector may fire a
        few samples into a new concept). False: report every firing (the detector alone, both
        directions).

    Attributes
    ----------
    detections_ : list[int]
        Positions (0-based sample index in the stream) of the reported detections.
    ignored_ : list[int]
        Positions at which the detector fired but the error did not rise, then or within
        ``CONFIRM_WITHIN`` samples (``one_sided`` only).
    n_ignored_ : int
        ``len(ignored_)``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> errors = np.r_[rng.random(1000) < 0.1, rng.random(1000) < 0.6]
    >>> mon = DriftMonitor("adwin")
    >>> found = mon.update_many(errors)
    >>> len(found) >= 1 and 1000 <= found[0] < 1100
    True

    A model that learns: the error falls from 0.5 to 0.1. ADWIN fires, but nothing is reported.

    >>> learning = np.r_[rng.random(1000) < 0.5, rng.random(2000) < 0.1]
    >>> one, two = DriftMonitor("adwin"), DriftMonitor("adwin", one_sided=False)
    >>> one.update_many(learning), len(two.update_many(learning)) > 0, one.n_ignored_ == len(two.detections_)
    ([], True, True)
    """

    def __init__(self, detector="adwin", params: dict | None = None, one_sided: bool = True):
        self.detector = detector
        self.params = dict(params or {})
        self.one_sided = bool(one_sided)
        self.detector_ = make_detector(detector, **self.params)
        # river's ADWIN as compiled code over whole arrays (the same detections; None: river's, value by value)
        self._compiled = compiled_adwin_for(self.detector_)
        self._rise = RiseFilter() if self.one_sided else None
        self.n_ = 0
        self.detections_: list[int] = []
        self.ignored_: list[int] = []
        self._pending = 0  # samples left in which the last unconfirmed firing may still be confirmed

    @property
    def n_ignored_(self) -> int:
        """Firings not reported: the error did not rise there."""
        return len(self.ignored_)

    def clone(self) -> "DriftMonitor":
        """A fresh monitor with the same settings."""
        return type(self)(self.detector, self.params, one_sided=self.one_sided)

    def update(self, error: float) -> bool:
        """Add one error value; True when the detector fires on it."""
        return bool(self.update_many([error]))

    def update_many(self, errors, valid=None) -> list[int]:
        """Add a ``(B,)`` error vector; return the positions of new (reported) detections.

        Samples with ``valid`` False (no prediction) advance the position but are not fed.
        """
        e = np.asarray(errors, dtype=np.float64).ravel()
        at = None if valid is None else np.flatnonzero(np.asarray(valid, dtype=bool).ravel())
        fed = range(e.size) if at is None else at.tolist()
        n0 = self.n_
        if self._compiled is not None:
            hits = self._compiled.update_many(e if at is None else e[at])
            fired = (hits if at is None else at[hits]).tolist()
        else:
            values, det, fired = e.tolist(), self.detector_, []
            for i in fed:
                det.update(values[i])
                if det.drift_detected:
                    fired.append(i)
        self.n_ = n0 + e.size
        if self._rise is None:
            found = [n0 + i for i in fired]
        else:
            found = self._one_sided(e, fed, fired, valid, n0)
        self.detections_.extend(found)
        return found

    def _one_sided(self, e, fed, fired: list[int], valid, n0: int) -> list[int]:
        """The reported detections among ``fired`` (batch indices), confirming pending firings."""
        if not fired and not self._pending:  # nothing to confirm (most batches): only the errors to remember
            self._rise.rises(e, (), valid)
            return []
        at = {i: k for k, i in enumerate(fed)}  # batch index -> order among the fed samples
        # Where the rule may be asked: every firing, and the samples a pending firing may be confirmed at.
        ks = set(range(min(self._pending, len(fed))))
        for i in fired:
            ks.update(range(at[i], min(at[i] + CONFIRM_WITHIN + 1, len(fed))))
        cands = [fed[k] for k in sorted(ks)]
        rose = dict(zip(cands, self._rise.rises(e, cands, valid)))
        fired_set, found, pending = set(fired), [], self._pending
        for i in cands:
            if i in fired_set:
                if rose[i]:
                    found.append(n0 + i)
                    pending = 0
                else:
                    self.ignored_.append(n0 + i)
                    pending = CONFIRM_WITHIN
            elif pending:
                if rose[i]:  # the firing before was the start of a rise: reported now, no longer ignored
                    self.ignored_.pop()
                    found.append(n0 + i)
                    pending = 0
                else:
                    pending -= 1
        # samples after the last candidate in this batch also count down a pending firing
        if pending and cands:
            pending = max(0, pending - (len(fed) - 1 - at[cands[-1]]))
        self._pending = pending
        return found


class DriftMonitorBank:
    """One :class:`DriftMonitor` per node, updated with ``(m, B)`` error matrices.

    ``one_sided`` as in :class:`DriftMonitor` (default True: only rises of the error are reported).

    Examples
    --------
    >>> import numpy as np
    >>> bank = DriftMonitorBank(2, "page_hinkley", {"threshold": 5.0, "min_instances": 5})
    >>> errors = np.zeros((2, 40))
    >>> errors[1, 20:] = 1.0
    >>> found = bank.update(errors)
    >>> found[0], len(found[1]) > 0
    ([], True)
    """

    def __init__(self, m: int, detector="adwin", params: dict | None = None, one_sided: bool = True):
        if int(m) != m or m < 1:
            raise ConfigError(f"m must be a positive integer, got {m!r}")
        self.m = int(m)
        self.detector = detector
        self.params = dict(params or {})
        self.one_sided = bool(one_sided)
        self.monitors = [DriftMonitor(detector, self.params, one_sided=self.one_sided) for _ in range(self.m)]

    def clone(self) -> "DriftMonitorBank":
        """A fresh bank with the same settings."""
        return type(self)(self.m, self.detector, self.params, one_sided=self.one_sided)

    def update(self, errors, valid=None) -> list[list[int]]:
        """Add ``(m, B)`` errors (and optional ``(m, B)`` valid mask); return each node's new detections."""
        e = np.asarray(errors, dtype=np.float64)
        if e.ndim != 2 or e.shape[0] != self.m:
            raise ConfigError(f"errors must have shape ({self.m}, B), got {e.shape}")
        v = [None] * self.m if valid is None else np.asarray(valid, dtype=bool)
        return [mon.update_many(e[i], v[i]) for i, mon in enumerate(self.monitors)]

    @property
    def detections_(self) -> list[list[int]]:
        """Detection positions of every node."""
        return [mon.detections_ for mon in self.monitors]

    @property
    def n_ignored_(self) -> list[int]:
        """Per node, the firings not reported (the error did not rise)."""
        return [mon.n_ignored_ for mon in self.monitors]
