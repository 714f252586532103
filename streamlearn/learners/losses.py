"""Losses, vmap-safe: classification ``loss(logits[B, k], y_idx[B]) -> scalar mean``, regression
``loss(out[B, 1], y[B] float) -> scalar mean`` (the target as the learner trains on it: standardised
when ``scale_target``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from streamlearn.errors import ConfigError

__all__ = ["LOSSES", "REGRESSION_LOSSES", "cross_entropy", "hinge", "squared", "huber", "get_loss", "is_regression_loss"]


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean softmax cross-entropy."""
    return F.cross_entropy(logits, y)


def hinge(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean multi-class hinge (Crammer-Singer style, as ``torch.nn.MultiMarginLoss``, margin 1).

    Written with ``gather`` rather than ``F.multi_margin_loss`` so that it runs under vmap.

    >>> import torch
    >>> logits, y = torch.tensor([[2.0, 0.5, -1.0]]), torch.tensor([0])
    >>> float(hinge(logits, y)) == float(torch.nn.functional.multi_margin_loss(logits, y))
    True
    """
    k = logits.shape[-1]
    correct = logits.gather(-1, y.unsqueeze(-1))
    margins = (1.0 - correct + logits).clamp_min(0.0)
    # The j == y term is exactly 1 (margin against itself): take it out.
    return ((margins.sum(-1) - 1.0) / k).mean()


def squared(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error of a one-output model: ``mean((out[:, 0] - y) ** 2)``.

    >>> import torch
    >>> float(squared(torch.tensor([[1.0], [3.0]]), torch.tensor([0.0, 1.0])))
    2.5
    """
    return F.mse_loss(out.squeeze(-1), y)


#: Huber's threshold, in the units the learner trains in (target standard deviations with
#: ``scale_target``): errors beyond it count linearly, so a few wild readings do not dominate.
HUBER_DELTA = 1.0


def huber(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean Huber loss (``delta`` = :data:`HUBER_DELTA`): quadratic within delta, linear beyond.

    >>> import torch
    >>> float(huber(torch.tensor([[0.5], [3.0]]), torch.tensor([0.0, 0.0])))  # (0.125 + 2.5) / 2
    1.3125
    """
    return F.huber_loss(out.squeeze(-1), y, delta=HUBER_DELTA)


LOSSES = {"cross_entropy": cross_entropy, "hinge": hinge, "squared": squared, "huber": huber}
#: Losses of a regression model (one output, a float target).
REGRESSION_LOSSES = ("squared", "huber")


def is_regression_loss(name: str) -> bool:
    """True for the losses of a regression model (:data:`REGRESSION_LOSSES`)."""
    return name in REGRESSION_LOSSES


def get_loss(name: str):
    try:
        return LOSSES[name]
    except KeyError:
        raise ConfigError(f"loss: one of {sorted(LOSSES)}, got {name!r}") from None
