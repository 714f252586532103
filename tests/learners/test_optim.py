"""PlainSGD steps exactly as torch.optim.SGD without momentum, and keeps torch._dynamo out of a plain-SGD process."""

import subprocess
import sys

import pytest
import torch

from streamlearn.learners import TorchLearner
from streamlearn.learners.optim import PlainSGD, make_optimizer


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_steps_equal_torch_sgd_bit_for_bit(weight_decay):
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(50, generator=gen)
    a, b = w0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
    ours, theirs = PlainSGD([a], lr=0.3, weight_decay=weight_decay), torch.optim.SGD([b], lr=0.3,
                                                                                    weight_decay=weight_decay)
    for step in range(20):
        g = torch.randn(50, generator=gen)
        for opt, w in ((ours, a), (theirs, b)):
            opt.zero_grad(set_to_none=True)
            w.grad = g.clone()
            if step == 10:
                opt.param_groups[0]["lr"] = 0.1  # a caller (schedule, loss guard) sets the step size
            opt.step()
        assert torch.equal(a, b)
    assert ours.state_dict() == {**theirs.state_dict(), "param_groups": [
        {k: v for k, v in theirs.state_dict()["param_groups"][0].items() if k in ours.param_groups[0]}]}


def test_state_dict_round_trip_and_refuses_state():
    w = torch.zeros(3, requires_grad=True)
    opt = PlainSGD([w], lr=0.5)
    sd = opt.state_dict()
    sd["param_groups"][0]["lr"] = 0.25
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["lr"] == 0.25 and opt.param_groups[0]["params"] == [w]
    with pytest.raises(ValueError, match="no state"):
        opt.load_state_dict({"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": sd["param_groups"]})


def test_momentum_and_adam_stay_torch_optimizers():
    w = torch.zeros(3, requires_grad=True)
    assert isinstance(make_optimizer([w], "sgd", 0.1), PlainSGD)
    assert isinstance(make_optimizer([w], "sgd", 0.1, momentum=0.9), torch.optim.SGD)
    assert isinstance(make_optimizer([w], "adam", 0.1), torch.optim.Adam)
    assert isinstance(TorchLearner("logreg", n_features=2, classes=[0, 1]).optimizer_, PlainSGD)


def test_a_plain_sgd_learner_does_not_import_torch_dynamo():
    # torch.optim's first optimizer imports torch._dynamo: most of a node's start-up time on CPU
    code = ("import sys, numpy as np\n"
            "from streamlearn.learners import TorchLearner\n"
            "m = TorchLearner('mlp', n_features=3, classes=[0, 1])\n"
            "m.learn_many(np.zeros((4, 3), np.float32), [0, 1, 0, 1])\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
