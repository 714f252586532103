"""Sources by name, with their parameters listed and checked."""

import pytest

from streamlearn.errors import ConfigError
from streamlearn.streams import SOURCES, make_source


def test_every_listed_source_builds_with_its_defaults(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,y\n1,0\n")
    for name, entry in SOURCES.items():
        assert entry["description"] and isinstance(entry["params"], dict)
        if name == "csv:PATH":
            assert set(entry["params"]) == {"label", "features", "classes", "on_bad_record", "key", "categorical",
                                            "delimiter", "lookahead", "max_categories", "missing", "task"}
            s = make_source(f"csv:{path}", label="y")
        else:
            s = make_source(name, seed=1)
        assert s.to_arrays(1)[0].shape == (1, len(s.feature_names))
    assert SOURCES["sea"]["params"] == {"variant": 0, "noise": 0.0}


def test_text_parameters_are_converted():
    s = make_source("agrawal", seed="4", classification_function="3", balance_classes="true", perturbation="0.1")
    assert (s.seed, s.classification_function, s.balance_classes, s.perturbation) == (4, 3, True, 0.1)
    assert make_source("hyperplane", model_seed="7").model_seed == 7
    assert make_source("SEA").variant == 0


def test_csv_text_parameters_are_converted(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a|k|y\n1|u|0\n2|v|1\n")
    s = make_source(f"csv:{path}", label="y", delimiter="pipe", lookahead="1", max_categories="5",
                    categorical="k=u|v|w")
    assert s.delimiter == "|" and s.categories == {"k": ["u", "v", "w"]}
    assert s.to_arrays(2)[0].tolist() == [[1.0, 1.0, 0.0, 0.0], [2.0, 0.0, 1.0, 0.0]]


@pytest.mark.parametrize("name,params", [
    ("nope", {}), ("csv", {}), ("sea:x", {}), ("sea", {"width": 3}), ("sea", {"variant": "two"}),
    ("elec2", {"label": "y"}), (5, {}),
])
def test_bad_names_and_parameters(name, params):
    with pytest.raises(ConfigError):
        make_source(name, **params)
