"""FedAvg: every b steps a random fraction C of the nodes is averaged, weighted by samples."""

from __future__ import annotations

import math

import torch

from streamlearn.sync.messages import Action
from streamlearn.sync.protocol import SYNC_PARAMS, REPORT, RoundProtocol, drop_none, every, float_param, int_param

__all__ = ["FedAvg"]


class FedAvg(RoundProtocol):
    """Federated averaging (McMahan et al. 2017) on the shared machinery.

    Node rule: "report" (loss, samples since last sync) when ``step % b == 0``. Once every
    alive node (not given up on) has reported in the round, the coordinator picks
    ``ceil(C * m_alive)`` of the reporters at random, requests their models, and sends their
    mean, weighted by the samples each has seen since its last sync (plain mean if all are 0),
    to every alive node as the new reference (a full sync). Reports that arrive while the
    models of a round are awaited count for the next round. ``waiting_reports`` holds the
    nodes the round still waits on; ``on_timeout`` gives up on them too.

    Parameters
    ----------
    m, d, w0, seed, initial_nodes, device, dtype
        See :class:`~streamlearn.sync.protocol.Protocol`.
    b
        Local steps between rounds.
    C
        Fraction of the alive nodes averaged per round, in (0, 1].

    Examples
    --------
    >>> import torch
    >>> from streamlearn.sync.messages import Report
    >>> p = FedAvg(m=4, d=1, b=2, C=0.5, seed=0, device="cpu")
    >>> [req] = p.on_reports([Report(i, 2, n_samples=10 * (i + 1)) for i in range(4)])
    >>> len(req.nodes)
    2
    >>> [a] = p.on_models({i: torch.tensor([float(i)]) for i in req.nodes})
    >>> a.nodes, a.reference, p.stats.models_up, p.stats.models_down
    ((0, 1, 2, 3), True, 2, 4)
    """

    name = "fedavg"
    params = {"b": int, "C": float, **SYNC_PARAMS}

    def __init__(self, m: int, d: int, b: int = 1, C: float = 1.0, *, w0=None, seed: int | None = None,
                 initial_nodes=None, device=None, dtype=torch.float32, n_params=None,
                 server_lr=1.0, server_momentum=0.0, codec="fp32", buffers_every=1):
        super().__init__(m, d, w0=w0, seed=seed, initial_nodes=initial_nodes, device=device, dtype=dtype,
                         n_params=n_params, server_lr=server_lr,
                         server_momentum=server_momentum, codec=codec, buffers_every=buffers_every)
        self.b = int_param("b", b)
        self.C = float_param("C", C, 0.0, 1.0, low_open=True)
        self._selected: set[int] | None = None   # None: collecting reports

    def node_rule_many(self, step, divergence) -> torch.Tensor:
        return every(step, self.b, divergence, REPORT)

    def node_rule(self, node: int, step: int, divergence: float) -> str | None:
        return "report" if step % self.b == 0 else None

    @property
    def check_every(self) -> int:
        return self.b

    @property
    def _round_busy(self) -> bool:
        return self._selected is not None

    def _advance(self) -> list[Action]:
        if self._selected is None:
            candidates = sorted(self._reported & (set(self.alive) - self._excluded))
            if not candidates or self.waiting_reports:
                return []
            n = min(len(candidates), math.ceil(round(self.C * len(self.alive), 9)))
            chosen = sorted(int(i) for i in self._rng.choice(candidates, size=n, replace=False))
            self._selected = set(chosen)
            return drop_none([self._request(chosen)])
        if self._pending:
            return []
        got = sorted(self._selected & (set(self.alive) - self._excluded))
        actions = []
        if got:
            weights = self.bank.samples[got].to(self.bank.dtype)
            mean = self.bank.mean(got, weights if bool(weights.sum() > 0) else None)
            self.stats.full_syncs += 1
            actions.append(self._send(self._alive_list(), mean, reference=True))
        self._reported, self._next, self._selected = self._next, set(), None
        self._end_sync()
        return drop_none(actions) + self._advance()  # the next round may be complete already
