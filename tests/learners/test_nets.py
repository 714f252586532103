"""Net.cross_entropy_grad (the simulator bank's backward pass written out) against autograd."""

import pytest
import torch
import torch.nn.functional as F

from streamlearn.learners import TorchLearner
from streamlearn.learners.nets import build_net


@pytest.mark.parametrize("arch, hidden, k", [("logreg", (), 2), ("logreg", (), 4), ("mlp", (8,), 2),
                                             ("mlp", (8, 5), 3)])
def test_gradient_equals_autograd(arch, hidden, k):
    gen = torch.Generator().manual_seed(1)
    net = build_net(arch, n_features=6, n_classes=k, hidden=hidden)
    m, B = 5, 7
    W = torch.stack([net.init(gen) for _ in range(m)]).requires_grad_(True)
    X = torch.randn(m, B, 6, generator=gen) * 3
    y = torch.randint(0, k, (m, B), generator=gen)
    # the loss the bank stepped by before: the sum over rows of each row's mean cross-entropy
    F.cross_entropy(net.forward(W, X).reshape(-1, k), y.reshape(-1), reduction="sum").div(B).backward()
    logits, G = net.cross_entropy_grad(W.detach(), X, y)
    assert torch.equal(logits, net.forward(W.detach(), X))  # the same forward: the same predictions
    torch.testing.assert_close(G, W.grad, rtol=1e-5, atol=1e-6)
    assert G.shape == (m, net.d)


def test_learners_offer_it_only_where_it_holds():
    assert TorchLearner("mlp", n_features=3, classes=[0, 1]).bank_gradient() is not None
    assert TorchLearner("cnn", n_features=3, classes=[0, 1]).bank_gradient() is None
    assert TorchLearner("logreg", n_features=3, classes=[0, 1], loss="hinge").bank_gradient() is None
    assert TorchLearner("mlp", n_features=3, loss="squared").bank_gradient() is None
