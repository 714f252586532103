"""Aggregation math of model syncing, as small pure tensor functions."""

from __future__ import annotations

import torch

from streamlearn.errors import ConfigError

__all__ = ["weighted_mean", "sq_dist"]


def weighted_mean(W: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of the rows of ``W`` (n x d), optionally weighted.

    Parameters
    ----------
    W
        One model per row.
    weights
        Non-negative weight per row (e.g. samples seen since the last sync).
        ``None`` gives every row the same weight.

    Returns
    -------
    torch.Tensor
        The mean model, shape (d,).

    Examples
    --------
    >>> import torch
    >>> W = torch.tensor([[0.0, 2.0], [2.0, 4.0]])
    >>> weighted_mean(W).tolist()
    [1.0, 3.0]
    >>> weighted_mean(W, torch.tensor([3.0, 1.0])).tolist()
    [0.5, 2.5]
    """
    if W.dim() != 2 or W.shape[0] == 0:
        raise ConfigError(f"weighted_mean needs a non-empty n x d tensor, got shape {tuple(W.shape)}")
    if weights is None:
        return W.mean(dim=0)
    weights = torch.as_tensor(weights, device=W.device, dtype=W.dtype)
    if weights.shape != (W.shape[0],):
        raise ConfigError(f"weights: need shape ({W.shape[0]},), got {tuple(weights.shape)}")
    total = weights.sum()
    if bool((weights < 0).any()) or not bool(total > 0):
        raise ConfigError(f"weights: need non-negative weights with a positive sum, got {weights.tolist()}")
    return (weights @ W) / total


def sq_dist(W: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Squared L2 distance of each row of ``W`` to ``r`` (a 1-D ``W`` gives a scalar).

    Examples
    --------
    >>> import torch
    >>> sq_dist(torch.tensor([[1.0, 1.0], [3.0, 1.0]]), torch.tensor([1.0, 1.0])).tolist()
    [0.0, 4.0]
    """
    return (W - r).square().sum(dim=-1)
