import json
import math

import pytest

from streamlearn.errors import ConfigError
from streamlearn.evaluation import score_detections
from streamlearn.streams import DriftEvent


def test_delays_misses_false_alarms():
    s = score_detections([50, 130, 135, 400], events=[100, 300, 600], max_delay=50)
    assert s.events == (100, 300, 600)
    assert s.delays == (30, None, None)
    assert (s.detected, s.missed, s.false_alarms, s.redundant, s.n_detections) == (1, 2, 2, 1, 4)
    assert s.mean_delay == 30.0


def test_detection_at_drift_and_at_max_delay_count():
    s = score_detections([100, 350], events=[100, 300], max_delay=50)
    assert s.delays == (0, 50)
    assert s.false_alarms == 0 and s.missed == 0
    assert s.mean_delay == 25.0
    s = score_detections([351], events=[300], max_delay=50)
    assert s.delays == (None,) and s.false_alarms == 1 and s.missed == 1


def test_next_drift_closes_the_window():
    # 120 is after the second drift: it belongs to it, not to the first one.
    s = score_detections([120], events=[100, 110], max_delay=100)
    assert s.delays == (None, 10)
    assert s.missed == 1 and s.false_alarms == 0


def test_unsorted_inputs_and_event_objects():
    events = [DriftEvent(500, 0, "abrupt", {}), {"position": 100}, 300]
    s = score_detections([520, 105, 90], events, max_delay=40)
    assert s.events == (100, 300, 500)
    assert s.delays == (5, None, 20)
    assert s.false_alarms == 1  # 90 is before any drift


def test_no_events_all_false_alarms_and_json():
    s = score_detections([3, 4], [], max_delay=10)
    assert s.false_alarms == 2 and s.detected == 0 and math.isnan(s.mean_delay)
    d = json.loads(json.dumps(s.to_dict(), allow_nan=False))
    assert d["mean_delay"] is None and d["false_alarms"] == 2


def test_bad_max_delay():
    with pytest.raises(ConfigError):
        score_detections([], [1], max_delay=-1)


def test_false_alarm_rate_per_10k_samples():
    from streamlearn.evaluation import false_alarm_rate

    s = score_detections([50, 130, 135, 400], events=[100, 300, 600], max_delay=50, samples=4000)
    assert s.false_alarms == 2 and s.false_alarm_rate == 5.0
    assert s.to_dict()["false_alarms_per_10k"] == 5.0 and s.to_dict()["samples"] == 4000
    assert score_detections([1], [], max_delay=5).false_alarm_rate is None  # no length, no rate
    assert false_alarm_rate(3, 4 * 30_000) == 0.25 and false_alarm_rate(0, 0) is None


def test_split_detections_follows_the_scoring():
    from streamlearn.evaluation.scoring import split_detections

    dets, events = [50, 130, 135, 400, 601, 700], [100, 300, 600]
    true, false = split_detections(dets, events, max_delay=50)
    s = score_detections(dets, events, max_delay=50)
    assert true == [130, 135, 601] and false == [50, 400, 700]
    assert len(false) == s.false_alarms and len(true) == s.n_detections - s.false_alarms
