"""Many test-then-train steps of a small logistic regression or MLP in one compiled call (numba).

A node at mini-batches of 10 spends some 40 µs per step in Python around 1 µs of arithmetic: the
learner's numpy calls, scoring, the loss guard's averages and the node rule, each a few
microseconds. :func:`learn_steps` does all of that for a whole run of mini-batches in one call: per
step, it predicts with the model as it is (the scaler's statistics before the step), updates the
scaler (Chan et al., float64), takes the SGD step of :func:`~streamlearn.learners.fast.sgd_logreg`
(float32, weight decay; for an MLP of one ReLU layer, the backward pass of
:func:`~streamlearn.learners.fast.sgd_mlp`), scores the predictions (clipped log loss), moves the loss guard's averages
as :meth:`~streamlearn.learners.loss_guard.LossGuard.observe` does, and checks the node rule's
divergence ``||w - r||^2`` at the protocol's check steps. It stops after the first step where
Python has something to do, so :class:`~streamlearn.node.core.NodeCore` runs the same code as
per step there:

* ``STOP_RULE``: the node rule would answer (a violation while no answer is awaited, or a check
  step of a protocol that reports at every check);
* ``STOP_GUARD``: the loss guard's averages say "exploding", or a snapshot is due;
* ``STOP_NONFINITE``: a loss is NaN or inf (the guard is not moved by the kernel: ``observe`` does it);
* ``STOP_END``: the run's steps are done.

The arithmetic is that of :class:`~streamlearn.learners.fast.NumpyPath`; results equal it to float
rounding (the sums run in a different order): tests/node/test_run_kernel.py.

numba compiles the kernel at its first call in a process (about a second; cached on disk after).
Without numba :data:`AVAILABLE` is False and the node steps one mini-batch at a time as before.
"""

from __future__ import annotations

import math

import numpy as np

from streamlearn.compiled import AVAILABLE
from streamlearn.compiled import jit as _jit

__all__ = ["AVAILABLE", "STOP_END", "STOP_GUARD", "STOP_NONFINITE", "STOP_RULE", "learn_steps", "run", "warm_up"]

STOP_END, STOP_RULE, STOP_GUARD, STOP_NONFINITE = 0, 1, 2, 3


@_jit
def _pairwise_sum(a, lo, n):
    """``float(a[lo:lo + n].sum())`` as numpy computes it (pairwise: eight partial sums per block of at
    most 128, halves above), so the loss guard's averages are those of ``observe``."""
    if n > 128:
        half = n // 2
        half -= half % 8
        return _pairwise_sum(a, lo, half) + _pairwise_sum(a, lo + half, n - half)
    if n < 8:
        res = -0.0
        for i in range(n):
            res += a[lo + i]
        return res
    r0, r1, r2, r3 = a[lo], a[lo + 1], a[lo + 2], a[lo + 3]
    r4, r5, r6, r7 = a[lo + 4], a[lo + 5], a[lo + 6], a[lo + 7]
    i = 8
    while i < n - n % 8:
        r0 += a[lo + i]
        r1 += a[lo + i + 1]
        r2 += a[lo + i + 2]
        r3 += a[lo + i + 3]
        r4 += a[lo + i + 4]
        r5 += a[lo + i + 5]
        r6 += a[lo + i + 6]
        r7 += a[lo + i + 7]
        i += 8
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    while i < n:
        res += a[lo + i]
        i += 1
    return res


@_jit
def _standardise(X, i0, B, mean, m2, n, with_std, out):
    """Rows ``X[i0:i0 + B]`` standardised with the statistics of ``n`` rows, as scaler_transform (float32)."""
    f = X.shape[1]
    for j in range(f):
        s = 1.0
        if with_std:
            v = m2[j] / max(n, 1)
            s = math.sqrt(v) if v > 0.0 else 0.0
            if not s > 0.0:
                s = 1.0
        for i in range(B):
            d = np.float64(X[i0 + i, j]) - mean[j]
            out[i, j] = np.float32(d / s if with_std else d)


@_jit
def _affine(Z, W, b, out):
    """``out = Z @ W.T + b`` (float32, each sum in the order of the features)."""
    for i in range(Z.shape[0]):
        for c in range(W.shape[0]):
            acc = np.float32(0.0)
            for j in range(Z.shape[1]):
                acc += Z[i, j] * W[c, j]
            out[i, c] = acc + b[c]


@_jit
def _softmax_rows(Z, W, b, S):
    """``S = softmax(Z @ W.T + b)`` row by row (float32, shifted by the row maximum)."""
    _affine(Z, W, b, S)
    for i in range(S.shape[0]):
        top = S[i, 0]
        for c in range(1, S.shape[1]):
            if S[i, c] > top:
                top = S[i, c]
        tot = np.float32(0.0)
        for c in range(S.shape[1]):
            e = np.float32(math.exp(S[i, c] - top))
            S[i, c] = e
            tot += e
        for c in range(S.shape[1]):
            S[i, c] /= tot


@_jit
def _forward(Z, W1, b1, W, b, hidden, A, S):
    """``S``: the softmax of the model on ``Z``; with ``hidden``, through ``A = relu(Z @ W1.T + b1)`` first."""
    if not hidden:
        _softmax_rows(Z, W, b, S)
        return
    _affine(Z, W1, b1, A)
    for i in range(A.shape[0]):
        for h in range(A.shape[1]):
            if not A[i, h] > 0:
                A[i, h] = np.float32(0.0)
    _softmax_rows(A, W, b, S)


@_jit
def _sgd_linear(G, Z, W, b, wd32, gW, gb):
    """The gradient of a linear layer ``W``, ``b`` on inputs ``Z`` from ``G`` (d loss / d its outputs) into ``gW``,
    ``gb``, weight decay added."""
    B, k = G.shape
    for c in range(k):
        for j in range(Z.shape[1]):
            gw = np.float32(0.0)
            for i in range(B):
                gw += G[i, c] * Z[i, j]
            gW[c, j] = gw + wd32 * W[c, j] if wd32 != 0 else gw
        s = np.float32(0.0)
        for i in range(B):
            s += G[i, c]
        gb[c] = s + wd32 * b[c] if wd32 != 0 else s


@_jit
def _apply(W, b, gW, gb, lr32):
    for c in range(W.shape[0]):
        for j in range(W.shape[1]):
            W[c, j] -= lr32 * gW[c, j]
        b[c] -= lr32 * gb[c]


@_jit
def learn_steps(X, y, B, steps, W1, b1, W, b, hidden, scale, with_std, mean, m2, n, lr, wd, flat, p, ref, step0,
               check_every, threshold, has_threshold, awaiting, guard_on, g, P_out, loss_out, correct_out):
    """Up to ``steps`` test-then-train steps of ``B`` rows of ``X`` (float32) and class indices ``y``.

    ``W`` (k, f), ``b`` (k): views of the flat parameters ``flat`` (float32), updated in place; with
    ``hidden``, an MLP of one ReLU layer ``W1`` (H, f), ``b1`` (H) before them (then ``W`` is (k, H));
    ``mean``, ``m2``: the scaler's float64 statistics of ``n`` rows (``scale``: the learner has a
    scaler), updated in place; ``lr``, ``wd``: the step size and weight decay. The node rule: at steps
    ``step0 + t`` (counted after the step) divisible by ``check_every`` the divergence of
    ``flat[:p]`` from ``ref`` (float32) is compared with ``threshold`` (``has_threshold``; else every
    check step answers); ``awaiting``: a violation is counted as suppressed and the run goes on.
    ``guard_on``: the loss guard's state ``g`` (in the order of
    :meth:`~streamlearn.learners.loss_guard.LossGuard.averages_state`) is moved as its ``observe`` moves it.

    Writes the probabilities before each step (``P_out``, float64), each sample's clipped log loss
    and whether it was predicted right. Returns ``(steps done, stop reason, scaler rows, last
    divergence (NaN: none checked), suppressed)``.
    """
    f = X.shape[1]
    k = W.shape[0]
    H = W1.shape[0]
    lr32 = np.float32(lr)
    wd32 = np.float32(wd)
    Z = np.empty((B, f), dtype=np.float32)
    S = np.empty((B, k), dtype=np.float32)
    G = np.empty((B, k), dtype=np.float32)
    A = np.empty((B, H), dtype=np.float32)  # the hidden layer's activations
    GA = np.empty((B, H), dtype=np.float32)  # and d loss / d its pre-activations
    gW, gb = np.empty_like(W), np.empty_like(b)
    gW1, gb1 = np.empty_like(W1), np.empty_like(b1)
    bmean = np.empty(f)
    div = np.nan
    suppressed = 0
    eps = 1e-15
    for t in range(steps):
        i0 = t * B
        # predictions with the model before the step (the statistics before it)
        if scale:
            _standardise(X, i0, B, mean, m2, n, with_std, Z)
        else:
            for i in range(B):
                for j in range(f):
                    Z[i, j] = X[i0 + i, j]
        _forward(Z, W1, b1, W, b, hidden, A, S)
        for i in range(B):
            for c in range(k):
                P_out[i0 + i, c] = S[i, c]
        if scale:  # Chan et al. (Welford's step for one row), then the rows as the step sees them
            if B == 1:
                for j in range(f):
                    x = np.float64(X[i0, j])
                    delta = x - mean[j]
                    mean[j] += delta / (n + 1)
                    m2[j] += delta * (x - mean[j])
            else:
                total = n + B
                for j in range(f):
                    s = 0.0
                    for i in range(B):
                        s += np.float64(X[i0 + i, j])
                    bmean[j] = s / B
                for j in range(f):
                    sq = 0.0
                    for i in range(B):
                        d = np.float64(X[i0 + i, j]) - bmean[j]
                        sq += d * d
                    delta = bmean[j] - mean[j]
                    mean[j] += delta * (B / total)
                    m2[j] += sq + delta * delta * (n * B / total)
            n += B
            _standardise(X, i0, B, mean, m2, n, with_std, Z)
            _forward(Z, W1, b1, W, b, hidden, A, S)
        # (without a scaler the forward pass that predicted is the one the step trains through)
        for i in range(B):
            for c in range(k):
                G[i, c] = S[i, c] - (np.float32(1.0) if y[i0 + i] == c else np.float32(0.0))
                G[i, c] /= np.float32(B)
        # every layer's gradient first (from the weights before the step), then every update: as sgd_mlp
        if hidden:
            _sgd_linear(G, A, W, b, wd32, gW, gb)
            for i in range(B):
                for h in range(H):
                    acc = np.float32(0.0)
                    for c in range(k):
                        acc += G[i, c] * W[c, h]
                    GA[i, h] = acc if A[i, h] > 0 else np.float32(0.0)  # ReLU's derivative, 0 at 0 as in torch
            _sgd_linear(GA, Z, W1, b1, wd32, gW1, gb1)
            _apply(W1, b1, gW1, gb1, lr32)
        else:
            _sgd_linear(G, Z, W, b, wd32, gW, gb)
        _apply(W, b, gW, gb, lr32)
        # scores of the predictions
        for i in range(B):
            yi = y[i0 + i]
            best = 0
            for c in range(1, k):
                if P_out[i0 + i, c] > P_out[i0 + i, best]:
                    best = c
            correct_out[i0 + i] = best == yi
            pt = P_out[i0 + i, yi]
            loss_out[i0 + i] = -math.log(min(max(pt, eps), 1.0 - eps))
        total_loss = _pairwise_sum(loss_out, i0, B)
        if guard_on:
            if not math.isfinite(total_loss):
                return t + 1, STOP_NONFINITE, n, div, suppressed  # LossGuard.observe takes this step
            g[3] += B  # position
            g[4] += 1  # steps
            mean_loss = total_loss / B
            if not math.isfinite(g[0]):
                g[0] = mean_loss
                g[1] = mean_loss
            else:
                g[0] += g[10] * (mean_loss - g[0])
                floor = max(g[1], g[8])
                if g[0] <= 2.0 * floor:
                    g[1] += g[11] * (mean_loss - g[1])
                elif g[0] <= g[7] * floor:
                    g[1] += g[12] * (mean_loss - g[1])
            g[2] += B
            level = g[1] if math.isfinite(g[1]) else g[8]
            exploding = g[2] >= g[9] and g[0] > g[7] * max(level, g[8])
            healthy = not g[0] > 2.0 * max(level, g[8])
            if exploding or g[6] != 0.0 or (g[3] >= g[5] and healthy):
                return t + 1, STOP_GUARD, n, div, suppressed  # the guard's checks run in Python
        step = step0 + t + 1
        if step % check_every == 0:
            acc = np.float32(0.0)
            for j in range(p):
                d32 = flat[j] - ref[j]
                acc += d32 * d32
            div = np.float64(acc)
            if not has_threshold:
                return t + 1, STOP_RULE, n, div, suppressed
            if acc > np.float32(threshold):
                if not awaiting:
                    return t + 1, STOP_RULE, n, div, suppressed
                suppressed += 1  # its model is already up there: learn on
    return steps, STOP_END, n, div, suppressed


_NONE = np.zeros(1)  # (what the kernel takes for statistics or guard state a learner does not have)
_NO_LAYER, _NO_BIAS = np.zeros((1, 1), dtype=np.float32), np.zeros(1, dtype=np.float32)  # (no hidden layer)


def run(X, y, B, steps, layers, mean, m2, with_std, n, lr, wd, flat, p, ref, step0, check_every, threshold, awaiting,
        g, P, loss, correct) -> tuple:
    """:func:`learn_steps` with every argument in the type it is compiled for, so one compiled version serves
    every call (numba compiles anew for each new combination of types). ``mean``, ``m2`` None: no scaler
    (else both float64 arrays of the features' length); ``threshold`` None: every check step answers; ``g``
    None: no loss guard. ``layers``: ``[W, b]`` of a logistic regression or ``[W1, b1, W, b]`` of an MLP of one
    hidden layer (views of ``flat``)."""
    scale = mean is not None
    if len(layers) == 2:
        (W, b), W1, b1, hidden = layers, _NO_LAYER, _NO_BIAS, False
    elif len(layers) == 4:
        (W1, b1, W, b), hidden = layers, True
    else:
        raise ValueError(f"a logistic regression or an MLP of one hidden layer, not {len(layers) // 2} layers")
    if scale and not (len(mean) == len(m2) == X.shape[1]):
        raise ValueError(f"scaler statistics of {len(mean)} and {len(m2)} features for {X.shape[1]} features")
    return learn_steps(np.ascontiguousarray(X, dtype=np.float32), np.ascontiguousarray(y, dtype=np.int64), int(B),
                      int(steps), W1, b1, W, b, hidden, scale, bool(with_std), mean if scale else _NONE,
                      m2 if scale else _NONE, int(n), float(lr), float(wd), flat, int(p), ref, int(step0),
                      int(check_every), 0.0 if threshold is None else float(threshold), threshold is not None,
                      bool(awaiting), g is not None, _NONE if g is None else g, P, loss, correct)


def warm_up() -> None:
    """Compile the kernel now, or load it from numba's cache (a second or so the first time in a process): a
    node does it while it starts, not in its first run of mini-batches."""
    if not AVAILABLE:
        return
    flat = np.zeros(3, dtype=np.float32)
    W, b = flat[:2].reshape(2, 1), flat[2:]
    run(np.zeros((2, 1), np.float32), np.zeros(2, np.int64), 1, 2, [W, b], np.zeros(1), np.zeros(1), True, 0, 0.1, 0.0,
        flat, 2, np.zeros(2, np.float32), 0, 1, 1.0, False, np.zeros(13), np.empty((2, 2)), np.empty(2),
        np.empty(2, dtype=np.bool_))
