import numpy as np
import pytest
from river import drift

from streamlearn.errors import ConfigError
from streamlearn.evaluation import DriftMonitor, DriftMonitorBank, make_detector

from streamlearn.evaluation import DETECTORS as REGISTRY

DETECTORS = [("adwin", {}), ("page_hinkley", {}), ("kswin", {}), ("hddm_w", {})]


@pytest.mark.parametrize("name,params", DETECTORS)
@pytest.mark.parametrize("seed", [0, 1])
def test_finds_abrupt_error_rate_change(name, params, seed):
    rng = np.random.default_rng(seed)
    errors = np.r_[rng.random(1000) < 0.1, rng.random(1000) < 0.6]
    mon = DriftMonitor(name, params)
    found = mon.update_many(errors)
    assert found == mon.detections_
    assert sum(d < 1000 for d in found) <= 1
    after = [d for d in found if d >= 1000]
    assert after and after[0] < 1300


@pytest.mark.parametrize("name,params", DETECTORS)
def test_few_false_alarms_on_constant_error_rate(name, params):
    rng = np.random.default_rng(7)
    mon = DriftMonitor(name, params)
    mon.update_many(rng.random(2500) < 0.2)
    assert len(mon.detections_) <= 1


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registered_detector_runs_on_an_error_stream(name):
    rng = np.random.default_rng(5)
    mon = DriftMonitor(name)
    found = mon.update_many(np.r_[rng.random(500) < 0.05, rng.random(1500) < 0.7])
    assert mon.n_ == 2000
    assert any(d >= 500 for d in found)  # each one reacts to a jump from 5% to 70% errors


def test_positions_across_batches_and_invalid_samples():
    errors = np.r_[np.zeros(300), np.ones(300)]
    whole = DriftMonitor("page_hinkley", {"threshold": 10.0})
    whole.update_many(errors)
    parts = DriftMonitor("page_hinkley", {"threshold": 10.0})
    for chunk in np.array_split(errors, 7):
        parts.update_many(chunk)
    assert whole.detections_ == parts.detections_ and whole.detections_
    # Unfed (invalid) samples keep their positions: the detection shifts by the number inserted.
    shifted = DriftMonitor("page_hinkley", {"threshold": 10.0})
    shifted.update_many(np.r_[np.ones(5), errors], valid=np.r_[np.zeros(5, bool), np.ones(600, bool)])
    assert shifted.detections_ == [d + 5 for d in whole.detections_]


def test_bank_equals_separate_monitors():
    rng = np.random.default_rng(3)
    errors = (rng.random((3, 1500)) < np.array([[0.1], [0.3], [0.5]])).astype(float)
    errors[1, 700:] = rng.random(800) < 0.8
    bank = DriftMonitorBank(3, "adwin", {"delta": 0.01})
    for chunk in np.array_split(errors, 5, axis=1):
        bank.update(chunk)
    singles = [DriftMonitor("adwin", {"delta": 0.01}) for _ in range(3)]
    for i, s in enumerate(singles):
        s.update_many(errors[i])
    assert bank.detections_ == [s.detections_ for s in singles]
    assert bank.detections_[1]


def test_make_detector_by_name_alias_instance_and_errors():
    assert isinstance(make_detector("ADWIN", delta=0.1), drift.ADWIN)
    assert isinstance(make_detector("page-hinkley"), drift.PageHinkley)
    assert make_detector("kswin").seed == 0
    inst = drift.ADWIN(delta=0.5)
    clone = make_detector(inst)
    assert clone is not inst and clone.delta == 0.5
    with pytest.raises(ConfigError, match="unknown drift detector"):
        make_detector("nope")
    with pytest.raises(ConfigError, match="bad parameters"):
        make_detector("adwin", not_a_param=1)
    with pytest.raises(ConfigError):
        make_detector("kswin", alpha=2.0)


# ---- one-sided: a detection means the error went up ----------------------------------------------

def learning_then_drift(seed=0):
    """A model that learns (error 0.5 -> 0.3 -> 0.1), then a drift at 6000 (error 0.1 -> 0.4)."""
    rng = np.random.default_rng(seed)
    return np.r_[rng.random(2000) < 0.5, rng.random(2000) < 0.3, rng.random(2000) < 0.1,
                 rng.random(2000) < 0.4].astype(float)


def test_one_sided_reports_no_fall_and_counts_what_it_ignored():
    errors = learning_then_drift()[:6000]  # the error only falls
    one, two = DriftMonitor("adwin"), DriftMonitor("adwin", one_sided=False)
    assert one.one_sided and not two.one_sided  # one-sided by default
    one.update_many(errors)
    two.update_many(errors)
    assert two.detections_  # ADWIN fires on the falls ...
    assert one.detections_ == []  # ... nothing is reported
    assert one.ignored_ == two.detections_ and one.n_ignored_ == len(two.detections_)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_one_sided_reports_the_rise(seed):
    errors = learning_then_drift(seed)
    one, two = DriftMonitor("adwin"), DriftMonitor("adwin", one_sided=False)
    for chunk in np.array_split(errors, 80):  # batch by batch, as a node sees it
        one.update_many(chunk)
    two.update_many(errors)
    assert one.detections_ and all(6000 <= d < 6300 for d in one.detections_)
    assert [d for d in two.detections_ if d < 6000]  # the two-sided monitor also fired while learning
    assert one.n_ignored_ == len([d for d in two.detections_ if d < 6000])


def test_one_sided_confirms_a_firing_made_early_in_a_rise():
    # A detector that fires 20 samples into a rise: the last 200 errors are not above the 800 before
    # yet; the firing is reported where they are, within CONFIRM_WITHIN samples.
    from streamlearn.evaluation.detectors import CONFIRM_WITHIN

    errors = np.r_[np.zeros(1000), np.ones(400)]
    mon = DriftMonitor("page_hinkley", {"threshold": 10.0, "min_instances": 5})
    found = mon.update_many(errors)
    raw = DriftMonitor("page_hinkley", {"threshold": 10.0, "min_instances": 5}, one_sided=False)
    raw.update_many(errors)
    assert raw.detections_[0] >= 1000
    assert found and raw.detections_[0] <= found[0] <= raw.detections_[0] + CONFIRM_WITHIN
    # fed in batches, the same
    parts = DriftMonitor("page_hinkley", {"threshold": 10.0, "min_instances": 5})
    for chunk in np.array_split(errors, 37):
        parts.update_many(chunk)
    assert parts.detections_ == mon.detections_ and parts.ignored_ == mon.ignored_


def test_one_sided_bank_and_clone_keep_the_setting():
    bank = DriftMonitorBank(2, "adwin", one_sided=False)
    assert not bank.clone().one_sided and not bank.monitors[1].one_sided
    assert DriftMonitor("adwin").clone().one_sided
    falls = learning_then_drift(0)
    falls[6000:] = falls[4000:6000]  # no drift: the error stays at 0.1
    errors = np.stack([falls, learning_then_drift(1)])
    bank = DriftMonitorBank(2, "adwin")
    bank.update(errors)
    assert bank.detections_[0] == [] and bank.n_ignored_[0] > 0 and bank.detections_[1]
