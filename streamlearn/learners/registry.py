"""Learners by name, for the CLI and configs: ``make_learner(name, **params)``."""

from __future__ import annotations

import inspect

from river import forest, linear_model, naive_bayes, optim, tree

from streamlearn.errors import ConfigError
from streamlearn.learners.custom import is_custom, make_custom_learner, resolve
from streamlearn.learners.river_linear import RiverLinear
from streamlearn.learners.river_local import RiverLocal
from streamlearn.learners.torch_learner import TorchLearner

__all__ = ["LEARNERS", "is_averageable", "learner_family", "learner_params", "make_learner"]

LEARNERS: dict[str, str] = {
    "logreg": "multinomial logistic regression in torch (TorchLearner; averageable)",
    "mlp": "multi-layer perceptron in torch (TorchLearner; averageable)",
    "cnn": "small 1-D convolutional net over the features in torch (TorchLearner; averageable)",
    "river-logreg": "river LogisticRegression, weights as a flat vector (RiverLinear; averageable)",
    "river-perceptron": "river Perceptron, weights as a flat vector (RiverLinear; averageable)",
    "river-pa": "river passive-aggressive classifier, weights as a flat vector (RiverLinear; averageable)",
    "hoeffding-tree": "river HoeffdingTreeClassifier (RiverLocal; local only)",
    "naive-bayes": "river GaussianNB (RiverLocal; local only)",
    "adaptive-random-forest": "river ARFClassifier (RiverLocal; local only)",
}

_RIVER_LINEAR = {
    "river-logreg": linear_model.LogisticRegression,
    "river-perceptron": linear_model.Perceptron,
    "river-pa": linear_model.PAClassifier,
}
_RIVER_LOCAL = {
    "hoeffding-tree": tree.HoeffdingTreeClassifier,
    "naive-bayes": naive_bayes.GaussianNB,
    "adaptive-random-forest": forest.ARFClassifier,
}
_WRAPPER_PARAMS = {"n_features", "features", "classes"}


def make_learner(name: str, **params):
    """A fresh learner by name (see ``LEARNERS``), or your own model as ``"package.module:factory"``.

    A factory is a torch ``nn.Module`` factory ``factory(n_features, n_classes) -> nn.Module``
    (logits; averageable, takes TorchLearner's arguments) or a river classifier (class, or a
    callable with no arguments; local only): see :mod:`streamlearn.learners.custom`.

    Torch names take :class:`TorchLearner`'s arguments. River names take the wrapper's
    ``n_features``/``features`` (and ``classes`` for the linear ones: k > 2 labels learn
    one-vs-rest); every other parameter goes to the river model. ``seed`` goes to every river
    model that takes one (``adaptive-random-forest``), so a run is repeatable; the others draw no
    random numbers and ignore it. For ``river-logreg``, ``lr`` is a shortcut for
    ``optimizer=optim.SGD(lr), intercept_lr=lr``.

    >>> make_learner("mlp", hidden=(8,), n_features=4, classes=[0, 1], seed=0).n_params
    58
    >>> make_learner("hoeffding-tree", grace_period=50).model.grace_period
    50
    >>> is_averageable(make_learner("river-logreg")), is_averageable(make_learner("naive-bayes"))
    (True, False)
    >>> make_learner("adaptive-random-forest", seed=7).model.seed, make_learner("hoeffding-tree", seed=7).model.grace_period
    (7, 200)
    >>> make_learner("river-logreg", features=["a", "b"], classes=["x", "y", "z"]).n_params  # one-vs-rest: 3 * (2 + 1)
    9
    """
    if is_custom(name):
        return make_custom_learner(name, **params)
    if name not in LEARNERS:
        raise ConfigError(f"learner: one of {sorted(LEARNERS)} or package.module:factory, got {name!r}")
    try:
        if name in _RIVER_LINEAR or name in _RIVER_LOCAL:
            wrapper = {k: params.pop(k) for k in list(params) if k in _WRAPPER_PARAMS}
            seed = params.pop("seed", None)
            model_cls = _RIVER_LINEAR.get(name) or _RIVER_LOCAL[name]
            if seed is not None and "seed" in inspect.signature(model_cls).parameters:
                params["seed"] = _check_seed(seed)
            if name in _RIVER_LINEAR:
                if name == "river-logreg" and "lr" in params:
                    lr = params.pop("lr")
                    params.setdefault("optimizer", optim.SGD(lr))
                    params.setdefault("intercept_lr", lr)
                return RiverLinear(_RIVER_LINEAR[name](**params), **wrapper)
            if "classes" in wrapper:
                raise ConfigError(f"{name}: takes no 'classes' (river classifiers learn their labels)")
            return RiverLocal(_RIVER_LOCAL[name](**params), **wrapper)
        return TorchLearner(arch=name, **params)
    except TypeError as e:
        raise ConfigError(f"{name}: {e}") from None


def _check_seed(seed):
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"seed: need an int or None, got {seed!r}")
    return seed


def learner_family(name: str) -> str:
    """What ``make_learner(name)`` builds: ``"torch"`` (a TorchLearner: logreg, mlp, cnn, or a custom
    torch module factory), ``"river-linear"`` (averageable river linear models) or ``"river-local"``
    (river classifiers that learn locally, custom ones included). A ConfigError for an unknown name
    or a custom factory that cannot be imported.

    >>> learner_family("mlp"), learner_family("river-pa"), learner_family("naive-bayes")
    ('torch', 'river-linear', 'river-local')
    >>> learner_family("tests.learners.custom_models:tiny_mlp")
    'torch'
    """
    if is_custom(name):
        return "torch" if resolve(name).kind == "torch" else "river-local"
    if name not in LEARNERS:
        raise ConfigError(f"learner: one of {sorted(LEARNERS)} or package.module:factory, got {name!r}")
    return "river-linear" if name in _RIVER_LINEAR else "river-local" if name in _RIVER_LOCAL else "torch"


def learner_params(name: str) -> dict:
    """The parameters ``make_learner(name, ...)`` takes, with their defaults (for listings).

    >>> learner_params("mlp")["hidden"]
    (32,)
    """
    if name not in LEARNERS:
        raise ConfigError(f"learner: one of {sorted(LEARNERS)}, got {name!r}")
    cls = _RIVER_LINEAR.get(name) or _RIVER_LOCAL.get(name) or TorchLearner
    skip = {"self", "arch", "n_features", "features", "classes", "device"}
    return {
        p.name: p.default for p in inspect.signature(cls.__init__).parameters.values()
        if p.name not in skip and p.kind is p.POSITIONAL_OR_KEYWORD and p.default is not p.empty
    }


def is_averageable(learner) -> bool:
    """Whether the learner exposes its model as one flat vector (``get_flat``/``set_flat``)."""
    return callable(getattr(learner, "get_flat", None)) and callable(getattr(learner, "set_flat", None))
