"""When the next record of a replay is due: as fast as possible, a fixed rate, or event time sped up."""

from __future__ import annotations

import math
import threading
import time

from streamlearn.errors import ConfigError

__all__ = ["Pacer"]


class Pacer:
    """Sleep until each record is due.

    Parameters
    ----------
    rate
        Records per second (all nodes together); None: no fixed rate.
    speedup
        Replay event time this many times faster than it happened (the record's
        ``ts``); 1: real time. A record without a time, or earlier than one
        already sent, is due at once. Excludes ``rate``.
    max_gap
        Longest wait between two records, in seconds of replay (None: no limit),
        so a pause of days in the data does not stall the replay.
    stop_event
        Set it to cut a wait short.
    clock, sleep
        Monotonic seconds and a waiting function (tests pass fakes).

    Examples
    --------
    >>> t = [0.0]
    >>> pacer = Pacer(speedup=60, clock=lambda: t[0], sleep=lambda s: t.__setitem__(0, t[0] + s))
    >>> for ts in (1000.0, 1060.0, 1180.0):  # one and two minutes of data
    ...     _ = pacer.wait(ts)
    >>> t[0]  # three seconds at 60x
    3.0
    """

    def __init__(self, rate: float | None = None, speedup: float | None = None, *, max_gap: float | None = None,
                 stop_event: threading.Event | None = None, clock=time.monotonic, sleep=None):
        for name, value in (("rate", rate), ("speedup", speedup), ("max_gap", max_gap)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                      or not math.isfinite(value) or value <= 0):
                raise ConfigError(f"{name} must be a finite number > 0, got {value!r}")
        if rate is not None and speedup is not None:
            raise ConfigError("choose a fixed rate or a speed-up of the time field, not both")
        self.rate = rate
        self.speedup = speedup
        self.max_gap = max_gap
        self.stop_event = stop_event or threading.Event()
        self._clock = clock
        self._sleep = sleep or self.stop_event.wait
        self._due: float | None = None  # when the previous record was due (monotonic)
        self._last_ts: float | None = None

    @property
    def paced(self) -> bool:
        return self.rate is not None or self.speedup is not None

    def wait(self, ts: float | None = None) -> bool:
        """Wait until the next record (event time ``ts``) is due; False if stopped meanwhile."""
        if not self.paced:
            return not self.stop_event.is_set()
        now = self._clock()
        if self._due is None:
            self._due, self._last_ts = now, ts
            return not self.stop_event.is_set()
        if self.rate is not None:
            gap = 1.0 / self.rate
        elif ts is None or self._last_ts is None or ts <= self._last_ts:
            gap = 0.0
        else:
            gap = (ts - self._last_ts) / self.speedup
        if ts is not None and (self._last_ts is None or ts > self._last_ts):
            self._last_ts = ts
        if self.max_gap is not None:
            gap = min(gap, self.max_gap)
        # Schedule from the previous due time, not from now: no drift; but never run ahead of a late start.
        self._due = max(self._due + gap, now - 1.0)
        delay = self._due - now
        if delay > 0:
            self._sleep(delay)
        return not self.stop_event.is_set()
