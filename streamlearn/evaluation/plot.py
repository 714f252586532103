"""Plot rolling accuracy over time with injected drifts (dashed) and detections, to a PNG.

A detection within ``max_delay`` after an injected drift is drawn as an orange triangle on its
line, a false alarm as a grey x (see :func:`~streamlearn.evaluation.scoring.split_detections`).
"""

from __future__ import annotations

import os

import numpy as np
from streamlearn.evaluation.scoring import _position, split_detections
from streamlearn.extras import require

__all__ = ["plot_history", "DETECTED_STYLE", "FALSE_ALARM_STYLE"]

#: Marker styles (matplotlib keywords): a detection that found an injected drift, a false alarm.
DETECTED_STYLE = {"marker": "^", "color": "tab:orange", "markersize": 8, "ls": "none"}
FALSE_ALARM_STYLE = {"marker": "x", "color": "0.45", "markersize": 7, "ls": "none", "mew": 1.5}


def _curves(items, labels):
    """``(label, position, rolling_accuracy, detections-or-None)`` per line to draw."""
    out = []
    for i, item in enumerate(items):
        name = labels[i] if labels is not None and i < len(labels) else None
        if hasattr(item, "history"):  # an EvaluationResult
            h = item.history
            out.append((name or f"run {i}", np.asarray(h["position"]), np.asarray(h["rolling_accuracy"]), list(item.detections)))
            continue
        pos, racc = np.asarray(item["position"]), np.asarray(item["rolling_accuracy"])
        if racc.ndim == 1:
            out.append((name or f"run {i}", pos, racc, None))
        else:  # a PrequentialBank history: one line per node
            for node, r in enumerate(racc):
                out.append((f"{name} node {node}" if name else f"node {node}", pos, r, None))
    return out


def plot_history(results_or_histories, events=None, detections=None, path="history.png", *, labels=None, title=None,
                 max_delay: int | None = None) -> str:
    """Draw rolling accuracy against position and save it as a PNG; return the path.

    Parameters
    ----------
    results_or_histories
        An ``EvaluationResult``, a history dict (``position`` and ``rolling_accuracy``, ``(k,)`` or
        ``(m, k)`` for a bank), or a list of them.
    events
        True drifts (ints, ``DriftEvent``-like, or dicts with ``position``), drawn dashed. Defaults to
        the events of the given results.
    detections
        Detection positions, marked on their line: one list for all, or one list per line. Defaults
        to the detections of the given results. Those within ``max_delay`` after an injected drift
        are orange triangles, false alarms grey crosses.
    path
        Where to write the PNG (folders are created).
    labels
        Legend names, one per item.
    title
        Plot title.
    max_delay
        Largest delay at which a detection found a drift; default: the results' ``max_delay``
        setting, else 1000.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> h = {"position": np.arange(100, 1100, 100), "rolling_accuracy": np.linspace(0.5, 0.9, 10)}
    >>> with tempfile.TemporaryDirectory() as d:
    ...     out = plot_history(h, events=[500], detections=[560, 900], path=os.path.join(d, "h.png"))
    ...     os.path.getsize(out) > 0
    True
    """
    items = results_or_histories if isinstance(results_or_histories, (list, tuple)) else [results_or_histories]
    curves = _curves(items, labels)
    if events is None:
        events = sorted({_position(e) for it in items for e in getattr(it, "events", [])})
    if detections is None:
        per_line = [c[3] or [] for c in curves]
    elif len(detections) and isinstance(detections[0], (list, tuple, np.ndarray)):
        per_line = [list(d) for d in detections] + [[]] * max(0, len(curves) - len(detections))
    else:
        per_line = [list(detections)] + [[]] * max(0, len(curves) - 1)

    # matplotlib only here: it is the optional "plots" extra, and streamlearn.evaluation is imported by every node
    fig = require("matplotlib.figure", "plots", "plotting").Figure(figsize=(10, 4), dpi=100)
    require("matplotlib.backends.backend_agg", "plots", "plotting").FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colors = [f"C{i % 10}" for i in range(len(curves))]
    for (name, pos, racc, _), color in zip(curves, colors):
        ax.plot(pos, racc, color=color, lw=1.2, label=name)
    for k, e in enumerate(events):
        ax.axvline(_position(e), color="black", ls="--", lw=1, alpha=0.7, label="injected drift" if k == 0 else None)
    if max_delay is None:
        max_delay = next((it.settings["max_delay"] for it in items if "max_delay" in getattr(it, "settings", {})), 1000)
    labelled = set()
    for dets, (_, pos, racc, _) in zip(per_line, curves):
        true, false = split_detections(dets, events, max_delay)
        for which, style, label in ((true, DETECTED_STYLE, f"detected drift (within {max_delay})"),
                                    (false, FALSE_ALARM_STYLE, "false alarm")):
            if which and len(pos):
                ax.plot(which, np.interp(which, pos, racc), **style, label=None if label in labelled else label)
                labelled.add(label)
    ax.set_xlabel("samples")
    ax.set_ylabel("rolling accuracy")
    ax.set_ylim(-0.02, 1.02)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fig.savefig(path, format="png")
    return path
