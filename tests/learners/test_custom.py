"""Your own model as ``--learner package.module:factory``: torch module factories and river classifiers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from separable import CLASSES, FEATURES, make_data

from streamlearn.cli import main
from streamlearn.errors import ConfigError, StreamlearnError
from streamlearn.learners import RiverLocal, TorchLearner, is_averageable, make_learner
from streamlearn.learners.custom import resolve
from streamlearn.learners.registry import learner_family
from streamlearn.sim.simulator import NodeData, simulate

MOD = "tests.learners.custom_models"


def spec(name: str) -> str:
    return f"{MOD}:{name}"


def _csv(path: Path, n: int, seed: int = 0) -> Path:
    X, y = make_data(n, seed)
    lines = [",".join(FEATURES + ["y"])] + [",".join(f"{v:.5f}" for v in x) + f",{c}" for x, c in zip(X, y)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _node_data(m: int, n: int) -> NodeData:
    parts = [make_data(n, 40 + i) for i in range(m)]
    return NodeData(X=np.stack([p[0] for p in parts]), y=np.stack([p[1] for p in parts]), classes=CLASSES,
                    feature_names=FEATURES)


# ---- torch module factories --------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny_mlp", "ResidualNet", "named_features", "with_buffer"])
def test_a_torch_factory_becomes_an_averageable_torch_learner_that_learns(name):
    X, y = make_data(2000, 1)
    learner = make_learner(spec(name), features=FEATURES, classes=CLASSES, lr=0.1, scale=True, seed=0, device="cpu")
    assert isinstance(learner, TorchLearner) and is_averageable(learner) and learner_family(spec(name)) == "torch"
    hits = []
    for i in range(0, len(y), 10):
        P = learner.predict_proba_learn_many(X[i:i + 10], y[i:i + 10])
        hits.append(P.argmax(1) == y[i:i + 10])
    assert np.concatenate(hits[100:]).mean() > 0.93
    # the flat vector round-trips and moves the module: set_flat(0) gives uniform probabilities
    flat = learner.get_flat()
    learner.set_flat(torch.zeros_like(flat))
    assert np.allclose(learner.predict_proba_many(X[:5]), 0.5)
    learner.set_flat(flat)
    assert learner.get_flat().equal(flat)


def test_the_factory_is_seeded_so_every_node_builds_the_same_model_and_the_global_rng_is_left_alone():
    def build(seed):
        return make_learner(spec("tiny_mlp"), features=FEATURES, classes=CLASSES, seed=seed, device="cpu")

    state = torch.random.get_rng_state()
    a, b, c = build(3), build(3), build(4)
    assert torch.equal(state, torch.random.get_rng_state())
    assert a.get_flat().equal(b.get_flat()) and not a.get_flat().equal(c.get_flat())
    assert a.clone().get_flat().equal(a.get_flat())  # clone() calls the factory again with the seed
    # the flat vector is the module's parameters in named_parameters() order
    torch.manual_seed(3)
    module = __import__(MOD, fromlist=["tiny_mlp"]).tiny_mlp(3, 2)
    assert a.get_flat().equal(torch.cat([p.detach().reshape(-1) for p in module.parameters()]))
    assert list(a.params_) == [n for n, _ in module.named_parameters()]


def test_a_custom_module_checkpoints_as_a_flat_vector_with_its_optimizer_state():
    from streamlearn.kafka.checkpoint import learner_state, restore_learner_state

    X, y = make_data(40, 2)
    a = make_learner(spec("ResidualNet"), features=FEATURES, classes=CLASSES, optimizer="adam", scale=True, seed=0,
                     device="cpu")
    a.learn_many(X[:20], y[:20])
    arrays, meta = learner_state(a)
    b = make_learner(spec("ResidualNet"), features=FEATURES, classes=CLASSES, optimizer="adam", scale=True, seed=1,
                     device="cpu")
    restore_learner_state(b, arrays, meta)
    for m in (a, b):
        m.learn_many(X[20:], y[20:])
    assert a.get_flat().equal(b.get_flat())


def test_the_factory_is_given_the_layout_arguments_it_names():
    assert resolve(spec("tiny_mlp")).takes == ("n_features", "n_classes")
    assert resolve(spec("named_features")).takes == ("features", "classes")
    learner = make_learner(spec("named_features"), features=["p", "q", "r", "s"], classes=["lo", "mid", "hi"],
                           seed=0, device="cpu")
    assert learner.n_params == 4 * 3 + 3


def test_evaluate_learns_a_separable_stream_with_a_custom_module(tmp_path, capsys):
    path = _csv(tmp_path / "sep.csv", 3000)
    out = tmp_path / "res.json"
    code = main(["evaluate", "--source", f"csv:{path}", "--label", "y", "--learner", spec("tiny_mlp"), "--lr", "0.1",
                 "--seed", "1", "--json", str(out)])
    assert code == 0
    res = json.loads(out.read_text())
    assert res["learner"] == spec("tiny_mlp") and res["accuracy"] > 0.93, res["accuracy"]


def test_simulate_averages_a_custom_module_over_four_nodes_in_the_batched_bank_path(tmp_path, capsys):
    data = _node_data(4, 800)
    learner = make_learner(spec("ResidualNet"), lr=0.1, seed=0, scale=True, device="cpu")
    res = simulate(data, learner, "periodic:b=10", batch_size=10, progress=False)
    assert res.accuracy > 0.93 and res.transfers == 8 * 8  # 8 rounds of sync, 4 up + 4 down each
    assert torch.equal(res.final_models[0], res.final_models[3])  # the last round ended on a full sync
    # the batched forward equals each model's own forward
    template = learner.clone({"features": FEATURES, "n_features": None, "classes": CLASSES})
    forward, _ = template.functional()
    W = res.final_models[:, :template.n_params] + 0.01 * torch.arange(4.0)[:, None]
    Xb = torch.randn(4, 7, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        many = forward(W, Xb)
        one = torch.stack([forward(W[i], Xb[i]) for i in range(4)])
    assert many.shape == (4, 7, 2) and torch.allclose(many, one, atol=1e-5)
    # and through the CLI
    path = _csv(tmp_path / "sep.csv", 4000, seed=2)
    code = main(["simulate", "--source", f"csv:{path}", "--label", "y", "--nodes", "4", "--learner", spec("tiny_mlp"),
                 "--lr", "0.1", "--protocol", "periodic", "--b", "10", "--no-progress", "--json",
                 str(tmp_path / "sim.json")])
    assert code == 0
    sim = json.loads((tmp_path / "sim.json").read_text())
    assert sim["accuracy"] > 0.9 and sim["transfers"] > 0


def test_a_module_vmap_cannot_batch_runs_model_by_model_with_a_warning():
    data = _node_data(3, 600)
    learner = make_learner(spec("vmap_unfriendly"), lr=0.5, seed=0, device="cpu")
    with pytest.warns(RuntimeWarning, match="vmap cannot batch"):
        res = simulate(data, learner, "periodic:b=5", batch_size=10, progress=False)
    assert res.accuracy > 0.8 and res.transfers > 0


# ---- river classifiers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["hoeffding_tree", "GaussianNB"])
def test_a_river_classifier_learns_locally_with_nosync_and_refuses_an_averaging_protocol(name, capsys, tmp_path):
    learner = make_learner(spec(name), features=FEATURES)
    assert isinstance(learner, RiverLocal) and not is_averageable(learner)
    assert learner_family(spec(name)) == "river-local"
    res = simulate(_node_data(4, 500), make_learner(spec(name)), "nosync", progress=False)
    assert res.accuracy > 0.85 and res.transfers == 0 and res.m == 4
    path = _csv(tmp_path / "sep.csv", 2000)
    assert main(["simulate", "--source", f"csv:{path}", "--label", "y", "--nodes", "4", "--learner", spec(name),
                 "--protocol", "nosync", "--no-progress"]) == 0
    assert "nosync" in capsys.readouterr().out
    assert main(["simulate", "--source", f"csv:{path}", "--label", "y", "--nodes", "4", "--learner", spec(name),
                 "--protocol", "periodic", "--b", "10", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"learner '{spec(name)}' is a river classifier" in err and "cannot be averaged" in err
    assert "no flat parameters" in err and "--protocol nosync" in err
    with pytest.raises(ConfigError, match="cannot be averaged"):
        simulate(_node_data(2, 100), make_learner(spec(name)), "periodic:b=1", progress=False)


def test_node_and_demo_settings_check_a_custom_learner_at_the_edge():
    from streamlearn.kafka.demo import DemoConfig
    from streamlearn.kafka.node import node_config_from_options

    base = {"id": 0, "features": "a,b,c", "classes": "0,1"}
    assert node_config_from_options({**base, "learner": spec("tiny_mlp"), "lr": 0.1}).learner == spec("tiny_mlp")
    assert node_config_from_options({**base, "learner": spec("hoeffding_tree"), "protocol": "nosync"})
    for bad, match in [({"learner": spec("hoeffding_tree"), "protocol": "periodic:b=5"}, "cannot be averaged"),
                       ({"learner": f"{MOD}_missing:net"}, "no module named"),
                       ({"learner": spec("nope")}, "has no attribute 'nope'"),
                       ({"learner": spec("hoeffding_tree"), "protocol": "nosync", "checkpoint_dir": "/tmp/x"},
                        "cannot be saved")]:
        with pytest.raises(ConfigError, match=match):
            node_config_from_options({**base, **bad})
    with pytest.raises(ConfigError, match="cannot be averaged"):
        DemoConfig(learner=spec("GaussianNB"), protocol="dynamic:delta=0.5,b=1").check()


# ---- clear errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, match", [
    (f"{MOD}_missing:net", r"no module named 'tests.learners.custom_models_missing' \(put it on PYTHONPATH"),
    (spec("nothing_here"), (r"module 'tests.learners.custom_models' has no attribute 'nothing_here' \(callables "
                            r"defined there: ItemScaled, ResidualNet, bad_forward, .*tiny_mlp")),
    (spec("NOT_CALLABLE"), "'NOT_CALLABLE' is a int, not a callable factory"),
    (f"{MOD}:", "a custom learner is package.module:factory"),
    (spec("raises"), r"the factory raised ValueError: no GPU here \(called as raises\(n_features=3, n_classes=2\)\)"),
    (spec("not_a_model"), ("the factory returned a builtins.int; it must return a torch.nn.Module .* or a river "
                           "classifier")),
    (spec("river_regressor"), "returned a river.linear_model.lin_reg.LinearRegression"),
    (spec("no_parameters"), "the module Identity has no parameters: nothing to learn or average"),
    (spec("wrong_output"), r"maps a \(2, 3\) batch to \(2, 5\); it must give \(B, n_classes\) = \(2, 2\) logits"),
    (spec("bad_forward"), r"the module's forward failed on a \(2, 3\) float32 batch of 3 features: RuntimeError"),
    (spec("batchnorm"), r"changes its buffers \['1.running_mean', '1.running_var', '1.num_batches_tracked'\]"),
    (spec("needs_depth"), r"required parameter\(s\) \['depth'\]"),
    (spec("lazy"), r"parameter 'weight' is lazy \(e.g. nn.LazyLinear\); give the sizes"),
])
def test_bad_factories_are_config_errors_naming_the_learner_and_what_is_wrong(name, match):
    with pytest.raises(ConfigError, match=match) as info:
        make_learner(name, features=FEATURES, classes=CLASSES, seed=0, device="cpu")
    if name != f"{MOD}:":
        assert f"learner {name!r}" in str(info.value)


def test_options_a_learner_does_not_take_are_config_errors(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"takes none of \['lr'\]"):
        make_learner(spec("hoeffding_tree"), lr=0.1)
    with pytest.raises(ConfigError, match="hidden not for a custom module"):
        make_learner(spec("tiny_mlp"), hidden=(4,))
    path = _csv(tmp_path / "sep.csv", 200)
    assert main(["evaluate", "--source", f"csv:{path}", "--label", "y", "--learner", spec("GaussianNB"),
                 "--optimizer", "adam"]) == 2
    assert "only for torch learners" in capsys.readouterr().err


def test_a_module_next_to_the_user_is_found_from_the_current_folder(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_models_for_streamlearn.py").write_text(
        "from torch import nn\n\ndef make(n_features, n_classes):\n    return nn.Linear(n_features, n_classes)\n")
    path = _csv(tmp_path / "sep.csv", 1000)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert main(["evaluate", "--source", f"csv:{path}", "--label", "y", "--learner", "my_models_for_streamlearn:make",
                 "--lr", "0.2"]) == 0
    assert "accuracy" in capsys.readouterr().out
    sys.modules.pop("my_models_for_streamlearn", None)


def test_a_built_in_name_is_still_checked(capsys):
    with pytest.raises((ConfigError, StreamlearnError), match="package.module:factory"):
        learner_family("svm")
