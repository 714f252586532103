"""The vectorized simulator: m nodes in one process, in lockstep rounds.

Every round each node predicts its next mini-batch (test), scores it, then learns it (train):
one batched forward and backward for all m models, held as one (m, d) tensor and stepped by
the learner's own optimizer (SGD and Adam act elementwise, so this equals m separate learners).
After the update the protocol decides who syncs, through the same protocol objects the Kafka
sync service drives (:func:`streamlearn.sync.driver.lockstep`).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from streamlearn.errors import ConfigError
from streamlearn.learners.schedule import decayed_lr
from streamlearn.learners.torch_learner import TorchLearner
from streamlearn.sync.codec import Uplink
from streamlearn.sync.driver import ReferenceMotion, lockstep, settle
from streamlearn.sync.groups import Grouped
from streamlearn.sync.guard import accepts, check_guard, window_loss
from streamlearn.sync.messages import PullToward, SendModel
from streamlearn.sync.protocol import Protocol
from streamlearn.sync.spec import make_protocol

__all__ = ["NodeData", "SimResult", "load_node_data", "simulate"]

_MAX_LOSS = -math.log(1e-15)


@dataclass
class NodeData:
    """The node streams, materialised: ``X`` (m, n, f) float32 and label indices ``y`` (m, n)
    (``task="regression"``: the float targets, float32, and no classes)."""

    X: np.ndarray
    y: np.ndarray
    classes: list
    feature_names: list
    events: list = field(default_factory=list)  # ground-truth DriftEvents within the n samples
    task: str = "classification"

    @property
    def m(self) -> int:
        return self.X.shape[0]

    @property
    def n(self) -> int:
        return self.X.shape[1]


def load_node_data(streams, n: int | None) -> NodeData:
    """Materialise ``n`` samples of every node stream (fewer when a finite stream is shorter).

    Nodes are cut to the shortest stream, so every round has a mini-batch for every node.
    """
    if not streams:
        raise ConfigError("streams: need at least one node stream")
    if n is None and any(getattr(s, "n_samples", None) is None for s in streams):
        raise ConfigError("n: an endless source needs a sample count per node (--n)")
    arrays = [s.to_arrays(n if n is not None else s.n_samples) for s in streams]
    length = min(len(y) for _, y in arrays)
    if length == 0:
        raise ConfigError("streams: a node stream is empty")
    classes = streams[0].classes
    if classes is None and all(yy.dtype.kind == "f" for _, yy in arrays):  # float labels: a regression's targets
        from streamlearn.sim.regression import regression_data

        return regression_data(streams, arrays, length)
    if classes is None:
        classes = sorted(set().union(*(np.unique(y).tolist() for _, y in arrays)))
    index = {c: i for i, c in enumerate(classes)}
    try:
        y = np.stack([np.fromiter((index[v] for v in yy[:length]), dtype=np.int64, count=length) for _, yy in arrays])
    except KeyError as e:
        raise ConfigError(f"a label {e.args[0]!r} is not one of the classes {classes!r}") from None
    X = np.stack([x[:length] for x, _ in arrays]).astype(np.float32)
    events = sorted(
        (ev for s in streams for ev in s.drift_events(length)), key=lambda ev: (ev.position, ev.node)
    )
    return NodeData(X=X, y=y, classes=list(classes), feature_names=list(streams[0].feature_names), events=events)


@dataclass
class SimResult:
    """What a simulation measured. ``correct`` and ``losses`` are (m, n): per node and sample."""

    protocol: str
    m: int
    n: int
    batch_size: int
    d: int
    correct: np.ndarray
    losses: np.ndarray
    comm: dict
    syncs: list  # (step, kind, n_nodes) per SendModel/PullToward action
    events: list
    final_models: torch.Tensor  # (m, d) flat models: parameters, then scaler statistics
    seconds: float
    # (step, node) per restart of a node's step-size schedule (lr_decay with a detector): the
    # node's clock restarts after that step, at sample position step * batch_size
    restarts: list = field(default_factory=list)
    # (step, kind, node, from_group, to_group) per group change (a protocol with ``split``,
    # :mod:`streamlearn.sync.groups`); the step is the round, sample position step * batch_size
    groups: list = field(default_factory=list)

    @property
    def accuracy(self) -> float:
        """Prequential accuracy over every node and sample."""
        return float(self.correct.mean())

    @property
    def node_accuracy(self) -> np.ndarray:
        return self.correct.mean(axis=1)

    @property
    def cumulative_loss(self) -> float:
        """Sum of the prequential losses of every node and sample (the paper's cumulative loss)."""
        return float(self.losses.sum(dtype=np.float64))

    @property
    def transfers(self) -> int:
        return int(self.comm["models_up"] + self.comm["models_down"])

    @property
    def bytes(self) -> int:
        return int(self.comm["bytes_up"] + self.comm["bytes_down"])

    def rolling_accuracy(self, window: int) -> np.ndarray:
        """(m, n) accuracy over the last ``window`` samples of each node (shorter at the start)."""
        c = np.cumsum(self.correct, axis=1, dtype=np.float64)
        out = c.copy()
        out[:, window:] -= c[:, :-window]
        counts = np.minimum(np.arange(1, self.n + 1), window)
        return out / counts

    def summary(self) -> dict:
        return {
            "protocol": self.protocol,
            "m": self.m,
            "n_per_node": self.n,
            "batch_size": self.batch_size,
            "d": self.d,
            "accuracy": self.accuracy,
            "cumulative_loss": self.cumulative_loss,
            "transfers": self.transfers,
            "bytes": self.bytes,
            "full_syncs": int(self.comm["full_syncs"]),
            "partial_syncs": int(self.comm["partial_syncs"]),
            "restarts": len(self.restarts),
            "group_changes": len(self.groups),
            "comm": dict(self.comm),
            "seconds": self.seconds,
        }


def _as_protocol(protocol, m: int, d: int, w0: torch.Tensor, seed: int, n_params: int) -> Protocol:
    if isinstance(protocol, (Protocol, Grouped)):
        if (protocol.m, protocol.d, protocol.n_params) != (m, d, n_params):
            raise ConfigError(f"protocol: built for m={protocol.m}, d={protocol.d}, n_params={protocol.n_params}; "
                              f"the simulation has m={m}, d={d}, n_params={n_params}")
        return protocol
    return make_protocol(protocol, m=m, d=d, w0=w0, seed=seed, device=w0.device, n_params=n_params)


def note_syncs(actions, since_sync, syncs: list, step: int) -> None:
    """After the protocol's actions at ``step``: the synced nodes' sample counts restart, ``syncs`` gets
    ``(step, kind, nodes)`` per model sent or pull (shared by the classification and regression loops)."""
    for action in actions:
        if isinstance(action, (SendModel, PullToward)):
            since_sync[list(action.nodes)] = 0
            kind = "pull" if isinstance(action, PullToward) else ("full" if action.reference else "partial")
            syncs.append((step, kind, len(action.nodes)))


def simulate(data: NodeData, learner: TorchLearner, protocol="nosync", batch_size: int = 10, seed: int = 0,
             progress: bool = True, detector=None, guard: tuple | None = None) -> SimResult:
    """Run ``data.m`` nodes in lockstep: test-then-train on mini-batches, the protocol syncs.

    Parameters
    ----------
    data
        The node streams (:func:`load_node_data`).
    learner
        A :class:`TorchLearner` template; every node starts from its initial parameters
        (the same ``w0`` everywhere, built for the data's features and classes).
    protocol
        A protocol spec (``"dynamic:delta=0.5,b=1"``) or a :class:`Protocol` for m nodes.
    batch_size
        Samples per node per round; one round is one local update (one step) per node.
    seed
        Seeds the protocol's random choices.
    detector
        With a learner that has ``lr_decay``: a drift detector (a name of
        :data:`~streamlearn.evaluation.detectors.DETECTORS` or a river detector) run online on
        every node's 0/1 errors, round by round; a node whose detector fires while its error
        rose (a one-sided :class:`~streamlearn.evaluation.DriftMonitorBank` reports only those) restarts its step-size schedule
        after that round, as ``TorchLearner.restart_schedule()`` does (see ``SimResult.restarts``).
        None (default) or ``"none"``: no restarts. Without ``lr_decay`` it is not run.
    guard
        ``(window, margin)``: guarded averaging (:mod:`streamlearn.sync.guard`). A node that gets a
        model from the sync compares its mean log loss on the node's last ``window`` learned samples
        with its own model's, and keeps its own (taking the new reference) when the arriving one is
        worse by more than ``margin`` nats; the protocol hears of it (``on_declined``). None: off.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(4, 400, 2)).astype(np.float32)
    >>> data = NodeData(X=X, y=(X.sum(-1) > 0).astype(np.int64), classes=[0, 1], feature_names=["a", "b"])
    >>> res = simulate(data, TorchLearner("logreg", lr=0.5, seed=0), "periodic:b=10", progress=False)
    >>> res.accuracy > 0.9, res.transfers  # 4 rounds of sync * (4 up + 4 down)
    (True, 32)
    """
    if not isinstance(learner, TorchLearner):
        from streamlearn.learners.river_local import RiverLocal

        if isinstance(learner, RiverLocal):  # no flat parameters: each node on its own, nosync only
            from streamlearn.sim.local import simulate_local

            return simulate_local(data, learner, protocol, batch_size=batch_size)
        raise ConfigError(f"learner: the simulator trains TorchLearner models, got {type(learner).__name__}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size: need an int >= 1, got {batch_size!r}")
    m, n, f = data.X.shape
    rounds = n // batch_size
    if rounds == 0:
        raise ConfigError(f"batch_size: {batch_size} is more than the {n} samples per node")
    n = rounds * batch_size
    if getattr(learner, "task_", None) == "regression" or data.task == "regression":
        from streamlearn.sim.regression import simulate_regression  # float targets: MAE/RMSE, same protocols

        return simulate_regression(data, learner, protocol, batch_size=batch_size, seed=seed, progress=progress,
                                   detector=detector, guard=guard)
    template = learner.clone({"features": list(data.feature_names), "n_features": None, "classes": list(data.classes)})
    forward, loss_fn = template.functional()
    device = template.device_
    w0 = template.get_flat()  # the parameters, then the scaler's statistics (scale=True)
    d, p = w0.numel(), template.n_params
    proto = _as_protocol(protocol, m, d, w0, seed, n_params=p)
    # The nodes' side of a compressed transfer: one error-feedback memory per node.
    uplink = None if proto.codec.dense else Uplink(proto.codec, m, d, p, device=device,
                                                  buffers_every=proto.buffers_every)
    window, margin = check_guard(*(guard if guard is not None else (None, 0.0)))
    if window is None and isinstance(proto, Grouped):
        warnings.warn(f"protocol {protocol!s}: split=N groups nodes that decline, but without a guard (--guard) no node "
                      f"declines, so every node stays in the whole", UserWarning, stacklevel=2)
    # Dynamic averaging against an extrapolated reference: the nodes follow their references' motion.
    motion = ReferenceMotion(m, p, device=device) if getattr(proto, "extrapolate", 0) else None

    W = w0[:p].repeat(m, 1).requires_grad_(True)
    Wd = W.detach()  # same storage: syncs write models in place
    R = w0.repeat(m, 1)
    opt = template.make_optimizer([W])
    # Step-size schedule (lr_decay = tau): every node steps once per round, so node i's clock is the
    # round r and its factor 1/sqrt(1 + (r - t_reset[i]) / tau) multiplies the learner's lr.
    tau = template.lr_decay
    t_reset = torch.zeros(m, dtype=torch.int64)  # per node: step of the last restart
    group = opt.param_groups[0]
    # Plain SGD: w -= lr * g, so scaling node i's gradient row by its factor is exactly a per-node lr.
    # Otherwise (momentum: w -= lr * buf with buf = mu * buf + g; weight decay: g + wd * w; Adam: lr *
    # m_hat / (sqrt(v_hat) + eps)) a scaled gradient would enter the momentum buffer, the decay term or
    # Adam's scale-free ratio, not the step; there every torch step is still linear in lr, so the update
    # w_new - w_old of row i is scaled by its factor instead: the same as a per-node lr, up to rounding.
    scale_grad = template.optimizer == "sgd" and not group["momentum"] and not group["weight_decay"]
    bank = None
    restarts: list[tuple[int, int]] = []
    if tau is not None and detector is not None and not (isinstance(detector, str) and detector.lower() == "none"):
        from streamlearn.evaluation.detectors import DriftMonitorBank

        bank = DriftMonitorBank(m, detector)
    scaler = None
    if template.scaler_ is not None:  # one scaler state per node, synced with the parameters
        scaler = template.scaler_.clone()
        scaler.set_flat(w0[p:].repeat(m, 1))

    X = torch.from_numpy(data.X[:, :n]).to(device)
    Y = torch.from_numpy(data.y[:, :n]).to(device)
    correct = torch.empty(m, n, dtype=torch.bool, device=device)
    losses = torch.empty(m, n, dtype=torch.float32, device=device)
    since_sync = torch.zeros(m, dtype=torch.int64)
    syncs: list[tuple[int, str, int]] = []

    t0 = time.perf_counter()
    bar = tqdm(total=rounds, desc=f"simulate {proto.name}", unit="round", disable=not progress, leave=False)
    for r in range(rounds):
        sl = slice(r * batch_size, (r + 1) * batch_size)
        Xb, yb = X[:, sl], Y[:, sl]
        if scaler is not None:
            with torch.no_grad():
                test_logits = forward(Wd, scaler.transform(Xb))
            Xb = scaler.update(Xb).transform(Xb)
            logits = forward(W, Xb)
        else:
            logits = test_logits = forward(W, Xb)
        with torch.no_grad():
            # Test before train: score the predictions of the models as they were.
            logp = torch.log_softmax(test_logits.detach(), dim=-1)
            correct[:, sl] = logp.argmax(-1) == yb
            # Log loss clipped as the evaluator clips it (p >= 1e-15), so one wild logit cannot swamp the sum.
            losses[:, sl] = (-logp.gather(-1, yb.unsqueeze(-1)).squeeze(-1)).clamp_max(_MAX_LOSS)
        # Every node has B samples: m * (mean over all) = the sum of the nodes' mean losses.
        k = logits.shape[-1]
        opt.zero_grad(set_to_none=True)
        (loss_fn(logits.reshape(-1, k), yb.reshape(-1)) * m).backward()
        if tau is None:
            opt.step()
        else:
            factor = decayed_lr(1.0, r, t_reset.double(), tau).to(device=device, dtype=W.dtype)[:, None]  # (m, 1)
            if scale_grad:
                W.grad.mul_(factor)
                opt.step()
            else:
                before = Wd.clone()
                opt.step()
                with torch.no_grad():
                    Wd.sub_(before).mul_(factor).add_(before)
        if bank is not None:
            # Online detection on this round's errors (one-sided: only rises are reported); a detection
            # restarts the node's clock after this step, as the node service calls restart_schedule()
            # after the step it detected in.
            found = bank.update((~correct[:, sl]).cpu().numpy())
            for i, positions in enumerate(found):
                if positions:
                    t_reset[i] = r + 1
                    restarts.append((r + 1, i))
        since_sync += batch_size
        # Reports carry the prequential loss of the batch (what LSGD ranks nodes by).
        batch_loss = losses[:, sl].mean(dim=1).cpu()
        with torch.no_grad():
            # The protocol sees whole models: parameters, then scaler statistics.
            full = Wd if scaler is None else torch.cat([Wd, scaler.get_flat(f, lead=(m,))], dim=1)
            before = full.clone() if window is not None else None
            actions = lockstep(proto, r + 1, full, R, loss=batch_loss, n_samples=since_sync, uplink=uplink,
                               motion=motion)
            if before is not None and actions:
                guard_syncs(proto, actions, full, before, R, sl.stop, window, r + 1, uplink, motion,
                            lambda got, lo, end, full, before: _declines(got, full, before, X, Y, lo, end, forward,
                                                                         scaler, p, margin))
            if actions and scaler is not None:
                Wd.copy_(full[:, :p])
                scaler.set_flat(full[:, p:])
            note_syncs(actions, since_sync, syncs, r + 1)
        bar.update()
        if progress and (r % 50 == 0 or r == rounds - 1):
            bar.set_postfix(acc=f"{correct[:, : sl.stop].float().mean().item():.3f}",
                            models=proto.stats.models_up + proto.stats.models_down)
    bar.close()
    return SimResult(
        protocol=proto.name if isinstance(protocol, (Protocol, Grouped)) else str(protocol),
        m=m, n=n, batch_size=batch_size, d=d,
        correct=correct.cpu().numpy(), losses=losses.cpu().numpy(),
        comm=proto.stats.as_dict(), syncs=syncs, events=[ev for ev in data.events if ev.position < n],
        final_models=(Wd if scaler is None else torch.cat([Wd, scaler.get_flat(f, lead=(m,))], dim=1)).cpu().clone(),
        seconds=time.perf_counter() - t0, restarts=restarts, groups=list(getattr(proto, "events", [])),
    )


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


def _declines(got, full, before, X, Y, lo, end, forward, scaler, p, margin) -> list:
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
