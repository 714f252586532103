"""``evaluate``: prequential (test-then-train) run of one learner over one node's stream.

With ``batch_size=1`` this is river's ``progressive_val_score``: predict, score, learn, one sample
at a time, and a ``None`` prediction is not scored. With ``batch_size > 1`` the whole mini-batch is
predicted before any of it is learned (numpy ``predict_many``/``learn_many`` when the learner has
them, see :mod:`streamlearn.evaluation.learner_io`).

A regressor (a river regressor, or a TorchLearner with a regression loss) is scored by MAE and RMSE
instead of accuracy and log loss, and the detector watches its absolute errors in standard
deviations of the target (:class:`~streamlearn.evaluation.detectors.TargetScale`).
"""

from __future__ import annotations

import itertools
import math
import numbers
import re
import sys
import warnings
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from streamlearn.errors import BadRecordError, ConfigError
from streamlearn.evaluation.detectors import (
    DriftMonitor,
    TargetScale,
    check_regression_detector,
)
from streamlearn.evaluation.learner_io import (
    OnePredictor,
    feature_order,
    predict_batch,
    uses_numpy_batches,
)
from streamlearn.evaluation.prequential import (
    Prequential,
    RegressionPrequential,
    clipped_log_loss,
    regression_errors,
)
from streamlearn.evaluation.scoring import DetectionScore, score_detections
from streamlearn.learners.registry import is_averageable

__all__ = ["EvaluationResult", "evaluate", "ON_BAD_RECORD", "jsonable", "is_regressor"]

#: What ``evaluate`` does with a record it cannot use: raise BadRecordError, skip it, or skip it with a warning.
ON_BAD_RECORD = ("raise", "skip", "warn")

_FLUSH = 512  # samples buffered before the tracker and detector are updated in one batched call


def _event_dict(e) -> dict:
    if isinstance(e, dict):
        return dict(e)
    if isinstance(e, (int, np.integer)):
        return {"position": int(e)}
    if callable(getattr(e, "to_dict", None)):  # streamlearn.streams.DriftEvent
        return e.to_dict()
    out = {"position": int(e.position)}
    for name in ("node", "kind", "params"):
        if hasattr(e, name):
            out[name] = getattr(e, name)
    return out


def jsonable(v):
    """``v`` as plain JSON types: numpy arrays and scalars unpacked, non-finite floats as None."""
    if isinstance(v, np.ndarray):
        return [jsonable(a) for a in v.tolist()]
    if isinstance(v, (list, tuple)):
        return [jsonable(a) for a in v]
    if isinstance(v, dict):
        return {str(k): jsonable(a) for k, a in v.items()}
    if isinstance(v, (np.integer, np.floating, np.bool_)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


@dataclass
class EvaluationResult:
    """What one prequential run produced.

    Attributes
    ----------
    accuracy, loss
        Cumulative accuracy over the predicted samples (river's ``metrics.Accuracy``) and mean
        clipped log loss (NaN when the learner gives no probabilities).
    n, n_scored, n_bad
        Records consumed, samples with a prediction, records skipped as bad.
    history
        ``position``, ``accuracy``, ``rolling_accuracy``, ``rolling_loss`` arrays (see :class:`Prequential`).
    detections
        Positions of the reported detections on the error stream (one-sided by default: where the
        detector fired and the error rose, see :class:`DriftMonitor`).
    events
        True drifts (``DriftEvent``-like objects or ints), empty when the stream has none.
    score
        Detections scored against ``events`` (with the false alarms per 10,000 samples); ``None``
        when the stream has no ground truth.
    n_ignored
        Firings of the detector not reported because the error did not rise there.
    divergences, learning_stopped
        What the loss guard (:class:`~streamlearn.learners.loss_guard.LossGuard`) did: its events as dicts
        (position, reason, loss, level, action, lr, restored), and whether it stopped the learning.
    task
        ``"classification"`` or ``"regression"``. A regression has ``mae`` and ``rmse`` (cumulative,
        in the target's units), NaN ``accuracy`` and ``loss``, and its history has ``mae``, ``rmse``,
        ``rolling_mae`` and ``rolling_rmse``.
    """

    accuracy: float
    loss: float
    n: int
    n_scored: int
    n_bad: int
    history: dict
    detections: list
    events: list
    score: DetectionScore | None
    settings: dict = field(default_factory=dict)
    n_ignored: int = 0
    task: str = "classification"
    mae: float | None = None
    rmse: float | None = None
    divergences: list = field(default_factory=list)
    learning_stopped: bool = False

    def to_dict(self) -> dict:
        """JSON-ready dict (arrays become lists, NaN becomes ``None``)."""
        return jsonable(
            {
                "task": self.task,
                "mae": self.mae,
                "rmse": self.rmse,
                "accuracy": self.accuracy,
                "loss": self.loss,
                "n": self.n,
                "n_scored": self.n_scored,
                "n_bad": self.n_bad,
                "history": self.history,
                "detections": self.detections,
                "n_ignored": self.n_ignored,
                "events": [_event_dict(e) for e in self.events],
                "score": None if self.score is None else self.score.to_dict(),
                "settings": self.settings,
                "divergences": self.divergences,
                "learning_stopped": self.learning_stopped,
            }
        )


def _as_float(v, parse_text: bool):
    """``v`` as a float, or None when it is not a number (text is parsed only when ``parse_text``)."""
    if type(v) is float:
        return v
    if isinstance(v, (numbers.Real, np.bool_)):
        return float(v)
    if parse_text and isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return None
    return None


class _Records:
    """Checks raw stream items and applies the bad-record policy.

    ``row`` in every error is the record's position in the stream (0-based, as drift positions are).
    Every numeric feature value must be finite: one NaN would poison the model. With ``numeric``
    (numpy batches, averageable learners) every feature the learner reads must be a number (text
    that parses as one is accepted) and present; other learners (river trees, text pipelines) get
    text values as they are. ``classes``: the learner's declared labels; any other label is bad.
    """

    def __init__(self, on_bad_record: str, numpy_rows: bool, feature_order=None, numeric: bool = False,
                 names=None, classes=None, regression: bool = False):
        self.on_bad_record = on_bad_record
        self.numpy_rows = numpy_rows
        self.feature_order = feature_order
        self.numeric = numeric or numpy_rows
        self.names = names  # () -> the learner's fixed feature names, or None while it has none
        self.classes = None if classes is None else list(classes)
        self.regression = regression  # labels must be finite numbers
        self.keys: tuple | None = None  # feature order of numpy rows, fixed by the first record
        self.n_bad = 0

    def check(self, item, row: int):
        """``(x, y, features-row-or-None)`` or ``None`` when the record is skipped."""
        try:
            return self._check(item, row)
        except BadRecordError as e:
            self.reject(e, row)
            return None

    def reject(self, err: BadRecordError, row: int) -> None:
        """Apply the policy to a bad record at stream position ``row`` (``err`` may come from the learner)."""
        if err.row != row or str(err.column) != str(self._column(err.column)):
            # the learner names rows by their place in its batch and columns by their index in its matrix
            err = BadRecordError(err.reason, row=row, column=self._column(err.column), value=err.value)
        if self.on_bad_record == "raise":
            raise err
        if self.on_bad_record == "warn":
            warnings.warn(f"skipping bad record: {err}", stacklevel=5)
        self.n_bad += 1

    def _column(self, column):
        if self.keys is not None and isinstance(column, str) and re.fullmatch(r"\d+", column) \
                and column not in map(str, self.keys) and int(column) < len(self.keys):
            return str(self.keys[int(column)])
        return column

    def _check(self, item, row):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise BadRecordError("a stream item must be an (x, y) pair", row=row, value=item)
        x, y = item
        if not isinstance(x, dict):
            raise BadRecordError("features x must be a dict", row=row, column="x", value=x)
        if y is None:
            raise BadRecordError("label y is missing", row=row, column="y", value=y)
        if self.regression:
            if isinstance(y, (bool, np.bool_)) or not isinstance(y, (numbers.Real, np.number)):
                raise BadRecordError("label is not a number (a regression target)", row=row, column="y", value=y)
            if not math.isfinite(float(y)):
                raise BadRecordError("label is NaN or infinite", row=row, column="y", value=y)
        elif self.classes is not None and y not in self.classes:
            raise BadRecordError(f"unknown label (the learner's classes are {self.classes})", row=row, column="y",
                                 value=y)
        if self.numpy_rows:
            if self.keys is None:
                self.keys = tuple(self.feature_order(x))
            keys, required = self.keys, True
        else:
            fixed = self.names() if self.names is not None else None
            keys, required = (x, False) if fixed is None else (fixed, True)
        vec = []
        for k in keys:
            if k not in x:
                if required:
                    raise BadRecordError("feature missing", row=row, column=str(k))
                continue
            v = x[k]
            f = _as_float(v, self.numeric)
            if f is None:
                if self.numeric:
                    raise BadRecordError("feature is not a number", row=row, column=str(k), value=v)
                continue  # text for a learner that takes text
            if not math.isfinite(f):
                raise BadRecordError("NaN or infinite value", row=row, column=str(k), value=v)
            vec.append(f)
        return x, y, (vec if self.numpy_rows else None)


def _one_by_one_step(learner, predict_one, good, fail, learn: bool = True) -> list:
    """Predict every sample of the mini-batch, then learn them: ``[(label, proba of true) or None]``.

    A sample the learner rejects (``BadRecordError``) goes to ``fail(index, error)`` and gives None.
    """
    out = []
    for j, (x, y, _) in enumerate(good):
        try:
            label, proba = predict_one(x)
        except BadRecordError as e:
            fail(j, e)
            out.append(None)
            continue
        out.append((label, math.nan if proba is None else float(proba.get(y, 0.0))))
    for j, (x, y, _) in enumerate(good):
        if out[j] is None or not learn:
            continue
        try:
            learner.learn_one(x, y)
        except BadRecordError as e:
            fail(j, e)
            out[j] = None
    return out


def _numpy_step(learner, good, fail, predict=predict_batch, learn: bool = True) -> list:
    """The same with one ``predict_many`` and one ``learn_many`` on numpy arrays.

    A batch the learner rejects is predicted and learned again without the sample it named
    (its ``*_many`` methods check the whole batch before changing anything).
    """
    idx = list(range(len(good)))
    while idx:
        X = np.array([good[j][2] for j in idx], dtype=np.float64)
        ys = [good[j][1] for j in idx]
        if len({type(v) for v in ys}) == 1:
            y = np.asarray(ys)
        else:  # mixed label types stay objects (so 1 never becomes "1")
            y = np.empty(len(ys), dtype=object)
            y[:] = ys
        try:
            labels, p_true = predict(learner, X, y)
            if learn:
                learner.learn_many(X, y)
        except BadRecordError as e:
            at = e.row if isinstance(e.row, int) and 0 <= e.row < len(idx) else (0 if len(idx) == 1 else None)
            if at is None:
                raise
            fail(idx.pop(at), e)
            continue
        done = dict(zip(idx, zip(labels.tolist(), p_true.tolist())))
        return [done.get(j) for j in range(len(good))]
    return [None] * len(good)


def is_regressor(model) -> bool:
    """True for a regression model: a TorchLearner with a regression loss (``task_``) or a river regressor.

    >>> from river import linear_model
    >>> is_regressor(linear_model.LinearRegression()), is_regressor(linear_model.LogisticRegression())
    (True, False)
    """
    task = getattr(model, "task_", None)
    if task is not None:
        return task == "regression"
    from river import base, compose

    if isinstance(model, compose.Pipeline):
        return is_regressor(list(model.steps.values())[-1])  # a pipeline predicts with its last step
    return isinstance(model, base.Regressor)


def _regression_predictor(learner):
    """``x -> (prediction or None, None)``: a regressor has no probabilities."""
    return lambda x: (learner.predict_one(x), None)


def _regression_batch(learner, X, y):
    """``predict_batch`` for a regressor: the predictions ``(B,)`` (object, None = none) and no probabilities."""
    pred = np.asarray(learner.predict_many(X), dtype=object).ravel()
    if pred.shape[0] != len(y):
        raise ValueError(f"predict_many returned {pred.shape[0]} predictions for {len(y)} samples")
    return pred, np.full(len(y), np.nan)


def _describe(learner) -> str:
    """The learner's repr on one line (river's reprs span lines: ``TorchLearner (\\n  arch="mlp" ...)``)."""
    text = re.sub(r"\(\s+", "(", repr(learner).strip())
    text = re.sub(r"\s+\)", ")", text)
    return " ".join(text.split()) or type(learner).__name__


def _stream_length(stream, n):
    if n is not None:
        return n
    try:
        return len(stream)
    except TypeError:
        return getattr(stream, "n_samples", None)  # streamlearn.streams: finite length when known


def evaluate(
    stream,
    learner,
    n: int | None = None,
    batch_size: int = 1,
    window: int = 1000,
    detector="adwin",
    every: int = 100,
    progress: bool = True,
    on_bad_record: str = "raise",
    *,
    detector_params: dict | None = None,
    max_delay: int = 1000,
    events=None,
    one_sided: bool = True,
    loss_guard=True,
) -> EvaluationResult:
    """Prequential evaluation of ``learner`` on ``stream`` (one node).

    Parameters
    ----------
    stream
        Iterable of ``(x: dict, y)``; if it has ``drift_events(n)``, those are the true drifts.
    learner
        Any river-style classifier (``predict_one``/``predict_proba_one``/``learn_one``), or a
        regressor (:func:`is_regressor`: float labels, scored by MAE and RMSE). It is trained in
        place, as river's ``progressive_val_score`` does.
    n
        Stop after ``n`` records (all when ``None``).
    batch_size
        Samples predicted before they are learned; 1 is river's test-then-train.
    window
        Rolling-window length for the rolling accuracy and loss.
    detector
        Drift detector name (see ``DETECTORS``), a river detector instance, or ``None`` for none.
    every
        History sampling period, in samples.
    progress
        Show a tqdm bar on stderr.
    on_bad_record
        ``"raise"`` (BadRecordError), ``"skip"`` or ``"warn"`` (skip with a warning). A skipped
        record keeps its position (so drift positions stay aligned) but is not predicted or learned;
        skipped records are counted in ``n_bad``. Bad records: not an ``(x: dict, y)`` pair, no label,
        a NaN or infinite feature value, a label outside the learner's declared ``classes``, and, for
        learners that read numbers (numpy mini-batches, averageable learners), a missing or non-numeric
        feature; also any record the learner itself rejects. Errors name the record's position in
        the stream (``row``, 0-based), the feature and the value.
    detector_params
        Parameters for the detector, by river's names.
    max_delay
        Largest delay at which a detection counts for a true drift.
    events
        True drifts, overriding ``stream.drift_events``.
    one_sided
        Report a detection only where the error rose (default); False: every firing of the detector.
    loss_guard
        True (default): an averageable classifier is watched by a
        :class:`~streamlearn.learners.loss_guard.LossGuard` (its settings by default), which restores its last
        good model and halves its step size when its loss explodes, and stops its learning after a few
        such events (``divergences``, ``learning_stopped`` in the result); a ``LossGuard``: that one;
        False or None: no guard.

    Examples
    --------
    >>> from river import datasets, linear_model, preprocessing
    >>> model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
    >>> res = evaluate(datasets.Phishing(), model, n=500, window=100, progress=False)
    >>> res.n, res.accuracy, int(res.history["position"][-1])  # river's progressive_val_score gives 0.868 too
    (500, 0.868, 500)
    """
    for name, value in (("batch_size", batch_size), ("window", window), ("every", every)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    if n is not None and (not isinstance(n, (int, np.integer)) or n < 0):
        raise ConfigError(f"n must be a non-negative integer or None, got {n!r}")
    if on_bad_record not in ON_BAD_RECORD:
        raise ConfigError(f"on_bad_record must be one of {ON_BAD_RECORD}, got {on_bad_record!r}")

    regression = is_regressor(learner)
    if regression:
        check_regression_detector(detector)
    tracker = RegressionPrequential(window=window, every=every) if regression else Prequential(window=window, every=every)
    monitor = None if detector is None else DriftMonitor(detector, detector_params, one_sided=one_sided)
    target_scale = TargetScale() if regression else None
    numpy_batches = batch_size > 1 and uses_numpy_batches(learner)
    numeric = is_averageable(learner)  # a flat-vector model reads every feature as a number
    records = _Records(on_bad_record, numpy_batches, lambda x: feature_order(learner, x), numeric=numeric,
                       names=lambda: getattr(learner, "feature_names_", None),
                       classes=getattr(learner, "classes", None) if numeric and not regression else None,
                       regression=regression)
    predict_one = _regression_predictor(learner) if regression else OnePredictor(learner)
    guard = None
    if loss_guard is True and numeric and not regression:
        from streamlearn.learners.loss_guard import LossGuard

        guard = LossGuard(name="evaluate")
    elif loss_guard not in (None, False, True):
        from streamlearn.learners.loss_guard import LossGuard

        if not isinstance(loss_guard, LossGuard) or not numeric or regression:
            raise ConfigError(f"loss_guard: True, False or a LossGuard for an averageable classifier, got "
                              f"{type(loss_guard).__name__} for {type(learner).__name__}")
        guard = loss_guard
    predict_many = _regression_batch if regression else predict_batch

    # Per-sample results, flushed to the tracker and detector in batched calls.
    buf_y, buf_pred, buf_p = [], [], []

    def flush():
        if not buf_y:
            return
        if regression:
            pred = np.empty(len(buf_pred), dtype=object)
            pred[:] = buf_pred
            truth = np.empty(len(buf_y), dtype=object)
            truth[:] = buf_y
            err, valid = regression_errors(truth, pred)
            tracker.update_errors(err, valid)
            if monitor is not None:
                monitor.update_many(target_scale.scale(err[None], truth[None], valid[None])[0], valid)
            buf_y.clear(), buf_pred.clear(), buf_p.clear()
            return
        valid = np.array([p is not None for p in buf_pred], dtype=bool)
        correct = np.array([v and t == p for v, t, p in zip(valid.tolist(), buf_y, buf_pred)], dtype=bool)
        tracker.update(correct, clipped_log_loss(np.array(buf_p, dtype=np.float64), tracker.eps), valid)
        if monitor is not None:
            monitor.update_many(~correct, valid)
        buf_y.clear(), buf_pred.clear(), buf_p.clear()

    items = iter(stream) if n is None else itertools.islice(stream, n)
    row = 0
    with tqdm(total=_stream_length(stream, n), file=sys.stderr, disable=not progress, unit="sample", desc="evaluate") as bar:
        while raw := list(itertools.islice(items, batch_size)):
            checked = [records.check(item, row + i) for i, item in enumerate(raw)]
            where = [i for i, c in enumerate(checked) if c is not None]
            good = [checked[i] for i in where]

            def fail(j, err, _start=row, _where=where):
                records.reject(err, _start + _where[j])

            learn = guard is None or guard.learning
            if not good:
                results = iter(())
            elif numpy_batches:
                results = iter(_numpy_step(learner, good, fail, predict_many, learn=learn))
            else:
                results = iter(_one_by_one_step(learner, predict_one, good, fail, learn=learn))
            if guard is not None and good and learn:
                results = list(results)  # the step's losses, for the guard
                guard.observe(learner, clipped_log_loss([math.nan if r is None else r[1] for r in results]))
                results = iter(results)
            for c in checked:
                r = None if c is None else next(results)
                buf_y.append(None if r is None else c[1])
                buf_pred.append(None if r is None else r[0])
                buf_p.append(math.nan if r is None else r[1])
            row += len(raw)
            if len(buf_y) >= _FLUSH:
                flush()
            bar.update(len(raw))
    flush()

    if events is None:
        events = list(stream.drift_events(row)) if callable(getattr(stream, "drift_events", None)) else None
    else:
        events = list(events)
    detections = [] if monitor is None else list(monitor.detections_)
    score = None if events is None or monitor is None else score_detections(detections, events, max_delay, samples=row)
    settings = {
        "learner": _describe(learner),
        "batch_size": int(batch_size),
        "window": int(window),
        "every": int(every),
        "detector": detector if isinstance(detector, str) or detector is None else type(detector).__name__,
        "detector_params": dict(detector_params or {}),
        "max_delay": int(max_delay),
        "one_sided": bool(one_sided),
        "loss_guard": guard is not None,
    }
    if regression:
        settings["task"] = "regression"
        return EvaluationResult(
            accuracy=math.nan, loss=math.nan, n=row, n_scored=tracker.n_scored, n_bad=records.n_bad,
            history=tracker.history(), detections=detections, events=[] if events is None else events, score=score,
            settings=settings, n_ignored=0 if monitor is None else monitor.n_ignored_, task="regression",
            mae=tracker.mae, rmse=tracker.rmse,
        )
    return EvaluationResult(
        accuracy=tracker.accuracy,
        loss=tracker.loss,
        n=row,
        n_scored=tracker.n_scored,
        n_bad=records.n_bad,
        history=tracker.history(),
        detections=detections,
        events=[] if events is None else events,
        score=score,
        settings=settings,
        n_ignored=0 if monitor is None else monitor.n_ignored_,
        divergences=[] if guard is None else [e.to_dict() for e in guard.events],
        learning_stopped=guard is not None and not guard.learning,
    )
