"""Periodic averaging (every b local steps) and its b = 1 special case, continuous averaging."""

from __future__ import annotations

import torch

from streamlearn.sync.messages import Action
from streamlearn.sync.protocol import SYNC_PARAMS, MODEL, Protocol, drop_none, every, int_param

__all__ = ["Periodic", "Continuous"]


class Periodic(Protocol):
    """Periodic averaging: every ``b`` local steps all models go up, their mean comes down.

    Node rule: "model" when ``step % b == 0``. The coordinator waits until every alive
    node (not given up on) has sent a model since the last sync, then sends the plain mean
    of those models to every alive node and makes it the reference (a full sync). A node
    that sends again before the others overwrites its earlier model; while a round is open,
    ``pending`` holds the alive nodes whose model has not come yet.

    Parameters
    ----------
    m, d, w0, seed, initial_nodes, device, dtype
        See :class:`~streamlearn.sync.protocol.Protocol`.
    b
        Local steps between syncs.

    Examples
    --------
    >>> import torch
    >>> from streamlearn.sync.messages import Report
    >>> p = Periodic(m=2, d=2, b=4, seed=0, device="cpu")
    >>> p.node_rule(0, step=4, divergence=0.0)
    'model'
    >>> p.on_reports([Report(0, 4, model=torch.tensor([1.0, 0.0]))])
    []
    >>> p.pending
    {1}
    >>> [a] = p.on_reports([Report(1, 4, model=torch.tensor([3.0, 2.0]))])
    >>> a.nodes, a.model.tolist(), a.reference
    ((0, 1), [2.0, 1.0], True)
    >>> p.stats.models_up, p.stats.models_down, p.stats.full_syncs
    (2, 2, 1)
    """

    name = "periodic"
    params = {"b": int, **SYNC_PARAMS}

    def __init__(self, m: int, d: int, b: int = 1, *, w0=None, seed: int | None = None, initial_nodes=None,
                 device=None, dtype=torch.float32, n_params=None,
                 server_lr=1.0, server_momentum=0.0, codec="fp32", buffers_every=1):
        super().__init__(m, d, w0=w0, seed=seed, initial_nodes=initial_nodes, device=device, dtype=dtype,
                         n_params=n_params, server_lr=server_lr,
                         server_momentum=server_momentum, codec=codec, buffers_every=buffers_every)
        self.b = int_param("b", b)

    def node_rule_many(self, step, divergence) -> torch.Tensor:
        return every(step, self.b, divergence, MODEL)

    def node_rule(self, node: int, step: int, divergence: float) -> str | None:
        return "model" if step % self.b == 0 else None

    @property
    def check_every(self) -> int:
        return self.b

    def _contributors(self) -> set[int]:
        return self.bank.have_alive() - self._excluded

    def _round(self) -> tuple[int, int]:
        """``(contributors, awaited)``: how many alive nodes sent a model this round and how many have not
        (nodes given up on left out). Counted from the bank's incremental sets in O(len(excluded)), so a
        message costs the same whatever m (the sets themselves are O(m) to list)."""
        alive, both, excluded = self.bank.alive_set(), self.bank.have_alive(), self._excluded
        gave = sum(1 for n in excluded if n in both)
        missed = sum(1 for n in excluded if n in alive and n not in both)
        return len(both) - gave, len(alive) - len(both) - missed

    @property
    def pending(self) -> set[int]:
        if not self._round()[0]:
            return set()  # no round open
        both, excluded = self.bank.have_alive(), self._excluded
        return {n for n in self.bank.alive_set() if n not in both and n not in excluded}

    def _advance(self) -> list[Action]:
        contributors, awaited = self._round()
        if not contributors or awaited:
            return []
        contributors = sorted(self._contributors())
        mean = self.bank.mean(contributors)
        self.stats.full_syncs += 1
        action = self._send(self._alive_list(), mean, reference=True)
        self._end_sync()
        return drop_none([action])


class Continuous(Periodic):
    """Continuous averaging: periodic averaging with ``b = 1`` (a full sync after every step).

    Examples
    --------
    >>> p = Continuous(m=4, d=3, seed=0)
    >>> p.node_rule(2, step=1, divergence=0.0), p.b
    ('model', 1)
    """

    name = "continuous"
    params: dict[str, type] = {**SYNC_PARAMS}

    def __init__(self, m: int, d: int, *, w0=None, seed: int | None = None, initial_nodes=None,
                 device=None, dtype=torch.float32, n_params=None,
                 server_lr=1.0, server_momentum=0.0, codec="fp32", buffers_every=1):
        super().__init__(m, d, 1, w0=w0, seed=seed, initial_nodes=initial_nodes, device=device, dtype=dtype,
                         n_params=n_params, server_lr=server_lr,
                         server_momentum=server_momentum, codec=codec, buffers_every=buffers_every)
