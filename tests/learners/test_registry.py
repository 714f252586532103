"""The registry: river models get the learner's seed; river linear names build one-vs-rest for k > 2 classes."""

from __future__ import annotations

import json

import pytest

from streamlearn.cli import main
from streamlearn.errors import ConfigError
from streamlearn.evaluation import evaluate
from streamlearn.learners import make_learner
from streamlearn.streams import make_source


def _arf_run(seed):
    learner = make_learner("adaptive-random-forest", n_models=3, seed=seed)
    res = evaluate(make_source("sea", seed=0), learner, n=1500, detector=None, progress=False)
    return res.accuracy, res.loss, res.history["rolling_loss"].tolist()


def test_arf_with_the_same_seed_gives_the_same_run():
    assert make_learner("adaptive-random-forest", seed=5).model.seed == 5
    assert _arf_run(3) == _arf_run(3)


def test_seed_is_dropped_for_river_models_that_draw_no_random_numbers():
    for name in ("hoeffding-tree", "naive-bayes", "river-logreg", "river-perceptron", "river-pa"):
        assert "seed" not in make_learner(name, seed=1).model._get_params(), name
    with pytest.raises(ConfigError, match="seed"):
        make_learner("adaptive-random-forest", seed="x")


def test_cli_evaluate_passes_seed_to_arf(tmp_path):
    out = []
    for i in range(2):
        path = tmp_path / f"run{i}.json"
        assert main(["evaluate", "--source", "sea", "--n", "1200", "--learner", "adaptive-random-forest",
                     "--seed", "4", "--detector", "none", "--no-progress", "--json", str(path)]) == 0
        out.append(json.loads(path.read_text()))
    assert out[0]["history"] == out[1]["history"] and out[0]["accuracy"] == out[1]["accuracy"]
    assert "seed=4" in out[0]["settings"]["learner"].replace(" ", "")
