"""ADWIN over a whole error array in one compiled call: river's ``drift.ADWIN``, detection for detection.

A drift monitor feeds its detector every error of a stream. Through river's ADWIN that is a Python call
and an attribute read per sample (about 0.7 µs here), which is most of a node's learning core when
ADWIN watches it and most of ``simulate --compare``'s drift scoring. :class:`CompiledADWIN` keeps the
same state in numpy arrays and runs :func:`_feed` (numba) over all the values at once.

The algorithm is ADWIN2 (Bifet and Gavaldà, "Learning from time-changing data with adaptive
windowing", SDM 2007): the window is kept as exponential histograms, row ``i`` holding up to
``max_buckets + 1`` buckets of ``2**i`` values (their sum and the sum of squared deviations); every
``clock`` values, once the window is longer than ``grace_period``, every split of the window into an
older and a newer part (each at least ``min_window_length`` long) is tested, and while one shows
different means the oldest bucket is dropped. The operations run in the order river's implementation
runs them, so the float64 results and therefore the detections are river's
(tests/evaluation/test_adwin.py feeds both the same random streams). As with river's detector, a
detection starts a fresh window at the next value. One difference: with ``max_buckets=1`` a row can be left
empty, and when the window then shrinks to it river 0.26's ADWIN panics (a Rust slice error, raised as
``PanicException``, which a monitor would pass on); here the oldest bucket that exists is dropped instead.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> errors = np.r_[rng.random(2000) < 0.1, rng.random(2000) < 0.5].astype(float)
>>> CompiledADWIN().update_many(errors).tolist()
[2047]

river's ADWIN, value by value, fires at the same place:

>>> from river import drift
>>> adwin, fired = drift.ADWIN(), []
>>> for i, e in enumerate(errors.tolist()):
...     adwin.update(e)
...     if adwin.drift_detected:
...         fired.append(i)
>>> fired
[2047]
"""

from __future__ import annotations

import math

import numpy as np

from streamlearn.compiled import AVAILABLE
from streamlearn.compiled import jit as _jit
from streamlearn.errors import ConfigError

__all__ = ["AVAILABLE", "CompiledADWIN", "compiled_adwin_for", "warm_up"]

_ROWS = 64  # rows of buckets: row i holds buckets of 2**i values, so a window of up to 2**64 values
# scalar state, as one float64 array: window sum, sum of squared deviations, width, values since the last
# reset (river's tick), rows in use, whether the last value was a detection (the next one starts afresh)
_TOTAL, _VAR, _WIDTH, _TICK, _NROWS, _FIRED = range(6)


@_jit(error_model="numpy")
def _merge_full_rows(tot, var, cnt, nrows, max_buckets):
    """Where row 0 overflowed: its two oldest buckets become one of the next row, upwards while rows are full.
    Returns the rows in use."""
    row = 0
    while cnt[row] == max_buckets + 1:
        size = float(1 << row)
        t0, t1, v0, v1 = tot[row, 0], tot[row, 1], var[row, 0], var[row, 1]
        mu0, mu1 = t0 / size, t1 / size
        merged_t = t0 + t1
        merged_v = v0 + v1 + size * 0.5 * (mu0 - mu1) * (mu0 - mu1)
        if row + 1 >= nrows:
            nrows += 1
            cnt[row + 1] = 0
        tot[row + 1, cnt[row + 1]] = merged_t
        var[row + 1, cnt[row + 1]] = merged_v
        cnt[row + 1] += 1
        _drop_oldest(tot, var, cnt, row, 2)
        if cnt[row + 1] <= max_buckets:
            break
        row += 1
    return nrows


@_jit(error_model="numpy")
def _drop_oldest(tot, var, cnt, row, k):
    """Remove the ``k`` oldest buckets of ``row`` (the others move down; freed slots are zeroed)."""
    n = cnt[row]
    for j in range(n - k):
        tot[row, j] = tot[row, j + k]
        var[row, j] = var[row, j + k]
    for j in range(n - k, n):
        tot[row, j] = 0.0
        var[row, j] = 0.0
    cnt[row] = n - k


@_jit(error_model="numpy")
def _cut(width, variance, n0, n1, mean_gap, delta, min_len):
    """The test of ADWIN2: do the two parts' means differ by more than epsilon_cut?"""
    delta_prime = math.log(2.0 * math.log(width) / delta)
    m_recip = 1.0 / (n0 - min_len + 1.0) + 1.0 / (n1 - min_len + 1.0)
    epsilon = math.sqrt(2.0 * m_recip * (variance / width) * delta_prime) + 2.0 / 3.0 * delta_prime * m_recip
    return abs(mean_gap) > epsilon


@_jit(error_model="numpy")
def _feed(tot, var, cnt, s, values, delta, clock, max_buckets, min_len, grace, hits):
    """Feed ``values`` in order; the positions of the detections go to ``hits``; returns how many.

    The scalar state lives in locals here (written back to ``s`` at the end): per value, a new bucket of
    one in row 0 and the window's statistics updated; every ``clock`` values, while a split of the window
    shows a change, its oldest bucket dropped."""
    total, variance, width = s[_TOTAL], s[_VAR], s[_WIDTH]
    tick, nrows, fired = int(s[_TICK]), int(s[_NROWS]), s[_FIRED] != 0.0
    found = 0
    for i in range(values.shape[0]):
        if fired:  # a detection last time: a fresh window from this value on (river resets its detector)
            for r in range(nrows):
                for j in range(cnt[r]):
                    tot[r, j] = 0.0
                    var[r, j] = 0.0
                cnt[r] = 0
            total = variance = width = 0.0
            tick, nrows, fired = 0, 1, False
        value = values[i]
        tot[0, cnt[0]] = value
        var[0, cnt[0]] = 0.0
        cnt[0] += 1
        width += 1.0
        inc = 0.0
        if width > 1.0:
            d = value - total / (width - 1.0)
            inc = (width - 1.0) * d * d / width
        variance += inc
        total += value
        if cnt[0] == max_buckets + 1:
            nrows = _merge_full_rows(tot, var, cnt, nrows, max_buckets)
        tick += 1
        if tick % clock != 0 or not width > grace:
            continue
        again = True
        while again:
            again = False
            n0, n1, u0, u1 = 0.0, width, 0.0, total
            done = False
            row = nrows - 1
            while row >= 0 and not done:  # oldest buckets first: the top row, then down to row 0
                size = float(1 << row)
                n = cnt[row]
                for k in range(n):
                    n0 += size
                    n1 -= size
                    t = tot[row, k]
                    u0 += t
                    u1 -= t
                    if row == 0 and k == n - 1:  # the newest bucket: no split after it
                        done = True
                        break
                    if n1 >= min_len and n0 >= min_len and _cut(width, variance, n0, n1, u0 / n0 - u1 / n1, delta,
                                                                  min_len):
                        again = True
                        fired = True
                        if width > 0.0:  # drop the oldest bucket (the first of the top row)
                            while nrows > 1 and cnt[nrows - 1] == 0:  # (river panics here: see below)
                                nrows -= 1
                            last = nrows - 1
                            big = float(1 << last)
                            u, v = tot[last, 0], var[last, 0]
                            mu = u / big
                            width -= big
                            total -= u
                            mu_window = total / width
                            variance -= v + big * width * (mu - mu_window) * (mu - mu_window) / (big + width)
                            _drop_oldest(tot, var, cnt, last, 1)
                            if cnt[last] == 0:
                                nrows -= 1
                            done = True
                            break
                row -= 1
        if fired:
            hits[found] = i
            found += 1
    s[_TOTAL], s[_VAR], s[_WIDTH] = total, variance, width
    s[_TICK], s[_NROWS], s[_FIRED] = float(tick), float(nrows), 1.0 if fired else 0.0
    return found


def _takes(delta, clock, max_buckets) -> bool:
    """Parameters the compiled code can run with (a step every ``clock`` values, rows of two buckets or more)."""
    return 0.0 < delta < 1.0 and clock >= 1 and max_buckets >= 1


class CompiledADWIN:
    """River's ``drift.ADWIN`` (same parameters, same defaults, same detections) fed a whole array per call.

    Parameters
    ----------
    delta, clock, max_buckets, min_window_length, grace_period
        As river's ``drift.ADWIN``.
    """

    def __init__(self, delta: float = 0.002, clock: int = 32, max_buckets: int = 5, min_window_length: int = 5,
                 grace_period: int = 10):
        self.delta, self.clock, self.max_buckets = float(delta), int(clock), int(max_buckets)
        self.min_window_length, self.grace_period = int(min_window_length), int(grace_period)
        if not _takes(self.delta, self.clock, self.max_buckets):
            raise ConfigError(f"CompiledADWIN: need 0 < delta < 1, clock >= 1 and max_buckets >= 1, got delta "
                              f"{delta!r}, clock {clock!r}, max_buckets {max_buckets!r}")
        self._tot = np.zeros((_ROWS, self.max_buckets + 1))
        self._var = np.zeros((_ROWS, self.max_buckets + 1))
        self._cnt = np.zeros(_ROWS, dtype=np.int64)
        self._s = np.zeros(6)
        self._s[_NROWS] = 1.0

    @property
    def width(self) -> int:
        """Values in the window (river's ``width``)."""
        return int(self._s[_WIDTH])

    @property
    def estimation(self) -> float:
        """The window's mean (river's ``estimation``)."""
        return 0.0 if self._s[_WIDTH] == 0 else float(self._s[_TOTAL] / self._s[_WIDTH])

    def update_many(self, values) -> np.ndarray:
        """Feed ``values`` in order; the positions (in ``values``) where the detector fired."""
        v = np.ascontiguousarray(values, dtype=np.float64).ravel()
        hits = np.empty(v.size, dtype=np.int64)
        n = _feed(self._tot, self._var, self._cnt, self._s, v, self.delta, self.clock, self.max_buckets,
                  float(self.min_window_length), float(self.grace_period), hits)
        return hits[:n]


def compiled_adwin_for(detector) -> CompiledADWIN | None:
    """A :class:`CompiledADWIN` doing what ``detector`` (a river detector) does: for river's ``drift.ADWIN``
    itself, with its parameters; None for any other detector (a subclass too), or without numba. The first in
    a process loads the compiled code (:func:`warm_up`)."""
    if not AVAILABLE:
        return None
    from river import drift

    if type(detector) is not drift.ADWIN or not _takes(detector.delta, detector.clock, detector.max_buckets):
        return None  # (parameters it cannot take: river's own detector, as it is)
    warm_up()
    return CompiledADWIN(detector.delta, detector.clock, detector.max_buckets, detector.min_window_length,
                         detector.grace_period)


_warm = False


def warm_up() -> None:
    """Compile :func:`_feed` now, or load it from numba's cache (a quarter of a second the first time in a
    process): when a detector is made (a node's start), not at its first values."""
    global _warm
    if AVAILABLE and not _warm:
        CompiledADWIN().update_many(np.zeros(1))
        _warm = True
