"""A tiny pure driver: nodes held as an m x d tensor of models and one of references.

It applies protocol actions to the node tensors and answers every ``RequestModels`` at
once with the requested rows, so a whole lockstep round (all nodes step, then all reports
are delivered together) runs in one call. The conformance tests and the vectorized
simulator use it; the Kafka services do the same work over the network.
"""

from __future__ import annotations

import torch

from streamlearn.sync.aggregate import sq_dist
from streamlearn.sync.messages import Action, PullToward, Report, RequestModels, SendModel
from streamlearn.sync.protocol import MODEL, NONE, Protocol
from streamlearn.sync.robust import clip_rows, clip_to_references

__all__ = ["apply_action", "collect_reports", "settle", "lockstep", "ReferenceMotion"]


class ReferenceMotion:
    """The nodes' side of dynamic averaging against an extrapolated reference (``extrapolate=1``).

    Per node: the velocity of its reference between its last two full syncs and the step of the
    last one; :meth:`reference` gives ``r + (t - t_sync) v``. Every node follows the full syncs it
    receives, so the nodes of a lockstep simulation agree with the coordinator.
    """

    def __init__(self, m: int, n_params: int, device=None, dtype=torch.float32):
        self.n_params = int(n_params)
        self.V = torch.zeros(m, self.n_params, device=device, dtype=dtype)
        self.t_sync = torch.zeros(m, dtype=torch.int64)

    def reference(self, nodes, R: torch.Tensor, step) -> torch.Tensor:
        """The extrapolated references (over the parameters) of ``nodes``, whose references are ``R``."""
        idx = list(nodes)
        dt = (torch.as_tensor(step, dtype=torch.int64).expand(len(idx)) - self.t_sync[idx]).to(R.dtype)
        return R[:, : self.n_params] + dt.to(R.device).unsqueeze(1) * self.V[idx]

    def on_reference(self, nodes, r_old: torch.Tensor, r_new: torch.Tensor, step: int) -> None:
        """Nodes ``nodes`` took ``r_new`` as reference at ``step`` (their previous ones: rows ``r_old``)."""
        from streamlearn.sync.aggregate import reference_velocity

        idx = list(nodes)
        p = self.n_params
        dt = int(step) - self.t_sync[idx]
        self.V[idx] = reference_velocity(r_old[:, :p], r_new[:p].expand(len(idx), p), dt.to(self.V.device))
        self.t_sync[idx] = int(step)


def apply_action(action: Action, W: torch.Tensor, R: torch.Tensor, motion: ReferenceMotion | None = None,
                 step: int = 0) -> None:
    """Apply a SendModel or PullToward to node models ``W`` and references ``R`` in place
    (``motion``, at ``step``, follows the references for an extrapolating protocol)."""
    if isinstance(action, SendModel):
        idx = _rows(action.nodes, W.shape[0])
        model = action.model.to(W.device, W.dtype)
        k = model.shape[-1]  # n_params: sent without the buffers, which the nodes keep
        if not action.keep:
            W[idx, :k] = model
        if action.reference:
            if motion is not None:
                motion.on_reference(action.nodes, R[idx], model, step)
            R[idx, :k] = model
    elif isinstance(action, PullToward):
        idx = list(action.nodes)
        W[idx] -= action.strength * (W[idx] - action.model.to(W.device, W.dtype))
    elif not isinstance(action, RequestModels):
        raise TypeError(f"not an action: {action!r}")


def _rows(nodes, m: int):
    """Row index of ``nodes`` (sorted, distinct, as protocols send them): every row as a slice (a broadcast
    copy, not an index op), else a list."""
    idx = list(nodes)
    if len(idx) == m and idx == list(range(m)):
        return slice(None)
    return idx


def _models_up(nodes: list[int], W: torch.Tensor, R: torch.Tensor, uplink, protocol=None,
               bound=None) -> list[torch.Tensor]:
    """The rows of ``nodes`` as the coordinator receives them: whole, or through the nodes' codec
    (without the buffers, ``n_params`` long, when the uplink says they are not due), then clipped as the
    sync service clips them when ``bound`` (a :class:`~streamlearn.sync.robust.NormBound`) is given."""
    if uplink is None:  # whole models: clipped as one stacked batch
        rows = W[nodes]  # (advanced indexing: a copy)
        if bound is not None:
            rows = clip_rows(bound, protocol, nodes, rows)
        return list(rows.unbind(0))
    due = uplink.with_buffers(nodes)
    rows = [row if whole else row[: uplink.n_params] for row, whole in zip(uplink.send(nodes, W[nodes], R[nodes]), due)]
    if bound is not None and rows:
        rows = clip_to_references(bound, protocol, list(zip(nodes, rows)))[0]
    return rows


def settle(protocol: Protocol, actions: list[Action], W: torch.Tensor, R: torch.Tensor, uplink=None,
           motion: ReferenceMotion | None = None, step: int = 0, bound=None) -> list[Action]:
    """Apply ``actions`` in order, answering each RequestModels with rows of ``W`` right away.

    ``uplink`` (a :class:`~streamlearn.sync.codec.Uplink`) compresses what nodes send; ``bound`` (a
    :class:`~streamlearn.sync.robust.NormBound`, or None) clips it as the sync service does.
    Returns every action applied, including those the answers produced.
    """
    done: list[Action] = []
    queue = list(actions)
    while queue:
        action = queue.pop(0)
        done.append(action)
        if isinstance(action, RequestModels):
            nodes = list(action.nodes)
            rows = _models_up(nodes, W, R, uplink, protocol, bound)
            queue.extend(protocol.on_models({n: rows[k] for k, n in enumerate(nodes)}))
        else:
            apply_action(action, W, R, motion, step)
    return done


def collect_reports(protocol: Protocol, step, W: torch.Tensor, R: torch.Tensor, loss=None, n_samples=None,
                    nodes=None, uplink=None, motion: ReferenceMotion | None = None, bound=None) -> list[Report]:
    """The reports the node rule produces after local update ``step`` (an int or one per node).

    ``nodes`` defaults to the protocol's alive nodes; ``loss`` and ``n_samples`` are per
    node (length m) when given. Divergences ``||W_i - R_i||^2`` (over the protocol's ``n_params``
    leading entries) are computed in one op.
    """
    idx = sorted(protocol.alive) if nodes is None else [int(n) for n in nodes]
    if not idx:
        return []
    steps = torch.as_tensor(step)
    steps = steps[idx] if steps.dim() else steps.expand(len(idx))
    p = protocol.n_params
    ref = R[idx, :p] if motion is None else motion.reference(idx, R[idx], steps)
    codes = protocol.node_rule_many(steps, sq_dist(W[idx, :p], ref).cpu()).tolist()
    senders = [node for k, node in enumerate(idx) if codes[k] == MODEL]
    sent = dict(zip(senders, _models_up(senders, W, R, uplink, protocol, bound))) if senders else {}
    # Python numbers once, not a tensor read per node and field (most of a round's cost for small models)
    steps = steps.tolist()
    losses = [float("nan")] * (max(idx) + 1) if loss is None else _numbers(loss)
    samples = [0] * (max(idx) + 1) if n_samples is None else _numbers(n_samples, int)
    return [Report(node=node, step=int(steps[k]), loss=float(losses[node]), n_samples=int(samples[node]),
                   model=sent.get(node)) for k, node in enumerate(idx) if codes[k] != NONE]


def _numbers(values, kind=float) -> list:
    """``values`` (a tensor, array or sequence, one per node) as a list of Python numbers."""
    if hasattr(values, "tolist"):
        return values.tolist()
    return [kind(v) for v in values]


def lockstep(protocol: Protocol, step, W: torch.Tensor, R: torch.Tensor, loss=None, n_samples=None,
             uplink=None, motion: ReferenceMotion | None = None, bound=None) -> list[Action]:
    """One lockstep round after every alive node's local update ``step``: report, deliver, settle.

    ``bound`` (a :class:`~streamlearn.sync.robust.NormBound`, or None): every model that comes up is clipped
    around its node's reference as the sync service clips it (robust aggregation).

    Examples
    --------
    >>> import torch
    >>> from streamlearn.sync.periodic import Periodic
    >>> p = Periodic(m=2, d=2, b=1, seed=0, device="cpu")
    >>> W, R = torch.tensor([[1.0, 0.0], [3.0, 2.0]]), torch.zeros(2, 2)
    >>> [a] = lockstep(p, 1, W, R)
    >>> W.tolist(), R.tolist()
    ([[2.0, 1.0], [2.0, 1.0]], [[2.0, 1.0], [2.0, 1.0]])
    """
    reports = collect_reports(protocol, step, W, R, loss=loss, n_samples=n_samples, uplink=uplink, motion=motion,
                              bound=bound)
    if not reports:
        return []
    return settle(protocol, protocol.on_reports(reports), W, R, uplink=uplink, motion=motion, step=int(step),
                  bound=bound)
