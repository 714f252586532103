"""The vectorized simulator: m nodes in one process, in lockstep rounds.

Every round each node predicts its next mini-batch (test), scores it, then learns it (train):
one batched forward and backward for all m models, held as one (m, d) tensor and stepped by
the learner's own optimizer (SGD and Adam act elementwise, so this equals m separate learners).
After the update the protocol decides who syncs, through the same protocol objects the Kafka
sync service drives (:func:`streamlearn.sync.driver.lockstep`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from streamlearn.errors import ConfigError
from streamlearn.learners.torch_learner import TorchLearner
from streamlearn.sync.groups import Grouped
from streamlearn.sync.hierarchy import Hierarchy
from streamlearn.sync.protocol import Protocol
from streamlearn.sync.robust import CLIP_FACTOR
from streamlearn.sync.spec import make_protocol

__all__ = ["NodeData", "SimResult", "load_node_data", "simulate"]

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
    # models clipped by robust aggregation (``clip``), as the sync service counts them (clipped_models)
    clipped: int = 0
    # what the loss guard did (``loss_guard``): one dict per event, a GuardEvent's fields and its ``node``
    divergences: list = field(default_factory=list)

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
            "clipped_models": self.clipped,
            "divergences": len(self.divergences),
            "comm": dict(self.comm),
            "seconds": self.seconds,
        }


def _as_protocol(protocol, m: int, d: int, w0: torch.Tensor, seed: int, n_params: int) -> Protocol:
    if isinstance(protocol, (Protocol, Grouped, Hierarchy)):
        if (protocol.m, protocol.d, protocol.n_params) != (m, d, n_params):
            raise ConfigError(f"protocol: built for m={protocol.m}, d={protocol.d}, n_params={protocol.n_params}; "
                              f"the simulation has m={m}, d={d}, n_params={n_params}")
        return protocol
    return make_protocol(protocol, m=m, d=d, w0=w0, seed=seed, device=w0.device, n_params=n_params)


def simulate(data: NodeData, learner: TorchLearner, protocol="nosync", batch_size: int = 10, seed: int = 0,
             progress: bool = True, detector=None, guard: tuple | None = None, clip=CLIP_FACTOR,
             loss_guard: bool | dict = True) -> SimResult:
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
    clip
        Robust aggregation as the sync service does it (its ``--clip``, default 4): every model that comes
        up is clipped around its node's reference when its move is longer than ``clip`` times the nodes'
        typical long move (:class:`~streamlearn.sync.robust.NormBound`; counted in ``SimResult.clipped``).
        None: off.
    loss_guard
        Each node of a classifier watched by a loss guard, as the node service watches it (on by default
        there too): a node whose loss explodes gets its last good model back and half its step size
        (:class:`~streamlearn.learners.loss_guard.LossGuardBank`; its events in ``SimResult.divergences``).
        A dict: the guard's parameters (as :class:`~streamlearn.learners.loss_guard.LossGuard` takes them).
        False: off.

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
    n = data.X.shape[1]
    if n // batch_size == 0:
        raise ConfigError(f"batch_size: {batch_size} is more than the {n} samples per node")
    if getattr(learner, "task_", None) == "regression" or data.task == "regression":
        from streamlearn.sim.regression import simulate_regression  # float targets: MAE/RMSE, same protocols

        return simulate_regression(data, learner, protocol, batch_size=batch_size, seed=seed, progress=progress,
                                   detector=detector, guard=guard, clip=clip)
    from streamlearn.sim.grid import Setting, simulate_grid  # the loop, for one setting or a whole grid

    [result] = simulate_grid(data, [Setting(protocol, learner, seed)], batch_size=batch_size, progress=progress,
                             detector=detector, guard=guard, clip=clip, loss_guard=loss_guard)
    return result
