"""Aggregation math of model syncing, as small pure tensor functions."""

from __future__ import annotations

import torch

from streamlearn.errors import ConfigError

__all__ = ["weighted_mean", "sq_dist", "server_step", "reference_velocity"]


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


def server_step(r: torch.Tensor, mean: torch.Tensor, lr: float = 1.0, momentum: float = 0.0,
                velocity: torch.Tensor | None = None, n_params: int | None = None):
    """The coordinator's step at a full sync: ``r + lr * v`` with ``v = momentum * velocity + (mean - r)``.

    FedAvgM / FedOpt's server SGD (Hsu et al. 2019; Reddi et al. 2021): ``mean - r`` is the
    average of the nodes' moves since the last full sync, a pseudo-gradient; ``lr = 1`` without
    momentum is plain averaging (``mean`` itself, returned as it is). Only the first
    ``n_params`` entries take the step; the buffers after them (an online scaler's statistics)
    take the mean: they are statistics of the data, not something to extrapolate.

    Returns ``(model, velocity)``; ``velocity`` is None when ``momentum`` is 0.

    Examples
    --------
    >>> import torch
    >>> r, mean = torch.tensor([0.0, 1.0, 5.0]), torch.tensor([1.0, 2.0, 7.0])
    >>> server_step(r, mean, lr=2.0, n_params=2)[0].tolist()     # buffer (5 -> 7) takes the mean
    [2.0, 3.0, 7.0]
    >>> model, v = server_step(r, mean, lr=1.0, momentum=0.5, velocity=torch.tensor([1.0, 0.0]), n_params=2)
    >>> model.tolist(), v.tolist()
    ([1.5, 2.0, 7.0], [1.5, 1.0])
    """
    if lr == 1.0 and not momentum:
        return mean, None
    p = r.shape[-1] if n_params is None else int(n_params)
    step = mean[:p] - r[:p]
    if momentum:
        step = step if velocity is None else momentum * velocity + step
    out = mean.clone()
    out[:p] = r[:p] + lr * step
    return out, (step if momentum else None)


def reference_velocity(r_old: torch.Tensor, r_new: torch.Tensor, steps) -> torch.Tensor:
    """How fast the reference moved between two full syncs ``steps`` apart: ``(r_new - r_old) / steps``
    (zeros when ``steps`` is not positive). Rows are nodes when the inputs are 2-D and ``steps`` a vector.

    Dynamic averaging against an extrapolated reference (prediction-based geometric monitoring,
    Giatrakos et al. 2012) checks ``||w - (r + (t - t_sync) v)||^2 <= delta``: the movement all
    nodes share then no longer counts as divergence.

    Examples
    --------
    >>> import torch
    >>> reference_velocity(torch.tensor([0.0, 1.0]), torch.tensor([2.0, 1.0]), 4).tolist()
    [0.5, 0.0]
    >>> r, v = torch.tensor([1.0, 1.0]), torch.tensor([0.5, 0.0])
    >>> (r + 3 * v).tolist()   # the reference extrapolated 3 steps after the sync
    [2.5, 1.0]
    """
    steps = torch.as_tensor(steps, dtype=r_new.dtype, device=r_new.device)
    if r_new.dim() == 2 and steps.dim() == 1:
        steps = steps.unsqueeze(1)
    safe = torch.where(steps > 0, steps, torch.ones_like(steps))
    return torch.where(steps > 0, (r_new - r_old) / safe, torch.zeros_like(r_new))
