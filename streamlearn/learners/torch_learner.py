"""TorchLearner: a river classifier (or, with a regression loss, regressor) whose whole model is one flat float32 tensor."""

from __future__ import annotations

import numbers

import numpy as np
import torch
from river import base

from streamlearn.errors import BadRecordError, ConfigError
from streamlearn.learners.base import (
    FeatureMixin,
    NotInitializedError,
    as_label_list,
    resolve_device,
)
from streamlearn.learners.class_labels import ClassLabelsMixin
from streamlearn.learners.fast import MAX_PARAMS as FAST_MAX_PARAMS
from streamlearn.learners.fast import NOT_A_ROW, NumpyPath
from streamlearn.learners.losses import get_loss, is_regression_loss
from streamlearn.learners.nets import ARCHITECTURES, build_net
from streamlearn.learners.optim import make_optimizer
from streamlearn.learners.preprocessing import OnlineScaler
from streamlearn.learners.schedule import check_lr_decay, decayed_lr

__all__ = ["TorchLearner"]

OPTIMIZERS = ("sgd", "adam")


class TorchLearner(FeatureMixin, ClassLabelsMixin, base.MiniBatchClassifier):
    """Online neural classifier (logistic regression, MLP, small 1-D CNN) trained with torch; with a
    regression loss (``loss="huber"`` or ``"squared"``) the same nets with one output, an online regressor.

    All parameters live in one flat float32 leaf tensor ``_w`` of shape (d,); the layers are
    views into it (see :mod:`streamlearn.learners.nets`). ``get_flat``/``set_flat`` move whole
    models; ``functional()`` and ``make_optimizer`` give the vectorized simulator the very path
    the learner trains through, so m learners equal one (m, d) tensor trained with
    ``torch.func.vmap`` (SGD and Adam act elementwise). For speed, logreg with cross-entropy
    computes its gradient in closed form instead of through autograd, and plain SGD steps
    without torch.optim's per-call overhead: the same math, equal up to float rounding. Small
    ``logreg``/``mlp`` models on CPU with plain SGD and cross-entropy learn in numpy instead, and a batch
    of one row in a few microseconds (:mod:`streamlearn.learners.fast`), again equal up to float rounding.
    ``predict_proba_learn_many`` is test-then-train in one forward pass.

    Parameters
    ----------
    arch
        ``"logreg"``, ``"mlp"`` or ``"cnn"``.
    hidden
        Hidden layer sizes (mlp) or conv channels per layer (cnn); ignored by logreg.
    n_features
        Number of features; the names are then ``0 .. n_features-1`` (positional numpy input).
    features
        Feature names, in order. With either this or ``n_features`` (and ``classes``, see below)
        the model is built at construction; otherwise when the first batch is learnt, with the
        order described in :class:`~streamlearn.learners.base.FeatureMixin` (sorted dict keys).
    classes
        The labels, in order: ``classes_[i]`` is output i. None: a binary problem whose two
        labels are taken as they first appear (``[False, True]`` at once for bool labels); a
        third label raises :class:`~streamlearn.errors.BadRecordError`. Nodes that are averaged
        must share one layout, so for them pass ``classes`` (and ``features``/``n_features``).
    optimizer, lr, momentum, weight_decay
        ``"sgd"`` (with ``momentum``) or ``"adam"`` (``momentum`` must be 0), as in ``torch.optim``.
    lr_decay
        None (default): a constant step size ``lr``. A number ``tau`` > 0 (steps): the step size
        decays while the stream is stable, ``lr / sqrt(1 + (t - t_reset) / tau)`` at step ``t``
        (:func:`~streamlearn.learners.schedule.decayed_lr`), and ``restart_schedule()`` (called
        by the node service and the simulator when the drift detector sees the error rise) sets
        ``t_reset`` to the current step. The step count and ``t_reset`` are the learner's state
        (``n_steps_``, ``t_reset_``): ``clone()`` starts afresh, checkpoints keep them.
    loss
        Classification: ``"cross_entropy"`` or ``"hinge"`` (multi-class margin loss). Regression:
        ``"squared"`` or ``"huber"`` (:mod:`streamlearn.learners.losses`): the model then has one
        output, learns float targets (``classes`` must be None) and ``predict_one`` gives a float;
        ``task_`` says which (``"classification"`` or ``"regression"``). Huber's step is bounded;
        squared's grows with the error, so with many features it needs a smaller ``lr`` (at 0.05 an
        MLP on Beijing air's 25 features diverged at two of twelve stations; 0.01-0.02 did not).
    scale_target
        Regression only: standardise the target online (running mean and variance, as river's
        ``preprocessing.TargetStandardScaler``): the net learns ``(y - mean) / std`` and predicts
        ``mean + std * output``. Real targets span orders of magnitude (PM2.5 0-900, CO 100-10,000)
        and a squared loss on raw units would need a step size per data set; standardised, one
        ``lr`` fits all, and Huber's threshold (1.0) is in standard deviations. The statistics
        (mean, variance, count) end the flat vector, after the feature scaler's, and are
        averaged with the model like them.
    scale
        Standardise features online (:class:`~streamlearn.learners.preprocessing.OnlineScaler`):
        predict with the current statistics; learn = update them with the batch, transform, step.
        The statistics (mean, variance, count) are buffers of the model: they follow the
        parameters in the flat vector, so a sync averages them with the weights and every synced
        node standardises its inputs the way the averaged weights expect. Divergences and norms
        span the parameters only (the first ``n_params`` entries).
    kernel_size
        Convolution width for ``cnn`` (odd).
    seed
        Seeds the initial parameters: same seed, same start (also across ``clone()``).
        None: a random start.
    device
        None → cuda when available, else cpu.

    Unfitted models: while the features are unknown (no ``features``/``n_features``, nothing
    learnt yet) or no label is known yet, ``predict_proba_one`` returns ``{}`` and
    ``predict_one`` None, like river; the ``*_many`` forms give an array of None and a (B, 0)
    matrix. Predicting never changes the learner. With one of the two lazy labels known, its
    probability is 1.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(2000, 2)).astype(np.float32)
    >>> y = X[:, 0] + X[:, 1] > 0
    >>> model = TorchLearner("logreg", n_features=2, classes=[False, True], lr=0.5, seed=1, device="cpu")
    >>> model.n_params
    6
    >>> for i in range(0, 2000, 20):
    ...     model.learn_many(X[i:i + 20], y[i:i + 20])
    >>> float((model.predict_many(X) == y).mean()) > 0.95
    True
    >>> model.predict_one({0: 1.0, 1: 2.0})
    True
    >>> model.clone().get_flat().equal(TorchLearner("logreg", n_features=2, classes=[False, True], seed=1).get_flat())
    True

    Regression: a noisy linear target far from zero, learnt with a squared loss.

    >>> t = 500.0 + 100.0 * (X[:, 0] - 2 * X[:, 1]) + rng.normal(scale=10.0, size=2000)
    >>> reg = TorchLearner("logreg", n_features=2, loss="squared", scale=True, lr=0.05, seed=1, device="cpu")
    >>> reg.task_, reg.n_flat  # 3 parameters, 5 feature statistics, 3 target statistics
    ('regression', 11)
    >>> for i in range(0, 2000, 20):
    ...     reg.learn_many(X[i:i + 20], t[i:i + 20])
    >>> float(np.abs(reg.predict_many(X) - t).mean()) < 15  # the noise alone gives 8
    True
    >>> isinstance(reg.predict_one({0: 1.0, 1: 2.0}), float)
    True
    """

    def __init__(
        self,
        arch: str = "logreg",
        hidden: tuple[int, ...] = (32,),
        n_features: int | None = None,
        features: list | None = None,
        classes: list | None = None,
        optimizer: str = "sgd",
        lr: float = 0.05,
        momentum: float = 0.0,
        weight_decay: float = 0.0,
        loss: str = "cross_entropy",
        scale: bool = False,
        kernel_size: int = 3,
        seed: int | None = None,
        device: str | None = None,
        lr_decay: float | None = None,
        scale_target: bool = True,
    ):
        self.arch = arch
        self.hidden = hidden
        self.n_features = n_features
        self.features = features
        self.classes = classes
        self.optimizer = optimizer
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.loss = loss
        self.scale = scale
        self.kernel_size = kernel_size
        self.seed = seed
        self.device = device
        self.lr_decay = lr_decay
        self.scale_target = scale_target
        self._check_hyperparameters()
        self.device_ = resolve_device(device)
        self._loss_fn = get_loss(loss)
        self.task_ = "regression" if is_regression_loss(loss) else "classification"
        self._init_features(features, n_features)
        self._target_scaler = None
        if self.task_ == "regression":
            if classes is not None:
                raise ConfigError(f"classes: a regression model (loss={loss!r}) has no classes, got {classes!r}")
            self.classes_, self._n_out = [], 1
            self._set_label_arrays()
            if scale_target:
                self._target_scaler = OnlineScaler(device=self.device_)
        else:
            self._init_classes(classes)
        self._scaler = OnlineScaler(device=self.device_) if scale else None
        self._net = None
        self._w: torch.Tensor | None = None
        self._opt = None  # torch.optim's, or PlainSGD
        self._closed_form = False
        self._fast: NumpyPath | None = None
        self.n_samples_seen_ = 0
        self.n_steps_ = 0
        self.t_reset_ = 0  # step of the last restart of the step-size schedule (lr_decay)
        if self.feature_names_ is not None:
            self._build()

    def _check_hyperparameters(self) -> None:
        # a custom module factory (streamlearn.learners.custom.ModuleFactory) builds its own net
        if not (hasattr(self.arch, "build_net") or self.arch in ARCHITECTURES):
            raise ConfigError(f"arch: one of {ARCHITECTURES}, got {self.arch!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer: one of {OPTIMIZERS}, got {self.optimizer!r}")
        for name in ("lr", "momentum", "weight_decay"):
            v = getattr(self, name)
            if not isinstance(v, numbers.Real) or isinstance(v, bool) or not np.isfinite(v) or v < 0:
                raise ConfigError(f"{name}: need a finite number >= 0, got {v!r}")
        if self.lr == 0:
            raise ConfigError("lr: need lr > 0")
        check_lr_decay(self.lr_decay)
        if self.optimizer == "adam" and self.momentum:
            raise ConfigError("momentum: only for optimizer='sgd' (Adam has its own betas)")
        if self.seed is not None and (not isinstance(self.seed, numbers.Integral) or isinstance(self.seed, bool)):
            raise ConfigError(f"seed: need an int or None, got {self.seed!r}")
        if not isinstance(self.scale_target, (bool, np.bool_)):
            raise ConfigError(f"scale_target: need True or False, got {self.scale_target!r}")

    # -- parameters ----------------------------------------------------------------------------------

    def _on_features_fixed(self) -> None:
        self._build()

    def _build(self) -> None:
        if hasattr(self.arch, "build_net"):  # a custom module factory: the module sees names and labels too
            self._net = self.arch.build_net(list(self.feature_names_), self._n_out, self.classes)
        else:
            self._net = build_net(self.arch, len(self.feature_names_), self._n_out, self.hidden, self.kernel_size)
        gen = torch.Generator()
        if self.seed is None:
            gen.seed()
        else:
            gen.manual_seed(int(self.seed))
        self._w = self._net.init(gen).to(self.device_).requires_grad_(True)
        self._opt = self.make_optimizer([self._w])
        # Logistic regression with cross-entropy has a closed-form gradient: no autograd graph
        # (its backward pass costs ~100 us per step on CPU, whatever the batch size).
        self._closed_form = self.arch == "logreg" and self.loss == "cross_entropy"
        if self._closed_form:
            views = self._net.views(self._w.detach())  # live: steps and set_flat write in place
            self._linear = (views["linear.weight"], views["linear.bias"])
            self._eye = torch.eye(self._n_out, device=self.device_)  # row i: one-hot label i
        self._fast = NumpyPath(self) if self._numpy_path_fits() else None

    def _numpy_path_fits(self) -> bool:
        """Small CPU models with plain SGD and cross-entropy learn in numpy (:mod:`streamlearn.learners.fast`):
        the same arithmetic without torch's per-call overhead, which is most of the cost at small batches."""
        return (self.device_.type == "cpu" and self.arch in ("logreg", "mlp") and self.optimizer == "sgd"
                and not self.momentum and self.loss == "cross_entropy" and self._net.d <= FAST_MAX_PARAMS)

    def _require_built(self) -> None:
        if self._w is None:
            raise NotInitializedError(
                "TorchLearner has no parameters yet: pass n_features or features, or learn a batch first"
            )

    @property
    def scaler_(self) -> OnlineScaler | None:
        """The learner's :class:`OnlineScaler` (``scale=True``), else None; ``scaler_.clone()``
        gives a simulator a fresh one with the same settings."""
        return self._scaler

    @property
    def target_scaler_(self) -> OnlineScaler | None:
        """Regression with ``scale_target``: the :class:`OnlineScaler` of the target (one column), else None."""
        return self._target_scaler

    @property
    def optimizer_(self):
        """The optimizer over the flat parameter tensor (None before the parameters exist): torch.optim's,
        whose ``state_dict()`` holds momentum and Adam's moments for checkpoints, or for plain SGD a
        :class:`~streamlearn.learners.optim.PlainSGD` (no state)."""
        return self._opt

    @property
    def n_params(self) -> int:
        """The number of trainable parameters: the first ``n_params`` entries of the flat vector."""
        self._require_built()
        return self._net.d

    @property
    def n_flat(self) -> int:
        """d, the length of the flat vector: the parameters, then the scaler's statistics (``scale=True``),
        then the target's (regression with ``scale_target``)."""
        self._require_built()
        return self._net.d + self._n_stats()

    def _n_stats(self) -> int:
        n = OnlineScaler.flat_size(len(self.feature_names_)) if self._scaler is not None else 0
        return n + (OnlineScaler.flat_size(1) if self._target_scaler is not None else 0)

    @property
    def params_(self) -> dict[str, torch.Tensor]:
        """The layers' parameters by name, as views into the flat vector."""
        self._require_built()
        return self._net.views(self._w.detach())

    @property
    def live_params(self) -> torch.Tensor | None:
        """The live flat parameter tensor (no copy; None before the model is built), which steps and
        :meth:`set_flat` write in place: for readers that keep a view on it (a node's divergence check).
        Never write to it."""
        return getattr(self, "_w", None)

    def get_flat(self, copy: bool = True) -> torch.Tensor:
        """A copy of the flat vector (float32, shape (n_flat,), on the learner's device): the
        parameters, then the scaler's statistics when ``scale=True``.

        ``copy=False`` without a scaler gives the live parameters instead (no copy of d floats):
        read them at once, they change with the next step, and never write to them (use ``set_flat``).
        """
        self._require_built()
        w = self._w.detach()
        stats = []
        if self._scaler is not None:
            stats.append(self._scaler.get_flat(len(self.feature_names_)).to(w.device))
        if self._target_scaler is not None:
            stats.append(self._target_scaler.get_flat(1).to(w.device))
        if stats:
            return torch.cat([w, *stats])
        return w.clone() if copy else w

    def set_flat(self, v) -> None:
        """Copy ``v`` (tensor or array, shape (n_flat,)) into the parameters (in place) and the scaler.

        The optimizer state (momentum, Adam moments) is kept.
        """
        self._require_built()
        v = torch.as_tensor(v)
        if v.shape != (self.n_flat,):
            raise ConfigError(f"set_flat: expected a vector of size {self.n_flat}, got shape {tuple(v.shape)}")
        with torch.no_grad():
            self._w.copy_(v[: self._net.d])
        at = self._net.d
        if self._scaler is not None:
            end = at + OnlineScaler.flat_size(len(self.feature_names_))
            self._scaler.set_flat(v[at:end])
            at = end
        if self._target_scaler is not None:
            self._target_scaler.set_flat(v[at:])

    def functional(self):
        """``(forward, loss)``: ``forward(w[d], X[B, f]) -> logits[B, k]`` (pure, vmap-able) and
        ``loss(logits, y_idx) -> mean loss``; X must already be scaled when ``scale=True``.
        Regression: ``k = 1`` and ``loss(out, y)`` takes float targets, standardised by
        ``target_scaler_`` when there is one."""
        self._require_built()
        return self._net.forward, self._loss_fn

    def bank_gradient(self):
        """``grad(W[m, d], X[m, B, f], y[m, B]) -> (logits, G[m, d])``: the row-wise gradients of the mean
        cross-entropy written out (:meth:`Net.cross_entropy_grad <streamlearn.learners.nets.Net.cross_entropy_grad>`),
        for a simulator's bank; None where autograd is needed (another loss, a cnn, a custom module)."""
        self._require_built()
        closed = self.loss == "cross_entropy" and getattr(self._net, "closed_form", False)
        return self._net.cross_entropy_grad if closed else None

    @property
    def lr_(self) -> float:
        """The step size of the next step: ``lr``, or with ``lr_decay`` the decayed one."""
        return decayed_lr(self.lr, self.n_steps_, self.t_reset_, self.lr_decay)

    def restart_schedule(self) -> None:
        """Restart the step-size schedule: the next step takes ``lr`` again, then it decays anew.

        Sets ``t_reset_`` to the current step count (a no-op for the step size without ``lr_decay``).

        Examples
        --------
        >>> import numpy as np
        >>> X, y = np.zeros((4, 2), dtype=np.float32), [0, 1, 0, 1]
        >>> model = TorchLearner("logreg", n_features=2, classes=[0, 1], lr=0.4, lr_decay=2, seed=0, device="cpu")
        >>> for _ in range(6):
        ...     model.learn_many(X, y)
        >>> model.n_steps_, round(model.lr_, 3)  # 0.4 / sqrt(1 + 6 / 2)
        (6, 0.2)
        >>> model.restart_schedule()
        >>> model.t_reset_, model.lr_
        (6, 0.4)
        """
        self.t_reset_ = self.n_steps_

    def make_optimizer(self, params: list[torch.Tensor]):
        """A fresh optimizer over ``params`` with this learner's hyperparameters: ``torch.optim``'s, or for
        plain SGD :class:`~streamlearn.learners.optim.PlainSGD` (same steps, without importing torch._dynamo)."""
        return make_optimizer(params, self.optimizer, self.lr, self.momentum, self.weight_decay)

    # -- learning ------------------------------------------------------------------------------------

    def _tensor(self, M: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(M).to(self.device_)

    def learn_many(self, X, y) -> None:
        """One optimizer step on the mean loss of the mini-batch (X: matrix, dicts or dataframe)."""
        if self.task_ == "regression":
            self._learn_regression(X, y, want_pred=False)
        else:
            self._learn(X, y, want_proba=False)

    def encode_labels(self, y) -> np.ndarray:
        """Classification: labels as int64 indices into ``classes_`` (see :class:`ClassLabelsMixin`).
        Regression: targets as a float32 array; a target that is not a finite number raises
        :class:`~streamlearn.errors.BadRecordError` naming its row and value."""
        if self.task_ != "regression":
            return super().encode_labels(y)
        if isinstance(y, np.ndarray) and y.dtype.kind in "iuf":
            t = y.reshape(-1).astype(np.float32)
        else:
            values = as_label_list(y)
            t = np.empty(len(values), dtype=np.float32)
            for i, v in enumerate(values):
                if isinstance(v, (bool, np.bool_)) or not isinstance(v, (numbers.Real, np.number)):
                    raise BadRecordError("target is not a number (a regression model learns float labels)",
                                         row=i, column="y", value=v)
                t[i] = v
        if not np.isfinite(t).all():
            i = int(np.flatnonzero(~np.isfinite(t))[0])
            raise BadRecordError("target is not a finite number", row=i, column="y", value=float(t[i]))
        return t

    def predict_learn_many(self, X, y) -> np.ndarray:
        """Regression's test-then-train in one call: ``predict_many(X)``, then ``learn_many(X, y)``.

        Returns the predictions (float32, (B,)) the model gave ``X`` *before* this step.

        >>> import numpy as np
        >>> X = np.array([[1.0, 2.0], [-1.0, 0.5]], dtype=np.float32)
        >>> a = TorchLearner("mlp", hidden=(4,), n_features=2, loss="huber", seed=0, device="cpu")
        >>> b = a.clone()
        >>> bool(np.allclose(a.predict_learn_many(X, [3.0, -1.0]), b.predict_many(X)))
        True
        """
        if self.task_ != "regression":
            raise ConfigError(f"predict_learn_many: for regression models; this one has loss={self.loss!r} "
                              "(use predict_proba_learn_many)")
        return self._learn_regression(X, y, want_pred=True)

    def _to_target(self, out: torch.Tensor) -> torch.Tensor:
        """Net outputs (B, 1) in target units (B,): the target scaler's statistics undone."""
        out = out[:, 0]
        sc = self._target_scaler
        if sc is None or sc.mean_ is None:
            return out
        std = torch.sqrt(sc.var_)
        std = torch.where(std > 0, std, 1.0)
        return (sc.mean_ + std * out.double()).to(out.dtype)

    def _learn_regression(self, X, y, want_pred: bool) -> np.ndarray | None:
        M = self.encode_features(X)
        t = self.encode_labels(y)
        if len(M) != len(t):
            raise ConfigError(f"learn_many: {len(M)} samples but {len(t)} targets")
        if not len(M):
            return np.zeros(0, dtype=np.float32) if want_pred else None
        Xt, yt = self._tensor(M), self._tensor(t)
        pred = None
        if self._scaler is not None:
            if want_pred:  # with the statistics before this batch, as predict_many does
                with torch.no_grad():
                    pred = self._to_target(self._net.forward(self._w, self._scaler.transform(Xt)))
            Xt = self._scaler.update(Xt).transform(Xt)
        self._w.grad = None
        out = self._net.forward(self._w, Xt)
        if want_pred and pred is None:
            pred = self._to_target(out.detach())
        if self._target_scaler is not None:
            yt = self._target_scaler.update(yt[:, None]).transform(yt[:, None])[:, 0]
        self._loss_fn(out, yt).backward()
        self._apply_step(self._w.grad)
        self.n_samples_seen_ += len(M)
        self.n_steps_ += 1
        return pred.cpu().numpy() if want_pred else None

    def predict_proba_learn_many(self, X, y) -> np.ndarray:
        """Test-then-train in one call: ``predict_proba_many(X)``, then ``learn_many(X, y)``.

        Returns the probabilities the model gave ``X`` *before* this step, exactly as
        ``predict_proba_many`` would have (same shape and columns, (B, 0) while unfitted).
        Without ``scale`` the forward pass that predicts is the one the step trains
        through, so a test-then-train step costs one forward instead of two.

        Examples
        --------
        >>> import numpy as np
        >>> X = np.array([[1.0, 2.0], [-1.0, 0.5]], dtype=np.float32)
        >>> a = TorchLearner("logreg", n_features=2, classes=[0, 1], seed=0, device="cpu")
        >>> b = a.clone()
        >>> P = a.predict_proba_learn_many(X, [1, 0])
        >>> bool(np.array_equal(P, b.predict_proba_many(X)))
        True
        >>> b.learn_many(X, [1, 0])
        >>> bool(a.get_flat().equal(b.get_flat()))
        True
        """
        fast = self._fast  # (only classifiers have one)
        if fast is not None and fast.row_shape is not None:
            P = fast.row_learn(X, y, True)  # the hot path at batch 1, as in _learn
            if P is not NOT_A_ROW:
                return P
        self._require_classifier("predict_proba_learn_many")
        return self._learn(X, y, want_proba=True)

    def _require_classifier(self, what: str) -> None:
        if self.task_ == "regression":
            raise ConfigError(f"{what}: a regression model (loss={self.loss!r}) gives no class probabilities")

    def _learn(self, X, y, want_proba: bool) -> np.ndarray | None:
        fast = self._fast
        if fast is not None and fast.row_shape is not None:
            # The hot path of test-then-train at batch 1 (a float32 row of a known class): checks and
            # conversions of a few hundred nanoseconds, else the general path below.
            P = fast.row_learn(X, y, want_proba)
            if P is not NOT_A_ROW:
                return P
        # What predict_proba_many would give before this batch: nothing while unfitted, else
        # the softmax over the labels known so far (this batch may add one).
        known = len(self.classes_) if self._w is not None else 0
        M = self.encode_features(X)
        yi = self.encode_labels(y)
        if len(M) != len(yi):
            raise ConfigError(f"learn_many: {len(M)} samples but {len(yi)} labels")
        requested, want_proba = want_proba, want_proba and known > 0
        if not len(M):
            return np.zeros((0, known), dtype=np.float32) if requested else None
        if fast is not None and M.shape == fast.row_shape and known == self._n_out:
            return self._step_one(M.tolist()[0], int(yi[0]), requested)  # as the hot path (dicts, lists)
        if fast is not None:
            P = fast.learn(M, yi, want_proba, known, **self._step_settings())
            self.n_samples_seen_ += len(M)
            self.n_steps_ += 1
            if not requested:
                return None
            return P if want_proba else np.zeros((len(M), 0), dtype=np.float32)
        Xt = self._tensor(M)
        P = None
        if self._scaler is not None:
            if want_proba:  # predicted with the statistics before this batch, as predict_proba_many does
                with torch.no_grad():
                    P = self._softmax(self._net.forward(self._w, self._scaler.transform(Xt)), known)
            Xt = self._scaler.update(Xt).transform(Xt)
        yt = self._tensor(yi)
        if self._closed_form:
            weight, bias = self._linear
            logits = torch.addmm(bias, Xt, weight.t())  # F.linear, on views that need no autograd
            S = torch.softmax(logits, dim=-1)
            grad = _logreg_cross_entropy_grad(S, self._eye[yt], Xt)
            if want_proba and P is None:
                P = S if known == S.shape[1] else self._softmax(logits, known)
        else:
            self._w.grad = None
            logits = self._net.forward(self._w, Xt)
            self._loss_fn(logits, yt).backward()
            grad = self._w.grad
            if want_proba and P is None:
                P = self._softmax(logits.detach(), known)
        self._apply_step(grad)
        self.n_samples_seen_ += len(M)
        self.n_steps_ += 1
        if not requested:
            return None
        return P.cpu().numpy() if want_proba else np.zeros((len(M), 0), dtype=np.float32)

    def _step_one(self, x: list, yi: int, want_proba: bool) -> np.ndarray | None:
        """One row through :meth:`NumpyPath.step_one` (a finite row, a class index, every class known)."""
        group = self._opt.param_groups[0]
        if self.lr_decay is not None:  # the schedule's step size for this step (t = n_steps_ before it)
            group["lr"] = decayed_lr(self.lr, self.n_steps_, self.t_reset_, self.lr_decay)
        P = self._fast.step_one(x, yi, want_proba, group["lr"], group["weight_decay"])
        self.n_samples_seen_ += 1
        self.n_steps_ += 1
        return np.array([P], dtype=np.float32) if want_proba else None

    def _softmax(self, logits: torch.Tensor, known: int) -> torch.Tensor:
        return torch.softmax(logits[:, :known], dim=-1)

    def _step_settings(self) -> dict:
        """``lr`` and ``weight_decay`` of this step, as the optimizer holds them (a caller may have set its lr)."""
        group = self._opt.param_groups[0]
        if self.lr_decay is not None:  # the schedule's step size for this step (t = n_steps_ before it)
            group["lr"] = decayed_lr(self.lr, self.n_steps_, self.t_reset_, self.lr_decay)
        return {"lr": group["lr"], "weight_decay": group["weight_decay"]}

    def _apply_step(self, grad: torch.Tensor) -> None:
        """``self._opt.step()`` with ``grad`` (plain SGD: :class:`~streamlearn.learners.optim.PlainSGD`, the same
        arithmetic as torch.optim.SGD without its per-call overhead)."""
        self._step_settings()
        self._w.grad = grad
        self._opt.step()

    def learn_one(self, x, y) -> None:
        """A mini-batch of one."""
        self.learn_many(x, [y])

    # -- prediction ----------------------------------------------------------------------------------

    def _forward_frozen(self, X) -> torch.Tensor:
        """The net's output on ``X``, scaled as in training, without gradients (the model must have parameters)."""
        M, _ = self._to_matrix(X, fix=False)
        Xt = self._tensor(M)
        if self._scaler is not None:
            Xt = self._scaler.transform(Xt)
        with torch.no_grad():
            return self._net.forward(self._w, Xt)

    def _predict_targets(self, X) -> np.ndarray | None:
        """Regression: (B,) float32 predictions, or None while the model has no parameters."""
        if self._w is None:
            return None
        with torch.no_grad():
            return self._to_target(self._forward_frozen(X)).cpu().numpy()

    def _proba(self, X) -> np.ndarray | None:
        """(B, len(classes_)) probabilities, or None while unfitted."""
        self._require_classifier("predict_proba")
        if self._w is None or not self.classes_:
            return None
        if self._fast is not None:
            M = self._to_matrix(X, fix=False)[0]
            if M.shape == self._fast.row_shape and len(self.classes_) == self._n_out:  # as step_one predicts
                return np.array([self._fast.proba_one(M.tolist()[0])], dtype=np.float32)
            return self._fast.proba(M, len(self.classes_))
        logits = self._forward_frozen(X)[:, : len(self.classes_)]
        return torch.softmax(logits, dim=-1).cpu().numpy()

    def _batch_len(self, X) -> int:
        return len(self._to_matrix(X, fix=False)[0])

    def predict_proba_many(self, X) -> np.ndarray:
        """Probabilities (B, len(classes_)), columns in ``classes_`` order (float32)."""
        P = self._proba(X)
        return np.zeros((self._batch_len(X), 0), dtype=np.float32) if P is None else P

    def predict_many(self, X) -> np.ndarray:
        """Most probable labels (B,), as a numpy array; regression: the predicted targets (float32)."""
        if self.task_ == "regression":
            pred = self._predict_targets(X)
            return np.full(self._batch_len(X), None, dtype=object) if pred is None else pred
        P = self._proba(X)
        if P is None:
            return np.full(self._batch_len(X), None, dtype=object)
        return self._classes_arr[P.argmax(axis=1)]

    def predict_proba_one(self, x) -> dict:
        P = self._proba(x)
        return {} if P is None else dict(zip(self.classes_, P[0].tolist()))

    def predict_one(self, x):
        if self.task_ == "regression":
            pred = self._predict_targets(x)
            return None if pred is None else float(pred[0])
        P = self._proba(x)
        return None if P is None else self.classes_[int(P[0].argmax())]

    @property
    def _multiclass(self) -> bool:
        return True


def _logreg_cross_entropy_grad(S: torch.Tensor, onehot: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """Flat gradient (weight (k, f) then bias (k,)) of the mean softmax cross-entropy of a
    linear layer, from its softmax ``S`` (B, k), the one-hot labels (B, k) and the inputs
    ``X`` (B, f): ``G = (S - onehot) / B``, ``dW = G^T X``, ``db = sum_b G``."""
    G = (S - onehot).div_(len(S))
    return torch.cat([(G.t() @ X).reshape(-1), G.sum(0)])
