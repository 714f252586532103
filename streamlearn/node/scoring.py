"""Prequential scoring of a mini-batch: the node's hot-path helpers, in the declared class order.

A torch learner predicts in the declared order; a local river learner orders labels as it met
them, so its columns are mapped to the declared classes first. Everything works on the whole
batch at once (a few numpy calls): these run for every mini-batch.

Examples
--------
>>> import numpy as np
>>> P = np.array([[0.8, 0.2], [0.3, 0.7]])
>>> correct, p_true, valid = score(P, ["a", "b"], ["a", "b"], np.array([0, 0]))
>>> correct.tolist(), p_true.tolist(), valid.tolist()
([True, False], [0.8, 0.3], [True, True])
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["score", "score_step", "declared_proba", "early_scores", "mean_loss", "live_flat"]


def score(P: np.ndarray, learner_classes: list, classes: list, yi: np.ndarray) -> tuple:
    """``(correct, proba_of_true, valid)`` of a batch, from probabilities in the learner's class order."""
    n = len(yi)
    if P.ndim != 2 or P.shape[1] == 0 or not learner_classes:
        return np.zeros(n, dtype=bool), np.full(n, np.nan), np.zeros(n, dtype=bool)
    if learner_classes == classes:
        col = np.arange(len(classes))
    else:  # a local river learner orders labels as it met them; map them to the declared ones
        index = {c: i for i, c in enumerate(learner_classes)}
        col = np.array([index.get(c, -1) for c in classes])
    pred_col = P.argmax(axis=1)
    ours = np.full(P.shape[1], -1)
    ours[col[col >= 0]] = np.flatnonzero(col >= 0)
    correct = ours[pred_col] == yi
    c = col[yi]
    p_true = np.where(c >= 0, P[np.arange(n), np.maximum(c, 0)], 0.0)
    return correct, p_true, np.ones(n, dtype=bool)


def score_step(P: np.ndarray, learner, classes: list, yi: np.ndarray) -> tuple:
    """:func:`score`, with a short path when the learner's classes are the declared ones (torch learners)."""
    learner_classes = getattr(learner, "classes_", [])
    if P.ndim == 2 and P.shape[1] == len(classes) and learner_classes == classes:
        n = len(yi)
        return P.argmax(axis=1) == yi, P[np.arange(n), yi], np.ones(n, dtype=bool)
    return score(P, list(learner_classes), classes, yi)


def declared_proba(P: np.ndarray, learner_classes: list, classes: list) -> np.ndarray:
    """Probabilities in the declared class order (0 for a class the learner has not met; NaN rows: no prediction)."""
    n = len(P)
    if P.ndim != 2 or P.shape[1] == 0 or not learner_classes:
        return np.full((n, len(classes)), np.nan)
    if learner_classes == classes:
        return P
    index = {c: i for i, c in enumerate(learner_classes)}
    out = np.zeros((n, len(classes)))
    for j, c in enumerate(classes):
        if c in index:
            out[:, j] = P[:, index[c]]
    return out


def early_scores(P: np.ndarray, yi: np.ndarray) -> np.ndarray:
    """Rows ``[1, correct, proba of the true label]`` of late-labelled samples from their early predictions."""
    rows = np.arange(len(yi))
    valid = np.isfinite(P).all(axis=1)
    correct = valid & (np.where(valid[:, None], P, 0.0).argmax(axis=1) == yi)
    return np.column_stack([np.ones(len(yi)), correct, np.where(valid, P[rows, yi], np.nan)])


def mean_loss(loss: np.ndarray) -> float:
    """``np.nanmean(loss)`` (nan when no value is finite), without its overhead when all are finite."""
    total = float(loss.sum())
    if np.isfinite(total):
        return total / len(loss)  # the same pairwise sum nanmean takes
    return float(np.nanmean(loss)) if np.isfinite(loss).any() else float("nan")


def live_flat(learner) -> torch.Tensor:
    """The learner's flat parameters, without a copy when it can give them (read at once, never written)."""
    try:
        return learner.get_flat(copy=False)
    except TypeError:  # a get_flat() without the copy flag
        return learner.get_flat()
