"""NoSync: every node learns alone; the baseline with zero communication."""

from __future__ import annotations

import math

import torch

from streamlearn.sync.protocol import Protocol

__all__ = ["NoSync"]


class NoSync(Protocol):
    """No synchronization: the node rule never sends anything and the coordinator never acts.

    Only a late joiner is sent the reference (the initial model ``w0``), like in every protocol.

    Examples
    --------
    >>> p = NoSync(m=3, d=2, seed=0)
    >>> p.node_rule(0, step=5, divergence=100.0) is None
    True
    >>> p.stats.models
    0
    """

    name = "nosync"
    params: dict[str, type] = {}

    def __init__(self, m: int, d: int, *, w0=None, seed: int | None = None, initial_nodes=None,
                 device=None, dtype=torch.float32, n_params=None):
        super().__init__(m, d, w0=w0, seed=seed, initial_nodes=initial_nodes, device=device, dtype=dtype,
                         n_params=n_params)

    def node_rule(self, node: int, step: int, divergence: float) -> str | None:
        return None

    @property
    def divergence_threshold(self) -> float:
        return math.inf  # the rule never answers
