"""LSGD (Teng et al. 2019): every tau steps each node is pulled toward the lowest-loss node."""

from __future__ import annotations

import math

import numpy as np
import torch

from streamlearn.errors import ConfigError
from streamlearn.sync.messages import Action
from streamlearn.sync.protocol import REPORT, RoundProtocol, drop_none, every, float_param, int_param

__all__ = ["LSGD"]


def _partition(groups, m: int) -> list[list[int]]:
    """``groups`` (None, a number of contiguous groups, or lists of nodes) as a partition of range(m)."""
    if groups is None:
        return [list(range(m))]
    if isinstance(groups, (int, np.integer)) and not isinstance(groups, bool):
        g = int_param("groups", groups)
        if g > m:
            raise ConfigError(f"groups must be <= m={m}, got {groups!r}")
        return [part.tolist() for part in np.array_split(np.arange(m), g)]
    try:
        parts = [[int(n) for n in part] for part in groups]
    except (TypeError, ValueError):
        raise ConfigError(f"groups must be a number or lists of node ids, got {groups!r}") from None
    flat = sorted(n for part in parts for n in part)
    if flat != list(range(m)) or not all(parts):
        raise ConfigError(f"groups must split nodes 0..{m - 1} into non-empty groups, each node once, got {groups!r}")
    return parts


class LSGD(RoundProtocol):
    """Leader SGD: every ``tau`` steps, nodes are pulled toward the lowest-loss node's model.

    Node rule: "report" (its loss) when ``step % tau == 0``. Once every alive node (not
    given up on) has reported in the round, the coordinator requests the model of the
    lowest-loss reporter (ties: lowest id; nan loss counts as worst) and sends it to every
    other alive node as ``PullToward(strength)``: ``w <- w - strength * (w - w_leader)``.
    With ``groups``, each group has a local leader whose pull reaches its group (strength
    ``strength``), and the best local leader is the global leader, whose pull reaches every
    other node (strength ``global_strength``, default ``strength``). If a leader leaves or
    times out before its model arrives, the group's next-best reporter is asked instead.
    The reference is set to the global leader's model: that is what a late joiner gets.
    Reports that arrive while leader models are awaited count for the next round.

    Parameters
    ----------
    m, d, w0, seed, initial_nodes, device, dtype
        See :class:`~streamlearn.sync.protocol.Protocol`.
    tau
        Local steps between rounds.
    strength
        Pull strength toward the (local) leader, in (0, 1].
    groups
        None (one group), a number of contiguous equal groups, or lists of node ids.
    global_strength
        Pull strength toward the global leader when there are groups, in (0, 1].

    Examples
    --------
    >>> import torch
    >>> from streamlearn.sync.messages import Report
    >>> p = LSGD(m=3, d=1, tau=2, strength=0.5, seed=0, device="cpu")
    >>> [req] = p.on_reports([Report(i, 2, loss=l) for i, l in enumerate([0.9, 0.1, 0.5])])
    >>> req.nodes
    (1,)
    >>> [pull] = p.on_models({1: torch.tensor([4.0])})
    >>> pull.nodes, pull.model.tolist(), pull.strength
    ((0, 2), [4.0], 0.5)
    """

    name = "lsgd"
    params = {"tau": int, "strength": float, "groups": int, "global_strength": float}

    def __init__(self, m: int, d: int, tau: int = 1, strength: float = 0.1, groups=None,
                 global_strength: float | None = None, *, w0=None, seed: int | None = None, initial_nodes=None,
                 device=None, dtype=torch.float32, n_params=None):
        super().__init__(m, d, w0=w0, seed=seed, initial_nodes=initial_nodes, device=device, dtype=dtype,
                         n_params=n_params)
        self.tau = int_param("tau", tau)
        self.strength = float_param("strength", strength, 0.0, 1.0, low_open=True)
        self.groups = groups
        self.global_strength = (None if global_strength is None
                                else float_param("global_strength", global_strength, 0.0, 1.0, low_open=True))
        self._groups = _partition(groups, self.m)
        self._leaders: dict[int, int] | None = None  # group -> leader; None: collecting reports
        self._candidates: dict[int, list[int]] = {}  # group -> reporters not tried yet, best first

    def node_rule_many(self, step, divergence) -> torch.Tensor:
        return every(step, self.tau, divergence, REPORT)

    def node_rule(self, node: int, step: int, divergence: float) -> str | None:
        return "report" if step % self.tau == 0 else None

    @property
    def check_every(self) -> int:
        return self.tau

    @property
    def _round_busy(self) -> bool:
        return self._leaders is not None

    def _ranking(self):
        """Sort key of nodes, best first: lowest loss (nan worst), then lowest id."""
        losses = [math.inf if math.isnan(x) else x for x in self.bank.loss.tolist()]
        return lambda node: (losses[node], node)

    def _advance(self) -> list[Action]:
        everyone = set(self.alive) - self._excluded
        if self._leaders is None:
            reporters = self._reported & everyone
            if not reporters or self.waiting_reports:
                return []
            key = self._ranking()
            self._candidates = {g: sorted((n for n in members if n in reporters), key=key)
                                for g, members in enumerate(self._groups)}
            self._candidates = {g: c for g, c in self._candidates.items() if c}
            self._leaders = {}
        # (Re)pick the leader of each group that has none yet or lost it.
        for g in list(self._candidates):
            if self._leaders.get(g) in everyone:
                continue
            cand = self._candidates[g]
            while cand and cand[0] not in everyone:
                cand.pop(0)
            if cand:
                self._leaders[g] = cand.pop(0)
            else:
                del self._candidates[g]
                self._leaders.pop(g, None)
        if not self._leaders or set(self.alive) <= set(self._leaders.values()):
            return self._end_round([])  # nobody to pull, or nobody to pull toward
        request = self._request(set(self._leaders.values()) - set(self.bank.have.nonzero().flatten().tolist()))
        if request is not None or self._pending:
            return drop_none([request])
        actions = [self._pull(set(self._groups[g]) - {leader}, self.bank.W[leader].clone(), self.strength)
                   for g, leader in self._leaders.items()]
        best = min(self._leaders.values(), key=self._ranking())
        if len(self._groups) > 1:
            strength = self.strength if self.global_strength is None else self.global_strength
            actions.append(self._pull(set(self.alive) - {best}, self.bank.W[best].clone(), strength))
        self.bank.set_reference(self.bank.W[best])
        self.stats.pulls += 1
        return self._end_round(actions)

    def _end_round(self, actions: list) -> list[Action]:
        self._reported, self._next = self._next, set()
        self._leaders, self._candidates = None, {}
        self._end_sync()
        return drop_none(actions) + self._advance()
