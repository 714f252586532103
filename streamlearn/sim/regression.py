"""The vectorized simulator for regression: float targets, MAE and RMSE, the same protocols.

The loop of :func:`streamlearn.sim.simulator.simulate` with a one-output model: every round each
node predicts its next mini-batch (in target units: the node's target statistics undone), scores
the absolute and squared errors, then learns the batch on its standardised targets (the learner's
``scale_target``). The flat model a protocol averages is the parameters, then the feature scaler's
statistics, then the target's, exactly as a :class:`~streamlearn.learners.TorchLearner` lays it out.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from streamlearn.errors import ConfigError
from streamlearn.evaluation.detectors import TargetScale, check_regression_detector
from streamlearn.learners.preprocessing import OnlineScaler
from streamlearn.learners.schedule import decayed_lr
from streamlearn.learners.torch_learner import TorchLearner
from streamlearn.sim.simulator import NodeData, SimResult, _as_protocol
from streamlearn.sim.syncing import guard_syncs, note_syncs
from streamlearn.sync.codec import Uplink
from streamlearn.sync.driver import ReferenceMotion, lockstep
from streamlearn.sync.robust import CLIP_FACTOR, NormBound
from streamlearn.sync.groups import Grouped
from streamlearn.sync.guard import accepts, check_guard, regression_window_loss
from streamlearn.sync.hierarchy import Hierarchy
from streamlearn.sync.protocol import Protocol

__all__ = ["RegressionSimResult", "regression_data", "simulate_regression", "regression_table"]


def regression_data(streams, arrays, length: int) -> NodeData:
    """:class:`NodeData` of float targets (``task="regression"``), ``length`` samples per node."""
    X = np.stack([x[:length] for x, _ in arrays]).astype(np.float32)
    y = np.stack([yy[:length] for _, yy in arrays]).astype(np.float32)
    events = sorted((ev for s in streams for ev in s.drift_events(length)), key=lambda ev: (ev.position, ev.node))
    return NodeData(X=X, y=y, classes=[], feature_names=list(streams[0].feature_names), events=events,
                    task="regression")


@dataclass
class RegressionSimResult(SimResult):
    """A regression's :class:`SimResult`: ``errors`` (m, n) absolute errors in target units, ``losses``
    the squared errors (``cumulative_loss`` is their sum), ``scaled_errors`` the absolute errors in
    standard deviations of each node's targets so far (what a drift detector watches); no ``correct``."""

    errors: np.ndarray = None
    scaled_errors: np.ndarray = None
    task: str = "regression"

    @property
    def accuracy(self) -> float:
        return float("nan")  # no classes

    @property
    def mae(self) -> float:
        """Prequential mean absolute error over every node and sample."""
        return float(self.errors.mean(dtype=np.float64))

    @property
    def rmse(self) -> float:
        """Prequential root mean squared error over every node and sample."""
        return float(np.sqrt(self.losses.mean(dtype=np.float64)))

    @property
    def node_mae(self) -> np.ndarray:
        return self.errors.mean(axis=1, dtype=np.float64)

    @property
    def node_rmse(self) -> np.ndarray:
        return np.sqrt(self.losses.mean(axis=1, dtype=np.float64))

    def rolling_mae(self, window: int) -> np.ndarray:
        """(m, n) MAE over the last ``window`` samples of each node (shorter at the start)."""
        c = np.cumsum(self.errors, axis=1, dtype=np.float64)
        out = c.copy()
        out[:, window:] -= c[:, :-window]
        return out / np.minimum(np.arange(1, self.n + 1), window)

    def error_stream(self) -> np.ndarray:
        """(m, n) what a drift detector watches: the scaled absolute errors."""
        return self.scaled_errors

    def summary(self) -> dict:
        out = super().summary()
        out.update(task="regression", accuracy=None, mae=self.mae, rmse=self.rmse)
        return out


def regression_table(rows: list[dict]) -> str:
    """The printable table of regression runs (MAE and RMSE in the label's units)."""
    header = ["protocol", "MAE", "RMSE", "node MAE min-max", "transfers", "MB sent", "full", "partial"]

    def fmt(v, digits=4):
        return "-" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"

    lines = [[r["protocol"], fmt(r["mae"]), fmt(r["rmse"]),
              f"{fmt(r.get('node_mae_min'), 2)}-{fmt(r.get('node_mae_max'), 2)}", str(r["transfers"]),
              fmt(r["bytes"] / 1e6, 2), str(r.get("full_syncs", "")), str(r.get("partial_syncs", ""))] for r in rows]
    cells = [header] + lines
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    out = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def _to_target(out: torch.Tensor, tscaler: OnlineScaler | None) -> torch.Tensor:
    """Outputs (m, B) in target units: each node's target statistics (m, 1) undone."""
    if tscaler is None or tscaler.mean_ is None:
        return out
    std = torch.sqrt(tscaler.var_)
    std = torch.where(std > 0, std, 1.0)
    return (tscaler.mean_ + std * out.double()).to(out.dtype)


class _Stats:
    """Each node's feature and target scaler states, and where they sit in the flat model."""

    def __init__(self, template: TorchLearner, w0: torch.Tensor, m: int, f: int, p: int):
        self.f, self.p = f, p
        self.fs = OnlineScaler.flat_size(f) if template.scaler_ is not None else 0
        self.scaler = self.tscaler = None
        if template.scaler_ is not None:
            self.scaler = template.scaler_.clone()
            self.scaler.set_flat(w0[p:p + self.fs].repeat(m, 1))
        if template.target_scaler_ is not None:
            self.tscaler = template.target_scaler_.clone()
            self.tscaler.set_flat(w0[p + self.fs:].repeat(m, 1))

    def flat(self, Wd: torch.Tensor) -> torch.Tensor:
        m = Wd.shape[0]
        parts = [Wd]
        if self.scaler is not None:
            parts.append(self.scaler.get_flat(self.f, lead=(m,)).to(Wd.device))
        if self.tscaler is not None:
            parts.append(self.tscaler.get_flat(1, lead=(m,)).to(Wd.device))
        return torch.cat(parts, dim=1) if len(parts) > 1 else Wd

    def load(self, full: torch.Tensor) -> None:
        p, fs = self.p, self.fs
        if self.scaler is not None:
            self.scaler.set_flat(full[:, p:p + fs])
        if self.tscaler is not None:
            self.tscaler.set_flat(full[:, p + fs:])

    def predict(self, forward, flat: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """Predictions (k, W) in target units of the models ``flat`` (k, d), with their own statistics."""
        p, fs = self.p, self.fs
        if self.scaler is not None:
            sc = self.scaler.clone()
            sc.set_flat(flat[:, p:p + fs])
            X = sc.transform(X)
        ts = None
        if self.tscaler is not None:
            ts = self.tscaler.clone()
            ts.set_flat(flat[:, p + fs:])
        return _to_target(forward(flat[:, :p], X)[..., 0], ts)


def simulate_regression(data: NodeData, learner: TorchLearner, protocol="nosync", batch_size: int = 10,
                        seed: int = 0, progress: bool = True, detector=None,
                        guard: tuple | None = None, clip=CLIP_FACTOR) -> RegressionSimResult:
    """:func:`~streamlearn.sim.simulator.simulate` for float targets (a learner with a regression loss).

    The parameters mean what they mean there. ``detector`` (with ``lr_decay``) watches each node's
    absolute errors in standard deviations of its targets so far; the guard compares the mean squared
    error on the node's window, in standard deviations of the window's targets
    (:func:`~streamlearn.sync.guard.regression_window_loss`), and ``margin`` is in those units.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(4, 400, 2)).astype(np.float32)
    >>> y = (100 + 20 * X[..., 0] - 10 * X[..., 1] + rng.normal(size=(4, 400))).astype(np.float32)
    >>> data = NodeData(X=X, y=y, classes=[], feature_names=["a", "b"], task="regression")
    >>> learner = TorchLearner("logreg", loss="squared", scale=True, lr=0.1, seed=0)
    >>> res = simulate_regression(data, learner, "periodic:b=10", progress=False)
    >>> res.mae < 10, res.transfers  # the target's std is 22; 4 rounds of sync * (4 up + 4 down)
    (True, 32)
    """
    if not isinstance(learner, TorchLearner) or learner.task_ != "regression":
        raise ConfigError(f"learner: the data has float targets (a regression); need a torch learner with a "
                          f"regression loss (squared, huber), got {learner!r}")
    if data.task != "regression":
        raise ConfigError(f"learner: loss={learner.loss!r} is a regression loss, but the data has classes "
                          f"{data.classes!r}; use a classification loss, or a numeric label (--task regression)")
    if isinstance(detector, str) and detector.lower() != "none":
        check_regression_detector(detector)
    m, n, f = data.X.shape
    rounds = n // batch_size
    n = rounds * batch_size
    template = learner.clone({"features": list(data.feature_names), "n_features": None, "classes": None})
    forward, loss_fn = template.functional()
    device = template.device_
    w0 = template.get_flat()  # parameters, feature statistics, target statistics
    d, p = w0.numel(), template.n_params
    proto = _as_protocol(protocol, m, d, w0, seed, n_params=p)
    uplink = None if proto.codec.dense else Uplink(proto.codec, m, d, p, device=device,
                                                  buffers_every=proto.buffers_every)
    window, margin = check_guard(*(guard if guard is not None else (None, 0.0)))
    if window is None and isinstance(proto, Grouped):
        warnings.warn(f"protocol {protocol!s}: split=N groups nodes that decline, but without a guard (--guard) no node "
                      f"declines, so every node stays in the whole", UserWarning, stacklevel=3)
    motion = ReferenceMotion(m, p, device=device) if getattr(proto, "extrapolate", 0) else None
    bound = NormBound(m, clip)  # robust aggregation as the sync service's --clip (None: off)

    W = w0[:p].repeat(m, 1).requires_grad_(True)
    Wd = W.detach()
    R = w0.repeat(m, 1)
    opt = template.make_optimizer([W])
    tau = template.lr_decay
    t_reset = torch.zeros(m, dtype=torch.int64)
    group = opt.param_groups[0]
    scale_grad = template.optimizer == "sgd" and not group["momentum"] and not group["weight_decay"]
    bank = None
    restarts: list[tuple[int, int]] = []
    if tau is not None and detector is not None and not (isinstance(detector, str) and detector.lower() == "none"):
        from streamlearn.evaluation.detectors import DriftMonitorBank

        bank = DriftMonitorBank(m, detector)
    stats = _Stats(template, w0, m, f, p)
    target_scale = TargetScale(m)

    X = torch.from_numpy(data.X[:, :n]).to(device)
    Y = torch.from_numpy(np.ascontiguousarray(data.y[:, :n], dtype=np.float32)).to(device)
    errors = torch.empty(m, n, dtype=torch.float32, device=device)
    losses = torch.empty(m, n, dtype=torch.float32, device=device)
    scaled = np.empty((m, n), dtype=np.float32)
    since_sync = torch.zeros(m, dtype=torch.int64)
    syncs: list[tuple[int, str, int]] = []

    t0 = time.perf_counter()
    bar = tqdm(total=rounds, desc=f"simulate {proto.name}", unit="round", disable=not progress, leave=False)
    for r in range(rounds):
        sl = slice(r * batch_size, (r + 1) * batch_size)
        Xb, yb = X[:, sl], Y[:, sl]
        if stats.scaler is not None:
            with torch.no_grad():
                test_out = forward(Wd, stats.scaler.transform(Xb))
            Xb = stats.scaler.update(Xb).transform(Xb)
            out = forward(W, Xb)
        else:
            out = test_out = forward(W, Xb)
        with torch.no_grad():
            # Test before train, in target units with each node's statistics as they were.
            err = _to_target(test_out.detach()[..., 0], stats.tscaler) - yb
            errors[:, sl] = err.abs()
            losses[:, sl] = err.square()
        yt = yb
        if stats.tscaler is not None:
            yt = stats.tscaler.update(yb[..., None]).transform(yb[..., None])[..., 0]
        opt.zero_grad(set_to_none=True)
        (loss_fn(out.reshape(-1, 1), yt.reshape(-1)) * m).backward()
        if tau is None:
            opt.step()
        else:
            factor = decayed_lr(1.0, r, t_reset.double(), tau).to(device=device, dtype=W.dtype)[:, None]
            if scale_grad:
                W.grad.mul_(factor)
                opt.step()
            else:
                before = Wd.clone()
                opt.step()
                with torch.no_grad():
                    Wd.sub_(before).mul_(factor).add_(before)
        scaled[:, sl] = target_scale.scale(errors[:, sl].cpu().numpy(), yb.cpu().numpy())
        if bank is not None:
            for i, positions in enumerate(bank.update(scaled[:, sl])):
                if positions:
                    t_reset[i] = r + 1
                    restarts.append((r + 1, i))
        since_sync += batch_size
        batch_loss = losses[:, sl].mean(dim=1).cpu()  # what LSGD ranks nodes by
        with torch.no_grad():
            full = stats.flat(Wd)
            before = full.clone() if window is not None else None
            actions = lockstep(proto, r + 1, full, R, loss=batch_loss, n_samples=since_sync, uplink=uplink,
                               motion=motion, bound=bound)
            if before is not None and actions:
                guard_syncs(proto, actions, full, before, R, sl.stop, window, r + 1, uplink, motion,
                            lambda got, lo, end, full, before: _declines(got, lo, end, full, before, X, Y, forward,
                                                                         stats, margin))
            if actions and full is not Wd:
                Wd.copy_(full[:, :p])
                stats.load(full)
            note_syncs(actions, since_sync, syncs, r + 1)
        bar.update()
        if progress and (r % 50 == 0 or r == rounds - 1):
            bar.set_postfix(mae=f"{errors[:, : sl.stop].mean().item():.3f}",
                            models=proto.stats.models_up + proto.stats.models_down)
    bar.close()
    return RegressionSimResult(
        protocol=proto.name if isinstance(protocol, (Protocol, Grouped, Hierarchy)) else str(protocol),
        m=m, n=n, batch_size=batch_size, d=d, correct=None, losses=losses.cpu().numpy(),
        comm=proto.stats.as_dict(), syncs=syncs, events=[ev for ev in data.events if ev.position < n],
        final_models=stats.flat(Wd).cpu().clone(), seconds=time.perf_counter() - t0, restarts=restarts,
        groups=list(getattr(proto, "events", [])), errors=errors.cpu().numpy(), scaled_errors=scaled,
        clipped=bound.clipped,
    )


def _declines(got, lo, end, full, before, X, Y, forward, stats, margin) -> list:
    """The nodes of ``got`` whose arriving model (``full``) fits their window worse than their own (``before``):
    the simulator's guard (:func:`streamlearn.sim.syncing.guard_syncs`) with a regression's loss."""
    Xw, yw = X[got, lo:end], Y[got, lo:end]
    ok = accepts(regression_window_loss(stats.predict(forward, full[got], Xw), yw),
                 regression_window_loss(stats.predict(forward, before[got], Xw), yw), margin).tolist()
    return [n for n, keep in zip(got, ok) if not keep]
