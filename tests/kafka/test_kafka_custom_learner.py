"""Your own model in the pipeline, on a real Tansu broker: nodes built by ``package.module:factory``.

A torch module factory joins the sync like the built-in nets (every node builds the same seeded w0
and the models are averaged); a river classifier factory learns alone under ``nosync``.
"""

from __future__ import annotations

from test_kafka_pipeline import Pipeline, encode, make_data, publish

TORCH = "tests.learners.custom_models:ResidualNet"
RIVER = "tests.learners.custom_models:hoeffding_tree"


def test_nodes_with_a_custom_torch_module_start_alike_learn_and_sync(broker, settings, prefix):
    n = 600
    with Pipeline(broker, settings, prefix, spec="periodic:b=5") as p:
        sync = p.start_sync()
        for node in (0, 1):
            p.start_node(node, learner=TORCH, learner_params={"lr": 0.2, "scale": True})
        p.wait(lambda r: r.sync and r.sync.get("nodes_alive") == 2, what="2 joins")
        publish(settings, prefix, {node: encode(*make_data(n, 60 + node), 0, "binary", 10) for node in (0, 1)},
                seconds=2.0)
        p.wait(lambda r: p.learned({0: n, 1: n})(r) and not r.sync["pending"], what="both learned", timeout=60)
        for node in (0, 1):
            p.stop(p.nodes[node])
        p.stop(sync)
        final = sync.status()
    a, b = p.nodes[0].status(), p.nodes[1].status()
    for st in (a, b):
        assert st["averageable"] and st["joined"] and st["accuracy"] > 0.85, st
        assert st["models_sent"] >= 1 and st["models_received"] >= 2  # the join reply and a sync
    assert a["w0_hash"] == b["w0_hash"]  # the factory was seeded: one initial model everywhere
    assert final["full_syncs"] >= 1


def test_a_node_with_a_custom_river_classifier_learns_alone_under_nosync(broker, settings, prefix):
    n = 300
    with Pipeline(broker, settings, prefix, spec="nosync") as p:
        node = p.start_node(0, learner=RIVER, learner_params={})
        publish(settings, prefix, {0: encode(*make_data(n, 70), 0, "json", 1)})
        p.wait(p.learned({0: n}), what="learned")
        p.stop(node)
    st = node.status()
    assert not st["averageable"] and st["models_sent"] == 0 and st["accuracy"] > 0.8, st
