"""Replay pacing: fixed rate, speed-up of event time, gaps capped; never asserts on wall-clock time."""

from __future__ import annotations

import threading

import pytest

from streamlearn.connectors.pacing import Pacer
from streamlearn.errors import ConfigError


def fake_clock():
    t = [0.0]
    return t, (lambda: t[0]), (lambda s: t.__setitem__(0, t[0] + s))


def test_fixed_rate_spaces_records_evenly():
    t, clock, sleep = fake_clock()
    pacer = Pacer(rate=4, clock=clock, sleep=sleep)
    for _ in range(9):
        pacer.wait()
    assert t[0] == pytest.approx(2.0)


def test_speedup_follows_event_time_and_ignores_time_going_back():
    t, clock, sleep = fake_clock()
    pacer = Pacer(speedup=10, clock=clock, sleep=sleep)
    for ts in (100.0, 110.0, 105.0, 130.0, None, 150.0):
        pacer.wait(ts)
    assert t[0] == pytest.approx(5.0)  # 50 s of data at 10x


def test_max_gap_caps_a_long_pause():
    t, clock, sleep = fake_clock()
    pacer = Pacer(speedup=1, max_gap=2, clock=clock, sleep=sleep)
    for ts in (0.0, 86400.0, 86401.0):
        pacer.wait(ts)
    assert t[0] == pytest.approx(3.0)


def test_unpaced_never_sleeps_and_stop_is_reported():
    stop = threading.Event()
    pacer = Pacer(stop_event=stop, sleep=lambda s: pytest.fail("slept"))
    assert pacer.wait(1.0) is True
    stop.set()
    assert pacer.wait(2.0) is False


@pytest.mark.parametrize("kwargs", [{"rate": 0}, {"rate": float("inf")}, {"speedup": -1}, {"rate": 1, "speedup": 1}])
def test_bad_pacing(kwargs):
    with pytest.raises(ConfigError):
        Pacer(**kwargs)
