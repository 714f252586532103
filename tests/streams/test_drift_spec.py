"""The drift spec syntax: every documented example parses, round-trips, and bad specs are ConfigErrors naming them."""

import pytest

from streamlearn.errors import ConfigError
from streamlearn.streams import DRIFT_KINDS, DriftSpec, parse_drift

EXAMPLES = ["sudden@5000", "gradual@5000:width=1000", "recurring@5000:period=5000", "label-permutation@3000",
            "feature-shift@2000:shift=1.0", "noise@1000:sigma=0.3", "incremental@2000:width=4000",
            "feature-rotation@0:angle=45,features=x0|x1,units=raw", "feature-scale@10:scale=0.5,width=100",
            "recurring@10:period=5,count=3", "noise@0:sigma=0,flip=0.2"]


@pytest.mark.parametrize("text", EXAMPLES)
def test_examples_parse_and_round_trip(text):
    spec = parse_drift(text)
    assert spec.kind in DRIFT_KINDS and set(spec.params) == set(DRIFT_KINDS[spec.kind]["params"])
    again = parse_drift(str(spec))
    assert again == spec


def test_values_are_typed_and_defaults_filled():
    spec = parse_drift(" Gradual@5_000:width=250 ")
    assert spec == DriftSpec("gradual", 5000, {"width": 250})
    assert parse_drift("feature-rotation@3:features=a|b").params == {
        "angle": 90.0, "width": 0, "features": ("a", "b"), "units": "std"}
    assert parse_drift("recurring@1:period=2").params["count"] is None
    assert parse_drift(spec) is spec
    assert spec.shifted(10).position == 5010


@pytest.mark.parametrize("text", [
    "sudden", "sudden@", "@100", "sideways@100", "sudden@-5", "sudden@1.5", "gradual@10:width=0",
    "gradual@10:width=abc", "gradual@10:size=3", "noise@10:sigma=-1", "noise@10:flip=2", "noise@1:sigma",
    "feature-shift@1:units=cm", "recurring@1:period=0", "gradual@1:width=5,width=6", "feature-shift@1:shift=nan",
])
def test_bad_specs_raise_config_error_naming_the_spec(text):
    with pytest.raises(ConfigError) as info:
        parse_drift(text)
    assert repr(text) in str(info.value)


def test_non_string_spec():
    with pytest.raises(ConfigError):
        parse_drift(5000)
    with pytest.raises(ConfigError):
        DriftSpec("sudden", 10, {"width": 5})


def test_catalogue_lists_description_and_defaults():
    for kind, entry in DRIFT_KINDS.items():
        assert entry["description"] and isinstance(entry["params"], dict)
        DriftSpec(kind, 0)  # defaults are valid
