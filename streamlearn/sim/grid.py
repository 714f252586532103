"""A whole grid of settings in one pass: every setting's m nodes are rows of one model bank.

A comparison runs many settings (protocols, Δ, b, learning rates, seeds) over the same node
streams. Run one by one, each pays the per-round overhead of tiny models again; here settings
whose learners differ only in ``lr`` and ``seed`` (and, with plain SGD, whatever their protocol)
share one (K·m, d) bank: one forward, backward and update per round for all of them, the data
read once. Each setting keeps its own protocol object, references, codec memories and results;
the protocol is only consulted at the steps where its node rule can answer something
(:attr:`~streamlearn.sync.protocol.Protocol.check_every`, and for dynamic averaging only when a
divergence of that setting's nodes is near Δ, checked for the whole bank in one op).

Rows never mix: every operation of the round is row-wise, so each setting's results equal its
run alone (:func:`streamlearn.sim.simulator.simulate`, which is this loop with one setting).
Settings that cannot share a bank (another architecture, optimizer, batch size) run in banks
of their own, one after the other.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from streamlearn.errors import ConfigError
from streamlearn.learners.loss_guard import LossGuardBank, guard_params
from streamlearn.learners.schedule import decayed_lr
from streamlearn.learners.torch_learner import TorchLearner
from streamlearn.sync.aggregate import sq_dist
from streamlearn.sync.codec import Uplink
from streamlearn.sync.driver import ReferenceMotion, lockstep
from streamlearn.sync.groups import Grouped
from streamlearn.sim.syncing import MAX_LOSS, classifier_declines, guard_syncs, note_syncs
from streamlearn.sync.guard import check_guard
from streamlearn.sync.robust import CLIP_FACTOR, NormBound

__all__ = ["Setting", "simulate_grid", "bank_key"]

# A setting's protocol is skipped in a round only when every divergence is below its threshold by this
# relative margin: the protocol itself (which computes the divergences its own way) decides the rest.
_MARGIN = 1e-4


@dataclass(frozen=True)
class Setting:
    """One configuration of a grid: a protocol (spec or object), a :class:`TorchLearner` template and
    the seed of the protocol's random choices (the learner's ``seed`` sets its initial model)."""

    protocol: object
    learner: TorchLearner
    seed: int = 0


def bank_key(learner: TorchLearner) -> tuple:
    """Settings whose learners have the same key share a bank: every hyperparameter but ``seed``, and
    but ``lr`` when the optimizer is plain SGD (a per-row step size is then exact; with momentum, weight
    decay or Adam a row's step would differ from its own run by rounding, so lr stays in the key).

    >>> a = TorchLearner("mlp", lr=0.1, seed=1)
    >>> bank_key(a) == bank_key(TorchLearner("mlp", lr=0.5, seed=2)), bank_key(a) == bank_key(TorchLearner("logreg"))
    (True, False)
    >>> bank_key(TorchLearner("mlp", optimizer="adam", lr=0.1)) == bank_key(TorchLearner("mlp", optimizer="adam"))
    False
    """
    params = dict(learner._get_params())
    params.pop("seed", None)
    if _plain_sgd(learner):
        params.pop("lr", None)
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


def _plain_sgd(learner: TorchLearner) -> bool:
    return learner.optimizer == "sgd" and not learner.momentum and not learner.weight_decay


def simulate_grid(data, settings, batch_size: int = 10, progress: bool = True, detector=None,
                  guard: tuple | None = None, clip=CLIP_FACTOR, loss_guard: bool | dict = True) -> list:
    """Simulate every :class:`Setting` on ``data``; one :class:`~streamlearn.sim.simulator.SimResult` per
    setting, in order. Settings that can share a bank (:func:`bank_key`) run in one pass.

    ``batch_size``, ``detector``, ``guard``, ``clip`` and ``loss_guard`` are as in
    :func:`~streamlearn.sim.simulator.simulate` and the same for every setting. A result's ``seconds`` is the
    wall time of the pass that computed it, shared by the settings of its bank (``summary()["bank_settings"]``
    says how many).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> from streamlearn.sim.simulator import NodeData, simulate
    >>> X = rng.normal(size=(4, 400, 2)).astype(np.float32)
    >>> data = NodeData(X=X, y=(X.sum(-1) > 0).astype(np.int64), classes=[0, 1], feature_names=["a", "b"])
    >>> grid = [Setting(p, TorchLearner("logreg", lr=lr, seed=0)) for p in ("periodic:b=10", "nosync")
    ...         for lr in (0.1, 0.5)]
    >>> results = simulate_grid(data, grid, progress=False)
    >>> [r.transfers for r in results]
    [32, 32, 0, 0]
    >>> alone = simulate(data, TorchLearner("logreg", lr=0.5, seed=0), "nosync", progress=False)
    >>> bool((alone.correct == results[3].correct).all()), alone.cumulative_loss == results[3].cumulative_loss
    (True, True)
    """
    settings = list(settings)
    if not settings:
        raise ConfigError("settings: need at least one setting")
    for s in settings:
        if not isinstance(s, Setting) or not isinstance(s.learner, TorchLearner):
            raise ConfigError(f"settings: need Setting(protocol, TorchLearner, seed) items, got {s!r}")
    out: list = [None] * len(settings)
    banks: dict[tuple, list[int]] = {}
    for i, s in enumerate(settings):
        if data.task == "regression" or getattr(s.learner, "task_", None) == "regression":
            from streamlearn.sim.simulator import simulate  # a regression's own loop, one setting at a time

            out[i] = simulate(data, s.learner, s.protocol, batch_size=batch_size, seed=s.seed, progress=progress,
                              detector=detector, guard=guard, clip=clip)
            continue
        banks.setdefault(bank_key(s.learner), []).append(i)
    for indices in banks.values():
        for i, res in zip(indices, _run_bank(data, [settings[i] for i in indices], batch_size, progress, detector,
                                             guard, clip, loss_guard)):
            out[i] = res
    return out


class _Config:
    """What one setting keeps of its own in a bank: its rows, protocol, codec memories and records."""

    def __init__(self, k: int, m: int, setting: Setting, proto, uplink, motion, clip):
        self.rows = slice(k * m, (k + 1) * m)
        self.bound = NormBound(m, clip)  # robust aggregation as the sync service's --clip (None: off)
        self.setting, self.proto, self.uplink, self.motion = setting, proto, uplink, motion
        self.every = max(1, int(getattr(proto, "check_every", 1)))
        thr = None if motion is not None else getattr(proto, "divergence_threshold", None)
        self.threshold = None if thr is None else float(thr)
        self.syncs: list = []
        self.restarts: list = []


def _run_bank(data, settings: list, batch_size: int, progress: bool, detector, guard, clip, loss_guard) -> list:
    from streamlearn.sim.simulator import SimResult, _as_protocol

    m, n, f = data.X.shape
    rounds = n // batch_size
    n = rounds * batch_size
    K = len(settings)
    rows = K * m
    templates = [s.learner.clone({"features": list(data.feature_names), "n_features": None,
                                  "classes": list(data.classes)}) for s in settings]
    template = templates[0]
    forward, loss_fn = template.functional()
    gradient = template.bank_gradient()
    device = template.device_
    w0s = [t.get_flat() for t in templates]  # the parameters, then the scaler's statistics (scale=True)
    d, p = w0s[0].numel(), template.n_params
    window, margin = check_guard(*(guard if guard is not None else (None, 0.0)))
    configs = []
    for k, (s, w0) in enumerate(zip(settings, w0s)):
        proto = _as_protocol(s.protocol, m, d, w0, s.seed, n_params=p)
        # The nodes' side of a compressed transfer: one error-feedback memory per node.
        uplink = None if proto.codec.dense else Uplink(proto.codec, m, d, p, device=device,
                                                      buffers_every=proto.buffers_every)
        # Dynamic averaging against an extrapolated reference: the nodes follow their references' motion.
        motion = ReferenceMotion(m, p, device=device) if getattr(proto, "extrapolate", 0) else None
        if window is None and isinstance(proto, Grouped):
            import warnings

            warnings.warn(f"protocol {s.protocol!s}: split=N groups nodes that decline, but without a guard (--guard) "
                          f"no node declines, so every node stays in the whole", UserWarning, stacklevel=3)
        configs.append(_Config(k, m, s, proto, uplink, motion, clip))

    W0 = torch.stack(w0s)  # (K, d)
    W = W0[:, :p].repeat_interleave(m, dim=0).requires_grad_(True)
    Wd = W.detach()  # same storage: syncs write models in place
    R = W0.repeat_interleave(m, dim=0)
    opt = template.make_optimizer([W])
    plain = _plain_sgd(template)
    # Per-row step size. Plain SGD steps w -= (lr_row * factor_row) * g here, one elementwise rule for
    # every row (its own lr, and with lr_decay its own clock). Otherwise the optimizer steps with the one
    # lr the bank's learners share, and with lr_decay node i's update w_new - w_old is scaled by its
    # factor: every torch step is linear in lr (momentum: lr * buf; Adam: lr * m_hat / (sqrt(v_hat) + eps)).
    lr_rows = torch.tensor([float(t.lr) for t in templates], dtype=W.dtype, device=device).repeat_interleave(m)[:, None]
    tau = template.lr_decay
    t_reset = torch.zeros(rows, dtype=torch.int64)  # per row: step of the last restart
    monitors = None
    if tau is not None and detector is not None and not (isinstance(detector, str) and detector.lower() == "none"):
        from streamlearn.evaluation.detectors import DriftMonitorBank

        monitors = DriftMonitorBank(rows, detector)
    scaler = None
    if template.scaler_ is not None:  # one scaler state per node, synced with the parameters
        scaler = template.scaler_.clone()
        scaler.set_flat(R[:, p:])

    X = torch.from_numpy(data.X[:, :n]).to(device)
    Y = torch.from_numpy(data.y[:, :n]).to(device)
    correct = torch.empty(rows, n, dtype=torch.bool, device=device)
    losses = torch.empty(rows, n, dtype=torch.float32, device=device)
    since_sync = torch.zeros(rows, dtype=torch.int64)
    lguard = None
    if guard_params(loss_guard) is not None:  # each node guarded as the node service guards it
        several_lrs = len({float(t.lr) for t in templates}) > 1
        labels = [f"{s.protocol if isinstance(s.protocol, str) else c.proto.name}"
                  + (f" lr={float(s.learner.lr):g}" if several_lrs else "") for s, c in zip(settings, configs)]
        lguard = LossGuardBank(rows, n_params=p, names=lambda i: f"simulate {labels[i // m]} node {i % m}",
                               **guard_params(loss_guard))
    # rows the guard stopped: they keep their model and scaler statistics through the step (as a stopped node
    # does not learn); without plain SGD, a per-row multiplier of the update for the rows it damped
    frozen: list = []
    damp_rows = None
    lr_now = [float(t.lr) for t in templates for _ in range(m)]  # each row's step size, as its learner's lr
    thresholds = torch.tensor([c.threshold if c.threshold is not None else -1.0 for c in configs],
                              dtype=torch.float64)
    watched = [c for c in configs if c.threshold is not None and math.isfinite(c.threshold)]

    t0 = time.perf_counter()
    name = configs[0].proto.name if K == 1 else f"grid of {K}"
    bar = tqdm(total=rounds, desc=f"simulate {name}", unit="round", disable=not progress, leave=False)
    for r in range(rounds):
        sl = slice(r * batch_size, (r + 1) * batch_size)
        Xb, yb = X[:, sl], Y[:, sl]
        if K > 1:
            Xb, yb = Xb.repeat(K, 1, 1), yb.repeat(K, 1)
        if frozen:
            kept = (Wd[frozen].clone(), None if scaler is None else scaler.get_flat(f, lead=(rows,))[frozen])
        if scaler is not None:
            with torch.no_grad():
                test_logits = forward(Wd, scaler.transform(Xb))
            Xb = scaler.update(Xb).transform(Xb)
        if gradient is not None:  # the backward pass written out: no autograd graph
            logits, grad = gradient(Wd, Xb, yb)
        else:
            logits = forward(W, Xb)
        if scaler is None:
            test_logits = logits
        with torch.no_grad():
            # Test before train: score the predictions of the models as they were.
            logp = torch.log_softmax(test_logits.detach(), dim=-1)
            correct[:, sl] = logp.argmax(-1) == yb
            # Log loss clipped as the evaluator clips it (p >= 1e-15), so one wild logit cannot swamp the sum.
            losses[:, sl] = (-logp.gather(-1, yb.unsqueeze(-1)).squeeze(-1)).clamp_max(MAX_LOSS)
        if gradient is None:
            # Every row has B samples: rows * (mean over all) = the sum of the rows' mean losses.
            k = logits.shape[-1]
            opt.zero_grad(set_to_none=True)
            (loss_fn(logits.reshape(-1, k), yb.reshape(-1)) * rows).backward()
            grad = W.grad
        elif not plain:
            W.grad = grad
        factor = None if tau is None else decayed_lr(1.0, r, t_reset.double(), tau).to(device=device,
                                                                                          dtype=W.dtype)[:, None]
        if damp_rows is not None:
            factor = damp_rows if factor is None else factor * damp_rows
        with torch.no_grad():
            if plain:
                step = lr_rows if factor is None else lr_rows * factor
                Wd.sub_(grad.mul_(step))
            elif factor is None:
                opt.step()
            else:
                before = Wd.clone()
                opt.step()
                Wd.sub_(before).mul_(factor).add_(before)
        if monitors is not None:
            # Online detection on this round's errors (one-sided: only rises are reported); a detection
            # restarts the node's clock after this step, as the node service calls restart_schedule()
            # after the step it detected in.
            found = monitors.update((~correct[:, sl]).cpu().numpy())
            for i, positions in enumerate(found):
                if positions:
                    t_reset[i] = r + 1
                    configs[i // m].restarts.append((r + 1, i % m))
        if frozen:
            with torch.no_grad():
                Wd[frozen] = kept[0]
            if scaler is not None:
                scaler.set_flat_rows(frozen, kept[1])
        if lguard is not None:
            act = lguard.observe(losses[:, sl].cpu().numpy(), lambda: _flat_rows(Wd, scaler, f, rows), lr_now)
            if act:
                damp_rows = _apply_guard(act, lguard.rule.damp, Wd, scaler, p, lr_rows, plain, opt, damp_rows, frozen)
                for i in act.damped:
                    lr_now[i] *= lguard.rule.damp
        since_sync += batch_size
        step_no = r + 1
        due = [c for c in configs if step_no % c.every == 0 and c.threshold != math.inf]
        if watched and due:
            # One op for the whole bank: which settings have a node near or past its threshold.
            near = (sq_dist(Wd, R[:, :p]).double().view(K, m) > (thresholds * (1 - _MARGIN))[:, None]).any(1).tolist()
            due = [c for c in due if c.threshold is None or near[c.rows.start // m]]
        if due:
            # Reports carry the prequential loss of the batch (what LSGD ranks nodes by).
            batch_loss = losses[:, sl].mean(dim=1).cpu()
            with torch.no_grad():
                flat = None if scaler is None else scaler.get_flat(f, lead=(rows,))
                for c in due:
                    _round(c, step_no, Wd, R, flat, scaler, p, batch_loss, since_sync, window, sl.stop,
                           lambda got, lo, end, full, before: classifier_declines(got, full, before, X, Y, lo, end,
                                                                                  forward, scaler, p, margin))
        bar.update()
        if progress and (r % 50 == 0 or r == rounds - 1):
            bar.set_postfix(acc=f"{correct[:, : sl.stop].float().mean().item():.3f}",
                            models=sum(c.proto.stats.models_up + c.proto.stats.models_down for c in configs))
    bar.close()
    seconds = time.perf_counter() - t0
    final = _flat_rows(Wd, scaler, f, rows)
    correct, losses, final = correct.cpu().numpy(), losses.cpu().numpy(), final.cpu()
    results = []
    for c in configs:
        proto, spec = c.proto, c.setting.protocol
        res = SimResult(
            protocol=proto.name if not isinstance(spec, str) else str(spec),
            m=m, n=n, batch_size=batch_size, d=d,
            correct=correct[c.rows].copy(), losses=losses[c.rows].copy(),
            comm=proto.stats.as_dict(), syncs=c.syncs, events=[ev for ev in data.events if ev.position < n],
            final_models=final[c.rows].clone(), seconds=seconds, restarts=c.restarts,
            groups=list(getattr(proto, "events", [])), clipped=c.bound.clipped,
            divergences=[] if lguard is None else [{**e.to_dict(), "node": i - c.rows.start}
                                                   for i, e in lguard.events if c.rows.start <= i < c.rows.stop],
        )
        res.bank_settings = K
        results.append(res)
    return results


def _flat_rows(Wd, scaler, f: int, rows: int) -> torch.Tensor:
    """The bank's flat models: parameters, then the scaler's statistics."""
    return Wd if scaler is None else torch.cat([Wd, scaler.get_flat(f, lead=(rows,))], dim=1)


def _apply_guard(act, damp: float, Wd, scaler, p: int, lr_rows, plain: bool, opt, damp_rows, frozen: list):
    """Do what the loss guard asked (:class:`~streamlearn.learners.loss_guard.BankGuardActions`), as a node's
    guard does to its learner: restore rows, damp their step sizes (and clear their optimizer state), stop
    them. Returns the per-row update multiplier (None while plain SGD's per-row step sizes do it)."""
    with torch.no_grad():
        if act.restore:
            M = torch.stack(act.models).to(Wd.device)
            Wd[act.restore] = M[:, :p].to(Wd.dtype)
            if scaler is not None:
                scaler.set_flat_rows(act.restore, M[:, p:])
        if act.damped:
            if plain:
                lr_rows[act.damped] *= damp
            else:
                if damp_rows is None:
                    damp_rows = torch.ones_like(lr_rows)
                damp_rows[act.damped] *= damp
                for state in opt.state.values():  # a fresh optimizer state for those rows (LossGuard clears it)
                    for v in state.values():
                        if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == Wd.shape[0]:
                            v[act.damped] = 0
    frozen.extend(act.stopped)
    return damp_rows


def _round(c: _Config, step: int, Wd, R, flat, scaler, p: int, batch_loss, since_sync, window, end: int,
           declines) -> None:
    """One setting's lockstep round on its rows (the protocol sees whole models: parameters, then the
    scaler's statistics); what the syncs wrote goes back into the bank and the setting's scaler rows."""
    rows = c.rows
    full = Wd[rows] if flat is None else torch.cat([Wd[rows], flat[rows]], dim=1)
    R_k = R[rows]
    before = full.clone() if window is not None else None
    actions = lockstep(c.proto, step, full, R_k, loss=batch_loss[rows], n_samples=since_sync[rows], uplink=c.uplink,
                       motion=c.motion, bound=c.bound)
    if before is not None and actions:
        guard_syncs(c.proto, actions, full, before, R_k, end, window, step, c.uplink, c.motion, declines)
    if actions and flat is not None:
        Wd[rows] = full[:, :p]
        scaler.set_flat_rows(rows, full[:, p:])
    note_syncs(actions, since_sync[rows], c.syncs, step)
