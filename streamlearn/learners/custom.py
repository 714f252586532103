"""Your own model: ``--learner package.module:factory``, a torch ``nn.Module`` factory or a river classifier.

The factory
-----------
``package.module:factory`` names a callable in an importable module (the current directory is
tried too, so ``mymodels:make`` finds ``./mymodels.py``). It is one of:

- **a torch module factory**: ``factory(n_features: int, n_classes: int) -> torch.nn.Module``. The
  module maps a float32 batch ``(B, n_features)`` of features to ``(B, n_classes)`` *logits*
  (no softmax: the loss takes logits); output ``i`` is ``classes[i]``. The factory is given the
  parameters it names among ``n_features``, ``n_classes``, ``features`` (the feature names, in
  order) and ``classes`` (the labels, in order, or None when they are learnt as they come); every
  other parameter needs a default. An ``nn.Module`` subclass is called the same way. A factory
  with no parameters may return a fixed-size module.
  The module becomes a :class:`~streamlearn.learners.TorchLearner` (``arch`` is a
  :class:`ModuleFactory`): its parameters are one flat float32 vector, trained with the CLI's
  ``--lr``, ``--optimizer``, ``--weight-decay`` and ``--lr-decay``, standardised inputs with
  ``--scale`` (on by default), and averaged by every protocol like the built-in nets. torch is
  seeded with the learner's seed (``--seed``) right before the factory is called, so every node
  builds the same initial model. The module's buffers are constants (taken from the first build,
  not averaged); a module that changes a buffer in its forward pass (BatchNorm's running
  statistics) is refused: use ``LayerNorm`` or ``BatchNorm1d(track_running_stats=False)``. The
  module runs in train mode while learning and in eval mode while predicting (dropout).
  The simulator evaluates all nodes' models at once with ``torch.func.vmap`` over
  ``torch.func.functional_call``; a module that vmap cannot batch runs in a loop over the nodes
  instead (same numbers, slower), with a warning.
- **a river classifier**: a ``river.base.Classifier`` subclass, or a callable with no parameters
  returning a classifier (e.g. ``lambda: tree.HoeffdingTreeClassifier(grace_period=50)``). It
  learns locally (:class:`~streamlearn.learners.RiverLocal`): it has no flat parameters and
  cannot be averaged, so with it use ``--protocol nosync``.

Examples
--------
>>> import torch
>>> learner = make_custom_learner("tests.learners.custom_models:tiny_mlp", n_features=3, classes=[0, 1],
...                               seed=0, device="cpu")
>>> learner.n_params  # 3*8 + 8 + 8*2 + 2
50
>>> learner.get_flat().equal(make_custom_learner("tests.learners.custom_models:tiny_mlp", n_features=3,
...                                              classes=[0, 1], seed=0, device="cpu").get_flat())
True
>>> type(make_custom_learner("tests.learners.custom_models:hoeffding_tree").model).__name__
'HoeffdingTreeClassifier'
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import sys
import threading
import warnings
from dataclasses import dataclass

import torch
from river import base

from streamlearn.errors import ConfigError
from streamlearn.learners.nets import Param

__all__ = [
    "LAYOUT_ARGS",
    "CustomSpec",
    "ModuleFactory",
    "ModuleNet",
    "check_protocol",
    "is_custom",
    "make_custom_learner",
    "resolve",
]

LAYOUT_ARGS = ("n_features", "n_classes", "features", "classes")
_SEED_PROBE = 0  # seed of the one call that tells what a parameterless factory returns


def is_custom(name) -> bool:
    """Whether a ``--learner`` value names a factory (``package.module:factory``) rather than a built-in."""
    return isinstance(name, str) and ":" in name


@dataclass(frozen=True)
class CustomSpec:
    """A resolved ``package.module:factory``: the callable, what it builds and what it is given."""

    spec: str
    factory: object
    kind: str  # "torch" or "river"
    takes: tuple[str, ...]  # the layout arguments it is called with (torch factories)
    model_type: str  # the class of what it builds, for messages

    def call(self, seed: int | None, **layout):
        """Call the factory (torch seeded with ``seed`` when given, the global generator untouched)."""
        kwargs = {k: v for k, v in layout.items() if k in self.takes}
        return _call(self.spec, self.factory, kwargs, seed)


# torch's global generator is process-wide: nodes built in threads at once would interleave their draws
_SEEDED = threading.Lock()


def _call(spec: str, factory, kwargs: dict, seed: int | None):
    cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with _SEEDED, torch.random.fork_rng(devices=cuda):
        if seed is not None:
            torch.manual_seed(int(seed))
        try:
            return factory(**kwargs)
        except Exception as exc:  # the user's code: any error, named
            args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
            raise ConfigError(f"learner {spec!r}: the factory raised {type(exc).__name__}: {exc} "
                              f"(called as {getattr(factory, '__name__', 'factory')}({args}))") from exc


def _import(spec: str, module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        top = module_name.split(".")[0]
        if exc.name in (module_name, top) or module_name.startswith(f"{exc.name}."):
            cwd = os.getcwd()
            here = os.path.exists(os.path.join(cwd, top + ".py")) or os.path.isdir(os.path.join(cwd, top))
            if here and cwd not in sys.path:
                sys.path.insert(0, cwd)  # `streamlearn ... --learner mymodels:make` run next to mymodels.py
                return _import(spec, module_name)
            raise ConfigError(f"learner {spec!r}: no module named {module_name!r} (put it on PYTHONPATH, "
                              f"pip install it, or run from the folder that holds it)") from None
        raise ConfigError(f"learner {spec!r}: importing module {module_name!r} failed: "
                          f"no module named {exc.name!r} (a module it imports)") from None
    except Exception as exc:
        raise ConfigError(f"learner {spec!r}: importing module {module_name!r} raised "
                          f"{type(exc).__name__}: {exc}") from exc


@functools.lru_cache(maxsize=64)
def resolve(spec: str) -> CustomSpec:
    """Import ``package.module:factory`` and tell what it builds; a ConfigError names what is wrong.

    >>> resolve("tests.learners.custom_models:tiny_mlp").takes
    ('n_features', 'n_classes')
    >>> resolve("tests.learners.custom_models:hoeffding_tree").kind
    'river'
    >>> resolve("tests.learners.custom_models:nothing_here")
    Traceback (most recent call last):
    ...
    streamlearn.errors.ConfigError: learner 'tests.learners.custom_models:nothing_here': module 'tests.learners.custom_models' has no attribute 'nothing_here' (callables defined there: ...)
    """
    module_name, _, attr = (s.strip() for s in spec.partition(":"))
    if not module_name or not attr or ":" in attr:
        raise ConfigError(f"learner {spec!r}: a custom learner is package.module:factory "
                          f"(e.g. mymodels:make_net), or a built-in name (see `streamlearn streams`)")
    module = _import(spec, module_name)
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_")
                           and getattr(v, "__module__", module_name) == module_name)  # its own, not imports
            more = ", ..." if len(names) > 20 else ""
            raise ConfigError(f"learner {spec!r}: module {module_name!r} has no attribute {attr!r} "
                              f"(callables defined there: {', '.join(names[:20]) or 'none'}{more})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"learner {spec!r}: {attr!r} is a {type(obj).__name__}, not a callable factory")
    if inspect.isclass(obj) and issubclass(obj, base.Classifier):
        return CustomSpec(spec, obj, "river", (), obj.__name__)
    takes, required = _signature(spec, obj)
    if inspect.isclass(obj) and issubclass(obj, torch.nn.Module):
        return CustomSpec(spec, obj, "torch", takes, obj.__name__)
    if takes:
        return CustomSpec(spec, obj, "torch", takes, "nn.Module")
    if required:
        raise ConfigError(f"learner {spec!r}: the factory has required parameter(s) {required}; it may take "
                          f"only {', '.join(LAYOUT_ARGS)} (others need a default)")
    # No layout arguments: a river classifier factory, or a fixed-size torch module. Build one to see.
    probe = _call(spec, obj, {}, _SEED_PROBE)
    if isinstance(probe, torch.nn.Module):
        return CustomSpec(spec, obj, "torch", (), type(probe).__name__)
    if isinstance(probe, base.Classifier):
        return CustomSpec(spec, obj, "river", (), type(probe).__name__)
    raise _wrong_type(spec, probe)


def _signature(spec: str, obj) -> tuple[tuple[str, ...], list[str]]:
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return (), []
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return LAYOUT_ARGS, []
    takes = tuple(p.name for p in params if p.name in LAYOUT_ARGS)
    required = [p.name for p in params if p.name not in LAYOUT_ARGS and p.default is p.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if required and takes:
        raise ConfigError(f"learner {spec!r}: the factory has required parameter(s) {required}; it may take "
                          f"only {', '.join(LAYOUT_ARGS)} (others need a default)")
    return takes, required


def _wrong_type(spec: str, obj) -> ConfigError:
    return ConfigError(f"learner {spec!r}: the factory returned a {type(obj).__module__}.{type(obj).__name__}; "
                       f"it must return a torch.nn.Module (giving logits) or a river classifier")


def check_protocol(name: str, protocol: str) -> None:
    """ConfigError when ``name`` is a custom river classifier and ``protocol`` averages models.

    >>> check_protocol("tests.learners.custom_models:hoeffding_tree", "nosync")
    >>> check_protocol("tests.learners.custom_models:hoeffding_tree", "periodic:b=10")
    Traceback (most recent call last):
    ...
    streamlearn.errors.ConfigError: learner 'tests.learners.custom_models:hoeffding_tree' is a river classifier (HoeffdingTreeClassifier): it cannot be averaged (it has no flat parameters), and protocol 'periodic:b=10' averages models; use --protocol nosync (every node learns on its own), or a torch nn.Module factory to average
    """
    if not is_custom(name):
        return
    spec = resolve(name)
    if spec.kind == "river" and str(protocol).strip().partition(":")[0].strip().lower() != "nosync":
        raise ConfigError(f"learner {name!r} is a river classifier ({spec.model_type}): it cannot be averaged "
                          f"(it has no flat parameters), and protocol {protocol!r} averages models; use "
                          f"--protocol nosync (every node learns on its own), or a torch nn.Module factory to average")


def make_custom_learner(name: str, **params):
    """The learner of ``package.module:factory``: a TorchLearner around the module, or a RiverLocal.

    Torch factories take :class:`~streamlearn.learners.TorchLearner`'s arguments but ``arch``
    (the factory), ``hidden`` and ``kernel_size`` (the module sets its own sizes). River
    classifiers take ``n_features``/``features`` only.
    """
    spec = resolve(name)
    if spec.kind == "river":
        from streamlearn.learners.river_local import RiverLocal

        extra = sorted(set(params) - {"n_features", "features"})
        if extra:
            raise ConfigError(f"learner {name!r}: a river classifier takes none of {extra} (it learns its labels "
                              f"and has its own hyperparameters: set them in the factory)")
        model = spec.call(None)
        if not isinstance(model, base.Classifier):
            raise _wrong_type(name, model)
        return RiverLocal(model, **params)
    from streamlearn.learners.torch_learner import TorchLearner

    bad = sorted({"arch", "hidden", "kernel_size"} & set(params))
    if bad:
        raise ConfigError(f"learner {name!r}: {', '.join(bad)} not for a custom module (it sets its own sizes; "
                          f"give the factory defaults instead)")
    try:
        return TorchLearner(arch=ModuleFactory(name), **params)
    except TypeError as exc:
        raise ConfigError(f"learner {name!r}: {exc}") from None


class ModuleFactory:
    """The ``arch`` of a :class:`~streamlearn.learners.TorchLearner` built by a torch module factory.

    Immutable and shared across clones (a clone calls the factory again with its seed).
    """

    def __init__(self, spec: str):
        self.spec = spec
        self.resolved = resolve(spec)
        if self.resolved.kind != "torch":
            raise ConfigError(f"learner {spec!r}: builds a river classifier ({self.resolved.model_type}), "
                              f"not a torch module")

    def build_net(self, features: list, n_out: int, classes: list | None = None) -> ModuleNet:
        """The :class:`ModuleNet` for these features and ``n_out`` classes (the module is built by ``init``)."""
        return ModuleNet(self, list(features), int(n_out), None if classes is None else list(classes))

    def __repr__(self) -> str:
        return repr(self.spec)

    def __eq__(self, other) -> bool:
        return isinstance(other, ModuleFactory) and other.spec == self.spec

    def __hash__(self) -> int:
        return hash(self.spec)

    def __deepcopy__(self, memo):  # river's clone deep-copies parameters; this one is immutable
        return self

    def __reduce__(self):  # never pickled by streamlearn; a copy is the same spec
        return ModuleFactory, (self.spec,)


class ModuleNet:
    """A user's ``nn.Module`` as a pure function of one flat parameter vector (the :class:`Net` interface).

    ``init(generator)`` calls the factory with torch seeded by the generator's seed, checks the module
    (parameters, a dummy forward's output shape, buffers left alone) and returns its parameters
    flattened in ``named_parameters()`` order; ``forward(w, X)`` runs the module through
    ``torch.func.functional_call`` with views into ``w``, batched over models with ``vmap`` when
    ``w`` is (m, d).
    """

    def __init__(self, factory: ModuleFactory, features: list, n_out: int, classes: list | None):
        self.factory = factory
        self.arch = factory.spec
        self.features, self.n_out, self.classes = features, n_out, classes
        self.module: torch.nn.Module | None = None
        self.params: tuple[Param, ...] = ()
        self.d = 0
        self._buffers: dict[str, torch.Tensor] = {}
        self._on_device: dict[torch.device, dict[str, torch.Tensor]] = {}
        self._vmap: bool | None = None  # None: not tried yet

    @property
    def _name(self) -> str:
        return self.factory.spec

    def init(self, generator: torch.Generator) -> torch.Tensor:
        """Build the module (torch seeded with ``generator.initial_seed()``) and return its flat parameters."""
        spec = self.factory.resolved
        f = len(self.features)
        module = spec.call(generator.initial_seed(), n_features=f, n_classes=self.n_out, features=self.features,
                           classes=self.classes)
        if not isinstance(module, torch.nn.Module):
            raise _wrong_type(self._name, module)
        named = list(module.named_parameters())
        if not named:
            raise ConfigError(f"learner {self._name!r}: the module {type(module).__name__} has no parameters: "
                              f"nothing to learn or average")
        for n, p in named:
            if isinstance(p, torch.nn.parameter.UninitializedParameter):
                raise ConfigError(f"learner {self._name!r}: parameter {n!r} is lazy (e.g. nn.LazyLinear); give the "
                                  f"sizes instead (the factory is given n_features and n_classes)")
            if not p.is_floating_point():
                raise ConfigError(f"learner {self._name!r}: parameter {n!r} is {p.dtype}, need floating point")
        params = tuple(Param(n, tuple(p.shape), 1) for n, p in named)
        if self.module is not None and params != self.params:
            raise ConfigError(f"learner {self._name!r}: the factory built a different layout on a second call")
        self.module, self.params = module, params
        self._names = [p.name for p in params]
        self._sizes = [p.size for p in params]
        self._shapes = [p.shape for p in params]
        self.d = sum(self._sizes)
        self._buffers = {n: b.detach().clone() for n, b in module.named_buffers()}
        self._on_device = {}
        w = torch.cat([p.detach().reshape(-1).to(torch.float32) for _, p in named]).cpu()
        self._check(w, generator.initial_seed())
        return w

    def _check(self, w: torch.Tensor, seed: int) -> None:
        """One dummy forward (train mode, under grad): output (B, n_classes), buffers untouched."""
        f = len(self.features)
        X = torch.randn(2, f, generator=torch.Generator().manual_seed(int(seed) % (1 << 63)))
        before = {n: b.clone() for n, b in self._buffers.items()}
        try:
            out = self._forward_one(w, X)
        except Exception as exc:
            raise ConfigError(f"learner {self._name!r}: the module's forward failed on a (2, {f}) float32 batch "
                              f"of {f} features: {type(exc).__name__}: {exc}") from exc
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, self.n_out):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ConfigError(f"learner {self._name!r}: the module maps a (2, {f}) batch to {shape}; it must give "
                              f"(B, n_classes) = (2, {self.n_out}) logits, one column per class")
        changed = [n for n, b in self._buffers.items() if not torch.equal(b, before[n])]
        if changed:
            raise ConfigError(f"learner {self._name!r}: the module changes its buffers {changed} in forward "
                              f"(e.g. BatchNorm running statistics), which cannot be averaged or batched; use "
                              f"LayerNorm or track_running_stats=False")

    def views(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """The parameters as named views into ``w`` (no copies)."""
        return dict(zip(self._names, (t.view(s) for t, s in zip(torch.split(w, self._sizes, dim=-1), self._shapes))))

    def _buffers_on(self, device: torch.device) -> dict[str, torch.Tensor]:
        if device not in self._on_device:
            self._on_device[device] = {n: b.to(device) for n, b in self._buffers.items()}
        return self._on_device[device]

    def _forward_one(self, w: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        tensors = self.views(w)
        tensors.update(self._buffers_on(w.device))
        # train mode (dropout on) while learning, eval mode while predicting (under no_grad)
        self.module.train(torch.is_grad_enabled())
        return torch.func.functional_call(self.module, tensors, (X,))

    def forward(self, w: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
        """Logits (B, k) of the model ``w`` (d,) on ``X`` (B, f), or (m, B, k) for ``w`` (m, d), ``X`` (m, B, f)."""
        if w.dim() != 2:
            return self._forward_one(w, X)
        if self._vmap is not False:
            try:
                out = torch.func.vmap(self._forward_one, randomness="different")(w, X)
                self._vmap = True
                return out
            except Exception as exc:
                if self._vmap:
                    raise
                self._vmap = False
                warnings.warn(f"learner {self._name!r}: torch.func.vmap cannot batch the module over models "
                              f"({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}); running the models one "
                              f"by one (same results, slower)", RuntimeWarning, stacklevel=2)
        return torch.stack([self._forward_one(w[i], X[i]) for i in range(w.shape[0])])
