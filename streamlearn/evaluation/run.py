"""``evaluate``: prequential (test-then-train) run of one learner over one node's stream.

With ``batch_size=1`` this is river's ``progressive_val_score``: predict, score, learn, one sample
at a time, and a ``None`` prediction is not scored. With ``batch_size > 1`` the whole mini-batch is
predicted before any of it is learned (numpy ``predict_many``/``learn_many`` when the learner has
them, see :mod:`streamlearn.evaluation.learner_io`).
"""

from __future__ import annotations

import itertools
import math
import sys
import warnings
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from streamlearn.errors import BadRecordError, ConfigError
from streamlearn.evaluation.detectors import DriftMonitor
from streamlearn.evaluation.learner_io import OnePredictor, feature_order, predict_batch, uses_numpy_batches
from streamlearn.evaluation.prequential import Prequential, clipped_log_loss
from streamlearn.evaluation.scoring import DetectionScore, score_detections

__all__ = ["EvaluationResult", "evaluate", "ON_BAD_RECORD", "jsonable"]

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
        Positions at which the drift detector fired on the error stream.
    events
        True drifts (``DriftEvent``-like objects or ints), empty when the stream has none.
    score
        Detections scored against ``events``; ``None`` when the stream has no ground truth.
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

    def to_dict(self) -> dict:
        """JSON-ready dict (arrays become lists, NaN becomes ``None``)."""
        return jsonable(
            {
                "accuracy": self.accuracy,
                "loss": self.loss,
                "n": self.n,
                "n_scored": self.n_scored,
                "n_bad": self.n_bad,
                "history": self.history,
                "detections": self.detections,
                "events": [_event_dict(e) for e in self.events],
                "score": None if self.score is None else self.score.to_dict(),
                "settings": self.settings,
            }
        )


class _Records:
    """Checks raw stream items and applies the bad-record policy."""

    def __init__(self, on_bad_record: str, numpy_rows: bool, feature_order=None):
        self.on_bad_record = on_bad_record
        self.numpy_rows = numpy_rows
        self.feature_order = feature_order
        self.keys: tuple | None = None  # feature order of numpy rows, fixed by the first record
        self.n_bad = 0

    def check(self, item, row: int):
        """``(x, y, features-row-or-None)`` or ``None`` when the record is skipped."""
        try:
            return self._check(item, row)
        except BadRecordError as e:
            if self.on_bad_record == "raise":
                raise
            if self.on_bad_record == "warn":
                warnings.warn(f"skipping bad record: {e}", stacklevel=4)
            self.n_bad += 1
            return None

    def _check(self, item, row):
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise BadRecordError("a stream item must be an (x, y) pair", row=row, value=item)
        x, y = item
        if not isinstance(x, dict):
            raise BadRecordError("features x must be a dict", row=row, column="x", value=x)
        if y is None:
            raise BadRecordError("label y is missing", row=row, column="y", value=y)
        if not self.numpy_rows:
            return x, y, None
        if self.keys is None:
            self.keys = tuple(self.feature_order(x))
        vec = []
        for k in self.keys:
            if k not in x:
                raise BadRecordError("feature missing", row=row, column=str(k))
            try:
                vec.append(float(x[k]))
            except (TypeError, ValueError):
                raise BadRecordError("feature is not a number", row=row, column=str(k), value=x[k]) from None
        return x, y, vec


def _one_by_one_step(learner, predict_one, good) -> list[tuple]:
    """Predict every sample of the mini-batch, then learn them: ``[(label, proba of true)]``."""
    out = []
    for x, y, _ in good:
        label, proba = predict_one(x)
        out.append((label, math.nan if proba is None else float(proba.get(y, 0.0))))
    for x, y, _ in good:
        learner.learn_one(x, y)
    return out


def _numpy_step(learner, good) -> list[tuple]:
    """The same with one ``predict_many`` and one ``learn_many`` on numpy arrays."""
    X = np.array([c[2] for c in good], dtype=np.float64)
    ys = [c[1] for c in good]
    if len({type(v) for v in ys}) == 1:
        y = np.asarray(ys)
    else:  # mixed label types stay objects (so 1 never becomes "1")
        y = np.empty(len(ys), dtype=object)
        y[:] = ys
    labels, p_true = predict_batch(learner, X, y)
    learner.learn_many(X, y)
    return list(zip(labels.tolist(), p_true.tolist()))


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
) -> EvaluationResult:
    """Prequential evaluation of ``learner`` on ``stream`` (one node).

    Parameters
    ----------
    stream
        Iterable of ``(x: dict, y)``; if it has ``drift_events(n)``, those are the true drifts.
    learner
        Any river-style classifier (``predict_one``/``predict_proba_one``/``learn_one``). It is
        trained in place, as river's ``progressive_val_score`` does.
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
        record keeps its position (so drift positions stay aligned) but is not predicted or learned.
    detector_params
        Parameters for the detector, by river's names.
    max_delay
        Largest delay at which a detection counts for a true drift.
    events
        True drifts, overriding ``stream.drift_events``.

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

    tracker = Prequential(window=window, every=every)
    monitor = None if detector is None else DriftMonitor(detector, detector_params)
    numpy_batches = batch_size > 1 and uses_numpy_batches(learner)
    records = _Records(on_bad_record, numpy_batches, lambda x: feature_order(learner, x))
    predict_one = OnePredictor(learner)

    # Per-sample results, flushed to the tracker and detector in batched calls.
    buf_y, buf_pred, buf_p = [], [], []

    def flush():
        if not buf_y:
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
            good = [c for c in checked if c is not None]
            if not good:
                results = iter(())
            elif numpy_batches:
                results = iter(_numpy_step(learner, good))
            else:
                results = iter(_one_by_one_step(learner, predict_one, good))
            for c in checked:
                label, p = (None, math.nan) if c is None else next(results)
                buf_y.append(None if c is None else c[1])
                buf_pred.append(label)
                buf_p.append(p)
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
    score = None if events is None or monitor is None else score_detections(detections, events, max_delay)
    settings = {
        "learner": repr(learner).strip().splitlines()[0] if repr(learner).strip() else type(learner).__name__,
        "batch_size": int(batch_size),
        "window": int(window),
        "every": int(every),
        "detector": detector if isinstance(detector, str) or detector is None else type(detector).__name__,
        "detector_params": dict(detector_params or {}),
        "max_delay": int(max_delay),
    }
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
    )
