"""Every injector changes the stream where and how it was asked, replays, and reports the right events."""

import numpy as np
import pytest

from streamlearn.errors import ConfigError
from streamlearn.streams import BLOCK, CSVSource, RBFStream, SEAStream, STAGGERStream, Stream, inject, make_source
from streamlearn.streams.base import label_array


class Tagged(Stream):
    """A stream whose samples tell where they come from: x = (index, concept, noise-free value)."""

    def __init__(self, concept=0, seed=0):
        self.c, self.seed = concept, seed
        self.feature_names = ["i", "c", "v"]
        self.classes = [0, 1, 2]

    def _concept(self, k):
        return Tagged(self.c + k, self.seed)

    def _blocks(self, n):
        start = 0
        while True:
            i = np.arange(start, start + BLOCK, dtype=float)
            yield np.column_stack([i, np.full(BLOCK, float(self.c)), np.sin(i) + self.seed]), (i % 3).astype(int)
            start += BLOCK


def concept_of(stream, n):
    X, _ = stream.to_arrays(n)
    return X[:, 1]


def test_sudden_switches_exactly_at_position():
    c = concept_of(inject(Tagged(), "sudden@700"), 1500)
    assert (c[:700] == 0).all() and (c[700:] == 1).all()


def test_sudden_on_sea_labels_follow_concept_a_then_b():
    s = inject(SEAStream(seed=1), ["sudden@600"])
    X, y = s.to_arrays(1200)
    total = X[:, 0] + X[:, 1]
    assert np.array_equal(y[:600], total[:600] > 8) and np.array_equal(y[600:], total[600:] > 9)
    assert np.array_equal(X, SEAStream(seed=1).to_arrays(1200)[0])
    assert [e.to_dict() for e in s.drift_events(2000)] == [{"position": 600, "node": 0, "kind": "sudden", "params": {}}]


def test_chained_suddens_visit_concepts_in_turn():
    c = concept_of(inject(Tagged(), ["sudden@100", "sudden@300"]), 500)
    assert (c[:100] == 0).all() and (c[100:300] == 1).all() and (c[300:] == 2).all()


def test_gradual_fraction_of_new_concept_rises_over_width():
    c = concept_of(inject(Tagged(), "gradual@4000:width=2000"), 8000)
    windows = [c[a:a + 500].mean() for a in range(0, 8000, 500)]
    assert windows[0] < 0.01 and windows[-1] > 0.99
    assert 0.35 < c[3750:4250].mean() < 0.65
    assert np.all(np.diff(windows) > -0.08)  # rises, up to sampling noise
    assert windows[9] > windows[7] + 0.2


def test_recurring_alternates_with_period_and_count():
    c = concept_of(inject(Tagged(), "recurring@1000:period=400"), 3000)
    expected = np.zeros(3000)
    for j, a in enumerate(range(1000, 3000, 400)):
        expected[a:a + 400] = 1 if j % 2 == 0 else 0
    assert np.array_equal(c, expected)
    s = inject(Tagged(), "recurring@100:period=50,count=3")
    c = concept_of(s, 400)
    assert (c[100:150] == 1).all() and (c[150:200] == 0).all() and (c[200:] == 1).all()
    assert [e.position for e in s.drift_events(10**6)] == [100, 150, 200]
    endless = inject(Tagged(), "recurring@100:period=50")
    assert [(e.position, e.params["concept"]) for e in endless.drift_events(260)] == [
        (100, "alternate"), (150, "original"), (200, "alternate"), (250, "original")]
    with pytest.raises(ConfigError):
        endless.drift_events()


def test_label_permutation_permutes_every_class():
    base = RBFStream(seed=0, n_classes=4, n_features=3, n_centroids=8)
    s = inject(base, "label-permutation@300", seed=7)
    (X0, y0), (X1, y1) = base.to_arrays(2000), s.to_arrays(2000)
    assert np.array_equal(X0, X1) and np.array_equal(y0[:300], y1[:300])
    mapping = {a: b for a, b in s.drift_events(2000)[0].params["mapping"]}
    assert sorted(mapping.values()) == [0, 1, 2, 3] and all(a != b for a, b in mapping.items())
    assert np.array_equal(y1[300:], [mapping[v] for v in y0[300:]])


def test_feature_shift_shifts_the_mean_by_the_shift():
    base = SEAStream(seed=2)
    raw = inject(base, "feature-shift@1000:shift=1.5,units=raw")
    (X0, y0), (X1, y1) = base.to_arrays(3000), raw.to_arrays(3000)
    assert np.array_equal(X0[:1000], X1[:1000]) and np.array_equal(y0, y1)
    assert np.allclose(X1[1000:] - X0[1000:], 1.5)
    std = inject(base, "feature-shift@0:shift=1.0,features=x1")
    X2, _ = std.to_arrays(1000)
    assert np.allclose(X2[:, 1] - X0[:1000, 1], X0[:1000, 1].std())  # one standard deviation (reference window)
    assert np.array_equal(X2[:, [0, 2]], X0[:1000, [0, 2]])


def test_feature_scale_and_ramp():
    base = SEAStream(seed=3)
    X0, _ = base.to_arrays(600)
    X1, _ = inject(base, "feature-scale@200:scale=3").to_arrays(600)
    assert np.allclose(X1[200:], 3 * X0[200:]) and np.array_equal(X1[:200], X0[:200])
    X2, _ = inject(base, "feature-scale@200:scale=3,width=100").to_arrays(600)
    ratio = X2[:, 0] / X0[:, 0]
    assert np.allclose(ratio[200:300], 1 + 2 * np.arange(1, 101) / 100) and np.allclose(ratio[300:], 3)


def test_feature_rotation_is_a_rotation_about_the_mean_in_std_units():
    base = make_source("hyperplane", seed=1, n_features=4)
    s = inject(base, "feature-rotation@500:angle=60")
    (X0, y0), (X1, y1) = base.to_arrays(1500), s.to_arrays(1500)
    mean, sd = X0[:1000].mean(0), X0[:1000].std(0)
    Z0, Z1 = (X0 - mean) / sd, (X1 - mean) / sd
    assert np.array_equal(X0[:500], X1[:500]) and np.array_equal(y0, y1)
    assert np.allclose(np.linalg.norm(Z0, axis=1), np.linalg.norm(Z1, axis=1))
    cos = np.sum(Z0[500:] * Z1[500:], axis=1) / np.linalg.norm(Z0[500:], axis=1) ** 2
    assert cos.min() >= 0.5 - 1e-9 and np.isclose(cos.max(), 1.0, atol=0.05)  # 60 degrees in the plane
    full_turn = inject(base, "feature-rotation@0:angle=360")
    assert np.allclose(full_turn.to_arrays(300)[0], X0[:300])


def test_incremental_grows_progressively_then_equals_the_full_rotation():
    base = SEAStream(seed=4)
    inc = inject(base, "incremental@1000:width=2000,angle=90")
    full = inject(base, "feature-rotation@1000:angle=90")
    (X0, _), (Xi, _), (Xf, _) = base.to_arrays(4000), inc.to_arrays(4000), full.to_arrays(4000)
    assert np.array_equal(Xi[:1000], X0[:1000]) and np.allclose(Xi[3000:], Xf[3000:])
    moved = np.linalg.norm(Xi - X0, axis=1)
    means = [moved[a:a + 500].mean() for a in range(1000, 3000, 500)]
    assert all(b > a for a, b in zip(means, means[1:]))
    event = inc.drift_events(4000)[0]
    assert (event.position, event.kind, event.params["width"]) == (1000, "incremental", 2000)


def test_noise_on_features_and_labels():
    base = SEAStream(seed=5)
    s = inject(base, "noise@2000:sigma=0.5,flip=0.2,units=raw,features=x0|x2")
    (X0, y0), (X1, y1) = base.to_arrays(6000), s.to_arrays(6000)
    assert np.array_equal(X0[:2000], X1[:2000]) and np.array_equal(y0[:2000], y1[:2000])
    d = X1[2000:] - X0[2000:]
    assert abs(d[:, 0].std() - 0.5) < 0.03 and abs(d[:, 2].std() - 0.5) < 0.03 and (d[:, 1] == 0).all()
    assert abs(np.mean(y0[2000:] != y1[2000:]) - 0.2) < 0.03


def test_label_noise_on_many_classes_picks_other_classes_uniformly():
    base = RBFStream(seed=1, n_classes=3, n_features=2, n_centroids=6)
    (_, y0), (_, y1) = base.to_arrays(9000), inject(base, "noise@0:sigma=0,flip=1").to_arrays(9000)
    assert (y0 != y1).all()
    assert abs(np.mean((y1 - y0) % 3 == 1) - 0.5) < 0.03


ALL = ["sudden@600", "gradual@600:width=300", "recurring@300:period=200", "label-permutation@600",
       "feature-shift@600:shift=2", "feature-scale@600:scale=0.5", "feature-rotation@600:angle=30",
       "incremental@300:width=600", "noise@600:sigma=0.3,flip=0.1"]


@pytest.mark.parametrize("spec", ALL)
def test_every_injector_replays_iterates_like_to_arrays_and_reports_its_event(spec):
    s = inject(STAGGERStream(seed=1), [spec], node=3, seed=11)
    X, y = s.to_arrays(1300)
    pairs = list(s.take(1300))
    assert np.array_equal(X, [[x[k] for k in s.feature_names] for x, _ in pairs])
    assert np.array_equal(y, [v for _, v in pairs])
    X2, y2 = inject(STAGGERStream(seed=1), [spec], node=3, seed=11).to_arrays(1300)
    assert np.array_equal(X, X2) and np.array_equal(y, y2)
    assert not (np.array_equal(X, STAGGERStream(seed=1).to_arrays(1300)[0])
                and np.array_equal(y, STAGGERStream(seed=1).to_arrays(1300)[1]))
    events = s.drift_events(1300)
    assert events and all(e.node == 3 and e.kind == spec.split("@")[0] for e in events)
    assert events[0].position == int(spec.split("@")[1].split(":")[0])
    assert s.feature_names == ["size", "color", "shape"] and s.classes == [0, 1]


@pytest.mark.parametrize("spec", ["gradual@600:width=300", "noise@0:sigma=0.3,flip=0.1"])
def test_random_drifts_depend_on_seed_and_node(spec):
    def arrays(seed, node):
        return inject(SEAStream(seed=0), [spec], node=node, seed=seed).to_arrays(1200)

    same = arrays(1, 0)
    assert np.array_equal(same[0], arrays(1, 0)[0]) and np.array_equal(same[1], arrays(1, 0)[1])
    for other in (arrays(2, 0), arrays(1, 1)):
        assert not (np.array_equal(same[0], other[0]) and np.array_equal(same[1], other[1]))


def test_drift_definition_is_shared_across_nodes():
    a = inject(RBFStream(seed=0, n_classes=5), "label-permutation@0", node=0, seed=3)
    b = inject(RBFStream(seed=9, n_classes=5), "label-permutation@0", node=4, seed=3)
    assert a.drift_events(1)[0].params == b.drift_events(1)[0].params


def test_drift_on_a_csv_source_uses_a_label_permutation(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,y\n" + "".join(f"{i},{'UP' if i % 2 else 'DOWN'}\n" for i in range(10)))
    s = inject(CSVSource(path, label="y"), ["sudden@4", "noise@8:sigma=0.1"])
    X, y = s.to_arrays(100)
    assert s.n_samples == 10 and len(y) == 10
    assert y.tolist()[:4] == ["DOWN", "UP"] * 2 and y.tolist()[4:8] == ["UP", "DOWN"] * 2
    assert [(e.position, e.kind) for e in s.drift_events()] == [(4, "sudden"), (8, "noise")]
    assert [e.position for e in inject(CSVSource(path, label="y"), "sudden@40").drift_events()] == []


def test_bad_injections():
    with pytest.raises(ConfigError):
        inject(SEAStream(), "feature-shift@1:features=nope")
    with pytest.raises(ConfigError):
        inject(make_source("hyperplane"), "feature-rotation@1:features=x0")
    with pytest.raises(ConfigError):
        inject([1, 2], "sudden@1")

    class NoClasses(Tagged):
        def __init__(self):
            super().__init__()
            self.classes = None

    with pytest.raises(ConfigError):
        inject(NoClasses(), "label-permutation@1")
    with pytest.raises(ConfigError):
        inject(NoClasses(), "noise@1:flip=0.1")
    assert inject(SEAStream(), []).__class__ is SEAStream


def test_label_array_never_truncates_strings():
    assert label_array(["UP", "DOWN"]).dtype == object and label_array([True, False]).dtype == bool
