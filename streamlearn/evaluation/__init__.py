"""streamlearn.evaluation: prequential metrics, drift detectors, scoring detections vs ground truth, plots."""

from streamlearn.evaluation.detectors import DETECTORS, DriftMonitor, DriftMonitorBank, false_alarm_rate, make_detector
from streamlearn.evaluation.plot import plot_history
from streamlearn.evaluation.prequential import (
    Prequential,
    PrequentialBank,
    RegressionPrequential,
    RegressionPrequentialBank,
    clipped_log_loss,
)
from streamlearn.evaluation.run import ON_BAD_RECORD, EvaluationResult, evaluate
from streamlearn.evaluation.scoring import DetectionScore, score_detections

__all__ = [
    "Prequential",
    "PrequentialBank",
    "RegressionPrequential",
    "RegressionPrequentialBank",
    "clipped_log_loss",
    "DETECTORS",
    "make_detector",
    "DriftMonitor",
    "DriftMonitorBank",
    "false_alarm_rate",
    "DetectionScore",
    "score_detections",
    "EvaluationResult",
    "evaluate",
    "ON_BAD_RECORD",
    "plot_history",
]
