"""The node's hot-path scoring helpers give what the general code gives."""

import numpy as np
import pytest
import torch

from streamlearn.learners import TorchLearner, make_learner
from streamlearn.node.scoring import live_flat, mean_loss, score, score_step


class _Learner:
    def __init__(self, classes):
        self.classes_ = classes


@pytest.mark.parametrize("learner_classes", [["a", "b", "c"], ["c", "a", "b"], ["b", "a"], []])
def test_score_step_equals_score(learner_classes):
    rng = np.random.default_rng(0)
    classes = ["a", "b", "c"]
    yi = rng.integers(0, 3, size=50)
    P = rng.dirichlet(np.ones(max(len(learner_classes), 1)), size=50)[:, :len(learner_classes)]
    got = score_step(P, _Learner(learner_classes), classes, yi)
    want = score(P, learner_classes, classes, yi)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


def test_mean_loss_is_nanmean_bit_for_bit():
    rng = np.random.default_rng(1)
    loss = -np.log(rng.random(1000))
    assert mean_loss(loss) == float(np.nanmean(loss))
    loss[::3] = np.nan  # samples without a prediction
    assert mean_loss(loss) == float(np.nanmean(loss))
    assert np.isnan(mean_loss(np.full(4, np.nan)))


def test_live_flat_reads_without_a_copy_when_the_learner_can():
    torch_learner = TorchLearner("logreg", n_features=2, classes=[0, 1], seed=0, device="cpu")
    live = live_flat(torch_learner)
    torch_learner.set_flat(torch.ones(torch_learner.n_params))
    assert torch.equal(live, torch.ones(torch_learner.n_params))  # the parameters themselves
    river = make_learner("river-logreg", features=["a", "b"], classes=[0, 1])
    assert torch.equal(live_flat(river), river.get_flat())  # get_flat() without copy=: a copy
