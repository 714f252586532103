"""Guarded averaging: a node declines a model from the sync that is worse than its own on its recent samples.

A node whose concept is its own (one recalibrated machine, one station that moved) is pulled back by
an average of the others. With a guard, a node keeps a window of its most recent labelled samples
(already learned, in test-then-train order) and, when a model arrives from the sync, compares the
mean log loss of that model on the window with its own model's. If the arriving model is worse by
more than ``margin`` (nats), the node keeps its own model and tells the sync service it declined.
It takes the new reference all the same, so that it and the coordinator keep one reference
(compressed deltas are taken against it). The simulator and the node service decide with the same
function, :func:`accepts`.

A regression model is judged by :func:`regression_window_loss` instead: its mean squared error on
the window in standard deviations of the window's targets, so the margin is unitless there too.

Examples
--------
>>> import torch
>>> accepts(torch.tensor([0.30, 0.90]), torch.tensor([0.35, 0.40]), margin=0.05).tolist()
[True, False]
>>> round(window_loss(torch.tensor([[0.9, 0.5]])).item(), 4)   # from the probabilities of the true class
0.3993
"""

from __future__ import annotations

import math

import torch

from streamlearn.errors import ConfigError

__all__ = ["accepts", "window_loss", "regression_window_loss", "check_guard", "MAX_LOSS"]

MAX_LOSS = -math.log(1e-15)  # the evaluator's clip: p >= 1e-15


def window_loss(p_true: torch.Tensor) -> torch.Tensor:
    """Mean log loss per row of the probabilities each row's model gave the true classes (k x W)."""
    return (-torch.log(p_true.clamp_min(1e-15))).clamp_max(MAX_LOSS).mean(dim=-1)


def regression_window_loss(pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error per row of predictions ``pred`` against targets ``y`` (k x W), in units of the
    standard deviation of each row's targets (1 when they are all equal): a regression's guard loss.

    >>> import torch
    >>> y = torch.tensor([[10.0, 12.0, 14.0]])
    >>> regression_window_loss(torch.tensor([[10.0, 12.0, 14.0], [11.0, 13.0, 15.0]]), y.repeat(2, 1)).tolist()
    [0.0, 0.375]
    """
    std = y.double().std(dim=-1, unbiased=False, keepdim=True)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (((pred.double() - y.double()) / std) ** 2).mean(dim=-1).to(pred.dtype)


def accepts(incoming_loss: torch.Tensor, own_loss: torch.Tensor, margin: float) -> torch.Tensor:
    """Which nodes take the arriving model: those where it is not worse than their own by more than ``margin``."""
    return torch.as_tensor(incoming_loss) <= torch.as_tensor(own_loss) + margin


def check_guard(window, margin) -> tuple[int | None, float]:
    """``(window, margin)`` validated: window None (no guard) or an int >= 10; margin a finite number >= 0."""
    if window is None:
        return None, float(margin)
    if isinstance(window, bool) or not isinstance(window, int) or window < 10:
        raise ConfigError(f"guard: the window must be an integer >= 10 samples, got {window!r}")
    try:
        margin = float(margin)
    except (TypeError, ValueError):
        raise ConfigError(f"guard_margin must be a number, got {margin!r}") from None
    if not math.isfinite(margin) or margin < 0:
        raise ConfigError(f"guard_margin must be a finite number >= 0, got {margin!r}")
    return window, margin
