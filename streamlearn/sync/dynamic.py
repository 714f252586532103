"""Dynamic averaging (Kamp et al. 2018): sync only when a model drifted away from the reference."""

from __future__ import annotations

import numpy as np
import torch

from streamlearn.sync.aggregate import reference_velocity, sq_dist
from streamlearn.sync.messages import Action, Report
from streamlearn.errors import ConfigError
from streamlearn.sync.protocol import SYNC_PARAMS, MODEL, NONE, Protocol, drop_none, float_param, int_param

__all__ = ["Dynamic"]


class Dynamic(Protocol):
    """Dynamic averaging, exactly as DESIGN.md states it.

    Node rule: every ``b`` local steps node i checks ``||w_i - r||^2 <= delta``; on a
    violation it sends its model ("model"). The coordinator::

        B = violating nodes;  v += |B|;  if v >= m: B = all, v = 0       # forced full sync
        while B != all and ||mean(w_B) - r||^2 > delta:
            request k = |B| more nodes, chosen at random;
            if |B| would reach m/2, request all instead
        send mean(w_B) to every node in B
        if B == all: r = mean(w_B), every node sets it as its reference  # full sync

    Balancing a subset keeps the global mean; only full syncs move r. Choices for an
    asynchronous world, where ``m`` is the number of alive nodes and "all" means the alive
    nodes not given up on in this sync:

    - Violations that arrive while a balancing is in flight are merged into it: they join
      B, add to v (which may force the full sync), and the condition is checked on the
      grown B once every requested model is in.
    - Every model-carrying report counts as one violation (``stats.violations`` and v),
      also when its node is already in B.
    - A node that leaves or times out is dropped from B; once no violator is left in B
      the sync ends without action (models still awaited are then ignored). Once all
      nodes were requested (forced, or by growth), the sync ends as a full sync whatever
      joins or leaves meanwhile; a full sync reaches every alive node.

    Parameters
    ----------
    m, d, w0, seed, initial_nodes, device, dtype
        See :class:`~streamlearn.sync.protocol.Protocol`.
    delta
        Divergence threshold on ``||w - r||^2``.
    b
        Local steps between checks of the local condition.
    extrapolate
        1: check the condition against the reference extrapolated to the current step,
        ``r + (t - t_sync) v``, with ``v`` the reference's velocity between the last two full
        syncs (:func:`~streamlearn.sync.aggregate.reference_velocity`): the movement all nodes
        share between syncs no longer fires the trigger. Nodes and coordinator compute ``v`` the
        same way, from the full syncs each saw and its own step count; the balancing check
        uses the latest step reported.

    Examples
    --------
    >>> import torch
    >>> from streamlearn.sync.messages import Report
    >>> p = Dynamic(m=8, d=1, delta=1.0, b=1, seed=0, device="cpu")
    >>> p.node_rule(0, step=3, divergence=0.5) is None, p.node_rule(0, step=3, divergence=2.0)
    (True, 'model')
    >>> [req] = p.on_reports([Report(0, 3, model=torch.tensor([1.5]))])   # 1.5^2 > 1: grow B
    >>> len(req.nodes)
    1
    >>> [a] = p.on_models({req.nodes[0]: torch.tensor([0.0])})           # (1.5/2)^2 <= 1: balanced
    >>> a.model.tolist(), a.reference, p.stats.partial_syncs
    ([0.75], False, 1)
    """

    name = "dynamic"
    params = {"delta": float, "b": int, "extrapolate": int, **SYNC_PARAMS}

    def __init__(self, m: int, d: int, delta: float = 1.0, b: int = 1, extrapolate: int = 0, *, w0=None,
                 seed: int | None = None,
                 initial_nodes=None, device=None, dtype=torch.float32, n_params=None,
                 server_lr=1.0, server_momentum=0.0, codec="fp32", buffers_every=1):
        super().__init__(m, d, w0=w0, seed=seed, initial_nodes=initial_nodes, device=device, dtype=dtype,
                         n_params=n_params, server_lr=server_lr,
                         server_momentum=server_momentum, codec=codec, buffers_every=buffers_every)
        self.delta = float_param("delta", delta, 0.0)
        self.b = int_param("b", b)
        self.extrapolate = int_param("extrapolate", extrapolate, low=0)
        if self.extrapolate > 1:
            raise ConfigError(f"extrapolate must be 0 or 1, got {extrapolate!r}")
        self._t_now = 0   # latest step reported
        self._t_sync = 0  # step of the last full sync
        self._velocity_r = torch.zeros(self.n_params, dtype=self.bank.dtype, device=self.bank.device)
        self._B: set[int] = set()
        self._violators: set[int] = set()  # the nodes of B that violated (the others were asked)
        self._v = 0
        self._full = False  # every node was requested: this sync ends as a full sync

    @property
    def violation_counter(self) -> int:
        """v: violations since the last forced full sync."""
        return self._v

    def get_state(self) -> dict:
        return {**super().get_state(), "violation_counter": self._v, "t_now": self._t_now, "t_sync": self._t_sync}

    def set_state(self, state: dict) -> None:
        super().set_state(state)
        if state.get("violation_counter") is not None:
            self._v = int(state["violation_counter"])
        for key in ("t_now", "t_sync"):
            if isinstance(state.get(key), int):
                setattr(self, f"_{key}", int(state[key]))

    def get_arrays(self) -> dict:
        out = super().get_arrays()
        if self.extrapolate:
            out["reference_velocity"] = self._velocity_r.detach().cpu()
        return out

    def set_arrays(self, arrays) -> None:
        super().set_arrays(arrays)
        if self.extrapolate and arrays.get("reference_velocity") is not None:
            self._velocity_r = self._state_vector(arrays["reference_velocity"], "reference_velocity").to(
                self.bank.device, self.bank.dtype)

    def reference_now(self) -> torch.Tensor:
        """The reference the balancing condition is checked against (over the parameters): ``r``, or
        with ``extrapolate`` ``r + (t - t_sync) v`` at the latest step reported."""
        r = self.bank.r[: self.n_params]
        if not self.extrapolate:
            return r
        return r + (self._t_now - self._t_sync) * self._velocity_r

    @property
    def balancing(self) -> frozenset[int]:
        """B, the nodes of the sync in progress."""
        return frozenset(self._B)

    def node_rule_many(self, step, divergence) -> torch.Tensor:
        divergence = torch.as_tensor(divergence)
        due = torch.as_tensor(step, device=divergence.device) % self.b == 0
        return torch.where(due & (divergence > self.delta), MODEL, NONE).to(torch.int8)

    def node_rule(self, node: int, step: int, divergence: float) -> str | None:
        # in float32, as node_rule_many compares a float32 divergence with delta
        return "model" if step % self.b == 0 and np.float32(divergence) > np.float32(self.delta) else None

    @property
    def check_every(self) -> int:
        return self.b

    @property
    def divergence_threshold(self) -> float | None:
        # with extrapolate the rule compares against the extrapolated reference, not r
        return None if self.extrapolate else self.delta

    def _everyone(self) -> set[int]:
        return set(self.alive) - self._excluded

    def _on_reports(self, reports: list[Report]) -> list[Action]:
        self._t_now = max([self._t_now] + [int(rep.step) for rep in reports])
        violators = [rep.node for rep in reports if rep.model is not None]
        self.stats.violations += len(violators)
        self._v += len(violators)
        self._B.update(violators)
        self._violators.update(violators)
        actions = []
        if violators and self._v >= len(self.alive):
            self._v = 0
            self._full = True
            everyone = self._everyone()
            self._B |= everyone
            missing = everyone - set(self.bank.have.nonzero().flatten().tolist())
            actions.append(self._request(missing))
        return drop_none(actions) + self._advance()

    def _forget(self, node: int) -> None:
        self._B.discard(node)
        self._violators.discard(node)

    def _advance(self) -> list[Action]:
        if not self._B or not (self._full or self._violators):
            self._finish()  # nothing left to balance: every violator left or was given up on
            return []
        if self._pending:
            return []
        everyone = self._everyone()
        nodes = sorted(self._B)
        mean = self.bank.mean(nodes)
        if self._full or self._B >= everyone:
            self.stats.full_syncs += 1
            old = self.bank.r[: self.n_params].clone()
            action = self._send(self._alive_list(), mean, reference=True)
            if action is not None and self.extrapolate:
                self._velocity_r = reference_velocity(old, self.bank.r[: self.n_params], self._t_now - self._t_sync)
            self._t_sync = self._t_now
            self._finish()
            return drop_none([action])
        if float(sq_dist(mean[: self.n_params], self.reference_now())) <= self.delta:
            self.stats.partial_syncs += 1
            action = self._send(nodes, mean, reference=False)
            self._finish()
            return drop_none([action])
        rest = sorted(everyone - self._B)
        k = len(self._B)
        if len(self._B) + k >= len(self.alive) / 2 or k >= len(rest):
            chosen, self._full = rest, True
        else:
            chosen = sorted(int(i) for i in self._rng.choice(rest, size=k, replace=False))
        self._B.update(chosen)
        return drop_none([self._request(chosen)])

    def _finish(self) -> None:
        self._B, self._violators = set(), set()
        self._pending.clear()
        self._full = False
        self._end_sync()
