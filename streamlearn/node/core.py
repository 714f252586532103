"""The learning core of a node, without any transport: test-then-train, the node rule, syncs.

A :class:`NodeCore` takes decoded mini-batches (float32 features, class indices) and decoded
sync messages, and gives back what the node should send up (:class:`Outgoing`, the fields of a
sync message). It holds the learner, the prequential evaluator, the drift detector (a learner
with a step-size schedule restarts it on a detected rise of the error), the guard's window, the
reference (and its motion under an extrapolating protocol), the uplink codec's error-feedback
memory and the protocol's node rule. :class:`streamlearn.kafka.node.NodeService` feeds it from
Kafka; a test or another transport can feed it plain objects.

One step (:meth:`NodeCore.learn_many`, then :meth:`NodeCore.node_rule`):

1. predict the mini-batch with the model as it is (a TorchLearner predicts in the forward pass it
   then trains through), score it (accuracy, log loss, detector on the 0/1 errors), learn it;
2. the node rule ``node_rule(node, step, ||w - r||^2)`` (the divergence is computed only at the
   steps the protocol checks it) may ask for a report, with the model on a violation. While the
   answer to a model it sent is awaited (at most ``sync_timeout`` seconds) the node does not send
   its model again: it learns on (the non-blocking form of "a violating learner waits").

A message from the sync service (:meth:`NodeCore.receive`): ``request`` -> the current model;
``send`` -> the model (and the reference when flagged; with ``reason`` ``alone``, the full sync of a
group of one node, the reference only); ``pull`` -> ``w <- w - s (w - model)``;
``hello`` of a new sync service -> register again (:meth:`NodeCore.join`). Under a guard a
``send``/``pull`` whose result is worse on the recent samples is declined.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from streamlearn.errors import BadRecordError
from streamlearn.node.guard import GuardWindow
from streamlearn.node.scoring import declared_proba, live_flat, mean_loss, score_step

__all__ = ["NodeCore", "Outgoing", "SyncOutcome"]

log = logging.getLogger(__name__)

_KEEP = 100  # drift and sync positions kept for the status
_SUM, _MIN, _MAX = np.add.reduce, np.minimum.reduce, np.maximum.reduce


@dataclass(frozen=True)
class Outgoing:
    """A message for the sync service: its ``kind`` and the fields of a sync message.

    ``on_sent`` (or None) is to be called once the message went: a compressed model keeps its
    error-feedback memory only for a message that went. ``error`` (or None): it could not be built
    (a model that holds NaN or inf); nothing is to be sent.
    """

    kind: str
    fields: dict = field(default_factory=dict)
    on_sent: Callable[[], None] | None = None
    error: str | None = None


@dataclass
class SyncOutcome:
    """What a message from the sync service did to the core.

    ``up``: messages to send; ``model``: the model it carried, decoded (None: none, or unusable);
    ``applied``: the learner's model was set by it (a sync); ``waited``: seconds since the node's
    model went up, when this answered it; ``bad``: a damaged delta (a bad record).
    """

    up: list = field(default_factory=list)
    model: torch.Tensor | None = None
    applied: bool = False
    waited: float | None = None
    bad: bool = False


class NodeCore:
    """One node's learning: test-then-train, scoring, drift, the node rule, and the syncs it gets.

    Parameters
    ----------
    learner
        The node's learner (``predict_proba_many``/``learn_many``; averageable ones, with
        ``get_flat``/``set_flat``, take part in the protocol, others learn locally).
    classes
        The declared classes, in order: labels come as indices into them.
    protocol
        Protocol spec of the node rule (``"dynamic:delta=0.5,b=1"``), the sync service's.
    node
        This node's id (the protocol's node rule is per node).
    seed
        Seeds the protocol's random choices.
    window
        Rolling accuracy window, in samples.
    detector
        Drift detector on the error stream (a name of
        :data:`~streamlearn.evaluation.detectors.DETECTORS`), or None.
    guard, guard_margin
        Guarded averaging: the window (samples, >= 10) or None, and the margin in nats.
    sync_timeout
        Seconds the node waits for the answer to a model it sent before it may send it again.
    loss_guard
        True (default): an averageable classifier is watched by a
        :class:`~streamlearn.learners.loss_guard.LossGuard` (``self.loss_guard``): when its loss explodes its
        last good model is set back and its step size halved, and after a few such events it stops learning
        (it logs each; the status counts them). False: none.

    Examples
    --------
    >>> import numpy as np
    >>> from streamlearn.learners import TorchLearner
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 2)).astype(np.float32)
    >>> y = (X.sum(axis=1) > 0).astype(np.int64)
    >>> learner = TorchLearner("logreg", n_features=2, classes=[0, 1], lr=0.5, seed=0, device="cpu")
    >>> core = NodeCore(learner, [0, 1], protocol="periodic:b=5", detector=None)
    >>> sent = []
    >>> for i in range(0, 200, 10):
    ...     core.learn_many(X[i:i + 10], y[i:i + 10], np.arange(i, i + 10))
    ...     out = core.node_rule()
    ...     if out is not None:  # a report with the model; the coordinator (alone) answers with a full sync
    ...         sent.append(out.kind)
    ...         _ = core.receive(_Msg("send", model=learner.get_flat().numpy(), reference=True))
    >>> core.n_samples, core.n_steps, len(sent), core.syncs, core.preq.accuracy > 0.8
    (200, 20, 4, 4, True)
    """

    def __init__(self, learner, classes, protocol: str = "nosync", node: int = 0, *, seed: int = 0,
                 window: int = 1000, detector: str | None = None, guard: int | None = None,
                 guard_margin: float = 0.05, sync_timeout: float = 5.0, loss_guard: bool = True):
        from streamlearn.evaluation import DriftMonitor, Prequential, clipped_log_loss
        from streamlearn.learners import is_averageable
        from streamlearn.learners.base import labels_array

        # a regression learner (TorchLearner with a squared or Huber loss) learns float targets: no classes
        self.regression = getattr(learner, "task_", None) == "regression"
        if self.regression and guard is not None:
            from streamlearn.errors import ConfigError

            raise ConfigError("guard: guarded averaging compares log losses of classes; a regression node has none "
                              "(leave --guard out)")
        self.learner, self.classes, self.node = learner, [] if self.regression else list(classes), node
        self.spec, self.sync_timeout = protocol, float(sync_timeout)
        self._labels = None if self.regression else labels_array(self.classes)
        self.averageable = is_averageable(learner)
        self.protocol = self.d = self.n_params = self.reference = self.motion = self.uplink = None
        self._ref_np: tuple = (None, None)  # (the reference, a numpy view of its parameters): model_divergence's
        self._w_np: tuple = (None, None, None)  # (learner tensor, its data pointer, a numpy view): _params_view's
        from streamlearn.learners import TorchLearner

        self._flat_w = isinstance(learner, TorchLearner)  # its parameters are one flat tensor, live_params
        self._rows = np.arange(0)  # 0..B-1 of the last mini-batch size (indexes each sample's true class)
        if self.averageable:
            from streamlearn.sync.driver import ReferenceMotion
            from streamlearn.sync.spec import make_protocol, shard_layout

            w0 = learner.get_flat().float()
            self.d = int(w0.numel())
            # the parameters lead the flat vector; buffers after them (scaler statistics) are not in ||w - r||^2
            self.n_params = int(getattr(learner, "n_params", self.d))
            self.reference = w0.clone()
            # a node of a sharded layer runs its shard's protocol (its rule is the plain protocol's)
            self.protocol = make_protocol(shard_layout(protocol)[0], m=1, d=self.d, w0=w0.cpu(), seed=seed,
                                          device="cpu", n_params=self.n_params)
            self._check_every = self.protocol.check_every
            # dynamic averaging against an extrapolated reference: the reference's velocity between the
            # last two full syncs this node received, and the step of the last one
            self.motion = ReferenceMotion(1, self.n_params, device=self.reference.device) \
                if getattr(self.protocol, "extrapolate", 0) else None
        if self.regression:
            from streamlearn.evaluation.detectors import TargetScale, check_regression_detector
            from streamlearn.evaluation.prequential import RegressionPrequential

            check_regression_detector(detector)
            self.preq = RegressionPrequential(window=window, every=1 << 62)
            self._target_scale = TargetScale()  # the detector watches errors in standard deviations of the target
        else:
            self.preq = Prequential(window=window, every=1 << 62)
        self._log_loss = clipped_log_loss  # imported here, not at the module's import (it pulls in river)
        self.monitor = None if detector is None else DriftMonitor(detector)
        # A learner with a step-size schedule (TorchLearner's lr_decay) restarts it at a detection: the
        # monitor is one-sided, it reports only firings where the error rose (detectors also fire while
        # the error drops).
        self.restarts = self.monitor is not None and getattr(learner, "lr_decay", None) is not None \
            and hasattr(learner, "restart_schedule")
        self.guard = GuardWindow(guard, self.classes, guard_margin) if guard is not None and self.averageable else None
        if self.guard is None and getattr(self.protocol, "split", None):
            log.warning("node %d: %s groups nodes that decline, but this node has no --guard: it never declines, "
                        "so it stays in the whole", node, protocol)
        self.loss_guard = None
        if loss_guard and self.averageable and not self.regression:
            from streamlearn.learners.loss_guard import LossGuard

            self.loss_guard = LossGuard(name=f"node {node}")
        self.layout: str | None = None  # a fingerprint of the learner layout, sent with the join (None: none)
        # counters and state
        self.n_steps = self.n_samples = self.since_sync = 0
        self.last_seq: int | None = None
        self.drifts: deque = deque(maxlen=_KEEP)
        self.n_drifts = 0
        self.sync_positions: deque = deque(maxlen=_KEEP)
        self.syncs = self.models_received = self.declines = 0
        self.reports_sent = self.violations = self.suppressed = 0
        self.last_sync: float | None = None
        self.last_sync_step: int | None = None
        self.last_sync_kind: str | None = None
        self.epoch: str | None = None
        self.joined = False
        self.rejected: str | None = None
        self.divergence = 0.0
        self.step_loss: np.ndarray | None = None  # per-sample losses of the last mini-batch
        self.step_correct: np.ndarray | None = None  # and whether each was predicted right
        self.step_proba: np.ndarray | None = None  # and what the learner predicted for it (its class order)
        self.run_proba: np.ndarray | None = None  # what learn_run predicted, declared order (predictions out)
        self.reference_mismatches, self.rejoin_at = 0, None  # deltas to another reference; the re-join sent
        self.awaiting: float | None = None  # monotonic time the last model went up, until an answer
        # (step, model) of the last model sent up: the steps learned after it are kept when the sync comes back
        self._sent: tuple | None = None

    # ---- learning ------------------------------------------------------------------------------

    def learn_many(self, X: np.ndarray, yi: np.ndarray, seqs: np.ndarray, early: np.ndarray | None = None) -> None:
        """Test-then-train on a mini-batch: ``X`` float32 (n, f), ``yi`` class indices, ``seqs`` their numbers.

        ``early`` (or None): rows ``[late, correct, p_true]`` per sample; a late-labelled one is scored by
        the prediction made when it arrived (:func:`~streamlearn.node.scoring.early_scores`). The hot path:
        everything works on the whole batch at once.
        """
        if self.regression:
            return self._learn_targets(X, yi, seqs, early)
        learner = self.learner
        learns = self.loss_guard is None or self.loss_guard.learning  # the loss guard may have stopped it
        # A learner that can (TorchLearner) predicts in the forward pass it then trains through:
        # the probabilities of the model before this step, one pass; others predict, learn below.
        fused = getattr(learner, "predict_proba_learn_many", None) if learns else None
        P = fused(X, self._labels[yi]) if fused is not None else learner.predict_proba_many(X)
        self.step_proba = P = np.asarray(P, dtype=np.float64)  # kept for predictions out (step_predictions)
        classes = self.classes
        if early is None and P.ndim == 2 and P.shape[1] == len(classes) \
                and getattr(learner, "classes_", None) == classes:
            # score_step's short path inline (a torch learner, nothing late-labelled): every sample predicted
            if len(self._rows) != len(yi):
                self._rows = np.arange(len(yi))
            correct, p_true, valid, all_valid = P.argmax(axis=1) == yi, P[self._rows, yi], None, True
        else:
            correct, p_true, valid = score_step(P, learner, classes, yi)
            if early is not None:
                correct, p_true, valid = _with_early_scores(early, correct, p_true, valid)
            all_valid = valid.all()
        loss = self._log_loss(p_true)
        if not all_valid:
            loss[~valid] = np.nan
        self.preq.update(correct, loss, None if all_valid else valid)
        if self.monitor is not None:  # a restart of the schedule counts from the next step: this one is taken
            self._watch((~correct).astype(np.float64), None if all_valid else valid, seqs)  # (fused) or below
        if fused is None and learns:
            learner.learn_many(X, self._labels[yi])
        if learns and self.loss_guard is not None:
            self.loss_guard.observe(learner, loss)
        if self.guard is not None:
            self.guard.remember(X, yi)
        self._count(int(seqs[-1]), len(yi))
        self.step_loss, self.step_correct = loss, correct  # the loss's mean is taken when a report needs it

    def learn_run(self, X: np.ndarray, yi: np.ndarray, seqs: np.ndarray, B: int) -> tuple[int, Outgoing | None]:
        """Mini-batches of ``B`` from ``X``, ``yi``, ``seqs`` (``len(yi) // B`` at most), each as
        :meth:`learn_many` then :meth:`node_rule`; stops after the first whose node rule answers.

        Returns ``(mini-batches learnt, what the last one's node rule sends or None)``. Where the learner allows
        (:meth:`runs`), the whole run is one compiled call (:mod:`streamlearn.node.run_kernel`, equal to the
        per-batch steps to float rounding); else one mini-batch. :attr:`run_proba` holds the probabilities of
        every sample learnt, in the declared class order (predictions out).
        """
        steps = len(yi) // B
        if self.protocol is not None and self.protocol.divergence_threshold is None and self._check_every == 1:
            steps = 1  # the node rule answers after every step (periodic b=1, ...): nothing to run
        runs = steps >= 2 and self.runs()
        if runs:
            # what the learner's own checks reject (a feature that is not finite, a class index out of range)
            # is left to learn_many, which raises naming it: the run ends before its mini-batch
            N = steps * B
            if not np.isfinite(_SUM(X[:N], axis=None)):  # (a sum of huge finite values overflows too)
                bad = np.argwhere(~np.isfinite(X[:N]))
                if len(bad):
                    steps = int(bad[0, 0]) // B
            if steps and (_MIN(yi[:N]) < 0 or _MAX(yi[:N]) >= len(self.classes)):
                steps = 0
        if not runs or steps < 2:
            self.learn_many(X[:B], yi[:B], seqs[:B])
            self.run_proba = self.step_predictions()
            return 1, self.node_rule()
        from streamlearn.node import run_kernel as rk

        learner = self.learner
        fast, sc, guard = learner._fast, learner._scaler, self.loss_guard
        fast._check()  # views of the parameters where they are now
        f = X.shape[1]
        mean, m2 = fast._stats(f, create=True) if sc is not None else (None, None)
        settings = learner._step_settings()
        p = self.n_params
        if self._ref_np[0] is not self.reference:  # a new reference (a sync, a join, a checkpoint)
            self._ref_np = (self.reference, self.reference.detach().numpy()[:p])
        awaiting = self.awaiting is not None and time.monotonic() - self.awaiting < self.sync_timeout
        g = guard.averages_state(B) if guard is not None else None
        N = steps * B
        P = np.empty((N, fast.k))
        loss = np.empty(N)
        correct = np.empty(N, dtype=np.bool_)
        done, stop, n_rows, divergence, suppressed = rk.run(
            X[:N], yi[:N], B, steps, fast.layers, mean, m2, sc is not None and sc.with_std, sc.n_ if sc is not None else 0,
            settings["lr"], settings["weight_decay"], fast.flat, p, self._ref_np[1], self.n_steps, self._check_every,
            self.protocol.divergence_threshold, awaiting, g, P, loss, correct)
        m = done * B
        learner.n_samples_seen_ += m
        learner.n_steps_ += done
        if sc is not None:
            sc.n_ = n_rows
        P, loss, correct = P[:m], loss[:m], correct[:m]
        self.preq.update(correct, loss, None)
        if self.monitor is not None:  # it only watches here (no schedule to restart): fed the run's errors at once
            self._watch((~correct).astype(np.float64), None, seqs)
        self.suppressed += suppressed
        if divergence == divergence:  # (not NaN: a check step was run)
            self.divergence = divergence
        self._count(int(seqs[m - 1]), m, done)
        self.step_proba, self.step_loss, self.step_correct = P[m - B:], loss[m - B:], correct[m - B:]
        self.run_proba = P  # learner.classes_ == classes (runs()): the declared order
        if guard is not None:
            guard.set_averages_state(g)
            if stop == rk.STOP_NONFINITE:  # the kernel left this step's losses to observe
                guard.observe(learner, self.step_loss)
            elif stop == rk.STOP_GUARD:
                guard.check(learner)
        if stop == rk.STOP_END:
            return done, None  # every step's node rule ran in the kernel and said nothing
        return done, self.node_rule()

    def _count(self, last_seq: int, n: int, steps: int = 1) -> None:
        """The counters after ``steps`` mini-batches of ``n`` samples in all, the last one numbered ``last_seq``."""
        self.last_seq = last_seq
        self.n_samples += n
        self.since_sync += n
        self.n_steps += steps

    def _watch(self, errors: np.ndarray, valid: np.ndarray | None, seqs: np.ndarray) -> None:
        """The drift detector on the samples' ``errors`` (``seqs`` their numbers): detections are kept, and a
        learner with a step-size schedule restarts it (from its next step)."""
        n0 = self.monitor.n_
        found = self.monitor.update_many(errors, valid)
        for pos in found:
            self.drifts.append(int(seqs[pos - n0]))
            self.n_drifts += 1
        if found and self.restarts:
            self.learner.restart_schedule()

    def runs(self) -> bool:
        """Whether :meth:`learn_run` takes many mini-batches in one compiled call: a CPU logistic regression or MLP
        of one hidden layer on the numpy path (:mod:`~streamlearn.learners.fast`) without a step-size schedule,
        every class known, no guard window or extrapolated reference, the loss guard (if any) learning. A drift
        detector only watches then (it restarts no schedule): it takes the run's errors after it."""
        from streamlearn.node.run_kernel import AVAILABLE

        learner = self.learner
        fast = getattr(learner, "_fast", None)
        return (AVAILABLE and fast is not None and len(fast.layers) in (2, 4) and self.protocol is not None
                and not self.regression
                and not self.restarts and self.guard is None and self.motion is None
                and getattr(learner, "lr_decay", None) is None and learner.classes_ == self.classes
                and fast.k == len(self.classes) and learner._w is not None
                and (self.loss_guard is None or self.loss_guard.learning)
                and self.reference.device.type == "cpu")

    def _learn_targets(self, X: np.ndarray, y: np.ndarray, seqs: np.ndarray, early: np.ndarray | None) -> None:
        """Test-then-train on float targets ``y``: absolute errors, MAE/RMSE, the detector on scaled errors.

        ``early`` rows ``[late, prediction on arrival, 0]``: a late-labelled reading is scored by that prediction.
        """
        from streamlearn.evaluation.prequential import regression_errors

        y = np.asarray(y, dtype=np.float64)
        pred = np.asarray(self.learner.predict_learn_many(X, y), dtype=np.float64)  # before it learned them
        if early is not None:
            pred = np.where(early[:, 0] > 0, early[:, 1], pred)
        self.step_proba = pred
        err, valid = regression_errors(y, pred)
        all_valid = bool(valid.all())
        self.preq.update_errors(err, None if all_valid else valid)
        if self.monitor is not None:
            scaled = self._target_scale.scale(err[None], y[None], None if all_valid else valid[None])[0]
            self._watch(scaled, None if all_valid else valid, seqs)
        self._count(int(seqs[-1]), len(y))
        self.step_loss, self.step_correct = np.where(valid, err * err, np.nan), None  # reports carry the MSE

    def node_rule(self) -> Outgoing | None:
        """The protocol's node rule after a step: a ``report`` to send (with the model on a violation), or None."""
        if not self.averageable:
            return None
        if self.n_steps % self._check_every == 0:  # the rule reads the divergence only then
            self.divergence = self.model_divergence()
        kind = self.protocol.node_rule(self.node, self.n_steps, self.divergence)
        if kind == "model" and self.awaiting is not None:
            if time.monotonic() - self.awaiting < self.sync_timeout:
                self.suppressed += 1  # its model is already up there: learn on, do not send it again
                return None
            self.awaiting = None
        if kind is None:
            return None
        with_model = kind == "model"
        if with_model:
            self.awaiting = time.monotonic()
        self.violations += with_model
        self.reports_sent += 1
        report = dict(node=self.node, step=self.n_steps, n_samples=self.since_sync, loss=self.last_loss)
        return self.model_message("report", **report) if with_model else Outgoing("report", report)

    def step_predictions(self) -> np.ndarray:
        """Probabilities the last mini-batch was predicted with (the model before it learned the batch), in
        the declared class order; a NaN row: no prediction possible yet. Predictions out publish them."""
        if self.regression:
            return self.step_proba  # the predicted values
        return declared_proba(self.step_proba, list(getattr(self.learner, "classes_", [])), self.classes)

    def predict_values(self, X: np.ndarray) -> np.ndarray:
        """A regression node's predictions of ``X`` (NaN: none possible)."""
        return np.asarray(self.learner.predict_many(X), dtype=np.float64).reshape(-1)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Probabilities of ``X`` in the declared class order (NaN rows: no prediction possible yet)."""
        P = np.asarray(self.learner.predict_proba_many(X), dtype=np.float64)
        return declared_proba(P, list(getattr(self.learner, "classes_", [])), self.classes)

    @property
    def last_loss(self) -> float:
        """Mean log loss of the last mini-batch (NaN before the first)."""
        return float("nan") if self.step_loss is None else mean_loss(self.step_loss)

    def model_divergence(self) -> float:
        """``||w - r||^2``: how far the learner's model is from the reference, as the node rule checks it.

        Computed at the node rule's checks (every ``check_every`` steps of the protocol) and after a
        model from the sync service was applied.
        """
        p = self.n_params
        w = self._params_view() if self.motion is None else None
        if w is not None:  # on CPU, in numpy, without a torch call (see _params_view)
            if self._ref_np[0] is not self.reference:  # a new reference (a sync, a join, a checkpoint)
                self._ref_np = (self.reference, self.reference.detach().numpy()[:p])
            x = w[:p] - self._ref_np[1]
            return float(np.dot(x, x))
        r = self.reference[:p] if self.motion is None \
            else self.motion.reference([0], self.reference[None], self.n_steps)[0]
        # live parameters where the learner can give them (a scaled learner copies its vector once)
        x = live_flat(self.learner)[:p] - r
        return float(torch.dot(x, x))  # sq_dist's sum of squares in two torch calls instead of three

    def _params_view(self) -> np.ndarray | None:
        """A numpy view of the learner's live parameters, kept between steps, or None (not a CPU TorchLearner).

        A TorchLearner keeps its parameters in one flat float32 tensor (``live_params``) that steps and
        ``set_flat`` write in place; the view follows it until the tensor is replaced. Why not ``get_flat``: every torch call
        releases the GIL, and in a node, whose Kafka clients run I/O threads, taking it back after each step's
        call cost more than the rest of the node rule (measured: bench/pipeline.py).
        """
        w = self.learner.live_params if self._flat_w else None
        if w is None:  # not a TorchLearner, or not built yet
            return None
        cached = self._w_np
        if cached[0] is w and cached[1] == w.data_ptr():
            return cached[2]
        if w.device.type != "cpu" or self.reference.device.type != "cpu" or w.numel() < self.n_params:
            return None
        self._w_np = (w, w.data_ptr(), w.detach().numpy())
        return self._w_np[2]

    # ---- what goes up --------------------------------------------------------------------------

    def join(self) -> Outgoing:
        """Register with the sync service, carrying the reference; the error-feedback memory starts clean."""
        from streamlearn.sync.codec import Uplink

        codec = self.protocol.codec
        self.uplink = None if codec.dense else Uplink(
            codec, m=1, d=self.d, n_params=self.n_params, buffers_every=self.protocol.buffers_every)
        return Outgoing("join", dict(node=self.node, d=self.d, n_params=self.n_params, layout=self.layout, spec=self.spec,
                                     step=self.n_steps, n_samples=self.since_sync, model=self.reference.cpu()))

    def model_message(self, kind: str, **fields) -> Outgoing:
        """The learner's model for the sync service (a violation ``report`` or a ``model`` answer): whole, or,
        under a codec other than fp32, as the compressed delta to the reference with error feedback (what a
        message does not carry stays in the memory and joins the next delta, as in the simulator)."""
        from streamlearn.sync.codec import compress_rows, pack_delta

        up = self.uplink
        w = self.learner.get_flat().detach()
        self._sent = (self.n_steps, w.clone())
        if up is None:
            return Outgoing(kind, dict(fields, model=w.cpu()))
        w = w.to("cpu", torch.float32)
        if not bool(torch.isfinite(w).all()):
            return Outgoing(kind, fields, error="the model holds NaN or inf")
        r = self.reference.detach().to("cpu", torch.float32)
        p = up.n_params
        _, parts, memory = compress_rows(up.codec, w[None], r[None], up.memory, p)
        buffers = up.with_buffers([0])[0]  # every buffers_every-th model carries the buffers
        data = pack_delta(up.codec, parts, tail=w[p:] if buffers else w[p:p], reference=r, n_params=p)
        on_sent = None if memory is None else (lambda: up.memory.copy_(memory))  # kept only for a message that went
        return Outgoing(kind, dict(fields, delta=data), on_sent=on_sent)

    # ---- what comes down -----------------------------------------------------------------------

    def receive(self, msg) -> SyncOutcome:
        """Apply a message of the sync service addressed to this node (a decoded sync message: ``kind``,
        ``reason``, ``epoch``, ``targets``, ``reference``, ``strength``, ``request``, ``model`` or ``delta``)."""
        out = SyncOutcome()
        kind = msg.kind
        if kind == "reject":
            if self.rejected != msg.reason:
                log.error("node %d: the sync service rejected this node: %s (learning locally)", self.node, msg.reason)
            self.rejected, self.joined = msg.reason, False
            return out
        if not self.averageable:
            return out
        if kind == "hello":
            if msg.targets is not None or msg.epoch != self.epoch:
                self.awaiting = None  # a new sync service knows nothing of earlier violations
                log.info("node %d: sync service %s is up; registering", self.node, msg.epoch)
                out.up.append(self.join())
            return out
        if kind == "request":
            out.up.append(self.model_message("model", node=self.node, step=self.n_steps, n_samples=self.since_sync,
                                             loss=self.last_loss, request=msg.request))
            return out
        if kind not in ("send", "pull"):
            return out
        if msg.delta is not None:
            model = self._model_from_delta(msg, out)
            if model is None:
                return out
        else:
            model = torch.from_numpy(np.array(msg.model, dtype=np.float32)).to(self.reference.device)
        out.model = model
        self.models_received += 1
        if kind == "send" and msg.reason == "alone" and msg.reference:
            # the full sync of a group of one node: its own model come back; keep the one it learned on meanwhile
            self._take_reference(model)
            self.last_sync_kind = "full"
            return self._synced(out)
        if self.guard is not None and msg.reason != "join":
            candidate = model if kind == "send" else None
            if candidate is None:
                w = self.learner.get_flat()
                candidate = w - msg.strength * (w - model.to(w.device))
            if not self.guard.takes(self.learner, candidate):
                out.up.append(self._decline(msg, model))
                return out
        if kind == "send":
            if msg.reason == "join":
                self.rejoin_at = None
                self.epoch, self.joined, self.rejected = msg.epoch, True, None
                if torch.equal(model, self.reference):
                    return out  # it already holds this reference: keep what it learned meanwhile
            self.learner.set_flat(self._with_progress(model) if msg.reason != "join" else model)
            if msg.reference:
                self._take_reference(model, join=msg.reason == "join")
            self.last_sync_kind = "join" if msg.reason == "join" else ("full" if msg.reference else "partial")
        else:
            w = self.learner.get_flat()
            self.learner.set_flat(w - msg.strength * (w - model))
            self.last_sync_kind = "pull"
        return self._synced(out)

    def _with_progress(self, model: torch.Tensor) -> torch.Tensor:
        """The synced ``model`` plus what this node learned since it sent its model up.

        The lockstep simulator applies a sync before the next step; over Kafka the answer comes a round trip
        later, and the node learned on meanwhile (more so when its stream is ahead of the others'). Those steps
        are its own progress from the model it sent, so they are kept: ``model + (w_now - w_sent)``, instead
        of being overwritten. The reference stays ``model``.
        """
        sent, self._sent = self._sent, None
        if sent is None or sent[0] >= self.n_steps:
            return model
        w = self.learner.get_flat()
        return model.to(w.device) + (w - sent[1].to(w.device))

    def _synced(self, out: SyncOutcome) -> SyncOutcome:
        """A sync was applied: the answer came, the counts and positions move on."""
        if self.awaiting is not None:
            out.waited = time.monotonic() - self.awaiting
        out.applied = True
        self.since_sync = 0
        self.awaiting = None
        self.syncs += 1
        self.last_sync = time.time()
        self.last_sync_step = self.n_steps
        self.sync_positions.append(self.n_samples)
        self.divergence = self.model_divergence()  # the status shows where the sync left the model
        return out

    def _decline(self, msg, model: torch.Tensor) -> Outgoing:
        """The guard kept the node's own model: take the reference of a full sync all the same (the node and
        the sync service keep one reference), count it and tell the sync service."""
        if msg.kind == "send" and msg.reference:
            self._take_reference(model)
        self.declines += 1
        log.debug("node %d: declined a %s at step %d (guard)", self.node, msg.kind, self.n_steps)
        self.since_sync = 0
        self.awaiting = None  # answered: the node rule may send again
        self.divergence = self.model_divergence()
        return Outgoing("decline", dict(node=self.node, step=self.n_steps))

    def _take_reference(self, model: torch.Tensor, join: bool = False) -> None:
        """Make ``model`` the reference, and follow its motion (a join restarts it: no velocity known yet)."""
        if self.motion is not None:
            self.motion.on_reference([0], (model if join else self.reference)[None], model, self.n_steps)
        self.reference = model.clone()

    def _model_from_delta(self, msg, out: SyncOutcome) -> torch.Tensor | None:
        """The model a ``send`` with a delta carries: ``r + dequantize(parts)`` on the parameters, the buffers
        from its tail. None when it cannot be used: a damaged one is a bad record (``out.bad``); one taken from
        another reference (this node missed a full sync) is counted, and the node registers again so the
        sync service sends its reference whole."""
        from streamlearn.sync.codec import unpack_delta

        r = self.reference.detach().to("cpu", torch.float32)
        try:
            codec, parts, tail, n, _ = unpack_delta(msg.delta, reference=r, expected_d=self.d)
            if n != self.n_params:
                raise BadRecordError(f"delta of {n} parameters, the model has {self.n_params}", column="n_params",
                                     value=n)
            model = r.clone()
            model[:n] += codec.dequantize(parts, n)[0]
            # without buffers (buffers_every) the node keeps its own
            model[n:] = tail if tail.numel() else self.learner.get_flat().detach().to("cpu", torch.float32)[n:]
        except BadRecordError as exc:
            if exc.column != "reference":
                out.bad = True
                log.debug("node %d: bad delta on sync.down: %s", self.node, exc)
                return None
            self.reference_mismatches += 1
            (log.warning if self.reference_mismatches == 1 else log.debug)(
                "node %d: a sync came as a delta to a reference this node does not hold (it missed a full sync); "
                "registering again to get the reference whole", self.node)
            now = time.monotonic()
            if self.rejoin_at is None or now - self.rejoin_at >= self.sync_timeout:
                self.rejoin_at = now
                out.up.append(self.join())
            return None
        except Exception as exc:  # whatever else hostile bytes may raise: counted, never fatal
            out.bad = True
            log.debug("node %d: bad delta on sync.down: %r", self.node, exc)
            return None
        return model.to(self.reference.device)


def _with_early_scores(e: np.ndarray, correct, p_true, valid) -> tuple:
    """Scores of a mini-batch: late-labelled samples (rows of ``e``) keep the prediction made on arrival."""
    late = e[:, 0] > 0
    if not late.any():
        return correct, p_true, valid
    return (np.where(late, e[:, 1] > 0, correct), np.where(late, e[:, 2], p_true),
            np.where(late, np.isfinite(e[:, 2]), valid))


@dataclass(frozen=True, eq=False)
class _Msg:
    """A sync message as the core reads it (the doctests' stand-in for a decoded one)."""

    kind: str
    reason: str | None = "sync"
    epoch: str | None = None
    targets: tuple | None = None
    reference: bool = False
    strength: float | None = None
    request: int | None = None
    model: object = None
    delta: bytes | None = None
