"""The node's side of guarded averaging (:mod:`streamlearn.sync.guard`): its window and its check.

A :class:`GuardWindow` keeps the node's last ``size`` learned samples (a ring, written whole
mini-batch at a time) and judges a model arriving from the sync by its mean log loss on them
against the learner's own model's.

Examples
--------
>>> import numpy as np
>>> from streamlearn.learners import TorchLearner
>>> rng = np.random.default_rng(0)
>>> X = rng.normal(size=(300, 2)).astype(np.float32)
>>> y = (X.sum(axis=1) > 0).astype(np.int64)
>>> learner = TorchLearner("logreg", n_features=2, classes=[0, 1], lr=0.5, seed=0, device="cpu")
>>> for i in range(0, 300, 10):
...     learner.learn_many(X[i:i + 10], y[i:i + 10])
>>> window = GuardWindow(100, classes=[0, 1], margin=0.05)
>>> window.remember(X[200:], y[200:])
>>> own = learner.get_flat()
>>> window.takes(learner, own.clone()), window.takes(learner, -own)  # itself; the opposite concept
(True, False)
"""

from __future__ import annotations

import time

import numpy as np
import torch

from streamlearn.node.scoring import live_flat, score_step
from streamlearn.sync.guard import accepts, window_loss

__all__ = ["GuardWindow"]


class GuardWindow:
    """The last ``size`` learned samples of a node and the guard's check on them.

    Parameters
    ----------
    size
        Samples in the window (>= 10; see :func:`~streamlearn.sync.guard.check_guard`).
    classes
        The declared classes, in order (the window holds class indices).
    margin
        An arriving model is declined when its window loss is above the own model's by more than this (nats).
    n_features
        Features per sample (None: taken from the first mini-batch).
    """

    def __init__(self, size: int, classes: list, margin: float = 0.05, n_features: int | None = None):
        self.size, self.classes, self.margin = int(size), list(classes), float(margin)
        self.X = None if n_features is None else np.empty((self.size, n_features), dtype=np.float32)
        self.y = np.empty(self.size, dtype=np.int64)
        self.pos = self.n = 0  # the ring is written at pos; n of it filled
        self.checks = 0
        self.last_us: float | None = None  # microseconds of the last check (two forwards of the window)
        self.last_losses: list | None = None  # [arriving model's, own model's] window loss at the last check

    def remember(self, X: np.ndarray, yi: np.ndarray) -> None:
        """Put a learned mini-batch into the ring: whole-batch copies."""
        G, n = self.size, len(yi)
        if self.X is None:
            self.X = np.empty((G, X.shape[1]), dtype=np.float32)
        if n >= G:
            self.X[:] = X[n - G:]
            self.y[:] = yi[n - G:]
            self.pos, self.n = 0, G
            return
        pos = self.pos
        k = min(n, G - pos)  # up to the end of the ring, then the rest from its start
        self.X[pos:pos + k], self.y[pos:pos + k] = X[:k], yi[:k]
        self.X[:n - k], self.y[:n - k] = X[k:], yi[k:]
        self.pos = (pos + n) % G
        self.n = min(G, self.n + n)

    def p_true(self, learner, flats: list) -> list:
        """The probability each model of ``flats`` gives the true class of every sample in the window.

        A torch learner without a scaler: one batched forward of the models (its ``functional()``), the
        learner untouched. Otherwise each model is set in turn (``set_flat`` keeps the optimizer state),
        predicted with, and the learner's own model set back.
        """
        n = self.n
        X, yi = self.X[:n], self.y[:n]
        functional = getattr(learner, "functional", None)
        if functional is not None and getattr(learner, "scaler_", True) is None \
                and list(getattr(learner, "classes_", [])) == self.classes:
            forward, _ = functional()
            own = live_flat(learner)
            p = learner.n_params
            W = torch.stack([f[:p].to(own.device, own.dtype) for f in flats])
            Xt = torch.as_tensor(X, device=own.device).expand(len(flats), n, X.shape[1])
            with torch.no_grad():
                logp = torch.log_softmax(forward(W, Xt)[..., :len(self.classes)], dim=-1)
                yt = torch.as_tensor(yi, device=own.device).expand(len(flats), n)
                return list(logp.gather(-1, yt.unsqueeze(-1)).squeeze(-1).exp().cpu())
        own = learner.get_flat()
        flats = [f.clone() for f in flats]  # a live view of the learner's parameters changes with set_flat
        out = []
        try:
            for flat in flats:
                learner.set_flat(flat)
                P = np.asarray(learner.predict_proba_many(X), dtype=np.float64)
                out.append(torch.as_tensor(score_step(P, learner, self.classes, yi)[1]))
        finally:
            learner.set_flat(own)
        return out

    def takes(self, learner, candidate: torch.Tensor) -> bool:
        """Whether the model ``candidate`` (what the sync would leave) may replace ``learner``'s own."""
        if self.n < 10:
            return True  # nothing to judge by yet
        t0 = time.perf_counter()
        p_in, p_own = self.p_true(learner, [candidate, live_flat(learner)])
        loss_in, loss_own = window_loss(p_in.double()[None]), window_loss(p_own.double()[None])
        ok = bool(accepts(loss_in, loss_own, self.margin)[0])
        self.last_us = (time.perf_counter() - t0) * 1e6
        self.last_losses = [float(loss_in[0]), float(loss_own[0])]
        self.checks += 1
        return ok
