"""The numpy path of small models: one test-then-train step as a few fused numpy calls.

A logistic regression of a few hundred parameters learns a sample in microseconds; through torch
each call pays tens of microseconds of dispatch (tensor creation, autograd, optimizer bookkeeping),
so at a mini-batch of one the overhead is the whole cost. :class:`NumpyPath` runs the same
arithmetic as :class:`~streamlearn.learners.TorchLearner`'s CPU path (softmax cross-entropy, the
closed-form gradient of a linear layer, ReLU backprop through an MLP, plain SGD with weight decay,
Chan-Welford scaler statistics in float64) on numpy views of the learner's own parameters, so
``get_flat``/``set_flat``, syncing and checkpoints see one state whichever path learned.

It is chosen by the learner, not by the user: CPU device, ``sgd`` without momentum,
``cross_entropy``, a ``logreg`` or ``mlp`` of at most :data:`MAX_PARAMS` parameters (beyond that
the matrix products dominate, and torch's kernels are as fast or faster).

A batch of one row (test-then-train at batch 1: ``streamlearn evaluate``, a node at mini-batch 1) has
its own step, :meth:`NumpyPath.step_one`, because there each numpy call costs about a microsecond
whatever its size and the count of calls is the cost: with at most :data:`ONE_ROW_FEATURES` features
the scaler runs on Python floats (Welford's step), a logistic regression of at most
:data:`PYTHON_LINEAR` weights entirely so (straight-line code written out for its sizes,
:func:`_row_code`), and an MLP (or a larger logistic regression) as fourteen numpy calls over
preallocated buffers (:func:`_rows_code`: one product per layer for the row as predicted and as learnt,
one rank-one product per layer into a flat gradient, one update). The results equal the torch path's to
float rounding (tests/learners/test_fast.py runs both over every learner that takes this path).

Examples
--------
>>> import numpy as np
>>> W = np.zeros((2, 3), dtype=np.float32); b = np.zeros(2, dtype=np.float32)
>>> X = np.array([[1.0, 0.0, -1.0]], dtype=np.float32)
>>> S = forward_softmax([W, b], X)[0]
>>> S.tolist()
[[0.5, 0.5]]
>>> sgd_logreg(W, b, X, S, np.array([[0.0, 1.0]], dtype=np.float32), lr=1.0, weight_decay=0.0)
>>> W.tolist()
[[-0.5, 0.0, 0.5], [0.5, 0.0, -0.5]]
"""

from __future__ import annotations

import functools
import math

import numpy as np

from streamlearn.learners.schedule import decayed_lr

__all__ = [
    "MAX_PARAMS",
    "ONE_ROW_FEATURES",
    "PYTHON_LINEAR",
    "NumpyPath",
    "forward_softmax",
    "scaler_transform",
    "scaler_update",
    "sgd_logreg",
    "sgd_mlp",
]

_F32 = np.dtype(np.float32)
_ZERO = np.float32(0.0)  # (a float32 zero: np.maximum takes it faster than a Python 0)
_SUM, _MAX = np.add.reduce, np.maximum.reduce

#: What :meth:`NumpyPath.row_learn` returns for an input that is not one float row of a known class.
NOT_A_ROW = object()

#: Models up to this many parameters take the numpy path on CPU.
MAX_PARAMS = 20_000
#: Up to this many features a one-row step standardises in Python floats (:meth:`NumpyPath.step_one`).
ONE_ROW_FEATURES = 64
#: Up to this many weights (classes x features) a one-row logistic regression step is plain Python floats.
PYTHON_LINEAR = 96


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax (float32), shifted by the row maximum as torch does."""
    # the ufuncs' reduce called directly: ndarray.max/sum go through a Python wrapper, a microsecond a call here
    e = np.exp(logits - _MAX(logits, axis=1, keepdims=True))
    e /= _SUM(e, axis=1, keepdims=True)
    return e


def forward_softmax(layers: list, X: np.ndarray) -> tuple[np.ndarray, list]:
    """``(softmax (B, k), hidden activations)`` of linear layers ``[W0, b0, W1, b1, ...]`` with ReLU between."""
    hidden = []
    h = X
    for i in range(0, len(layers) - 2, 2):
        h = h @ layers[i].T
        h += layers[i + 1]
        np.maximum(h, 0, out=h)
        hidden.append(h)
    logits = h @ layers[-2].T
    logits += layers[-1]
    return softmax(logits), hidden


def _delta(S: np.ndarray, onehot: np.ndarray) -> np.ndarray:
    """d(mean cross-entropy)/d(logits): ``(S - onehot) / B``."""
    G = S - onehot
    G /= len(S)
    return G


def sgd_logreg(W: np.ndarray, b: np.ndarray, X: np.ndarray, S: np.ndarray, onehot: np.ndarray, *, lr: float,
               weight_decay: float) -> None:
    """One SGD step of a linear softmax layer, in place, from its softmax ``S`` on ``X`` and one-hot labels."""
    G = _delta(S, onehot)
    gW, gb = G.T @ X, _SUM(G, axis=0)
    if weight_decay:
        gW += weight_decay * W
        gb += weight_decay * b
    W -= lr * gW
    b -= lr * gb


def sgd_mlp(layers: list, X: np.ndarray, S: np.ndarray, hidden: list, onehot: np.ndarray, *, lr: float,
            weight_decay: float) -> None:
    """One SGD step of a ReLU MLP, in place: backprop from the softmax ``S`` through the ``hidden``
    activations of :func:`forward_softmax` (gradients of all layers first, then every update)."""
    G = _delta(S, onehot)
    grads = []
    for i in range(len(layers) - 2, -1, -2):
        inp = hidden[i // 2 - 1] if i else X
        grads.append((i, G.T @ inp, _SUM(G, axis=0)))
        if i:
            G = G @ layers[i]
            G *= inp > 0  # ReLU's derivative, 0 at 0 as in torch
    for i, gW, gb in grads:
        W, b = layers[i], layers[i + 1]
        if weight_decay:
            gW += weight_decay * W
            gb += weight_decay * b
        W -= lr * gW
        b -= lr * gb


def scaler_update(mean: np.ndarray, m2: np.ndarray, n, X: np.ndarray) -> None:
    """Merge the batch ``X`` (B, f) into the float64 statistics ``mean``, ``m2`` of ``n`` rows, in place
    (Chan et al.; for one row it is Welford's step, the same up to rounding)."""
    b = len(X)
    if b == 1:
        x = X[0].astype(np.float64)
        delta = x - mean
        mean += delta / (n + 1)
        m2 += delta * (x - mean)
        return
    Xd = X.astype(np.float64)
    bmean = _SUM(Xd, axis=0) / b  # (what Xd.mean(axis=0) computes)
    dev = Xd - bmean
    total = n + b
    delta = bmean - mean
    mean += delta * (b / total)
    m2 += _SUM(dev * dev, axis=0) + delta * delta * (n * b / total)


def scaler_transform(mean: np.ndarray, m2: np.ndarray, n, X: np.ndarray, with_std: bool = True) -> np.ndarray:
    """``X`` standardised with the statistics (float32): population std, a zero std taken as 1."""
    out = X - mean
    if with_std:
        # a variance a hair below 0 (rounding of loaded statistics) takes 1, as 0 and NaN do (no errstate
        # context: it costs more than this maximum)
        std = np.sqrt(np.maximum(m2 / max(n, 1), 0.0))
        out /= np.where(std > 0, std, 1.0)  # 0 or NaN: 1, as the torch path
    return out.astype(np.float32)


class NumpyPath:
    """Test-then-train of a :class:`~streamlearn.learners.TorchLearner` in numpy (see the module docstring).

    Holds numpy views of the learner's flat parameter vector (in place: what the step writes, the learner
    has) and reads and writes its scaler's statistics, so the learner stays the one owner of its state.
    """

    def __init__(self, learner):
        self.learner = learner
        self.linear = learner.arch == "logreg"
        self._mean_t = self._mean = self._m2 = self._stats_buf = None
        self._code = None  # the plain-Python one-row step of a small logistic regression, made at first use
        self._bind()
        f, k = self.layers[0].shape[1], len(self.layers[-1])
        self.k = k
        #: a row (1, f) with at most ONE_ROW_FEATURES features takes step_one (a scaler that only centres
        #: takes the general path)
        sc = learner._scaler
        self.row_shape = (1, f) if f <= ONE_ROW_FEATURES and (sc is None or sc.with_std) else None
        self.python_linear = self.linear and k * f <= PYTHON_LINEAR

    def _bind(self) -> None:
        """Views of the learner's parameters; again whenever they moved (a deep copy of the learner)."""
        w = self.learner._w.detach()
        self._ptr = w.data_ptr()
        flat = w.numpy()  # shares memory with the parameters
        self.flat = flat
        self.layers = [flat[_offset(w, t):_offset(w, t) + t.numel()].reshape(t.shape)
                       for t in self.learner._net.views(w).values()]
        self._eye = np.eye(len(self.layers[-1]), dtype=np.float32)  # row i: one-hot label i
        self._rows_step = self._rows_proba = None  # the numpy one-row step, bound to these buffers at first use

    def __deepcopy__(self, memo):
        # A copy of the learner has parameters and statistics of its own: bind to them at first use.
        import copy

        new = NumpyPath.__new__(NumpyPath)
        memo[id(self)] = new
        new.learner, new.linear = copy.deepcopy(self.learner, memo), self.linear
        new._mean_t = new._mean = new._m2 = new._ptr = new._stats_buf = None
        new.row_shape, new.python_linear, new._code, new.k = self.row_shape, self.python_linear, self._code, self.k
        return new

    def _check(self) -> None:
        if self.learner._w.data_ptr() != self._ptr:
            self._bind()

    def _stats(self, f: int, create: bool):
        """``(mean, m2)``: float64 arrays that are the scaler's statistics (its tensors share their memory, so
        an update in place is the scaler's update); None before any update unless ``create``. They are the
        halves of one array of 2f, ``self._stats_buf``, so a one-row step reads and writes both at once."""
        sc = self.learner._scaler
        if sc._mean is self._mean_t and sc._mean is not None:
            return self._mean, self._m2
        import torch

        buf = np.zeros((2, f))
        if sc._mean is None:
            if not create:
                return None
        else:  # first use, or loaded by set_flat: take copies of our own
            buf[0], buf[1] = sc._mean.numpy(), sc._m2.numpy()
        mean, m2 = buf
        sc._mean, sc._m2 = torch.from_numpy(mean), torch.from_numpy(m2)
        self._mean_t, self._mean, self._m2, self._stats_buf = sc._mean, mean, m2, buf.reshape(-1)
        return mean, m2

    def scaled(self, M: np.ndarray) -> np.ndarray:
        """``M`` as the model sees it (standardised with the current statistics when the learner scales)."""
        sc = self.learner._scaler
        stats = None if sc is None else self._stats(M.shape[1], create=False)
        return M if stats is None else scaler_transform(*stats, sc.n_, M, sc.with_std)

    def proba(self, M: np.ndarray, known: int) -> np.ndarray:
        """Probabilities over the first ``known`` classes, as the learner's ``predict_proba_many``."""
        self._check()
        S, _ = forward_softmax(self.layers, self.scaled(M))
        return _first(S, known)

    def learn(self, M: np.ndarray, y: np.ndarray, want_proba: bool, known: int, lr: float,
              weight_decay: float) -> np.ndarray | None:
        """One step on ``M`` (float32 (B, f)) and class indices ``y``; the probabilities before it when asked."""
        self._check()
        sc = self.learner._scaler
        P = None
        X = M
        if sc is not None:
            if want_proba:
                P = self.proba(M, known)
            mean, m2 = self._stats(M.shape[1], create=True)
            scaler_update(mean, m2, sc.n_, M)
            sc.n_ = sc.n_ + len(M)
            X = scaler_transform(mean, m2, sc.n_, M, sc.with_std)
        S, hidden = forward_softmax(self.layers, X)
        if want_proba and P is None:
            P = _first(S, known)
        onehot = self._eye[y]
        if self.linear:
            sgd_logreg(self.layers[0], self.layers[1], X, S, onehot, lr=lr, weight_decay=weight_decay)
        else:
            sgd_mlp(self.layers, X, S, hidden, onehot, lr=lr, weight_decay=weight_decay)
        return P

    # -- one row ----------------------------------------------------------------------------------------

    def _row_code(self, f: int) -> _RowCode:
        code = self._code
        if code is None:
            code = self._code = _row_code(f, len(self.layers[-1]), self.learner._scaler is not None)
        return code

    def proba_one(self, x: list) -> list:
        """The class probabilities (Python floats) of one row ``x`` (f Python floats); every class known."""
        self._check()
        f = len(x)
        sc = self.learner._scaler
        st = None if sc is None or self._stats(f, create=False) is None else self._stats_buf.tolist()
        n = 0 if st is None else sc.n_
        if self.python_linear:
            return self._row_code(f).proba(x, self.flat.tolist(), st, n)
        return (self._rows_proba or self._bind_rows_code())(x, st, n)

    def row_learn(self, X, y, want_proba: bool):
        """The hot path of test-then-train at batch 1, from the learner's ``predict_proba_learn_many`` /
        ``learn_many``: a float row ``X`` (1, f), one label ``y`` of a known class, every class known.
        The probabilities before the step (float32 (1, k)) or None, after the learner's step counters
        moved on; :data:`NOT_A_ROW` (and nothing changed) when the input is anything else, for the
        learner's general path, which checks, converts and names what is wrong."""
        learner = self.learner
        if type(X) is not np.ndarray or X.shape != self.row_shape:
            return NOT_A_ROW
        if X.dtype is not _F32:
            if X.dtype.kind != "f":
                return NOT_A_ROW
            X = X.astype(np.float32)  # as the general path rounds it
        x = X.tolist()[0]
        label = y.tolist() if type(y) is np.ndarray else y
        if type(label) is not list or len(label) != 1 or not math.isfinite(sum(x)):  # one sum: all finite
            return NOT_A_ROW
        try:
            yi = learner._class_index.get(label[0])
        except TypeError:  # unhashable
            return NOT_A_ROW
        if yi is None or len(learner.classes_) != self.k:
            return NOT_A_ROW
        group = learner._opt.param_groups[0]
        if learner.lr_decay is not None:  # the schedule's step size for this step (t = n_steps_ before it)
            group["lr"] = decayed_lr(learner.lr, learner.n_steps_, learner.t_reset_, learner.lr_decay)
        P = self.step_one(x, yi, want_proba, group["lr"], group["weight_decay"])
        learner.n_samples_seen_ += 1
        learner.n_steps_ += 1
        return np.array([P], dtype=np.float32) if want_proba else None

    def step_one(self, x: list, y: int, want_proba: bool, lr: float, weight_decay: float) -> list | None:
        """:meth:`learn` on one row ``x`` (f finite Python floats) of class index ``y``, every class known;
        the probabilities before the step (as :meth:`proba_one`) when asked."""
        learner = self.learner
        if learner._w.data_ptr() != self._ptr:  # (_check, inline: this is the hot path)
            self._bind()
        sc = learner._scaler
        if sc is not None:  # the statistics (mean, then m2) as Python floats: read here, written back below
            if sc._mean is not self._mean_t or sc._mean is None:
                self._stats(len(x), create=True)
            st, n = self._stats_buf.tolist(), sc.n_
        else:
            st, n = None, 0
        if self.python_linear:
            code = self._code or self._row_code(len(x))
            P, w, st = code.step(x, self.flat.tolist(), st, n, y, lr, weight_decay, want_proba)
            self.flat[...] = w
        else:
            if self._rows_step is None:
                self._bind_rows_code()
            P, st = self._rows_step(x, st, n, y, lr, weight_decay, want_proba)
        if sc is not None:
            self._stats_buf[...] = st
            sc.n_ = n + 1
        return P if want_proba else None

    def _bind_rows_code(self):
        """Make the buffers of the numpy one-row step and bind :func:`_rows_code` to them (once per
        binding of the parameters); its ``proba``."""
        layers = self.layers
        rows_in = np.zeros((2, layers[0].shape[1]), dtype=np.float32)  # the row as predicted, as learnt
        acts = [np.zeros((2, len(layers[i])), dtype=np.float32) for i in range(0, len(layers), 2)]
        grad = np.zeros_like(self.flat)
        grads = [grad[_offset_np(self.flat, t):_offset_np(self.flat, t) + t.size].reshape(t.shape) for t in layers]
        masks = [np.zeros(len(a[0]), dtype=np.float32) for a in acts[:-1]]
        make = _rows_code(layers[0].shape[1], len(layers[-1]), len(layers) // 2, self.learner._scaler is not None)
        self._rows_step, self._rows_proba = make(self.flat, grad, rows_in, layers, acts, grads[0::2], grads[1::2],
                                                 masks)
        return self._rows_proba


class _RowCode:
    """The functions of :func:`_row_code`, and their source."""

    def __init__(self, space: dict, source: str):
        self.proba, self.step, self.source = space["proba"], space["step"], source


@functools.lru_cache(maxsize=64)
def _row_code(f: int, k: int, scale: bool) -> _RowCode:
    """A logistic regression's one-row test-then-train for ``f`` features and ``k`` classes as straight-line
    Python float code, written out for these sizes (no loops, no lists until the results): a small model's
    step is a few hundred float operations, and Python runs them as fast as numpy runs two calls. Made once
    per shape.

    ``st`` is the scaler's statistics as one list (the f means, then the f sums of squared deviations m2)
    and ``n`` its count (with ``scale`` only; the identity while ``n`` is 0). ``proba(x, w, st, n)``: the
    probabilities of the row ``x`` under the flat parameters ``w`` (weights (k, f) row by row, then the k
    biases). ``step(x, w, st, n, y, lr, wd, want)``: ``(probabilities before the step or None, new w, new
    st)`` after Welford's update of the statistics and one SGD step on the cross-entropy of class index
    ``y`` (the arithmetic of the numpy and torch paths).

    >>> code = _row_code(2, 2, scale=False)
    >>> code.proba([1.0, -1.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0], None, 0)
    [0.5, 0.5]
    >>> code.step([1.0, -1.0], [0.0] * 6, None, 0, 1, 1.0, 0.0, False)[1]
    [-0.5, 0.5, 0.5, -0.5, -0.5, 0.5]
    >>> P, w, st = _row_code(2, 2, scale=True).step([1.0, 3.0], [0.0] * 6, [0.0, 1.0, 2.0, 2.0], 2, 1, 1.0, 0.0, True)
    >>> P, [round(v, 4) for v in st]  # zero weights predict 1/2; the statistics of 3 rows
    ([0.5, 0.5], [0.3333, 1.6667, 2.6667, 4.6667])
    """
    X = [f"x{j}" for j in range(f)]
    W = [f"w{c}_{j}" for c in range(k) for j in range(f)]
    ST = [f"mu{j}" for j in range(f)] + [f"q{j}" for j in range(f)]
    P = "[" + ", ".join(f"p{c}" for c in range(k)) + "]"
    indent = _src_indent

    def softmax():
        return _src_softmax([f"b{c} + " + " + ".join(f"w{c}_{j} * z{j}" for j in range(f)) for c in range(k)], "p")

    identity = [f"z{j} = x{j}" for j in range(f)]
    stats = [", ".join(ST) + ", = st"] if scale else []
    params = [", ".join(X) + ", = x", ", ".join(W + [f"b{c}" for c in range(k)]) + ", = w"]
    # (proba may have no statistics yet: st is None, n is 0)
    scaled = ["if n:"] + indent(stats + _src_standardise(f, "n", "z")) + ["else:"] + indent(identity)
    src = ["def proba(x, w, st, n):"] + indent(params + (scaled if scale else identity) + softmax() + [f"return {P}"])
    src += ["", "def step(x, w, st, n, y, lr, wd, want):"]
    body = params + ["P = None"]
    if scale:
        body += ["if want:"] + indent(scaled + softmax() + [f"P = {P}"])
        body += stats + _src_welford(f) + _src_standardise(f, "n1", "z")
    else:
        body += identity
    body += softmax() + ([] if scale else ["if want:", f"    P = {P}"])
    body += [f"G = {P}", "G[y] -= 1.0", ", ".join(f"g{c}" for c in range(k)) + ", = G"]
    new_stats = "[" + ", ".join(ST) + "]" if scale else "None"
    decayed = [f"w{c}_{j} - lr * (g{c} * z{j} + wd * w{c}_{j})" for c in range(k) for j in range(f)]
    decayed += [f"b{c} - lr * (g{c} + wd * b{c})" for c in range(k)]
    plain = [f"w{c}_{j} - a{c} * z{j}" for c in range(k) for j in range(f)] + [f"b{c} - a{c}" for c in range(k)]
    body += ["if wd:", f"    return P, [{', '.join(decayed)}], {new_stats}"]
    body += [f"a{c} = lr * g{c}" for c in range(k)] + [f"return P, [{', '.join(plain)}], {new_stats}"]
    source = "\n".join(src + indent(body)) + "\n"
    space = {"sqrt": math.sqrt, "exp": math.exp}
    exec(compile(source, f"<streamlearn one-row code f={f} k={k}>", "exec"), space)  # noqa: S102 - our own text
    return _RowCode(space, source)


def _src_standardise(f: int, n: str, z: str) -> list:
    """Source lines: ``{z}j = (xj - muj) / sj``, sj from ``qj / n`` (a zero or negative variance: 1)."""
    out = [f"nn = max({n}, 1)"]
    for j in range(f):
        out += [f"s{j} = sqrt(q{j} / nn) if q{j} > 0 else 0.0", f"if not s{j} > 0: s{j} = 1.0",
                f"{z}{j} = (x{j} - mu{j}) / s{j}"]
    return out


def _src_welford(f: int) -> list:
    """Source lines: the row ``x`` into the statistics ``mu``, ``q`` of ``n`` rows, as scaler_update's."""
    out = ["n1 = n + 1"]
    for j in range(f):
        out += [f"d{j} = x{j} - mu{j}", f"mu{j} = mu{j} + d{j} / n1", f"q{j} = q{j} + d{j} * (x{j} - mu{j})"]
    return out


def _src_softmax(logits: list, p: str) -> list:
    """Source lines: ``{p}c``, the softmax of the expressions ``logits``, shifted by the largest as torch
    does (two classes: its exp is 1, one exp left)."""
    k = len(logits)
    out = [f"l{c} = {v}" for c, v in enumerate(logits)]
    if k == 2:
        return out + ["if l0 >= l1:", "    e = exp(l1 - l0)", "    u = 1.0 + e", f"    {p}0 = 1.0 / u",
                      f"    {p}1 = e / u", "else:", "    e = exp(l0 - l1)", "    u = e + 1.0", f"    {p}0 = e / u",
                      f"    {p}1 = 1.0 / u"]
    out += [f"t = max({', '.join(f'l{c}' for c in range(k))})"]
    out += [f"e{c} = exp(l{c} - t)" for c in range(k)]
    out += ["u = " + " + ".join(f"e{c}" for c in range(k))]
    return out + [f"{p}{c} = e{c} / u" for c in range(k)]


def _src_indent(lines: list) -> list:
    return ["    " + line for line in lines]


@functools.lru_cache(maxsize=64)
def _rows_code(f: int, k: int, depth: int, scale: bool):
    """The numpy one-row step of ``depth`` linear layers with ReLU between (an MLP; a logistic regression
    too large for :func:`_row_code`), as straight-line code over preallocated buffers: each numpy call
    costs about a microsecond whatever its size, so the step is as few calls as it can be.

    Two input rows go through the layers at once: the row standardised with the statistics before this
    step's update (the prediction) and after it (what is learnt); one product per layer serves both. The
    last bias is added in Python floats, the softmax too. The gradient carries the factor ``-lr``
    (backprop is linear in it): per layer one rank-one product into the flat gradient buffer, then one
    update of the flat parameters (SGD with weight decay, as the torch path).

    Returns ``make(flat, grad, rows_in, layers, acts, grad_w, grad_b, masks)``, which binds the buffers
    and gives ``(step, proba)``: ``step(x, st, n, y, lr, wd, want)`` -> ``(probabilities before the step
    or None, new st)`` and ``proba(x, st, n)`` (``st``, ``n``: the scaler's statistics as in
    :func:`_row_code`, None and 0 without a scaler or before its first update).
    """
    L = depth - 1
    X = [f"x{j}" for j in range(f)]
    ST = [f"mu{j}" for j in range(f)] + [f"q{j}" for j in range(f)]
    join = ", ".join
    src = ["def make(flat, grad, rows_in, layers, acts, grad_w, grad_b, masks):"]
    bind = ["rows_flat = rows_in.reshape(-1)", "in1 = rows_in[1:]"]  # the learnt row, (1, f)
    bind += [f"{join(f'W{i}' for i in range(depth))}, = layers[0::2]",
             f"{join(f'b{i}' for i in range(depth))}, = layers[1::2]",
             f"{join(f'a{i}' for i in range(depth))}, = acts",
             f"{join(f'gw{i}' for i in range(depth))}, = grad_w",
             f"{join(f'gb{i}' for i in range(depth))}, = grad_b"]
    bind += [f"WT{i} = W{i}.T" for i in range(depth)] + [f"gc{i} = gb{i}[:, None]" for i in range(depth)]
    bind += [f"a{i}r = a{i}[1:]" for i in range(L)] + [f"a{i}v = a{i}[1]" for i in range(L)]
    if L:
        bind += [f"{join(f'm{i}' for i in range(L))}, = masks"]
    forward = []
    h = "rows_in"
    for i in range(depth):
        forward += [f"dot({h}, WT{i}, out=a{i})"]
        if i < L:
            forward += [f"add(a{i}, b{i}, out=a{i})", f"maximum(a{i}, ZERO, out=a{i})"]
        h = f"a{i}"
    forward += [f"({join(f'u{c}' for c in range(k))},), ({join(f'v{c}' for c in range(k))},) = a{L}.tolist()",
                f"{join(f'B{c}' for c in range(k))}, = b{L}.tolist()"]
    row0 = _src_softmax([f"u{c} + B{c}" for c in range(k)], "p")
    row1 = _src_softmax([f"v{c} + B{c}" for c in range(k)], "o")
    P = "[" + join(f"p{c}" for c in range(k)) + "]"
    step = ["def step(x, st, n, y, lr, wd, want):"]
    if scale:
        body = [f"{join(X)}, = x", f"{join(ST)}, = st", "if n:"]
        body += _src_indent(_src_standardise(f, "n", "r")) + ["else:"] + _src_indent([f"r{j} = x{j}" for j in range(f)])
        body += _src_welford(f) + _src_standardise(f, "n1", "z")
        body += [f"rows_flat[...] = [{join([f'r{j}' for j in range(f)] + [f'z{j}' for j in range(f)])}]"]
    else:
        body = ["rows_flat[...] = x + x"]
    body += forward + row0 + row1
    body += ["G = [" + join(f"-lr * o{c}" for c in range(k)) + "]", "G[y] += lr", f"gb{L}[...] = G"]
    for i in range(L, -1, -1):
        body += [f"dot(gc{i}, {f'a{i - 1}r' if i else 'in1'}, out=gw{i})"]
        if i:  # with the weights before this step; ReLU's derivative (the activation is >= 0), 0 at 0 as torch
            body += [f"dot(gb{i}, W{i}, out=gb{i - 1})", f"multiply(gb{i - 1}, sign(a{i - 1}v, out=m{i - 1}), out=gb{i - 1})"]
    body += ["if wd:", "    multiply(flat, 1.0 - lr * wd, out=flat)", "add(flat, grad, out=flat)"]
    body += [f"return ({P} if want else None), " + (f"[{join(ST)}]" if scale else "None")]
    proba = ["def proba(x, st, n):"]
    if scale:
        pbody = [f"{join(X)}, = x", "if n:"]
        pbody += _src_indent([f"{join(ST)}, = st"] + _src_standardise(f, "n", "z"))
        pbody += ["else:"] + _src_indent([f"z{j} = x{j}" for j in range(f)])
        pbody += [f"rows_flat[...] = [{join([f'z{j}' for j in range(f)] * 2)}]"]
    else:
        pbody = ["rows_flat[...] = x + x"]
    pbody += forward + row0 + [f"return {P}"]
    src += _src_indent(bind + [""] + step + _src_indent(body) + [""] + proba + _src_indent(pbody)
                       + ["", "return step, proba"])
    source = "\n".join(src) + "\n"
    space = {"sqrt": math.sqrt, "exp": math.exp, "dot": np.dot, "add": np.add, "maximum": np.maximum,
             "multiply": np.multiply, "sign": np.sign, "ZERO": _ZERO}
    exec(compile(source, f"<streamlearn numpy one-row step f={f} k={k} depth={depth}>", "exec"), space)  # noqa: S102
    make = space["make"]
    make.source = source
    return make


def _first(S: np.ndarray, known: int) -> np.ndarray:
    """The softmax over the first ``known`` outputs, from the softmax over all of them."""
    if known == S.shape[1]:
        return S
    P = S[:, :known]
    return P / P.sum(axis=1, keepdims=True)


def _offset(base, view) -> int:
    """Element offset of ``view`` in the flat tensor ``base``."""
    return (view.data_ptr() - base.data_ptr()) // base.element_size()


def _offset_np(base: np.ndarray, view: np.ndarray) -> int:
    """Element offset of the numpy ``view`` in the flat array ``base``."""
    return (view.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // base.itemsize
