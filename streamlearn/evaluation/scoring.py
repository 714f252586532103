"""Scoring drift detections against the injected ground truth: delays, misses, false alarms.

A true drift at position ``p`` (first sample of the new concept) owns the detections ``d`` with
``p <= d <= p + max_delay`` that come before the next drift. Its first one is its detection (delay
``d - p``); further ones in its window are counted as ``redundant``. Detections owned by no drift
are false alarms. A drift with no detection in its window is missed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from streamlearn.errors import ConfigError

__all__ = ["DetectionScore", "score_detections", "split_detections"]


@dataclass(frozen=True)
class DetectionScore:
    """How well detections matched the true drifts.

    Attributes
    ----------
    events
        Positions of the true drifts, sorted.
    delays
        Per true drift, the delay of its first detection, or ``None`` if it was missed.
    detected, missed
        Number of true drifts detected / missed.
    false_alarms
        Detections attributed to no drift.
    redundant
        Extra detections inside a drift's window, after its first.
    n_detections
        All detections scored.
    mean_delay
        Mean delay of the detected drifts (NaN when none was detected).
    samples
        Samples the detections were looked for in (all nodes together), when given.
    false_alarm_rate
        False alarms per 10,000 samples (per node, with ``samples`` summed over nodes); None
        without ``samples``.
    """

    events: tuple[int, ...]
    delays: tuple[int | None, ...]
    detected: int
    missed: int
    false_alarms: int
    redundant: int
    n_detections: int
    max_delay: int
    mean_delay: float = field(default=math.nan)
    samples: int | None = None

    @property
    def false_alarm_rate(self) -> float | None:
        """False alarms per 10,000 samples; None without ``samples``."""
        from streamlearn.evaluation.detectors import false_alarm_rate

        return None if self.samples is None else false_alarm_rate(self.false_alarms, self.samples)

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (NaN becomes ``None``)."""
        return {
            "events": list(self.events),
            "delays": list(self.delays),
            "detected": self.detected,
            "missed": self.missed,
            "false_alarms": self.false_alarms,
            "redundant": self.redundant,
            "n_detections": self.n_detections,
            "max_delay": self.max_delay,
            "mean_delay": None if math.isnan(self.mean_delay) else self.mean_delay,
            "samples": self.samples,
            "false_alarms_per_10k": self.false_alarm_rate,
        }


def _position(event) -> int:
    """Position of a drift given as an int, an object with ``.position``, or a dict with ``"position"``."""
    if isinstance(event, dict):
        return int(event["position"])
    return int(getattr(event, "position", event))


def score_detections(detections, events, max_delay: int, samples: int | None = None) -> DetectionScore:
    """Match detections to true drifts (see the module docstring for the rules).

    Parameters
    ----------
    detections
        Detection positions (0-based sample indices).
    events
        True drifts: ints, ``DriftEvent``-like objects with ``.position``, or dicts with ``"position"``.
    max_delay
        Largest delay (in samples) at which a detection still counts for a drift.
    samples
        Length of the stream the detections come from: gives ``false_alarm_rate`` (per 10,000).

    Examples
    --------
    >>> s = score_detections([50, 130, 135, 400], events=[100, 300, 600], max_delay=50, samples=1000)
    >>> s.delays, s.missed, s.false_alarms, s.redundant, s.mean_delay, s.false_alarm_rate
    ((30, None, None), 2, 2, 1, 30.0, 20.0)
    """
    if int(max_delay) != max_delay or max_delay < 0:
        raise ConfigError(f"max_delay must be a non-negative integer, got {max_delay!r}")
    max_delay = int(max_delay)
    dets = sorted(int(d) for d in detections)
    pos = sorted(_position(e) for e in events)
    delays: list[int | None] = []
    owned = 0
    redundant = 0
    j = 0  # index of the first detection not yet looked at
    for k, p in enumerate(pos):
        end = p + max_delay
        if k + 1 < len(pos):
            end = min(end, pos[k + 1] - 1)
        while j < len(dets) and dets[j] < p:
            j += 1
        hits = 0
        while j < len(dets) and dets[j] <= end:
            if hits == 0:
                delays.append(dets[j] - p)
            hits += 1
            j += 1
        if hits == 0:
            delays.append(None)
        owned += hits
        redundant += max(hits - 1, 0)
    found = [d for d in delays if d is not None]
    return DetectionScore(
        events=tuple(pos),
        delays=tuple(delays),
        detected=len(found),
        missed=len(pos) - len(found),
        false_alarms=len(dets) - owned,
        redundant=redundant,
        n_detections=len(dets),
        max_delay=max_delay,
        mean_delay=sum(found) / len(found) if found else math.nan,
        samples=None if samples is None else int(samples),
    )


def split_detections(detections, events, max_delay: int) -> tuple[list[int], list[int]]:
    """Detections that match a true drift and false alarms, by :func:`score_detections`' rules.

    A detection matches when it lies in a drift's window (``p <= d <= p + max_delay``, before the
    next drift); redundant detections in a window match too. For drawing the two apart.

    Examples
    --------
    >>> split_detections([50, 130, 135, 400], events=[100, 300, 600], max_delay=50)
    ([130, 135], [50, 400])
    """
    if int(max_delay) != max_delay or max_delay < 0:
        raise ConfigError(f"max_delay must be a non-negative integer, got {max_delay!r}")
    pos = sorted(_position(e) for e in events)
    ends = [min(p + int(max_delay), pos[k + 1] - 1) if k + 1 < len(pos) else p + int(max_delay)
            for k, p in enumerate(pos)]
    true, false = [], []
    for d in sorted(int(d) for d in detections):
        (true if any(p <= d <= e for p, e in zip(pos, ends)) else false).append(d)
    return true, false
