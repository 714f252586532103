"""Drift detection on a node's 0/1 error stream with river's detectors, chosen by name.

river's detectors take one value at a time; :class:`DriftMonitor` feeds them a ``(B,)`` error
vector and returns the positions (0-based sample index in the node's stream) where they fired.
"""

from __future__ import annotations

import numpy as np
from river import drift
from river.drift import binary

from streamlearn.errors import ConfigError

__all__ = ["DETECTORS", "make_detector", "DriftMonitor", "DriftMonitorBank"]

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

    Attributes
    ----------
    detections_ : list[int]
        Positions (0-based sample index in the stream) at which the detector fired.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> errors = np.r_[rng.random(1000) < 0.1, rng.random(1000) < 0.6]
    >>> mon = DriftMonitor("adwin")
    >>> found = mon.update_many(errors)
    >>> len(found) >= 1 and 1000 <= found[0] < 1100
    True
    """

    def __init__(self, detector="adwin", params: dict | None = None):
        self.detector = detector
        self.params = dict(params or {})
        self.detector_ = make_detector(detector, **self.params)
        self.n_ = 0
        self.detections_: list[int] = []

    def clone(self) -> "DriftMonitor":
        """A fresh monitor with the same settings."""
        return type(self)(self.detector, self.params)

    def update(self, error: float) -> bool:
        """Add one error value; True when the detector fires on it."""
        return bool(self.update_many([error]))

    def update_many(self, errors, valid=None) -> list[int]:
        """Add a ``(B,)`` error vector; return the positions of new detections.

        Samples with ``valid`` False (no prediction) advance the position but are not fed.
        """
        e = np.asarray(errors, dtype=np.float64).ravel()
        fed = range(e.size) if valid is None else np.flatnonzero(np.asarray(valid, dtype=bool).ravel()).tolist()
        values = e.tolist()
        det, found, n0 = self.detector_, [], self.n_
        for i in fed:
            det.update(values[i])
            if det.drift_detected:
                found.append(n0 + i)
        self.n_ = n0 + e.size
        self.detections_.extend(found)
        return found


class DriftMonitorBank:
    """One :class:`DriftMonitor` per node, updated with ``(m, B)`` error matrices.

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

    def __init__(self, m: int, detector="adwin", params: dict | None = None):
        if int(m) != m or m < 1:
            raise ConfigError(f"m must be a positive integer, got {m!r}")
        self.m = int(m)
        self.detector = detector
        self.params = dict(params or {})
        self.monitors = [DriftMonitor(detector, self.params) for _ in range(self.m)]

    def clone(self) -> "DriftMonitorBank":
        """A fresh bank with the same settings."""
        return type(self)(self.m, self.detector, self.params)

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
