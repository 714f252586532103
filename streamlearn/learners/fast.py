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

import numpy as np

__all__ = ["MAX_PARAMS", "NumpyPath", "forward_softmax", "sgd_logreg", "sgd_mlp", "scaler_update",
           "scaler_transform"]

#: Models up to this many parameters take the numpy path on CPU.
MAX_PARAMS = 20_000


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax (float32), shifted by the row maximum as torch does."""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    e /= e.sum(axis=1, keepdims=True)
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
    gW, gb = G.T @ X, G.sum(axis=0)
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
        grads.append((i, G.T @ inp, G.sum(axis=0)))
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
    bmean = Xd.mean(axis=0)
    dev = Xd - bmean
    total = n + b
    delta = bmean - mean
    mean += delta * (b / total)
    m2 += (dev * dev).sum(axis=0) + delta * delta * (n * b / total)


def scaler_transform(mean: np.ndarray, m2: np.ndarray, n, X: np.ndarray, with_std: bool = True) -> np.ndarray:
    """``X`` standardised with the statistics (float32): population std, a zero std taken as 1."""
    out = X - mean
    if with_std:
        with np.errstate(invalid="ignore"):  # a variance a hair below 0 (rounding of loaded statistics)
            std = np.sqrt(m2 / max(n, 1))
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
        self._mean_t = self._mean = self._m2 = None
        self._bind()

    def _bind(self) -> None:
        """Views of the learner's parameters; again whenever they moved (a deep copy of the learner)."""
        w = self.learner._w.detach()
        self._ptr = w.data_ptr()
        flat = w.numpy()  # shares memory with the parameters
        self.layers = [flat[_offset(w, t):_offset(w, t) + t.numel()].reshape(t.shape)
                       for t in self.learner._net.views(w).values()]
        self._eye = np.eye(len(self.layers[-1]), dtype=np.float32)  # row i: one-hot label i

    def __deepcopy__(self, memo):
        # A copy of the learner has parameters and statistics of its own: bind to them at first use.
        import copy

        new = NumpyPath.__new__(NumpyPath)
        memo[id(self)] = new
        new.learner, new.linear = copy.deepcopy(self.learner, memo), self.linear
        new._mean_t = new._mean = new._m2 = new._ptr = None
        return new

    def _check(self) -> None:
        if self.learner._w.data_ptr() != self._ptr:
            self._bind()

    def _stats(self, f: int, create: bool):
        """``(mean, m2)``: float64 arrays that are the scaler's statistics (its tensors share their memory, so
        an update in place is the scaler's update); None before any update unless ``create``."""
        import torch

        sc = self.learner._scaler
        if sc._mean is None:
            if not create:
                return None
            mean, m2 = np.zeros(f), np.zeros(f)
        elif sc._mean is not self._mean_t:  # first use, or loaded by set_flat: take copies of our own
            mean, m2 = sc._mean.numpy().copy(), sc._m2.numpy().copy()
        else:
            return self._mean, self._m2
        sc._mean, sc._m2 = torch.from_numpy(mean), torch.from_numpy(m2)
        self._mean_t, self._mean, self._m2 = sc._mean, mean, m2
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


def _first(S: np.ndarray, known: int) -> np.ndarray:
    """The softmax over the first ``known`` outputs, from the softmax over all of them."""
    if known == S.shape[1]:
        return S
    P = S[:, :known]
    return P / P.sum(axis=1, keepdims=True)


def _offset(base, view) -> int:
    """Element offset of ``view`` in the flat tensor ``base``."""
    return (view.data_ptr() - base.data_ptr()) // base.element_size()
