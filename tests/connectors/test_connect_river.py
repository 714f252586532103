"""River datasets and generators by name into a real broker."""

from __future__ import annotations

import json

import pytest

from streamlearn.connectors.cli import main
from streamlearn.connectors.river_source import infer_river_schema, load_river_dataset, run_river
from streamlearn.connectors.routing import NodeRouter
from streamlearn.errors import ConfigError
from streamlearn.kafka.codecs import decode_sample_json
from streamlearn.kafka.topics import samples_topic


def test_names_resolve_to_datasets_and_generators():
    assert type(load_river_dataset("Bananas")).__name__ == "Bananas"
    assert type(load_river_dataset("SEA", {"seed": 3})).__name__ == "SEA"
    with pytest.raises(ConfigError, match="no river dataset"):
        load_river_dataset("NoSuchThing")
    with pytest.raises(ConfigError, match="SEA"):
        load_river_dataset("synth.SEA", {"colour": 1})


def test_inferred_schema_has_the_classes_a_node_needs():
    ds = load_river_dataset("synth.Agrawal", {"seed": 1})
    x, y = next(iter(ds))
    schema = infer_river_schema(ds, x, y)
    assert schema.feature_names == list(x) and schema.classes == (0, 1)


def test_phishing_round_robin(kafka, consume):
    stats = run_river("Phishing", NodeRouter(round_robin=2), limit=100, **kafka)
    assert stats.delivered == 100 and stats.deadlettered == 0 and stats.per_node == {0: 50, 1: 50}
    expected = [(x, y) for x, y in load_river_dataset("Phishing")][:100:2]
    got = [decode_sample_json(r.value) for r in consume(samples_topic(kafka["prefix"], 0), 50)]
    assert [s.y for s in got] == [y for _, y in expected]
    assert got[0].x == {k: float(v) for k, v in expected[0][0].items()}


def test_generator_through_the_cli(settings, prefix, consume, capsys):
    code = main("river", ["synth.SEA", "--param", "seed=7", "--limit", "30", "--node", "2",
                          "--bootstrap", settings.bootstrap_servers, "--prefix", prefix, "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["delivered"] == 30
    got = [decode_sample_json(r.value) for r in consume(samples_topic(prefix, 2), 30)]
    expected = [y for _, y in zip(range(30), load_river_dataset("synth.SEA", {"seed": 7}))]
    assert [s.y for s in got] == [y for _, y in expected]
