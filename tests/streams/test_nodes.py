"""node_streams: per-node sources or one split source, drifts scheduled per node with the right events."""

import numpy as np
import pytest

from streamlearn.errors import ConfigError
from streamlearn.streams import HyperplaneStream, make_source, node_streams, parse_schedule


def positions(streams, n=10**5):
    return [[(e.position, e.kind) for e in s.drift_events(n)] for s in streams]


def test_one_generator_per_node_seeded_seed_plus_k():
    streams = node_streams("sea", 3, seed=5)
    arrays = [s.to_arrays(100) for s in streams]
    assert np.array_equal(arrays[0][0], make_source("sea", seed=5).to_arrays(100)[0])
    assert np.array_equal(arrays[2][0], make_source("sea", seed=7).to_arrays(100)[0])
    assert not np.array_equal(arrays[0][0], arrays[1][0])
    assert positions(streams) == [[], [], []]


def test_model_seeded_sources_share_the_concept():
    streams = node_streams("hyperplane", 3, seed=2, n_features=3)
    assert all(isinstance(s, HyperplaneStream) and s.model_seed == 2 for s in streams)
    assert len({s.seed for s in streams}) == 3
    assert node_streams("rbf", 2, seed=2, model_seed=9)[1].model_seed == 9


def test_schedules_all_staggered_subset():
    drifts = ["sudden@1000", "noise@3000:sigma=0.1"]
    assert positions(node_streams("sea", 3, drifts)) == [[(1000, "sudden"), (3000, "noise")]] * 3
    staggered = node_streams("sea", 3, drifts, schedule="staggered:250")
    assert positions(staggered) == [[(1000 + 250 * k, "sudden"), (3000 + 250 * k, "noise")] for k in range(3)]
    assert [e.node for s in staggered for e in s.drift_events(10**5)] == [0, 0, 1, 1, 2, 2]
    subset = node_streams("sea", 4, drifts, schedule="subset:1,3", seed=1)
    assert [bool(p) for p in positions(subset)] == [False, True, False, True]
    assert np.array_equal(subset[0].to_arrays(2000)[1], make_source("sea", seed=1).to_arrays(2000)[1])
    # the drift really happens at the staggered position
    X, y = staggered[2].to_arrays(2000)
    total = X[:, 0] + X[:, 1]
    assert np.array_equal(y[:1500], total[:1500] > 8) and np.array_equal(y[1500:], total[1500:] > 9)


def test_split_with_per_node_positions():
    streams = node_streams("elec2", 3, ["label-permutation@100"], schedule="staggered:10", split="round-robin")
    source_y = make_source("elec2").to_arrays(10**6)[1]
    for k, s in enumerate(streams):
        y = s.to_arrays(10**6)[1]
        assert np.array_equal(y[:100 + 10 * k], source_y[k::3][:100 + 10 * k])
        assert np.all(y[100 + 10 * k:] != source_y[k::3][100 + 10 * k:])
        assert s.drift_events()[0].position == 100 + 10 * k and s.drift_events()[0].node == k
    assert sum(s.n_samples for s in streams) == 45312


def test_key_split_options():
    kept = node_streams("elec2", 2, split="key:day:hash", keep_key=True)  # key:day alone: one node per day
    assert "day" in kept[0].feature_names
    dropped = node_streams("elec2", 2, split="key:day:value")
    assert "day" not in dropped[0].feature_names
    assert set(np.unique(kept[0].to_arrays(10**6)[0][:, 0])) | set(np.unique(kept[1].to_arrays(10**6)[0][:, 0])) \
        == set(range(1, 8))
    mapped = node_streams("elec2", 2, split="key:day:1=0,2=0,3=0,4=0,5=0,6=1,7=1", keep_key=True)
    weekend = mapped[1].to_arrays(10**6)[0][:, 0]
    assert set(np.unique(weekend)) == {6.0, 7.0}
    via_map = node_streams("elec2", 2, split="key:day:hash", key_map={d: int(d >= 6) for d in range(1, 8)}, keep_key=True)
    assert np.array_equal(via_map[1].to_arrays(10**6)[0], mapped[1].to_arrays(10**6)[0])


@pytest.mark.parametrize("kwargs", [
    {"schedule": "staggered:x"}, {"schedule": "subset:7"}, {"schedule": "sometimes"}, {"split": "by-day"},
    {"split": "key:day:1=zero"}, {"nodes": 0}, {"keep_key": True}, {"drifts": ["nope@1"]},
])
def test_bad_node_settings(kwargs):
    args = {"source": "elec2", "nodes": 3, **kwargs}
    with pytest.raises(ConfigError):
        node_streams(**args)


def test_parse_schedule():
    assert parse_schedule("all", 2) == [0, 0] and parse_schedule("staggered:0", 2) == [0, 0]
