"""Post-hoc detection scoring of a simulation: one-sided by default, false alarms per 10,000 samples."""

import numpy as np

from streamlearn.learners import TorchLearner
from streamlearn.sim import NodeData, simulate
from streamlearn.sim.plots import plot_timeline
from streamlearn.sim.run import detect
from streamlearn.streams import DriftEvent


def flipped(m=3, n=6000, f=4, flip_at=3000, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(m, n, f)).astype(np.float32)
    y = (X @ rng.normal(size=f) + 0.5 * rng.normal(size=(m, n)) > 0).astype(np.int64)  # noisy labels
    y[:, flip_at:] = 1 - y[:, flip_at:]
    events = [DriftEvent(position=flip_at, node=i, kind="label-permutation") for i in range(m)]
    return NodeData(X=X, y=y, classes=[0, 1], feature_names=[f"x{i}" for i in range(f)], events=events)


def test_detect_one_sided_against_two_sided(tmp_path):
    res = simulate(flipped(), TorchLearner("logreg", lr=0.05, seed=0), "nosync", batch_size=10, progress=False)
    one, two = detect(res, "adwin", max_delay=1000), detect(res, "adwin", max_delay=1000, one_sided=False)
    assert one["one_sided"] and not two["one_sided"]
    for d in (one, two):
        assert d["false_alarms_per_10k"] == 1e4 * d["false_alarms"] / (res.m * res.n)
        true, false = d["positions"]["true"], d["positions"]["false"]
        assert len(true) == len(false) == res.m
        assert sum(map(len, false)) == d["false_alarms"]
        assert sum(map(len, true)) + sum(map(len, false)) == d["detections"]
    assert one["drifts_detected"] == one["drifts_injected"] == 3  # every flip is a rise, reported
    assert one["false_alarms"] <= two["false_alarms"]
    assert one["detections"] + one["ignored"] == two["detections"]  # every firing is reported or ignored
    assert two["ignored"] == 0
    path = tmp_path / "timeline.png"
    plot_timeline([res], str(path), window=200, detections=[one])
    assert path.read_bytes()[:4] == b"\x89PNG"
