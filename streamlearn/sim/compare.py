"""Grids of protocol settings, and the figures a comparison reports about them.

Pure functions over :class:`~streamlearn.sim.simulator.SimResult`: expanding a grid spec,
matched-accuracy communication ratios, whether syncing helps at all, and the time to recover
after a drift.
"""

from __future__ import annotations

import itertools

import numpy as np

from streamlearn.errors import ConfigError

__all__ = ["expand_grid", "family", "matched_accuracy", "recovery_after_drifts", "sync_verdict"]


def expand_grid(spec: str) -> list[str]:
    """Expand ``"name:key=v1,v2,key2=w1"`` into one protocol spec per combination of values.

    Examples
    --------
    >>> expand_grid("periodic:b=1,2,4")
    ['periodic:b=1', 'periodic:b=2', 'periodic:b=4']
    >>> expand_grid("dynamic:delta=0.1,0.5,b=2")
    ['dynamic:delta=0.1,b=2', 'dynamic:delta=0.5,b=2']
    >>> expand_grid("nosync")
    ['nosync']
    """
    name, _, rest = spec.strip().partition(":")
    if not name:
        raise ConfigError(f"--compare: a spec needs a protocol name, got {spec!r}")
    if not rest.strip():
        return [name]
    keys: list[str] = []
    values: list[list[str]] = []
    for token in rest.split(","):
        token = token.strip()
        if "=" in token:
            key, _, value = token.partition("=")
            if not key.strip() or not value.strip():
                raise ConfigError(f"--compare: bad item {token!r} in {spec!r}")
            keys.append(key.strip())
            values.append([value.strip()])
        elif token and keys:
            values[-1].append(token)
        else:
            raise ConfigError(f"--compare: expected key=value at {token!r} in {spec!r}")
    return [f"{name}:" + ",".join(f"{k}={v}" for k, v in zip(keys, combo)) for combo in itertools.product(*values)]


def family(spec: str) -> str:
    """The protocol name of a spec: ``family("periodic:b=4") == "periodic"``."""
    return spec.partition(":")[0].strip()


def matched_accuracy(rows: list[dict], tolerance: float = 0.005) -> dict:
    """Cheapest periodic and dynamic settings within ``tolerance`` of the best periodic accuracy.

    ``rows`` are result summaries with ``protocol``, ``accuracy`` and ``transfers`` (and ``bytes``,
    reported as ``periodic_bytes``/``dynamic_bytes`` when present). The ratio is periodic transfers /
    dynamic transfers (None when a side has no setting in reach). Whether either side beats no sync
    at all is :func:`sync_verdict`'s question, not this one's.

    Examples
    --------
    >>> rows = [{"protocol": "periodic:b=1", "accuracy": 0.90, "transfers": 1000},
    ...         {"protocol": "periodic:b=8", "accuracy": 0.897, "transfers": 125},
    ...         {"protocol": "dynamic:delta=1", "accuracy": 0.896, "transfers": 20},
    ...         {"protocol": "dynamic:delta=9", "accuracy": 0.85, "transfers": 2}]
    >>> m = matched_accuracy(rows)
    >>> m["periodic"], m["dynamic"], m["ratio"]
    ('periodic:b=8', 'dynamic:delta=1', 6.25)
    """
    periodic = [r for r in rows if family(r["protocol"]) in ("periodic", "continuous")]
    dynamic = [r for r in rows if family(r["protocol"]) == "dynamic"]
    if not periodic:
        return {"best_periodic_accuracy": None, "tolerance": tolerance, "periodic": None, "periodic_bytes": None,
                "dynamic": None, "dynamic_bytes": None, "ratio": None, "accuracy_gap": None}
    best = max(r["accuracy"] for r in periodic)

    def cheapest(rs):
        ok = [r for r in rs if r["accuracy"] >= best - tolerance]
        return min(ok, key=lambda r: (r["transfers"], -r["accuracy"])) if ok else None

    p, d = cheapest(periodic), cheapest(dynamic)
    ratio = None
    if p is not None and d is not None:
        ratio = float("inf") if d["transfers"] == 0 else p["transfers"] / d["transfers"]
    return {
        "best_periodic_accuracy": best,
        "tolerance": tolerance,
        "periodic": p and p["protocol"],
        "periodic_transfers": p and p["transfers"],
        "periodic_accuracy": p and p["accuracy"],
        "periodic_bytes": p and p.get("bytes"),
        "dynamic": d and d["protocol"],
        "dynamic_transfers": d and d["transfers"],
        "dynamic_accuracy": d and d["accuracy"],
        "dynamic_bytes": d and d.get("bytes"),
        "ratio": ratio,
        "accuracy_gap": None if (p is None or d is None) else p["accuracy"] - d["accuracy"],
    }


UNSYNCED = ("nosync", "serial")


def sync_verdict(rows: list[dict], tolerance: float = 0.005) -> dict:
    """Does any synced setting beat no sync by at least ``tolerance`` (accuracy units)?

    ``rows`` are result summaries with ``protocol``, ``accuracy``, ``transfers`` and ``bytes``. The
    synced settings are every protocol but ``nosync`` and ``serial`` (one learner on all the data is a
    bound, not a way to run m nodes). Figures in points are accuracy differences times 100.

    Parameters
    ----------
    rows
        One summary per setting, as :func:`streamlearn.sim.run.result_row` makes them.
    tolerance
        The least accuracy gain over no sync that counts as syncing helping (0.005 = 0.5 points).

    Returns
    -------
    dict
        ``sync_helps``: True, False, or None when the rows have no ``nosync`` row or no synced
        setting (then ``reason`` says which and there is nothing to compare). Otherwise
        ``nosync_accuracy``; ``best_synced`` with its ``best_synced_accuracy``, ``_transfers`` and
        ``_bytes``; ``nosync_margin_points`` (no sync minus best synced, in points: negative when a
        synced setting is better, by less than ``tolerance`` if ``sync_helps`` is False) and
        ``sync_gain_points`` (its negation). ``matched`` is :func:`matched_accuracy` of the rows when
        syncing helps, else None: a transfer ratio between settings that buy nothing is no saving.

    Examples
    --------
    >>> rows = [{"protocol": "periodic:b=1", "accuracy": 0.871, "transfers": 1000, "bytes": 52000},
    ...         {"protocol": "dynamic:delta=1", "accuracy": 0.864, "transfers": 50, "bytes": 2600},
    ...         {"protocol": "nosync", "accuracy": 0.880, "transfers": 0, "bytes": 0}]
    >>> v = sync_verdict(rows)
    >>> v["sync_helps"], round(v["nosync_margin_points"], 2), v["matched"]
    (False, 0.9, None)
    >>> rows[0]["accuracy"] = 0.883  # synced is better, but by 0.3 points only
    >>> v = sync_verdict(rows)
    >>> v["sync_helps"], v["best_synced"], round(v["nosync_margin_points"], 2)
    (False, 'periodic:b=1', -0.3)
    >>> rows[0]["accuracy"], rows[1]["accuracy"] = 0.901, 0.899
    >>> v = sync_verdict(rows)
    >>> v["sync_helps"], round(v["sync_gain_points"], 2), v["matched"]["dynamic"], v["matched"]["ratio"]
    (True, 2.1, 'dynamic:delta=1', 20.0)
    >>> sync_verdict(rows[:2])["sync_helps"], sync_verdict(rows[:2])["reason"]
    (None, 'no nosync row')
    """
    nosync = [r for r in rows if family(r["protocol"]) == "nosync"]
    synced = [r for r in rows if family(r["protocol"]) not in UNSYNCED]
    verdict: dict = {"sync_helps": None, "tolerance": tolerance}
    best = max(synced, key=lambda r: (r["accuracy"], -r["transfers"])) if synced else None
    if best is not None:
        verdict.update(best_synced=best["protocol"], best_synced_accuracy=best["accuracy"],
                       best_synced_transfers=best["transfers"], best_synced_bytes=best.get("bytes"))
    if not nosync or best is None:
        verdict["reason"] = "no nosync row" if not nosync else "no synced setting"
        verdict["matched"] = matched_accuracy(rows, tolerance) if best is not None else None
        return verdict
    base = max(r["accuracy"] for r in nosync)
    gain = best["accuracy"] - base
    # A gain of exactly the tolerance counts; the epsilon keeps 0.905 - 0.900 from falling just short.
    helps = bool(gain >= tolerance - 1e-12)
    verdict.update(sync_helps=helps, nosync_accuracy=base, nosync_margin_points=-100.0 * gain,
                   sync_gain_points=100.0 * gain, matched=matched_accuracy(rows, tolerance) if helps else None)
    return verdict


def recovery_after_drifts(correct: np.ndarray, events, window: int = 500, tolerance: float = 0.02) -> list[dict]:
    """Samples after each drift until accuracy is back within ``tolerance`` of its pre-drift level.

    Events at the same position are taken together: their nodes' 0/1 correctness is averaged
    into one curve. The pre-drift level is the accuracy over the ``window`` samples before the
    drift; after it, accuracy at sample q is taken over ``[max(p, q - window), q)`` (only
    post-drift samples), from q = p + window // 4 on. ``samples`` is None when it never recovers
    before the next drift (or the end); ``drop`` is how far that post-drift accuracy fell below the
    pre-drift level at its lowest (a drift that costs less than ``tolerance`` recovers at once, at
    ``window // 4``).

    Examples
    --------
    >>> import numpy as np
    >>> from streamlearn.streams import DriftEvent
    >>> c = np.ones((1, 3000), dtype=bool)
    >>> c[0, 1000:1400] = False  # 400 wrong answers after the drift at 1000
    >>> [r["samples"] for r in recovery_after_drifts(c, [DriftEvent(1000, 0, "sudden", {})], window=200)]
    [596]
    """
    correct = np.asarray(correct, dtype=np.float64)
    n = correct.shape[1]
    positions = sorted({int(ev.position) for ev in events if 0 < ev.position < n})
    out = []
    for i, p in enumerate(positions):
        nodes = sorted({int(ev.node) for ev in events if int(ev.position) == p})
        curve = correct[nodes].mean(axis=0)
        end = positions[i + 1] if i + 1 < len(positions) else n
        pre = float(curve[max(0, p - window):p].mean())
        c = np.concatenate([[0.0], np.cumsum(curve[p:end])])
        q = np.arange(p + max(1, window // 4), end + 1)
        lo = np.maximum(p, q - window)
        acc = (c[q - p] - c[lo - p]) / (q - lo)
        hit = np.nonzero(acc >= pre - tolerance)[0]
        out.append({
            "position": p, "nodes": nodes, "pre_accuracy": pre,
            "samples": int(q[hit[0]] - p) if hit.size else None,
            "drop": float(pre - acc.min()) if acc.size else 0.0,
        })
    return out
