"""The sync service keeps its reference and protocol state (--state-dir) and resumes from them.

The sync service runs as a real ``streamlearn sync`` process and is killed with SIGKILL; the
nodes are threads. After the restart the nodes register again and hold the persisted
reference, a node that joins late gets it too, and the counts go on from where they were.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from streamlearn.errors import ConfigError
from streamlearn.kafka.checkpoint import CheckpointStore, protocol_state
from streamlearn.kafka.status import StatusReader, model_hash
from streamlearn.kafka.sync_service import SyncConfig, SyncService
from streamlearn.kafka.topics import ensure_topics
from streamlearn.sync.spec import make_protocol

from test_kafka_faults_helpers import Proc, Threads, batches, make_data, publish, wait

SYNC = ["sync", "--protocol", "dynamic", "--delta", 1.0, "--b", 1, "--max-nodes", 4, "--timeout", 2, "--device", "cpu"]


def test_a_killed_sync_service_resumes_from_its_state_and_nodes_get_the_kept_reference(broker, settings, prefix,
                                                                                         tmp_path):
    state = tmp_path / "state"
    ensure_topics(broker.bootstrap, prefix, 4, settings=settings)
    threads = Threads(broker.bootstrap, settings, prefix)
    sync = Proc([*SYNC, "--state-dir", state], broker.bootstrap, prefix, tmp_path / "sync1.log")
    reader = StatusReader(broker.bootstrap, prefix, settings=settings)
    try:
        for node in (0, 1):
            threads.node(node)
        wait(reader, lambda r: r.sync and r.sync["nodes_alive"] == 2, what="2 joins", procs=[sync])
        first = reader.sync["epoch"]
        data = {node: make_data(400, 40 + node, flip_at=200) for node in (0, 1)}
        publish(broker.bootstrap, settings, prefix, {n: batches(X, y) for n, (X, y) in data.items()}, seconds=1.5)
        wait(reader, lambda r: all(r.nodes.get(n, {}).get("samples") == 400 for n in (0, 1))
             and r.sync["full_syncs"] >= 1 and not r.sync["pending"], what="learning with full syncs", procs=[sync])
        # the statuses settle: no sync in flight, the nodes hold the service's reference
        wait(reader, lambda r: all(r.nodes[n]["reference_hash"] == r.sync["reference_hash"] for n in (0, 1))
             and not any(r.nodes[n]["awaiting_sync"] for n in (0, 1)), what="settled", procs=[sync])
        before = dict(reader.sync)
        kept = CheckpointStore(state, "sync").latest()
        assert kept is not None and model_hash(kept.arrays["reference"]) == before["reference_hash"]

        sync.kill()  # no shutdown save: what is on disk is what the last full sync kept
        sync = Proc([*SYNC, "--state-dir", state], broker.bootstrap, prefix, tmp_path / "sync2.log")
        wait(reader, lambda r: r.sync["epoch"] != first and r.sync["nodes_alive"] == 2
             and all(r.nodes[n]["epoch"] == r.sync["epoch"] for n in (0, 1)), what="re-registration", procs=[sync])
        after = reader.sync
        assert after["resumed_from"] == kept.seq
        assert after["reference_hash"] == before["reference_hash"]  # the same reference ...
        saved = kept.meta["protocol"]["stats"]  # the counts as of the last full sync go on
        assert after["full_syncs"] == before["full_syncs"] == saved["full_syncs"]
        assert after["models_up"] >= saved["models_up"] > 0 and after["joins"] >= kept.meta["counts"]["joins"] + 2
        for n in (0, 1):  # ... and the nodes, registering again, were given it and kept what they had
            assert reader.nodes[n]["join_hash"] == before["reference_hash"]
            assert reader.nodes[n]["reference_hash"] == before["reference_hash"]

        late = threads.node(2)  # a node that never saw the first service gets the kept reference
        wait(reader, lambda r: r.nodes.get(2, {}).get("joined"), what="the late join", procs=[sync])
        st = reader.nodes[2]
        assert st["w0_hash"] != before["reference_hash"] and st["join_hash"] == before["reference_hash"]
        assert st["model_hash"] == before["reference_hash"]

        more = {node: make_data(300, 50 + node) for node in (0, 1, 2)}
        publish(broker.bootstrap, settings, prefix, {n: batches(X, y, first_seq=400 if n < 2 else 0)
                                                     for n, (X, y) in more.items()}, seconds=1.0)
        wait(reader, lambda r: r.sync["full_syncs"] > before["full_syncs"], what="a full sync after the restart",
             procs=[sync])
        threads.stop(late)
        assert sync.stop() == 0, sync.log()
        final = CheckpointStore(state, "sync").latest()  # the shutdown kept the state as well
        assert final.seq > kept.seq and final.meta["counts"]["state_saves"] >= 2
    finally:
        threads.stop()
        if sync.alive:
            sync.kill()
        reader.close()


def test_a_state_of_other_settings_is_refused_and_the_same_settings_resume(broker, settings, prefix, tmp_path):
    p = make_protocol("dynamic:delta=1", m=4, d=3, w0=torch.ones(3), seed=0, device="cpu")
    p.stats.full_syncs = 7
    arrays, pmeta = protocol_state(p)
    CheckpointStore(tmp_path, "sync").save(arrays, {"spec": "dynamic:delta=1", "max_nodes": 4, "d": 3,
                                                    "layout": "L", "protocol": pmeta, "counts": {"joins": 5}})
    other = SyncService(SyncConfig(protocol="dynamic:delta=2", max_nodes=4, device="cpu", state_dir=str(tmp_path),
                                   bootstrap="127.0.0.1:1"))
    with pytest.raises(ConfigError, match="state_dir"):  # before it even looks for the broker
        other.run(max_seconds=1)
    same = SyncService(SyncConfig(protocol="dynamic:delta=1", max_nodes=4, device="cpu", state_dir=str(tmp_path),
                                  bootstrap=broker.bootstrap, prefix=prefix, settings=settings))
    st = same.run(max_seconds=0.5)
    assert st["resumed_from"] == 1 and st["d"] == 3 and st["reference_hash"] == model_hash(np.ones(3))
    assert st["full_syncs"] == 7 and st["joins"] == 5 and st["nodes_alive"] == 0
    assert CheckpointStore(tmp_path, "sync").sequence() == [1, 2]  # the shutdown kept it again


def test_the_root_of_shards_resumes_from_shard_0s_state(broker, settings, prefix, tmp_path):
    # shard 0's service hosts the root: its counts and the shards' references are kept with shard 0's state
    from streamlearn.kafka.sync_state import SyncStateStore
    from streamlearn.sync.root import RootAverager

    spec = "periodic:b=4,shards=2,root=1"
    cfg = SyncConfig(protocol=spec, shard=0, max_nodes=4, device="cpu", state_dir=str(tmp_path),
                     bootstrap=broker.bootstrap, prefix=prefix, settings=settings)
    root = RootAverager(shards=2, root=1)
    for shard, syncs, ref in ((0, 1, 1.0), (1, 1, 3.0), (0, 2, 1.0), (1, 2, 5.0), (1, 3, 5.0)):
        root.on_shard(shard, full_syncs=syncs, alive=2, reference=torch.full((3,), ref))
    assert root.root_syncs == 2 and root._since == 1
    p = make_protocol("periodic:b=4", m=4, d=3, w0=torch.ones(3), seed=0, device="cpu")
    SyncStateStore(cfg).save(p, d=3, layout=None, epoch="e0", counts={}, rejected_by={}, root=root.get_state())

    st = SyncService(cfg).run(max_seconds=0.5)
    assert st["resumed_from"] == 1 and st["root_syncs"] == 2  # a root without its state would count from 0
    kept = RootAverager(shards=2, root=1)
    kept.set_state(*SyncStateStore(cfg).load().root)  # what the shutdown kept again
    assert (kept.root_syncs, kept._since, kept._seen) == (2, 1, {0: 2, 1: 3})
    # one more full sync of shard 0 and the average is due, over both shards' kept references
    assert kept.on_shard(0, full_syncs=3, alive=2, reference=torch.full((3,), 1.0)).tolist() == [3.0] * 3
