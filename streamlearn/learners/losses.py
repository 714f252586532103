"""Classification losses: ``loss(logits[B, k], y_idx[B]) -> scalar mean``, vmap-safe."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from streamlearn.errors import ConfigError

__all__ = ["LOSSES", "cross_entropy", "hinge", "get_loss"]


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


LOSSES = {"cross_entropy": cross_entropy, "hinge": hinge}


def get_loss(name: str):
    try:
        return LOSSES[name]
    except KeyError:
        raise ConfigError(f"loss: one of {sorted(LOSSES)}, got {name!r}") from None
