"""A guard against a learner whose loss explodes: it restores the last good model and halves the step size.

A step size that is too large (an MLP at ``lr=0.5`` on Elec2) makes the weights grow until the
predictions are certain and often wrong, and then overflow to NaN: from there the learner predicts
nothing useful and, averaged, poisons every other node. :class:`LossGuard` watches the
prequential loss after every step and fires on

- parameters that are not finite (checked when a step's loss is not finite, and at every snapshot), or
- an explosion: the recent mean loss (an exponential average over about ``fast`` samples) above
  ``factor`` times its earlier level (an average over about ``slow`` samples, at least ``min_loss``)
  while the parameters' norm grew ``norm_growth`` times over the last good model's. The norm
  tells a blow-up from a concept drift: after a drift the loss rises too, but the weights do not
  grow (they move towards the new concept).

It then damps the learner: the model of the last good snapshot (taken every ``every`` samples while
the recent loss is within twice its level, one snapshot back so the one restored predates the trouble) is set back, the step size
is multiplied by ``damp`` (TorchLearner's ``lr`` and its optimizer, whose state is cleared;
``RiverLinear.scale_lr``) and a warning is logged, once per event. After ``max_damps`` events, or for
a learner without a step size, it stops the learner's learning (``learning`` is False; the caller
skips ``learn_many``): the model keeps predicting as it is.

The evaluator (``streamlearn evaluate``) and the node (:class:`~streamlearn.node.NodeCore`, its status
and ``streamlearn_node_divergences_total``) use this class; any averageable learner works
(``get_flat``/``set_flat``). :class:`LossGuardBank` is the same rule for every row of the simulator's
model bank at once (``streamlearn simulate`` guards its nodes as the node service does).

Examples
--------
>>> import numpy as np
>>> from streamlearn.learners import TorchLearner
>>> learner = TorchLearner("logreg", n_features=2, classes=[0, 1], lr=0.1, seed=0, device="cpu")
>>> guard = LossGuard(warmup=20, every=20, name="demo")
>>> fired = []
>>> for _ in range(20):  # all is well: nothing happens
...     learner.learn_many(np.ones((10, 2), dtype=np.float32), [1] * 10)
...     fired.append(guard.observe(learner, np.full(10, 0.5)))
>>> fired == [None] * 20
True
>>> with torch.no_grad():
...     learner.set_flat(learner.get_flat() * float("nan"))  # the step went wrong
>>> event = guard.observe(learner, np.full(10, np.nan))
>>> event.reason, event.action, event.lr, bool(torch.isfinite(learner.get_flat()).all())
('parameters not finite', 'damped', 0.05, True)
>>> guard.status()["divergences"], guard.learning
(1, True)
"""

from __future__ import annotations

import inspect
import logging
import math
from collections import deque
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from streamlearn.errors import ConfigError
from streamlearn.learners.base import NotInitializedError

__all__ = ["GuardEvent", "LossGuard", "LossGuardBank", "guard_params", "scale_lr"]

log = logging.getLogger(__name__)

_KEEP = 100  # events kept for the status and the evaluator's output
_F64 = np.dtype(np.float64)


@dataclass(frozen=True)
class GuardEvent:
    """One firing of the guard.

    ``position``: samples the learner had been scored on when it fired; ``reason``: ``"parameters not
    finite"`` or ``"loss exploded"``; ``loss``, ``level``: the recent and the earlier mean loss;
    ``action``: ``"damped"`` (model restored, step size scaled: the new one in ``lr``, None when the
    learner has none) or ``"stopped"`` (model restored, learning stopped); ``restored``: the position of
    the model set back.
    """

    position: int
    reason: str
    loss: float
    level: float
    action: str
    lr: float | None
    restored: int

    def to_dict(self) -> dict:
        return asdict(self)


def scale_lr(learner, factor: float) -> float | None:
    """Multiply ``learner``'s step size by ``factor``; the new one, or None when it has none to scale.

    A learner with ``scale_lr`` (RiverLinear) does it itself; a TorchLearner has its ``lr`` and its
    optimizer's groups scaled, and the optimizer's state (momentum, Adam's moments, built up during the
    blow-up) cleared.
    """
    own = getattr(learner, "scale_lr", None)
    if callable(own):
        return own(factor)
    opt = getattr(learner, "optimizer_", None)
    lr = getattr(learner, "lr", None)
    if getattr(opt, "param_groups", None) is None or not isinstance(lr, (int, float)) or isinstance(lr, bool):
        return None
    learner.lr = lr * factor  # the schedule (lr_decay) starts from it
    for group in opt.param_groups:
        group["lr"] = group["lr"] * factor
    opt.state.clear()
    return learner.lr


def _flat(learner) -> torch.Tensor:
    return learner.get_flat().detach().to("cpu", torch.float32).clone()


class LossGuard:
    """Watches one learner's prequential loss; damps it, then stops its learning, when the loss explodes.

    Parameters
    ----------
    factor
        The recent mean loss must exceed ``factor`` times the earlier level (at least ``min_loss``) ...
    min_loss
        ... a floor for the level (nats; a coin flip's log loss by default), so a near-perfect model's
        small loss does not make every drift look like an explosion.
    norm_growth
        ... while the parameters' norm is at least ``norm_growth`` times the last good model's.
    fast, slow
        Samples the recent and the earlier mean loss average over (exponential half-lives).
    warmup
        Samples scored before a rise of the loss can fire (non-finite parameters fire at once).
    every
        Samples between snapshots of the model (taken while the recent loss is within twice its level).
    damp
        The step size is multiplied by this at each event.
    max_damps
        Events that damp; the next one stops learning.
    name
        Names the learner in the log (``"node 3"``).
    """

    def __init__(self, factor: float = 4.0, min_loss: float = math.log(2), norm_growth: float = 2.0,
                 fast: int = 200, slow: int = 5000, warmup: int = 500, every: int = 1000, damp: float = 0.5,
                 max_damps: int = 4, name: str = "learner"):
        for key, v, low in (("factor", factor, 1.0), ("norm_growth", norm_growth, 1.0), ("min_loss", min_loss, 0.0)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= low or not math.isfinite(v):
                raise ConfigError(f"{key}: need a finite number >= {low}, got {v!r}")
        for key, v in (("fast", fast), ("slow", slow), ("every", every)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"{key}: need an int >= 1, got {v!r}")
        for key, v in (("warmup", warmup), ("max_damps", max_damps)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"{key}: need an int >= 0, got {v!r}")
        if not isinstance(damp, (int, float)) or isinstance(damp, bool) or not 0.0 < damp < 1.0:
            raise ConfigError(f"damp: need a number in (0, 1), got {damp!r}")
        self.factor, self.min_loss, self.norm_growth = float(factor), float(min_loss), float(norm_growth)
        self.fast, self.slow, self.warmup, self.every = fast, slow, warmup, every
        self.damp, self.max_damps, self.name = float(damp), max_damps, name
        self.recent = self.level = math.nan  # the recent and the earlier mean loss
        self.n_seen = self.n_steps = 0  # samples with a finite loss; steps observed
        self._next_snapshot = 0  # position of the next snapshot
        self.position = 0  # samples observed (scored or not)
        self.learning = True
        self.n_events = self.n_damps = 0
        self.events: deque = deque(maxlen=_KEEP)
        self.lr: float | None = None  # the step size after the last damping (None: never damped)
        # (position, flat model, norm of its parameters): the snapshot restored, and the newer one
        self._good = self._newer = None
        self._rates: dict = {}  # samples in a step -> the averages' rates (a node steps with one batch size)

    # ---- the rule (pure) ------------------------------------------------------------------------

    def threshold(self) -> float:
        """The recent mean loss above which (with grown parameters) the loss counts as exploded."""
        level = self.level if math.isfinite(self.level) else self.min_loss
        return self.factor * max(level, self.min_loss)

    def _average(self, mean: float, n: int) -> None:
        """Move the recent and the earlier mean loss by a step of ``n`` samples of mean loss ``mean``."""
        if not math.isfinite(self.recent):
            self.recent = self.level = mean
            return
        rates = self._rates.get(n) or self.rates_for(n)
        self.recent += rates[0] * (mean - self.recent)
        # the level follows while all is well, ten times slower while the loss is high (a rise that stays, as
        # a harder concept, is taken in) and not at all past the threshold
        floor = max(self.level, self.min_loss)  # the level is finite here
        if self.recent <= 2.0 * floor:
            self.level += rates[1] * (mean - self.level)
        elif self.recent <= self.factor * floor:
            self.level += rates[2] * (mean - self.level)

    def rates_for(self, n: int) -> tuple:
        """The rates the recent, the earlier and the slow level move by in a step of ``n`` samples (kept)."""
        rates = self._rates[n] = tuple(1.0 - 0.5 ** (n / h) for h in (self.fast, self.slow, 10 * self.slow))
        return rates

    def exploding(self) -> bool:
        """Whether the loss alone says "exploded" (past the warm-up); the parameters' norm is checked after."""
        return self.n_seen >= self.warmup and self.recent > self.threshold()

    # ---- the learner ----------------------------------------------------------------------------

    def observe(self, learner, loss) -> GuardEvent | None:
        """After ``learner`` took a step: ``loss``, the prequential losses of the step's samples (NaN: not
        scored). Returns the event when the guard fired (it damped or stopped the learner), else None."""
        if type(loss) is not np.ndarray or loss.dtype is not _F64 or loss.ndim != 1:
            loss = np.asarray(loss, dtype=np.float64).reshape(-1)
        self.position += len(loss)
        self.n_steps += 1
        if not self.learning:
            return None  # stopped: it said so once
        # (one sample, test-then-train at batch 1: its loss as it is, without a numpy reduction's microsecond)
        total = loss.item() if len(loss) == 1 else float(loss.sum())
        if math.isfinite(total):
            finite, mean, n = None, total / max(len(loss), 1), len(loss)
        else:
            ok = np.isfinite(loss)
            n = int(ok.sum())
            mean = float(loss[ok].mean()) if n else math.nan
            finite = None if not len(loss) else self._finite(learner)  # a NaN loss: are the parameters broken?
        if finite is False:
            return self._fire(learner, "parameters not finite")
        if n:
            self._average(mean, n)
            self.n_seen += n
        return self.check(learner, averaged=n > 0)

    def check(self, learner, averaged: bool = True) -> GuardEvent | None:
        """What :meth:`observe` does once a step's losses moved the averages (``averaged``): fire when the loss
        exploded and the parameters grew; take a snapshot when one is due. A node's compiled run of steps
        (:mod:`streamlearn.node.run_kernel`) moves the averages itself and calls this where it stops."""
        if averaged and self.exploding():
            norm = self._norm(_flat(learner), learner)
            good = self._good[2] if self._good is not None else math.inf
            if not math.isfinite(norm) or norm >= self.norm_growth * good:
                return self._fire(learner, "loss exploded" if math.isfinite(norm) else "parameters not finite")
        if self._good is None or (self.position >= self._next_snapshot and self.healthy()):
            self._snapshot(learner)
        return None

    #: The fields of :meth:`averages_state`, in order.
    STATE_FIELDS = ("recent", "level", "n_seen", "position", "n_steps", "next_snapshot", "no_snapshot",
                    "factor", "min_loss", "warmup", "rate_fast", "rate_slow", "rate_slower")

    def averages_state(self, n: int) -> np.ndarray:
        """What a compiled run of steps of ``n`` samples reads and moves, as float64 (:data:`STATE_FIELDS`)."""
        rates = self._rates.get(n) or self.rates_for(n)
        return np.array([self.recent, self.level, self.n_seen, self.position, self.n_steps, self._next_snapshot,
                         self._good is None, self.factor, self.min_loss, self.warmup, *rates])

    def set_averages_state(self, g: np.ndarray) -> None:
        """Take back what a compiled run moved (see :meth:`averages_state`)."""
        self.recent, self.level = float(g[0]), float(g[1])
        self.n_seen, self.position, self.n_steps = int(g[2]), int(g[3]), int(g[4])

    def healthy(self) -> bool:
        """Whether the recent mean loss is within twice its earlier level (the model may be kept)."""
        level = self.level if math.isfinite(self.level) else self.min_loss
        return not self.recent > 2.0 * max(level, self.min_loss)

    def _finite(self, learner) -> bool:
        try:
            return bool(torch.isfinite(learner.get_flat()).all())
        except NotInitializedError:  # no parameters yet (nothing learnt): nothing to break
            return True

    @staticmethod
    def _norm(flat: torch.Tensor, learner) -> float:
        return param_norm(flat, getattr(learner, "n_params", None))

    def _snapshot(self, learner) -> None:
        try:
            flat = _flat(learner)
        except NotInitializedError:  # no parameters yet
            return
        norm = self._norm(flat, learner)
        if not math.isfinite(norm):
            return  # never keep a broken model (the next NaN loss fires)
        snap = (self.position, flat, max(norm, 1e-12))
        self._next_snapshot = self.position + self.every
        # restore one snapshot back: the newest may already be on its way up
        self._good, self._newer = (snap, snap) if self._good is None else (self._newer, snap)

    def _fire(self, learner, reason: str) -> GuardEvent:
        self.n_events += 1
        restored = -1
        if self._good is not None:
            learner.set_flat(self._good[1])
            restored = self._good[0]
            self._newer = self._good
        lr = None
        stop = self.n_damps >= self.max_damps
        if not stop:
            lr = scale_lr(learner, self.damp)
            stop = lr is None  # nothing to damp: a restored model would blow up the same way
        if stop:
            self.learning = False
            action = "stopped"
        else:
            self.n_damps += 1
            self.lr = lr
            action = "damped"
        event = GuardEvent(position=self.position, reason=reason, loss=self.recent, level=self.level, action=action,
                           lr=lr, restored=restored)
        self.events.append(event)
        self.recent = self.level  # the restored model starts from the earlier level again
        where = restored_text(restored)
        if stop:
            log.warning("%s: %s at sample %d (recent mean loss %.3g, earlier %.3g); restored %s and stopped its "
                        "learning (it predicts on with that model)", self.name, reason, self.position, event.loss,
                        event.level, where)
        else:
            log.warning("%s: %s at sample %d (recent mean loss %.3g, earlier %.3g); restored %s, learning rate "
                        "now %.4g (damping %d of %d)", self.name, reason, self.position, event.loss, event.level,
                        where, lr, self.n_damps, self.max_damps)
        return event

    def status(self) -> dict:
        """``divergences`` (events so far), ``learning_stopped`` (True once stopped), ``guard_lr`` (the step size
        after the last damping, None: never damped), ``last_divergence`` (the last event as a dict, or None)."""
        return {"divergences": self.n_events, "learning_stopped": not self.learning, "guard_lr": self.lr,
                "last_divergence": self.events[-1].to_dict() if self.events else None}


class LossGuardBank:
    """One :class:`LossGuard` per row of a model bank, in array operations: the simulator's nodes guarded as
    the node service guards each node.

    The rows step in lockstep (every row sees a batch of the same size per step). Each row keeps its own
    averages, snapshots, dampings and events, and fires when a :class:`LossGuard` with the same parameters
    would, on the same losses and models. The caller owns the models and step sizes: :meth:`observe` takes
    the step's losses, ``current`` (a callable giving every row's flat model, parameters then buffers; called
    only when a snapshot is due or a row may fire) and the rows' step sizes, and returns what to do
    (:class:`BankGuardActions`): rows to restore, rows whose step size is multiplied by ``damp`` (their
    optimizer state cleared), rows that learn no more.

    Examples
    --------
    >>> import numpy as np, torch
    >>> bank = LossGuardBank(rows=2, warmup=20, every=20)
    >>> W, lrs = torch.ones(2, 3), np.array([0.1, 0.1])
    >>> for _ in range(5):
    ...     act = bank.observe(np.full((2, 10), 0.3), lambda: W, lrs)
    >>> broken = W * torch.tensor([[1.0], [float("nan")]])  # row 1's step went wrong
    >>> act = bank.observe(np.array([[0.3] * 10, [np.nan] * 10]), lambda: broken, lrs)
    >>> act.restore, act.damped, act.stopped, [(i, e.reason, e.lr) for i, e in act.events]
    ([1], [1], [], [(1, 'parameters not finite', 0.05)])
    """

    def __init__(self, rows: int, n_params: int | None = None, names=None, **params):
        self.rule = LossGuard(**guard_params(params))  # the parameters, validated once, and the averages' rates
        self.rows = int(rows)
        self.n_params = n_params  # entries of a flat model that are parameters (None: all)
        self.names = names  # row -> name in the log (default "row i")
        self.recent = np.full(self.rows, np.nan)
        self.level = np.full(self.rows, np.nan)
        self.n_seen = np.zeros(self.rows, dtype=np.int64)
        self.learning = np.ones(self.rows, dtype=bool)
        self.n_damps = np.zeros(self.rows, dtype=np.int64)
        self.position = 0
        self.events: list = []  # (row, GuardEvent), in order
        self._next = np.zeros(self.rows, dtype=np.int64)  # position of each row's next snapshot
        # per row: (position, flat, norm) of the snapshot restored and of the newer one (None: none yet)
        self._good: list = [None] * self.rows
        self._newer: list = [None] * self.rows
        self._has_good = np.zeros(self.rows, dtype=bool)
        self._steady = False  # every row learning, averaged and with a snapshot: the fast path of observe

    def observe(self, losses, current, lrs) -> "BankGuardActions":
        """After a step: ``losses`` (rows x B, NaN: not scored), ``current()`` the rows' flat models (rows x D)
        and ``lrs`` the rows' step sizes. Returns the :class:`BankGuardActions` to apply."""
        losses = np.asarray(losses, dtype=np.float64)
        n_b = losses.shape[1]
        self.position += n_b
        act = BankGuardActions()
        if self._steady and n_b:
            mean = losses.sum(axis=1) / n_b
            if np.isfinite(mean).all() and self._steady_step(mean, n_b):
                return act  # every row learning, scored, averaged as usual: nothing else to do this step
            # a row may fire, is due a snapshot or has an unscored sample: the step taken below, row by row
        on = self.learning
        if not on.any():
            return act
        flats = None

        def flat(i: int) -> torch.Tensor:
            nonlocal flats
            if flats is None:
                flats = current().detach().to("cpu", torch.float32)
            return flats[i]

        mean, n = losses.sum(axis=1) / max(n_b, 1), np.full(self.rows, n_b, dtype=np.int64)
        fire: dict[int, str] = {}
        for i in np.flatnonzero(on & ~np.isfinite(mean)).tolist():  # a NaN loss (rare): broken parameters?
            ok = np.isfinite(losses[i])
            n[i] = int(ok.sum())
            mean[i] = float(losses[i][ok].mean()) if n[i] else math.nan
            if n_b and not bool(torch.isfinite(flat(i)).all()):
                fire[i] = "parameters not finite"
        seen = on & (n > 0)
        seen[list(fire)] = False
        self._average(seen, mean, n)
        self.n_seen[seen] += n[seen]
        floor = np.maximum(np.where(np.isfinite(self.level), self.level, self.rule.min_loss), self.rule.min_loss)
        for i in np.flatnonzero(seen & (self.n_seen >= self.rule.warmup) & (self.recent > self.rule.factor * floor)):
            norm = self._norm(flat(i))
            good = self._good[i][2] if self._good[i] is not None else math.inf
            if not math.isfinite(norm) or norm >= self.rule.norm_growth * good:
                fire[int(i)] = "loss exploded" if math.isfinite(norm) else "parameters not finite"
        due = on & (self.position >= self._next) & ~(self.recent > 2.0 * floor)  # healthy, as LossGuard.healthy
        due |= on & ~self._has_good
        due[list(fire)] = False
        for i in np.flatnonzero(due).tolist():
            self._snapshot(i, flat(i))
        for i in sorted(fire):
            self._fire(i, fire[i], float(lrs[i]), act)
        self._steady = bool(self.learning.all() and np.isfinite(self.recent).all() and self._has_good.all())
        return act

    def _steady_step(self, mean: np.ndarray, n_b: int) -> bool:
        """The usual step in a few array operations (every row learning, with a snapshot, all losses scored):
        :meth:`_average` for one batch size, kept only when no row may fire and none is due a snapshot (False:
        nothing changed, the general path decides)."""
        recent, level = self._moved(self.recent, self.level, mean, *self._rates(n_b))
        floor = np.maximum(level, self.rule.min_loss)
        if (recent > self.rule.factor * floor).any():
            return False  # past the threshold somewhere: the norm decides
        if self.position >= self._next.min() and (~(recent > 2.0 * floor) & (self.position >= self._next)).any():
            return False  # a snapshot is due
        self.recent, self.level = recent, level
        self.n_seen += n_b
        return True

    def _average(self, rows: np.ndarray, mean: np.ndarray, n: np.ndarray) -> None:
        """:meth:`LossGuard._average` on the rows of the mask ``rows``, each with its own ``n``."""
        first = rows & ~np.isfinite(self.recent)
        self.recent[first] = self.level[first] = mean[first]
        go = rows & ~first
        if not go.any():
            return
        rates = np.array([self._rates(k) for k in n[go].tolist()]).T  # each row's rates for its n
        self.recent[go], self.level[go] = self._moved(self.recent[go], self.level[go], mean[go], *rates)

    def _moved(self, recent, level, mean, r0, r1, r2) -> tuple:
        """The averages after a step of mean loss ``mean``, as :meth:`LossGuard._average` moves them (arrays)."""
        recent = recent + r0 * (mean - recent)
        floor = np.maximum(level, self.rule.min_loss)
        low = recent <= 2.0 * floor
        mid = ~low & (recent <= self.rule.factor * floor)
        return recent, level + np.where(low, r1, np.where(mid, r2, 0.0)) * (mean - level)

    def _rates(self, n: int) -> tuple:
        return self.rule._rates.get(n) or self.rule.rates_for(n)

    def _norm(self, flat: torch.Tensor) -> float:
        return param_norm(flat, self.n_params)

    def _snapshot(self, i: int, flat: torch.Tensor) -> None:
        norm = self._norm(flat)
        if not math.isfinite(norm):
            return  # never keep a broken model
        snap = (self.position, flat.clone(), max(norm, 1e-12))
        self._next[i] = self.position + self.rule.every
        self._good[i], self._newer[i] = (snap, snap) if self._good[i] is None else (self._newer[i], snap)
        self._has_good[i] = True

    def _fire(self, i: int, reason: str, lr: float, act: "BankGuardActions") -> None:
        restored = -1
        if self._good[i] is not None:
            act.restore.append(i)
            act.models.append(self._good[i][1])
            restored = self._good[i][0]
            self._newer[i] = self._good[i]
        stop = self.n_damps[i] >= self.rule.max_damps
        if stop:
            self.learning[i] = False
            act.stopped.append(i)
        else:
            self.n_damps[i] += 1
            act.damped.append(i)
        event = GuardEvent(position=self.position, reason=reason, loss=float(self.recent[i]),
                           level=float(self.level[i]), action="stopped" if stop else "damped",
                           lr=None if stop else lr * self.rule.damp, restored=restored)
        act.events.append((i, event))
        self.events.append((i, event))
        self.recent[i] = self.level[i]  # the restored model starts from the earlier level again
        name = self.names(i) if callable(self.names) else f"row {i}"
        where = restored_text(restored)
        log.warning("%s: %s at sample %d (recent mean loss %.3g, earlier %.3g); restored %s and %s", name, reason,
                    self.position, event.loss, event.level, where, "stopped its learning" if stop else
                    f"damped its learning rate to {event.lr:.4g} ({self.n_damps[i]} of {self.rule.max_damps})")


def param_norm(flat: torch.Tensor, n_params: int | None) -> float:
    """The norm of a flat model's parameters (its first ``n_params`` entries; None or 0: all), in float64."""
    p = int(n_params or flat.numel())
    return float(torch.linalg.vector_norm(flat[:p].double()))


def restored_text(restored: int) -> str:
    """What an event restored, for the log (``restored``: the snapshot's position, -1: none)."""
    return f"the model of sample {restored}" if restored >= 0 else "no earlier model (none kept yet)"


def guard_params(setting) -> dict | None:
    """A ``loss_guard`` setting as :class:`LossGuard`'s parameters: True -> ``{}``, False or None -> None (no
    guard), a dict -> its copy, checked for names LossGuard does not take (a ConfigError naming it).

    >>> guard_params(True), guard_params(False), guard_params({"max_damps": 2})
    ({}, None, {'max_damps': 2})
    """
    if setting is None or setting is False:
        return None
    if setting is True:
        return {}
    if not isinstance(setting, dict):
        raise ConfigError(f"loss_guard: True, False or a dict of LossGuard's settings, got {setting!r}")
    unknown = sorted(set(setting) - set(inspect.signature(LossGuard).parameters))
    if unknown:
        raise ConfigError(f"loss guard: unknown setting {unknown[0]!r} "
                          f"(it takes {sorted(inspect.signature(LossGuard).parameters)})")
    return dict(setting)


@dataclass
class BankGuardActions:
    """What :meth:`LossGuardBank.observe` asks of the caller: ``restore`` rows get ``models`` (flat: parameters
    then buffers), ``damped`` rows have their step size multiplied by the guard's ``damp`` and their optimizer
    state cleared, ``stopped`` rows learn no more; ``events``: ``(row, GuardEvent)``."""

    restore: list = field(default_factory=list)
    models: list = field(default_factory=list)
    damped: list = field(default_factory=list)
    stopped: list = field(default_factory=list)
    events: list = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.events)
