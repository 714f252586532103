"""Example factories for ``--learner tests.learners.custom_models:NAME`` (docs and tests).

A torch factory takes the layout it names (``n_features``, ``n_classes``, ``features``, ``classes``)
and returns an ``nn.Module`` giving logits; a river factory takes nothing and returns a classifier.
"""

from __future__ import annotations

import torch
from river import naive_bayes, tree
from torch import nn


def tiny_mlp(n_features: int, n_classes: int, hidden: int = 8) -> nn.Module:
    """A small MLP: features -> hidden -> logits."""
    return nn.Sequential(nn.Linear(n_features, hidden), nn.Tanh(), nn.Linear(hidden, n_classes))


class ResidualNet(nn.Module):
    """An nn.Module subclass with a LayerNorm, a residual block and dropout (called like a factory)."""

    def __init__(self, n_features: int, n_classes: int, width: int = 16, dropout: float = 0.0):
        super().__init__()
        self.inp = nn.Linear(n_features, width)
        self.norm = nn.LayerNorm(width)
        self.block = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Dropout(dropout))
        self.out = nn.Linear(width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x))
        return self.out(self.norm(h + self.block(h)))


def named_features(features: list, classes) -> nn.Module:
    """A factory that reads the feature names and labels instead of their counts."""
    return nn.Linear(len(features), len(classes))


def with_buffer(n_features: int, n_classes: int) -> nn.Module:
    """A constant buffer (a fixed feature mask) is fine: it is kept, not averaged."""
    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mask", torch.ones(n_features))
            self.lin = nn.Linear(n_features, n_classes)

        def forward(self, x):
            return self.lin(x * self.mask)

    return Masked()


def hoeffding_tree():
    """A river classifier factory (no arguments): it learns locally, never averaged."""
    return tree.HoeffdingTreeClassifier(grace_period=50)


GaussianNB = naive_bayes.GaussianNB  # a river classifier class works as a factory too


class ItemScaled(nn.Module):
    """Reads a Python number off its input (``.item()``): torch.func.vmap cannot batch that."""

    def __init__(self, n_features: int, n_classes: int):
        super().__init__()
        self.lin = nn.Linear(n_features, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.abs().max().item() > 1e6:  # data-dependent Python control flow
            x = x / 1e6
        return self.lin(x)


def vmap_unfriendly(n_features: int, n_classes: int) -> nn.Module:
    return ItemScaled(n_features, n_classes)


# -- broken ones, for the error messages ---------------------------------------------------------------


def raises(n_features: int, n_classes: int) -> nn.Module:
    raise ValueError("no GPU here")


def not_a_model(n_features: int, n_classes: int):
    return 42


def no_parameters(n_features: int, n_classes: int) -> nn.Module:
    return nn.Identity()


def wrong_output(n_features: int, n_classes: int) -> nn.Module:
    return nn.Linear(n_features, n_classes + 3)


def batchnorm(n_features: int, n_classes: int) -> nn.Module:
    return nn.Sequential(nn.Linear(n_features, 8), nn.BatchNorm1d(8), nn.Linear(8, n_classes))


def river_regressor():
    from river import linear_model

    return linear_model.LinearRegression()


def bad_forward(n_features: int, n_classes: int) -> nn.Module:
    return nn.Linear(n_features + 1, n_classes)


def lazy(n_features: int, n_classes: int) -> nn.Module:
    return nn.LazyLinear(n_classes)


def needs_depth(n_features: int, n_classes: int, depth) -> nn.Module:
    return nn.Linear(n_features, n_classes)


NOT_CALLABLE = 3
