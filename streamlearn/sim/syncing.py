"""The simulator's sync bookkeeping, shared by its loops (one setting, a grid, regression): which nodes
synced at a step, and guarded averaging after a round's syncs."""

from __future__ import annotations

import math

import torch

from streamlearn.sync.driver import settle
from streamlearn.sync.guard import accepts, window_loss
from streamlearn.sync.messages import PullToward, SendModel

__all__ = ["MAX_LOSS", "note_syncs", "guard_syncs", "classifier_declines"]

#: The largest log loss scored for one sample (a probability of 1e-15 for the true class).
MAX_LOSS = -math.log(1e-15)


def note_syncs(actions, since_sync, syncs: list, step: int) -> None:
    """After the protocol's actions at ``step``: the synced nodes' sample counts restart, ``syncs`` gets
    ``(step, kind, nodes)`` per model sent or pull (shared by the classification and regression loops)."""
    for action in actions:
        if isinstance(action, (SendModel, PullToward)):
            since_sync[list(action.nodes)] = 0
            kind = "pull" if isinstance(action, PullToward) else ("full" if action.reference else "partial")
            syncs.append((step, kind, len(action.nodes)))


def guard_syncs(proto, actions, full, before, R, end: int, window: int, step: int, uplink, motion, declines) -> None:
    """Guarded averaging after a round's syncs: nodes whose arriving model is worse on their last ``window``
    learned samples than their own (``declines(got, lo, end, full, before)`` says which) go back to their own
    model (``before``), keep the new reference, and the protocol hears of it. What the protocol answers (a
    node that moved to another group gets its reference) is applied and guarded the same way. Shared by the
    classification and regression loops; only the loss on the window differs."""
    lo = max(0, end - window)
    while actions:
        got = sorted({int(n) for a in actions if isinstance(a, (SendModel, PullToward)) for n in a.nodes})
        if not got or end - lo < 10:
            return  # nothing to judge by yet: take the sync
        declined = declines(got, lo, end, full, before)
        if not declined:
            return
        full[declined] = before[declined]
        before = full.clone()
        actions = settle(proto, proto.on_declined(declined), full, R, uplink=uplink, motion=motion, step=step)


def classifier_declines(got, full, before, X, Y, lo, end, forward, scaler, p, margin) -> list:
    """The nodes of ``got`` whose model in ``full`` is worse than their own (``before``) on their window."""
    Xw, yw = X[got, lo:end], Y[got, lo:end]

    def loss(flat):
        Xs = Xw
        if scaler is not None:
            sc = scaler.clone()
            sc.set_flat(flat[:, p:])
            Xs = sc.transform(Xw)
        logp = torch.log_softmax(forward(flat[:, :p], Xs), dim=-1)
        return window_loss(logp.gather(-1, yw.unsqueeze(-1)).squeeze(-1).exp())

    ok = accepts(loss(full[got]), loss(before[got]), margin).tolist()
    return [n for n, keep in zip(got, ok) if not keep]
