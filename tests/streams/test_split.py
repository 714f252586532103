"""Splits partition the source exactly, in order, whatever path reads them."""

import numpy as np
import pytest

from streamlearn.errors import BadRecordError, ConfigError, StreamlearnError
from streamlearn.streams import BLOCK, SEAStream, STAGGERStream, Split, inject, make_source, node_streams
from streamlearn.streams import split as split_module


def test_round_robin_partitions_a_finite_source_exactly():
    source = make_source("elec2")
    X, y = source.to_arrays(10**6)
    parts = Split(source, 4).streams()
    assert sum(p.n_samples for p in parts) == len(y)
    for k, part in enumerate(parts):
        Xk, yk = part.to_arrays(10**6)
        assert np.array_equal(Xk, X[k::4]) and np.array_equal(yk, y[k::4])
        assert part.feature_names == source.feature_names


def test_round_robin_on_an_endless_source_iterates_like_to_arrays():
    source = SEAStream(seed=1)
    X, y = source.to_arrays(3 * 1100)
    parts = Split(source, 3).streams()
    for k, part in enumerate(parts):
        Xk, yk = part.to_arrays(1100)
        assert np.array_equal(Xk, X[k::3]) and np.array_equal(yk, y[k::3])
        it = list(part.take(1100))  # the private pass, not the shared cache
        assert np.array_equal([[x[c] for c in part.feature_names] for x, _ in it], Xk)
        assert part.n_samples is None


@pytest.mark.parametrize("how", ["hash", "value"])
def test_key_split_sends_each_key_value_to_one_node_and_drops_the_key(how):
    source = make_source("elec2")
    X, y = source.to_arrays(10**6)
    day = X[:, 0]
    kept = Split(source, 3, key="day", how=how, keep_key=True).streams()
    dropped = Split(source, 3, key="day", how=how).streams()
    owners = {}
    total = 0
    for k, (a, b) in enumerate(zip(kept, dropped)):
        Xa, ya = a.to_arrays(10**6)
        Xb, yb = b.to_arrays(10**6)
        assert b.feature_names == source.feature_names[1:] and np.array_equal(Xa[:, 1:], Xb)
        assert np.array_equal(ya, yb)
        for v in np.unique(Xa[:, 0]):
            assert owners.setdefault(v, k) == k
        mine = np.isin(day, np.unique(Xa[:, 0]))
        assert np.array_equal(Xa, X[mine]) and np.array_equal(ya, y[mine])  # order kept
        total += len(ya)
    assert total == len(y) and sorted(owners) == list(range(1, 8))
    assert all(int(v) % 3 == k for v, k in owners.items())  # integer keys: value mod m, by hash too


def test_key_mapping_and_endless_source_paths_agree():
    source = STAGGERStream(seed=2)
    X, _ = source.to_arrays(4000)
    parts = Split(source, 2, key="shape", how="map", mapping={0: 1, 1: 0, 2: 0}).streams()
    Xa, _ = parts[1].to_arrays(700)
    assert np.array_equal(Xa, X[X[:, 2] == 0][:700][:, :2])
    it = list(parts[1].take(BLOCK + 30))
    assert np.array_equal([[x["size"], x["color"]] for x, _ in it], Xa[:BLOCK + 30])


def test_hash_split_of_endless_source_partitions_it():
    source = make_source("rbf", seed=3, n_features=3, n_centroids=4)
    X, y = source.to_arrays(3000)
    parts = Split(source, 3, key="x1", how="hash", keep_key=True).streams()
    got = [p.to_arrays(600) for p in parts]
    # the first 1500 source samples all appear in exactly one node, in order
    taken = np.zeros(1500, dtype=int)
    for Xk, yk in got:
        rows = np.flatnonzero(np.isin(X[:, 1], Xk[:, 1]))
        assert np.array_equal(X[rows], Xk) and np.array_equal(y[rows], yk)
        taken[rows[rows < 1500]] += 1
    assert (taken == 1).all()
    it = list(parts[2].take(600))
    assert np.array_equal([[x[c] for c in parts[2].feature_names] for x, _ in it], got[2][0])


def test_bad_splits():
    with pytest.raises(ConfigError):
        Split(SEAStream(), 2, key="nope")
    with pytest.raises(ConfigError):
        Split(SEAStream(), 0)
    with pytest.raises(ConfigError):
        Split(STAGGERStream(), 2, key="color", how="map", mapping={0: 5})
    with pytest.raises(BadRecordError) as info:
        Split(SEAStream(seed=0), 2, key="x0", how="value").streams()[0].to_arrays(5)
    assert info.value.row == 1 and info.value.column == "x0"
    with pytest.raises(BadRecordError) as info:
        Split(STAGGERStream(seed=0), 2, key="color", how="map", mapping={0: 0, 1: 1}).streams()[0].to_arrays(50)
    assert info.value.value == 2.0


def test_a_starved_node_is_an_error(monkeypatch):
    monkeypatch.setattr(split_module, "MAX_GAP", 3 * BLOCK)
    parts = Split(STAGGERStream(seed=0), 4, key="color", how="value").streams()
    with pytest.raises(StreamlearnError):
        parts[3].to_arrays(10)
    with pytest.raises(StreamlearnError):
        next(iter(parts[3]))


def test_concept_drift_on_a_split_node():
    source = SEAStream(seed=4)
    part = Split(source, 2).streams()[1]
    s = inject(part, "sudden@300", node=1)
    X, y = s.to_arrays(800)
    total = X[:, 0] + X[:, 1]
    assert np.array_equal(y[:300], total[:300] > 8) and np.array_equal(y[300:], total[300:] > 9)
    assert np.array_equal(X, source.to_arrays(1600)[0][1::2])
    assert [e.to_dict()["node"] for e in s.drift_events(800)] == [1]


# ---- text keys (a CSV file's machine id) -------------------------------------------------------------

MACHINES = ["press-1", "press-2", "lathe", "mill-A", "7", "12"]


def _keyed_csv(tmp_path, n=300):
    rng = np.random.default_rng(0)
    lines = ["machine,temp,state"]
    for i in range(n):
        lines.append(f"{MACHINES[i % 5 if i % 7 else 4 + i % 2]},{rng.normal():.4f},{'ok' if i % 3 else 'fault'}")
    path = tmp_path / "keyed.csv"
    path.write_text("\n".join(lines) + "\n")
    return path, [line.split(",") for line in lines[1:]]


def test_split_by_a_text_key_column(tmp_path):
    from streamlearn.connectors.routing import NodeRouter

    path, rows = _keyed_csv(tmp_path)
    parts = node_streams(f"csv:{path}", 3, split="key:machine:hash", label="state")
    router = NodeRouter(field="machine", nodes=3)
    owner = [router.by_value(r[0]) for r in rows]  # the connectors place each record on the same node
    assert sorted(set(owner)) == [0, 1, 2]
    for k, part in enumerate(parts):
        assert part.feature_names == ["temp"]  # the key is not a feature
        X, y = part.to_arrays(10**6)
        mine = [r for r, o in zip(rows, owner) if o == k]
        assert X[:, 0].tolist() == [float(r[1]) for r in mine] and y.tolist() == [r[2] for r in mine]
    # integer keys keep value mod m
    assert owner[[r[0] for r in rows].index("7")] == 7 % 3 and owner[[r[0] for r in rows].index("12")] == 0


def test_text_key_hash_is_the_same_in_every_process(tmp_path):
    import subprocess
    import sys

    path, _ = _keyed_csv(tmp_path)
    code = ("import sys; from streamlearn.streams import node_streams; "
            f"parts = node_streams('csv:{path}', 4, split='key:machine:hash', label='state'); "
            "print([p.n_samples for p in parts])")
    seen = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": seed, "PATH": ""}).stdout for seed in ("1", "2")}
    assert len(seen) == 1
    here = [p.n_samples for p in node_streams(f"csv:{path}", 4, split="key:machine:hash", label="state")]
    assert seen == {f"{here}\n"}


def test_text_key_options_and_bad_keys(tmp_path):
    path, rows = _keyed_csv(tmp_path)
    mapped = node_streams(f"csv:{path}", 2, split="key:machine:press-1=0,press-2=0,lathe=1,mill-A=1,7=0,12=1",
                          label="state")
    assert mapped[1].n_samples == sum(r[0] in ("lathe", "mill-A", "12") for r in rows)
    assert [r[0] for r in rows[:3]] == ["7", "press-2", "lathe"]
    with pytest.raises(BadRecordError) as info:  # press-2 is not an integer
        node_streams(f"csv:{path}", 2, split="key:machine:value", label="state")[0].to_arrays(10)
    assert (info.value.row, info.value.column, info.value.value) == (2, "machine", "press-2")
    with pytest.raises(BadRecordError) as info:
        node_streams(f"csv:{path}", 2, split="key:machine:press-2=0,7=1", label="state")[0].to_arrays(10)
    assert info.value.value == "lathe" and info.value.row == 3 and "mapping" in str(info.value)
    with pytest.raises(ConfigError):
        node_streams(f"csv:{path}", 2, split="key:machine", label="state", keep_key=True)
    with pytest.raises(BadRecordError) as info:  # the key must be a column of the header
        node_streams(f"csv:{path}", 2, split="key:owner", label="state")
    assert (info.value.row, info.value.column) == (1, "owner")


def test_text_key_of_a_source_built_by_hand(tmp_path):
    from streamlearn.streams import CSVSource

    path, rows = _keyed_csv(tmp_path)
    # the key column was not declared: it is asked for when the split is made
    source = CSVSource(path, label="state", features=["temp"])
    parts = Split(source, 2, key="machine").streams()
    assert sum(p.n_samples for p in parts) == len(rows)
    drifted = inject(parts[0], "sudden@10", node=0)  # the alternate concept keeps the keys
    assert drifted.to_arrays(10**6)[0].tolist() == parts[0].to_arrays(10**6)[0].tolist()


def test_missing_text_key_is_a_bad_record(tmp_path):
    path = tmp_path / "k.csv"
    path.write_text("machine,temp,state\na,1,ok\n,2,ok\nb,3,fault\n")
    with pytest.raises(BadRecordError) as info:
        node_streams(f"csv:{path}", 2, split="key:machine", label="state")[0].to_arrays(10)
    assert (info.value.row, info.value.column) == (3, "machine")
    parts = node_streams(f"csv:{path}", 2, split="key:machine", label="state", on_bad_record="skip")
    assert sum(p.n_samples for p in parts) == 2
