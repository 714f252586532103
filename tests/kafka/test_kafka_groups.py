"""Groups in the Kafka pipeline (issue 12, points 2 and 3): ``split=N`` on the real wire.

Against the real Tansu broker of conftest.py: four guarded nodes under ``periodic:b=2,split=3`` on a
near-separable stream; the labels of nodes 2 and 3 are flipped from the start (a concept of their own).
The sync service moves the nodes that keep declining out of the whole; they end up averaged among
themselves, the others together, and the status and metrics say which node is in which group.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from streamlearn.metrics import SyncMetrics

from test_kafka_pipeline import Pipeline, encode, make_data, publish

N, BATCH, SPEC = 3000, 10, "periodic:b=2,split=3"
FLIPPED = (2, 3)


def test_nodes_with_their_own_concept_are_averaged_apart(broker, settings, prefix):
    with Pipeline(broker, settings, prefix, spec=SPEC, timeout=3.0) as p:
        p.start_sync()
        for node in range(4):
            p.start_node(node, batch_size=BATCH, detector=None, guard=200, guard_margin=0.05)
        p.wait(lambda r: r.sync and r.sync.get("nodes_alive") == 4, what="4 joins")
        streams = {}
        for node in range(4):
            X, y = make_data(N, seed=40 + node, flip_at=0 if node in FLIPPED else None)
            streams[node] = encode(X, y, 0, "batch", BATCH)
        publish(settings, prefix, streams, seconds=6.0)

        def settled(r):
            return (r.sync and all(r.nodes.get(n, {}).get("samples") == N for n in range(4))
                    and not any(r.nodes[n]["awaiting_sync"] for n in range(4)) and not r.sync["pending"]
                    and r.sync.get("declines") == sum(r.nodes[n]["declines"] for n in range(4)))

        p.wait(settled, timeout=90.0, what="the streams learned and the declines counted")
        nodes = {n: dict(p.status.nodes[n]) for n in range(4)}
        sync = dict(p.status.sync)
    groups = {int(n): g for n, g in sync["node_groups"].items()}
    print(f"\ngroups {groups}, changes {sync['group_changes_by_kind']}, declines "
          f"{ {n: nodes[n]['declines'] for n in range(4)} }, accuracy "
          f"{ {n: round(nodes[n]['accuracy'], 3) for n in range(4)} }, full syncs {sync['full_syncs']}")
    # the flipped nodes are averaged apart from the others, and each side keeps its concept
    assert groups[0] == groups[1] and groups[2] == groups[3] != groups[0], groups
    assert sync["n_groups"] == 2 and sync["group_changes_by_kind"]["split"] >= 1
    assert all(nodes[n]["accuracy"] > 0.9 for n in range(4)), nodes
    # the status feeds the metrics: one series per alive node, the number of groups, changes by kind
    reg = CollectorRegistry()
    SyncMetrics(reg).update_from_status(sync)
    assert [reg.get_sample_value("streamlearn_sync_node_group", {"node": str(n)}) for n in range(4)] == \
           [float(groups[n]) for n in range(4)]
    assert reg.get_sample_value("streamlearn_sync_groups") == 2.0
    assert reg.get_sample_value("streamlearn_sync_group_changes_total", {"kind": "split"}) >= 1
    assert reg.get_sample_value("streamlearn_sync_declines_total") == sync["declines"]
