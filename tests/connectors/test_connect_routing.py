"""Node mapping: fixed, round-robin, by value (node id, mod/hash over m nodes, explicit map)."""

from __future__ import annotations

import pytest

from streamlearn.connectors.errors import RecordError
from streamlearn.connectors.routing import NodeRouter, parse_node_map
from streamlearn.errors import ConfigError


def test_fixed_and_round_robin():
    assert [NodeRouter(node=3).next_node() for _ in range(3)] == [3, 3, 3]
    r = NodeRouter(round_robin=3)
    assert [r.next_node() for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert r.known_nodes() == [0, 1, 2]


def test_values_mod_or_hash_over_m_nodes_are_stable_and_in_range():
    r = NodeRouter(field="sensor", nodes=4)
    assert [r.by_value(v) for v in (0, 5, "5", 5.0, -1)] == [0, 1, 1, 1, 3]
    names = [f"sensor-{i}" for i in range(200)]
    nodes = [r.by_value(n) for n in names]
    assert nodes == [NodeRouter(field="sensor", nodes=4).by_value(n) for n in names]  # same in every process
    assert set(nodes) == {0, 1, 2, 3}


def test_value_as_node_id_and_explicit_map():
    r = NodeRouter()
    assert r.by_value("7") == 7 and r.known_nodes() is None
    for bad in ("kitchen", -1, 5000, None, True, [1], 1.5):
        with pytest.raises(RecordError) as err:
            r.by_value(bad, "<path>")
        assert err.value.field == "<path>"
    m = NodeRouter(mapping=parse_node_map("kitchen=0,garage=2"))
    assert m.by_value("garage") == 2 and m.known_nodes() == [0, 2]
    with pytest.raises(RecordError, match="not in the node map"):
        m.by_value("attic")


def test_router_without_value_rule_cannot_place_a_record():
    with pytest.raises(RecordError, match="no value"):
        NodeRouter(field="sensor").next_node()


@pytest.mark.parametrize("kwargs", [
    {"node": 1, "round_robin": 2}, {"node": 1, "field": "a"}, {"nodes": 2, "mapping": {"a": 0}},
    {"round_robin": 0}, {"node": -1}, {"node": 5000}, {"nodes": 0}, {"mapping": {"a": -1}},
])
def test_bad_settings_are_config_errors(kwargs):
    with pytest.raises(ConfigError):
        NodeRouter(**kwargs)


@pytest.mark.parametrize("text", ["", "a", "a=b", "=1", "a=1,a=2", "a=-1"])
def test_bad_node_maps(text):
    with pytest.raises(ConfigError):
        parse_node_map(text)


def test_first_seen_gives_one_node_per_distinct_value_in_order_and_caps_at_nodes():
    r = NodeRouter(field="station", first_seen=True, nodes=3)
    assert [r.by_value(v) for v in ("b", "a", "b", 7, "7", "a")] == [0, 1, 0, 2, 2, 1]
    with pytest.raises(RecordError, match="more distinct values than the 3 nodes"):
        r.by_value("c")
    assert r.known_nodes() == [0, 1, 2] and "first_seen=True" in repr(r)  # their topics made up front
    assert NodeRouter(field="station", first_seen=True).known_nodes() is None  # no cap: made as values come
    with pytest.raises(ConfigError, match="exclude each other"):
        NodeRouter(field="station", first_seen=True, mapping={"a": 0})
