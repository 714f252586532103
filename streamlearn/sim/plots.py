"""The two figures of a protocol comparison (matplotlib, Agg backend: no screen needed)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from streamlearn.sim.compare import family

__all__ = ["plot_tradeoff", "plot_timeline"]


def _pyplot():
    from streamlearn.extras import require

    matplotlib = require("matplotlib", "plots", "plotting")  # the optional "plots" extra
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_tradeoff(rows: list[dict], path: str, title: str = "") -> None:
    """Cumulative loss against cumulative communication (model transfers), one line per protocol.

    The paper's figure: down and to the left is better. Settings with no communication
    (nosync) are drawn as a horizontal line.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups = defaultdict(list)
    for r in rows:
        groups[family(r["protocol"])].append(r)
    for name, rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["transfers"])
        if all(r["transfers"] == 0 for r in rs):
            for r in rs:
                ax.axhline(r["cumulative_loss"], linestyle="--", color="gray", label=name)
            continue
        x = [max(r["transfers"], 1) for r in rs]
        ax.plot(x, [r["cumulative_loss"] for r in rs], marker="o", label=name)
        for r, xi in zip(rs, x):
            ax.annotate(r["protocol"].partition(":")[2], (xi, r["cumulative_loss"]), fontsize=6,
                        textcoords="offset points", xytext=(3, 3))
    ax.set_xscale("log")
    ax.set_xlabel("cumulative communication (model transfers)")
    ax.set_ylabel("cumulative loss")
    ax.set_title(title or "loss vs communication")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_timeline(results, path: str, window: int = 500, title: str = "", detections=None) -> None:
    """Accuracy over time (mean over nodes, rolling ``window``) with drift markers and sync events.

    ``detections``: per result, what :func:`streamlearn.sim.run.detect` returned (or None); its
    detections are marked on the result's line, every node's together: those that found an
    injected drift as orange triangles, false alarms as grey crosses.
    """
    from streamlearn.evaluation.plot import DETECTED_STYLE, FALSE_ALARM_STYLE

    plt = _pyplot()
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    labelled = set()
    for k, res in enumerate(results):
        acc = res.rolling_accuracy(window).mean(axis=0)
        ax.plot(np.arange(1, res.n + 1), acc, linewidth=1, label=res.protocol)
        det = detections[k] if detections is not None and k < len(detections) else None
        where = (det or {}).get("positions") or {}
        for key, style, label in (("true", DETECTED_STYLE, f"detected drift (within {(det or {}).get('max_delay')})"),
                                  ("false", FALSE_ALARM_STYLE, "false alarm")):
            xs = sorted(p for node in where.get(key, []) for p in node)
            if xs:
                ax.plot(xs, acc[np.minimum(xs, res.n - 1)], **style, label=None if key in labelled else label)
                labelled.add(key)
    drift_positions = sorted({ev.position for res in results for ev in res.events})
    for p in drift_positions:
        ax.axvline(p, color="red", linestyle="--", linewidth=0.8)
        ax2.axvline(p, color="red", linestyle="--", linewidth=0.8)
    for row, res in enumerate(results):
        steps = np.array([s for s, kind, _ in res.syncs if kind != "partial"], dtype=float) * res.batch_size
        partial = np.array([s for s, kind, _ in res.syncs if kind == "partial"], dtype=float) * res.batch_size
        ax2.plot(steps, np.full(len(steps), row), "|", markersize=8)
        ax2.plot(partial, np.full(len(partial), row + 0.3), "|", markersize=5, color="gray")
    ax2.set_yticks(range(len(results)))
    ax2.set_yticklabels([r.protocol for r in results], fontsize=6)
    ax2.set_xlabel("samples per node (red: injected drift; ticks: syncs, gray: partial)")
    ax.set_ylabel(f"rolling accuracy ({window})")
    ax.set_title(title or "accuracy over time")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
