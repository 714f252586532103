"""CheckpointStore: atomic directories of .npy + JSON, verified on read, never pickled."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from streamlearn.errors import ConfigError
from streamlearn.kafka.checkpoint import CheckpointError, CheckpointStore, protocol_state, restore_protocol_state
from streamlearn.sync.spec import make_protocol


def test_round_trip_of_arrays_and_metadata(tmp_path):
    store = CheckpointStore(tmp_path, "node")
    arrays = {"w": torch.arange(4, dtype=torch.float32), "counts": np.array([3, 4], dtype=np.int64),
              "buf": np.full((2, 3), np.nan), "flags": np.array([True, False])}
    path = store.save(arrays, {"offset": 17, "note": "x", "nested": {"a": [1, 2.5, None]}})
    assert os.path.basename(path) == "node-000000000001"
    ck = store.latest()
    assert ck.seq == 1 and ck.meta == {"offset": 17, "note": "x", "nested": {"a": [1, 2.5, None]}}
    assert ck.arrays["w"].dtype == np.float32 and ck.arrays["w"].tolist() == [0, 1, 2, 3]
    assert np.isnan(ck.arrays["buf"]).all() and ck.arrays["flags"].tolist() == [True, False]
    manifest = json.load(open(os.path.join(path, "manifest.json")))
    assert manifest["kind"] == "node" and set(manifest["arrays"]) == set(arrays)


def test_only_the_newest_are_kept_and_a_damaged_newest_falls_back(tmp_path):
    store = CheckpointStore(tmp_path, "node", keep=2)
    for i in range(4):
        store.save({"w": np.full(3, i, dtype=np.float32)}, {"i": i})
    assert store.sequence() == [3, 4]
    with open(os.path.join(store._path(4), "w.npy"), "r+b") as fh:  # a bit flipped on disk
        fh.seek(-1, os.SEEK_END)
        fh.write(b"\x01")
    with pytest.raises(CheckpointError, match="checksum"):
        store.load(4)
    assert store.latest().meta == {"i": 2}
    os.remove(os.path.join(store._path(3), "manifest.json"))
    assert store.latest() is None


def test_a_half_written_checkpoint_is_invisible_and_cleaned_up(tmp_path):
    store = CheckpointStore(tmp_path, "node")
    store.save({"w": np.zeros(2, dtype=np.float32)}, {"i": 1})
    tmp = tmp_path / ".tmp-node-000000000002-12345"  # what a process killed mid-save leaves
    tmp.mkdir()
    (tmp / "w.npy").write_bytes(b"partial")
    assert store.latest().meta == {"i": 1}
    CheckpointStore(tmp_path, "node")  # the next start clears it
    assert not tmp.exists()
    assert CheckpointStore(tmp_path, "sync").latest() is None  # another kind is never read


def test_no_pickle_anywhere(tmp_path):
    store = CheckpointStore(tmp_path, "node")
    with pytest.raises(CheckpointError, match="dtype"):
        store.save({"o": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(CheckpointError, match="NaN"):
        store.save({}, {"loss": float("nan")})
    with pytest.raises(CheckpointError, match="JSON"):
        store.save({}, {"obj": object()})
    # a checkpoint whose array file holds a pickle is refused when read, not unpickled
    store.save({"w": np.zeros(1, dtype=np.float32)})
    path = os.path.join(store._path(1), "w.npy")
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    manifest_path = os.path.join(store._path(1), "manifest.json")
    manifest = json.load(open(manifest_path))
    from streamlearn.kafka.checkpoint import _crc

    manifest["arrays"]["w"]["crc32"] = _crc(path)
    json.dump(manifest, open(manifest_path, "w"))
    with pytest.raises(CheckpointError, match="cannot be read"):
        store.load(1)


def test_bad_settings():
    for kw in ({"directory": "", "kind": "node"}, {"directory": "x", "kind": "Node!"},
               {"directory": "x", "kind": "node", "keep": 0}):
        with pytest.raises(ConfigError):
            CheckpointStore(**kw)


def test_protocol_state_round_trip_keeps_reference_counts_rng_and_v():
    p = make_protocol("dynamic:delta=1,b=1", m=4, d=2, w0=torch.tensor([1.0, 2.0]), seed=3, device="cpu")
    p._v = 2
    p.stats.full_syncs, p.stats.models_up = 5, 11
    p.bank.version[:] = torch.tensor([1, 2, 3, 4])
    p._rng.random()
    arrays, meta = protocol_state(p)
    json.dumps(meta)  # plain JSON
    q = make_protocol("dynamic:delta=1,b=1", m=4, d=2, seed=3, device="cpu")
    restore_protocol_state(q, arrays, meta)
    assert q.reference.tolist() == [1.0, 2.0] and q.violation_counter == 2
    assert q.stats.as_dict() == p.stats.as_dict() and q.bank.version.tolist() == [1, 2, 3, 4]
    assert q._rng.random() == p._rng.random()  # the same random choices go on
    with pytest.raises(CheckpointError, match="m=4"):
        restore_protocol_state(make_protocol("dynamic", m=2, d=2, device="cpu"), arrays, meta)


@pytest.mark.parametrize("name,params", [("logreg", {"optimizer": "sgd", "momentum": 0.9}), ("mlp", {"hidden": (4,)}),
                                         ("mlp", {"optimizer": "adam", "hidden": (4,)}),
                                         ("river-logreg", {})])
def test_learner_state_round_trip_continues_the_same_training(name, params):
    from streamlearn.kafka.checkpoint import learner_state, restore_learner_state
    from streamlearn.learners import make_learner

    def fresh(seed):
        kw = {"seed": seed, "device": "cpu"} if name != "river-logreg" else {}
        return make_learner(name, features=["a", "b"], classes=[0, 1], **kw, **params)

    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 2)).astype(np.float32)
    y = (X[:, 0] > 0).astype(np.int64)
    a = fresh(0)
    a.learn_many(X[:20], y[:20])
    arrays, meta = learner_state(a)
    b = fresh(1)
    restore_learner_state(b, {k: np.asarray(v.detach().cpu() if hasattr(v, "detach") else v)
                              for k, v in arrays.items()}, json.loads(json.dumps(meta)))
    a.learn_many(X[20:], y[20:])
    b.learn_many(X[20:], y[20:])
    assert np.allclose(a.get_flat().numpy(), b.get_flat().numpy(), atol=1e-6)
    with pytest.raises(CheckpointError):
        restore_learner_state(make_learner("logreg", features=["a", "b", "c"], classes=[0, 1], device="cpu"),
                              arrays, meta)


def test_optimizer_state_that_does_not_fit_is_a_checkpoint_error():
    # momentum kept by a learner with momentum, restored into one with plain SGD (which keeps no state)
    from streamlearn.kafka.checkpoint import learner_state, restore_learner_state
    from streamlearn.learners import make_learner

    a = make_learner("logreg", features=["a", "b"], classes=[0, 1], device="cpu", momentum=0.9)
    a.learn_many(np.ones((4, 2), np.float32), [0, 1, 0, 1])
    arrays, meta = learner_state(a)
    with pytest.raises(CheckpointError, match="optimizer state"):
        restore_learner_state(make_learner("logreg", features=["a", "b"], classes=[0, 1], device="cpu"),
                              {k: np.asarray(v) for k, v in arrays.items()}, meta)
