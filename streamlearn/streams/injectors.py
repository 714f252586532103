"""Drift injectors: streams that wrap any stream and change it from a position on, with ground-truth events.

Two kinds of randomness, kept apart: what *defines* a drift (the label permutation, the rotation plane) comes
from ``(seed, index of the drift in the list)`` only, so every node given the same ``seed`` gets the same drift;
what is *drawn per sample* (gradual mixing, noise) also depends on the node, so nodes differ sample by sample.

Concept switches (sudden, gradual, recurring) read the wrapped stream and its ``concept(1)`` side by side and
pick sample i from one of them, so both stay aligned; each wrapped concept switch doubles the generators read.
"""

from __future__ import annotations

import copy

import numpy as np

from streamlearn.errors import ConfigError
from streamlearn.streams.base import (
    DriftEvent, Stream, class_index, degrees_to_radians, label_array, rng_for, sigmoid,
)
from streamlearn.streams.drift_spec import DriftSpec, parse_drift

__all__ = ["inject", "Injector", "ConceptSwitch", "LabelPermutation", "FeatureTransform", "Noise",
           "REFERENCE_ROWS"]

# Samples of the wrapped stream used to estimate each feature's mean and standard deviation ("std" units).
REFERENCE_ROWS = 1000


class Injector(Stream):
    """Base of the injectors: wraps ``inner`` and applies ``spec`` to the samples of node ``node``."""

    _tag = 0  # keeps the random streams of different injector types apart

    def __init__(self, inner: Stream, spec: DriftSpec, node: int = 0, seed: int = 0, salt: int = 0):
        if not isinstance(inner, Stream):
            raise ConfigError(f"can only inject drift into a Stream, got {type(inner).__name__}")
        self.inner = inner
        self.spec = spec
        self.node = int(node)
        self.seed = int(seed)
        self.salt = int(salt)
        self.feature_names = inner.feature_names

    @property
    def classes(self):
        return self.inner.classes

    @property
    def n_samples(self):
        return self.inner.n_samples

    def __repr__(self):
        return f"{self.inner!r} | {self.spec}"

    # randomness: per-sample draws depend on the node, the drift's definition does not
    def _sample_rng(self):
        return rng_for(self.seed, self.node, self.salt, self._tag, 1)

    def _definition_rng(self):
        return rng_for(self.seed, self.salt, self._tag, 2)

    def _event_params(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.spec.params.items()}

    def _own_events(self, horizon) -> list:
        return [DriftEvent(self.spec.position, self.node, self.spec.kind, self._event_params())]

    def _events(self, horizon):
        return self.inner._events(horizon) + self._own_events(horizon)

    def _unbounded_events(self):
        return self.inner._unbounded_events()

    def _concept(self, k):
        new = copy.copy(self)
        new.inner = self.inner.concept(k)
        return new

    def _apply(self, X, y, idx, rng):
        raise NotImplementedError

    def _blocks(self, n):
        rng = self._sample_rng()
        start = 0
        for X, y in self.inner._blocks(n):
            idx = np.arange(start, start + len(y))
            start += len(y)
            yield self._apply(X, y, idx, rng)


class ConceptSwitch(Injector):
    """``sudden``, ``gradual`` and ``recurring``: sample i comes from the wrapped stream or from its ``concept(1)``.

    Examples
    --------
    >>> from streamlearn.streams.generators import SEAStream
    >>> s = ConceptSwitch(SEAStream(seed=0), parse_drift("sudden@300"))
    >>> X, y = s.to_arrays(600)
    >>> bool(np.all(y[:300] == (X[:300, 0] + X[:300, 1] > 8))), bool(np.all(y[300:] == (X[300:, 0] + X[300:, 1] > 9)))
    (True, True)
    >>> s.drift_events(600)
    [DriftEvent(position=300, node=0, kind='sudden', params={})]
    """

    _tag = 1

    def _alternate_at(self, idx: np.ndarray, rng) -> np.ndarray:
        p, kind, params = self.spec.position, self.spec.kind, self.spec.params
        if kind == "sudden":
            return idx >= p
        if kind == "gradual":
            return rng.random(len(idx)) < sigmoid(4.0 * (idx - p) / params["width"])
        # recurring: switches at p, p + period, ...; after `count` switches the last concept stays
        switches = np.where(idx >= p, (idx - p) // params["period"] + 1, 0)
        if params["count"] is not None:
            switches = np.minimum(switches, params["count"])
        return switches % 2 == 1

    def _blocks(self, n):
        rng = self._sample_rng()
        start = 0
        for (XA, yA), (XB, yB) in zip(self.inner._blocks(n), self.inner.concept(1)._blocks(n)):
            m = min(len(yA), len(yB))
            use_b = self._alternate_at(np.arange(start, start + m), rng)
            start += m
            yield np.where(use_b[:, None], XB[:m], XA[:m]), np.where(use_b, yB[:m], yA[:m])

    def _own_events(self, horizon):
        if self.spec.kind != "recurring":
            return super()._own_events(horizon)
        p, period, count = self.spec.position, self.spec.params["period"], self.spec.params["count"]
        events, j = [], 0
        while (count is None or j < count) and (horizon is None or p + j * period < horizon):
            params = {**self._event_params(), "concept": "alternate" if j % 2 == 0 else "original"}
            events.append(DriftEvent(p + j * period, self.node, "recurring", params))
            j += 1
        return events

    def _unbounded_events(self):
        return (self.spec.kind == "recurring" and self.spec.params["count"] is None) or super()._unbounded_events()


class LabelPermutation(Injector):
    """``label-permutation``: from the position on, every label is mapped by a seeded permutation that moves every class.

    Examples
    --------
    >>> from streamlearn.streams.generators import STAGGERStream
    >>> base = STAGGERStream(seed=0)
    >>> s = LabelPermutation(base, parse_drift("label-permutation@100"))
    >>> (_, y0), (_, y1) = base.to_arrays(200), s.to_arrays(200)
    >>> bool(np.all(y1[:100] == y0[:100])), bool(np.all(y1[100:] == 1 - y0[100:]))
    (True, True)
    """

    _tag = 2

    def __init__(self, inner, spec, node=0, seed=0, salt=0):
        super().__init__(inner, spec, node, seed, salt)
        classes = inner.classes
        if not classes or len(classes) < 2:
            raise ConfigError(f"label-permutation needs a stream with 2+ known classes; {inner!r} has {classes!r}")
        rng = self._definition_rng()
        K = len(classes)
        order = rng.permutation(K)
        while np.any(order == np.arange(K)):
            order = rng.permutation(K)
        self._classes = list(classes)
        self._table = label_array(classes)[order]

    def _event_params(self):
        return {"mapping": [[a, b] for a, b in zip(self._classes, self._table.tolist())]}

    def _apply(self, X, y, idx, rng):
        after = idx >= self.spec.position
        if not after.any():
            return X, y
        cls = class_index(y, self._classes)
        move = after & (cls >= 0)
        out = y.copy()
        out[move] = self._table[cls[move]]
        return X, out


def _feature_columns(stream: Stream, names) -> list:
    if names is None:
        return list(range(len(stream.feature_names)))
    unknown = [n for n in names if n not in stream.feature_names]
    if unknown:
        raise ConfigError(f"unknown feature(s) {unknown} for this stream; it has {stream.feature_names}")
    return [stream.feature_names.index(n) for n in names]


class _ReferenceStats:
    """Mean and standard deviation of the first REFERENCE_ROWS samples of a stream (sd 1 where it is 0)."""

    def __init__(self, stream: Stream, columns: list):
        X, _ = stream.to_arrays(REFERENCE_ROWS)
        X = X[:, columns]
        self.mean = X.mean(axis=0) if len(X) else np.zeros(len(columns))
        sd = X.std(axis=0) if len(X) else np.ones(len(columns))
        self.sd = np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)


class FeatureTransform(Injector):
    """``feature-shift``, ``feature-scale``, ``feature-rotation`` and ``incremental``.

    With progress ``a`` (0 before the position; 1 from it on, or rising linearly to 1 over ``width`` samples),
    the selected features become ``x' = (m + s * (R(a * angle) z + a * shift)) * (1 + a * (scale - 1))`` with
    ``z = (x - m) / s``, ``m`` the reference mean, ``s`` the reference sd (``units="std"``) or 1 (``"raw"``),
    and ``R`` a rotation in a seeded random plane of the selected features. The labels stay those of the
    original features, so the decision boundary moves with the features.

    Examples
    --------
    >>> from streamlearn.streams.generators import SEAStream
    >>> base = SEAStream(seed=0)
    >>> s = FeatureTransform(base, parse_drift("feature-shift@500:shift=2,units=raw,features=x0"))
    >>> (X0, _), (X1, _) = base.to_arrays(1000), s.to_arrays(1000)
    >>> bool(np.allclose(X1[500:, 0] - X0[500:, 0], 2.0)), bool(np.array_equal(X1[:500], X0[:500]))
    (True, True)
    """

    _tag = 3

    def __init__(self, inner, spec, node=0, seed=0, salt=0):
        super().__init__(inner, spec, node, seed, salt)
        params = spec.params
        self._columns = _feature_columns(inner, params.get("features"))
        self._angle = degrees_to_radians(params.get("angle", 0.0))
        self._shift = params.get("shift", 0.0)
        self._scale = params.get("scale", 1.0)
        self._units = params.get("units", "raw")
        if self._angle and len(self._columns) < 2:
            raise ConfigError(f"bad drift spec {str(spec)!r}: a rotation needs at least 2 features")
        rng = self._definition_rng()
        d = len(self._columns)
        u = rng.standard_normal(d)
        u /= np.linalg.norm(u)
        v = rng.standard_normal(d)
        v -= (v @ u) * u
        norm = np.linalg.norm(v)
        self._u, self._v = u, (v / norm if norm > 0 else v)
        self._ref = None

    def _needs_reference(self):
        return self._angle != 0.0 or (self._units == "std" and self._shift != 0.0)

    def _reference(self):
        if self._ref is None:
            if self._needs_reference():
                self._ref = _ReferenceStats(self.inner, self._columns)
            else:
                self._ref = _ReferenceStats.__new__(_ReferenceStats)
                self._ref.mean = np.zeros(len(self._columns))
                self._ref.sd = np.ones(len(self._columns))
        return self._ref

    def _concept(self, k):
        self._reference()  # the same transform (same reference) under every concept
        return super()._concept(k)

    def _event_params(self):
        params = super()._event_params()
        params["features"] = [self.feature_names[c] for c in self._columns]
        return params

    def _progress(self, idx):
        p, width = self.spec.position, self.spec.params["width"]
        if width == 0:
            return (idx >= p).astype(np.float64)
        return np.clip((idx - p + 1) / width, 0.0, 1.0)

    def _apply(self, X, y, idx, rng):
        a = self._progress(idx)
        rows = np.flatnonzero(a > 0)
        if len(rows) == 0:
            return X, y
        a = a[rows]
        ref = self._reference()
        mean = ref.mean
        sd = ref.sd if self._units == "std" else np.ones_like(ref.sd)
        Z = (X[np.ix_(rows, self._columns)] - mean) / sd
        if self._angle:
            phi = a * self._angle
            c, s = np.cos(phi) - 1.0, np.sin(phi)
            zu, zv = Z @ self._u, Z @ self._v
            Z = Z + (c * zu - s * zv)[:, None] * self._u + (c * zv + s * zu)[:, None] * self._v
        if self._shift:
            Z = Z + (a * self._shift)[:, None]
        new = mean + sd * Z
        if self._scale != 1.0:
            new = new * (1.0 + a * (self._scale - 1.0))[:, None]
        out = X.copy()
        out[np.ix_(rows, self._columns)] = new
        return out, y


class Noise(Injector):
    """``noise``: from the position on, Gaussian feature noise (sd ``sigma``) and label flips (probability ``flip``).

    A flipped label becomes one of the other classes, uniformly.

    Examples
    --------
    >>> from streamlearn.streams.generators import SEAStream
    >>> base = SEAStream(seed=0)
    >>> s = Noise(base, parse_drift("noise@0:sigma=0,flip=0.25"))
    >>> (_, y0), (_, y1) = base.to_arrays(4000), s.to_arrays(4000)
    >>> bool(abs(np.mean(y0 != y1) - 0.25) < 0.02)
    True
    """

    _tag = 4

    def __init__(self, inner, spec, node=0, seed=0, salt=0):
        super().__init__(inner, spec, node, seed, salt)
        self._columns = _feature_columns(inner, spec.params["features"])
        self._sigma, self._flip = spec.params["sigma"], spec.params["flip"]
        if self._flip > 0 and (not inner.classes or len(inner.classes) < 2):
            raise ConfigError(f"label noise needs a stream with 2+ known classes; {inner!r} has {inner.classes!r}")
        self._sd = None

    def _scale_of_noise(self):
        if self._sd is None:
            if self.spec.params["units"] == "std" and self._sigma > 0:
                self._sd = self._sigma * _ReferenceStats(self.inner, self._columns).sd
            else:
                self._sd = np.full(len(self._columns), self._sigma)
        return self._sd

    def _concept(self, k):
        self._scale_of_noise()
        return super()._concept(k)

    def _event_params(self):
        params = super()._event_params()
        params["features"] = [self.feature_names[c] for c in self._columns]
        return params

    def _apply(self, X, y, idx, rng):
        after = idx >= self.spec.position
        if not after.any():
            return X, y  # blocks are fixed, so skipping the draws here keeps every replay identical
        m = len(y)
        if self._sigma > 0:
            noise = rng.standard_normal((m, len(self._columns))) * self._scale_of_noise()
            X = X.copy()
            X[np.ix_(np.flatnonzero(after), self._columns)] += noise[after]
        if self._flip > 0:
            flip, pick = rng.random(m), rng.random(m)
            classes = self.classes
            K = len(classes)
            cls = class_index(y, classes)
            move = after & (flip < self._flip) & (cls >= 0)
            if move.any():
                offset = 1 + np.floor(pick[move] * (K - 1)).astype(np.int64)
                y = y.copy()
                y[move] = label_array(classes)[(cls[move] + offset) % K]
        return X, y


_INJECTORS = {
    "sudden": ConceptSwitch, "gradual": ConceptSwitch, "recurring": ConceptSwitch,
    "label-permutation": LabelPermutation,
    "feature-shift": FeatureTransform, "feature-scale": FeatureTransform, "feature-rotation": FeatureTransform,
    "incremental": FeatureTransform,
    "noise": Noise,
}


def inject(stream: Stream, drifts, node: int = 0, seed: int | None = None) -> Stream:
    """Wrap ``stream`` with the given drifts, applied in order (each wraps the previous).

    Parameters
    ----------
    stream
        Any stream (source, injected or split).
    drifts
        ``DriftSpec``\\ s or spec strings (``"sudden@5000"``, ...); a single one is accepted too.
    node
        Node id written into the ground-truth events; also seeds the per-sample draws (noise, gradual mixing).
    seed
        Seed of the drifts (default: the stream's seed). The same seed gives the same drift definition
        (permutation, rotation plane) on every node.

    Examples
    --------
    >>> from streamlearn.streams.generators import SEAStream
    >>> s = inject(SEAStream(seed=0), ["gradual@1000:width=200", "noise@3000:sigma=0.2"], node=4)
    >>> [(e.position, e.node, e.kind) for e in s.drift_events()]
    [(1000, 4, 'gradual'), (3000, 4, 'noise')]
    """
    if not isinstance(stream, Stream):
        raise ConfigError(f"can only inject drift into a Stream, got {type(stream).__name__}")
    if isinstance(drifts, (str, DriftSpec)):
        drifts = [drifts]
    seed = stream.seed if seed is None else int(seed)
    out = stream
    for i, drift in enumerate(drifts):
        spec = parse_drift(drift)
        out = _INJECTORS[spec.kind](out, spec, node=node, seed=seed, salt=i)
    return out
