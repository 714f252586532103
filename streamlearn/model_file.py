"""A learned model taken away: safetensors for the weights, JSON for everything else; no pickle.

A model file is a pair written side by side, ``<path>.safetensors`` and ``<path>.json``:

- ``<path>.safetensors``: the model's tensors by name, in the order of its flat vector. A torch
  learner (:class:`~streamlearn.learners.TorchLearner`) has its layers' weights and biases as float32
  (``linear.weight`` (k, f), ``linear.bias`` (k,); an mlp ``layer0.weight`` ...), exactly what
  ``torch.nn.Linear`` would hold; a river linear model (:class:`~streamlearn.learners.RiverLinear`)
  ``weights`` (f,) in feature order and ``intercept`` (1,), float64 as river keeps them.
- ``<path>.json``: ``format`` (``"streamlearn-model"``) and ``format_version``; ``task``
  (``"classification"`` or ``"regression"``); ``features`` (names, in input order); ``classes``
  (the labels in output order, with their JSON types: ``[0, 1]`` is not ``["0", "1"]``; null for
  regression); ``learner`` (``type``, registry ``name`` and the hyperparameters that rebuild it);
  ``scaler`` (the online standardisation of the features, when the learner has one: ``count``,
  ``mean`` and population ``var`` per feature, float64, in feature order; a torch regression model
  with ``scale_target`` has ``target_scaler`` too); ``tensors`` (the safetensors file's name, its
  SHA-256 and the name, shape and dtype of every tensor); ``provenance`` (where the model came
  from: node id or sync service, protocol, samples seen, sync epoch and syncs, checkpoint time,
  export time, streamlearn version).

:func:`save` writes one from a learner, :func:`load` reads it back into a learner of the same type
that predicts as the saved one did (river's ``predict_one``, ``predict_proba_one``,
``predict_many``, ``predict_proba_many``; a regression model's ``predict_one`` gives a float), with
no Kafka and no checkpoint. Every field is checked on load: a missing field, a tensor of the wrong
shape or a JSON that does not belong to its tensors is a :class:`ModelFileError` naming the file
and the field. The loaded learner can go on learning (from a fresh optimizer state).

:func:`export_checkpoint` is ``streamlearn export``: it rebuilds a node's model from its checkpoint
(``streamlearn node --checkpoint-dir``), or the reference of the sync service (``streamlearn sync
--state-dir``) with the layout from a node's checkpoint, and saves it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os

from streamlearn.errors import StreamlearnError

__all__ = ["ModelFileError", "save", "load", "read_info", "describe_learner", "export_checkpoint",
           "FORMAT", "FORMAT_VERSION"]

FORMAT = "streamlearn-model"
FORMAT_VERSION = 1
_TORCH_SKIP = {"features", "classes", "n_features", "device"}  # the layout has fields of its own; device: the loader's


class ModelFileError(StreamlearnError, ValueError):
    """A model cannot be written, or a model file cannot be read (the message names file and field)."""


# ---- paths ---------------------------------------------------------------------------------------

def _paths(path) -> tuple[str, str]:
    """``(json, safetensors)`` for ``path`` given as the stem, the .json or the .safetensors."""
    path = os.fspath(path)
    for suffix in (".json", ".safetensors"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    if not os.path.basename(path):
        raise ModelFileError(f"model path {path!r} names a directory, not a file stem (e.g. {path}model)")
    return path + ".json", path + ".safetensors"


# ---- JSON values ---------------------------------------------------------------------------------

def _plain(value, where: str):
    """``value`` as plain JSON (numpy scalars unwrapped, tuples as lists), else ModelFileError naming ``where``."""
    if hasattr(value, "item") and type(value).__module__ == "numpy":
        value = value.item()
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ModelFileError(f"{where} is {value!r}: a model file holds finite numbers only")
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise ModelFileError(f"{where} is a {type(value).__name__} ({value!r}): a model file holds JSON values "
                         f"(strings, numbers, booleans, lists) only")


# ---- describing and rebuilding a learner ----------------------------------------------------------

def describe_learner(learner) -> dict:
    """What rebuilds ``learner`` with its layout (no weights): plain JSON.

    ``{"type", "name", "task", "features", "classes", "params"}`` (and ``model``/``loss`` for a river
    linear model). Raises :class:`ModelFileError` for a learner that cannot be described (not a
    TorchLearner or RiverLinear, unknown features or classes, hyperparameters that are not JSON).

    Examples
    --------
    >>> from streamlearn.learners import make_learner
    >>> d = describe_learner(make_learner("mlp", hidden=(4,), features=["a", "b"], classes=[0, 1], seed=0))
    >>> d["type"], d["name"], d["features"], d["classes"], d["params"]["hidden"]
    ('TorchLearner', 'mlp', ['a', 'b'], [0, 1], [4])
    """
    from streamlearn.learners import RiverLinear, TorchLearner

    custom = None
    if isinstance(learner, TorchLearner):
        kind, name = "TorchLearner", learner.arch
        if not isinstance(name, str):  # a user's module factory (--learner package.module:factory)
            custom = name = getattr(name, "spec", None)
            if not isinstance(name, str):
                raise ModelFileError(f"learner: arch {learner.arch!r} is neither a built-in net nor a module factory")
    elif isinstance(learner, RiverLinear):
        from streamlearn.learners.registry import _RIVER_LINEAR

        kind = "RiverLinear"
        names = [n for n, cls in _RIVER_LINEAR.items() if type(learner.model) is cls]
        if not names:
            raise ModelFileError(f"learner: a RiverLinear over {type(learner.model).__name__} has no registry name")
        name = names[0]
    else:
        raise ModelFileError(f"learner: only TorchLearner and RiverLinear models can be saved without pickle, "
                             f"got a {type(learner).__name__}")
    if learner.feature_names_ is None:
        raise ModelFileError("learner: its features are not known yet (pass features= or learn a batch first)")
    task = getattr(learner, "task_", "classification")
    classes = None
    if task != "regression":
        classes = list(learner.classes_)
        if len(classes) < 2:
            raise ModelFileError(f"learner: its classes are not known yet (got {classes!r}; pass classes=[...])")
    out = {"type": kind, "name": name, "task": task,
           "features": _plain(list(learner.feature_names_), "features"),
           "classes": None if classes is None else _plain(classes, "classes")}
    if kind == "TorchLearner":
        params = {k: v for k, v in learner._get_params().items() if k not in _TORCH_SKIP}
        if custom is not None:
            params["arch"] = custom
            out["custom"] = True  # load imports package.module:factory to rebuild the module (weights from the file)
        out["params"] = {k: _plain(v, f"learner.params.{k}") for k, v in params.items()}
    else:
        model = learner.model
        # Only scalar hyperparameters: the weights are the model; the optimizer only matters for learning on.
        params = {k: v for k, v in model._get_params().items()
                  if v is None or isinstance(v, (bool, str, int, float))}
        out["params"] = {k: _plain(v, f"learner.params.{k}") for k, v in params.items()}
        out["model"] = type(model).__name__
        out["loss"] = type(model.loss).__name__ if hasattr(model, "loss") else None
    return out


def describe_for_checkpoint(learner) -> dict:
    """:func:`describe_learner`, or ``{"error": why}`` when it cannot: for the node's checkpoint, which
    must be written whatever the learner (``streamlearn export`` then says why it cannot export)."""
    try:
        return describe_learner(learner)
    except StreamlearnError as exc:
        return {"error": str(exc)}


def _require(info: dict, key: str, file: str, types, what: str):
    if key not in info:
        raise ModelFileError(f"{file}: field {key!r} is missing ({what})")
    value = info[key]
    if not isinstance(value, types):
        raise ModelFileError(f"{file}: field {key!r} must be {what}, got {value!r}")
    return value


def build_learner(desc: dict, device=None, file: str = "model description"):
    """A fresh learner with the layout and hyperparameters of ``desc`` (see :func:`describe_learner`)."""
    from streamlearn.errors import ConfigError
    from streamlearn.learners import RiverLinear, TorchLearner
    from streamlearn.learners.registry import make_learner

    if not isinstance(desc, dict):
        raise ModelFileError(f"{file}: field 'learner' must be an object, got {desc!r}")
    if "error" in desc and "type" not in desc:
        raise ModelFileError(f"{file}: the model cannot be rebuilt: {desc['error']}")
    kind = _require(desc, "type", file, str, "'TorchLearner' or 'RiverLinear'")
    name = _require(desc, "name", file, str, "a learner name")
    features = _require(desc, "features", file, list, "the list of feature names")
    params = dict(_require(desc, "params", file, dict, "an object of hyperparameters"))
    task = desc.get("task", "classification")
    classes = desc.get("classes")
    if task != "regression" and not isinstance(classes, list):
        raise ModelFileError(f"{file}: field 'classes' must be the list of labels of a classifier, got {classes!r}")
    if not features:
        raise ModelFileError(f"{file}: field 'features' is empty")
    try:
        if kind == "TorchLearner":
            if "hidden" in params and isinstance(params["hidden"], list):
                params["hidden"] = tuple(params["hidden"])
            params.pop("arch", None)
            arch = name
            if desc.get("custom"):
                from streamlearn.learners.custom import ModuleFactory

                arch = ModuleFactory(name)  # imports the user's module: its code is needed, its weights are here
            learner = TorchLearner(arch=arch, features=features, classes=classes, device=device, **params)
            if getattr(learner, "task_", "classification") != task:
                raise ModelFileError(f"{file}: field 'task' is {task!r} but the hyperparameters make a "
                                     f"{getattr(learner, 'task_', 'classification')} model")
        elif kind == "RiverLinear":
            learner = make_learner(name, features=features, classes=classes, **params)
            if not isinstance(learner, RiverLinear):
                raise ModelFileError(f"{file}: learner name {name!r} is not a river linear model")
            loss = desc.get("loss")
            if loss is not None and type(learner.model.loss).__name__ != loss:
                raise ModelFileError(f"{file}: field 'loss' is {loss!r}; this streamlearn rebuilds {name} with "
                                     f"{type(learner.model.loss).__name__} only")
        else:
            raise ModelFileError(f"{file}: field 'type' must be 'TorchLearner' or 'RiverLinear', got {kind!r}")
    except (ConfigError, TypeError) as exc:
        raise ModelFileError(f"{file}: field 'learner' does not rebuild a model: {exc}") from None
    return learner


# ---- tensors -------------------------------------------------------------------------------------

def _tensors_of(learner) -> dict:
    """The model's tensors by name, as numpy arrays, in flat-vector order."""
    import numpy as np

    from streamlearn.learners import TorchLearner

    if isinstance(learner, TorchLearner):
        return {k: v.detach().cpu().numpy().astype(np.float32, copy=True) for k, v in learner.params_.items()}
    return {"weights": np.asarray(learner._weights(), dtype=np.float64).copy(),
            "intercept": np.array([float(learner.model.intercept)], dtype=np.float64)}


def _expected_tensors(learner) -> dict:
    """``{name: (shape, dtype)}`` of the tensors a fresh learner of this layout takes, in order."""
    return {k: (tuple(v.shape), str(v.dtype)) for k, v in _tensors_of(learner).items()}


def _scaler_json(scaler) -> dict | None:
    import numpy as np

    if scaler is None:
        return None
    state = scaler.get_state()
    n = state["n"]
    if scaler.mean_ is None or not n:
        return {"count": 0, "mean": None, "var": None}
    var = np.asarray(state["m2"], dtype=np.float64) / float(n)
    return {"count": _plain(n, "scaler.count"), "mean": _plain(np.asarray(state["mean"]).tolist(), "scaler.mean"),
            "var": _plain(var.tolist(), "scaler.var")}


def _set_scaler(scaler, stats, size: int, file: str, field: str) -> None:
    import numpy as np

    if not isinstance(stats, dict):
        raise ModelFileError(f"{file}: field {field!r} must be an object with count, mean and var, got {stats!r}")
    count = stats.get("count")
    if isinstance(count, bool) or not isinstance(count, (int, float)) or not math.isfinite(count) or count < 0:
        raise ModelFileError(f"{file}: field '{field}.count' must be a number >= 0, got {count!r}")
    if count == 0:
        scaler.set_state({"n": 0, "mean": None, "m2": None})
        return
    arrays = {}
    for key in ("mean", "var"):
        v = stats.get(key)
        if not isinstance(v, list) or len(v) != size or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v):
            raise ModelFileError(f"{file}: field '{field}.{key}' must be {size} finite numbers, got "
                                 f"{'a list of ' + str(len(v)) if isinstance(v, list) else repr(v)}")
        arrays[key] = np.array(v, dtype=np.float64)
    if (arrays["var"] < 0).any():
        raise ModelFileError(f"{file}: field '{field}.var' has a negative variance")
    scaler.set_state({"n": count, "mean": arrays["mean"], "m2": arrays["var"] * float(count)})


# ---- save / load ---------------------------------------------------------------------------------

def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_atomic(path: str, write) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save(learner, path, provenance: dict | None = None) -> tuple[str, str]:
    """Write ``learner`` as ``<path>.safetensors`` + ``<path>.json``; returns the two paths.

    ``path`` is the stem (a ``.json`` or ``.safetensors`` suffix is dropped). ``provenance`` is
    merged into the JSON's ``provenance`` (plain JSON values), beside the export time and the
    streamlearn version. Existing files are replaced (each written under a temporary name first).

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from streamlearn.learners import make_learner
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(400, 2)).astype(np.float32)
    >>> y = np.where(X[:, 0] > X[:, 1], "up", "down")
    >>> model = make_learner("mlp", hidden=(8,), features=["a", "b"], classes=["down", "up"], scale=True,
    ...                      lr=0.5, seed=0, device="cpu")
    >>> for i in range(0, 400, 10):
    ...     model.learn_many(X[i:i + 10], y[i:i + 10])
    >>> stem = os.path.join(tempfile.mkdtemp(), "model")
    >>> paths = save(model, stem, provenance={"note": "doctest"})
    >>> [os.path.basename(p) for p in paths]
    ['model.json', 'model.safetensors']
    >>> back = load(stem, device="cpu")
    >>> back.predict_one({"a": 1.0, "b": -1.0}), back.classes_
    ('up', ['down', 'up'])
    >>> bool((back.predict_many(X) == model.predict_many(X)).all())
    True
    >>> read_info(stem)["scaler"]["count"], read_info(stem)["provenance"]["note"]
    (400, 'doctest')
    """
    from safetensors.numpy import save_file

    import streamlearn

    desc = describe_learner(learner)
    json_path, st_path = _paths(path)
    tensors = _tensors_of(learner)
    info = {"format": FORMAT, "format_version": FORMAT_VERSION, "task": desc["task"],
            "features": desc["features"], "classes": desc["classes"],
            "learner": {k: v for k, v in desc.items() if k not in ("features", "classes", "task")}}
    if desc["type"] == "TorchLearner":
        info["scaler"] = _scaler_json(learner.scaler_)
        target = getattr(learner, "target_scaler_", None)
        if target is not None:
            info["target_scaler"] = _scaler_json(target)
    else:
        info["scaler"] = None
    meta = {"format": FORMAT, "json": os.path.basename(json_path)}
    _write_atomic(st_path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    info["tensors"] = {"file": os.path.basename(st_path), "sha256": _sha256(st_path),
                       "layout": [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype)} for k, v in tensors.items()]}
    prov = {"exported_at": _now(), "streamlearn_version": streamlearn.__version__}
    for k, v in (provenance or {}).items():
        prov[str(k)] = _plain(v, f"provenance.{k}") if not isinstance(v, dict) else \
            {str(a): _plain(b, f"provenance.{k}.{a}") for a, b in v.items()}
    info["provenance"] = prov

    def write_json(tmp):
        with open(tmp, "w") as fh:
            json.dump(info, fh, indent=2, allow_nan=False)
            fh.write("\n")

    _write_atomic(json_path, write_json)
    return json_path, st_path


def read_info(path) -> dict:
    """The model file's JSON (layout, classes, scaler statistics, provenance), checked for its format.

    ``path``: the stem, the ``.json`` or the ``.safetensors``.
    """
    json_path, _ = _paths(path)
    try:
        with open(json_path) as fh:
            info = json.load(fh)
    except FileNotFoundError:
        raise ModelFileError(f"{json_path}: no such model file (streamlearn export writes <out>.json and "
                             f"<out>.safetensors)") from None
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{json_path}: not readable JSON ({exc})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        got = info.get("format") if isinstance(info, dict) else type(info).__name__
        raise ModelFileError(f"{json_path}: field 'format' must be {FORMAT!r}, got {got!r}")
    if info.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(f"{json_path}: field 'format_version' is {info.get('format_version')!r}; this "
                             f"streamlearn reads version {FORMAT_VERSION}")
    return info


def load(path, device=None):
    """The model saved at ``path`` (:func:`save`, ``streamlearn export``), as a river-compatible learner.

    Returns a :class:`~streamlearn.learners.TorchLearner` or :class:`~streamlearn.learners.RiverLinear`
    with the saved layout, weights and scaler statistics: ``predict_one``, ``predict_proba_one``,
    ``predict_many`` and ``predict_proba_many`` give what the saved model gave (a regression model's
    ``predict_one`` gives a float). Its ``model_info_`` attribute holds the JSON (provenance included).
    No Kafka and no pickle: JSON and safetensors only.

    Parameters
    ----------
    path
        The stem given to ``streamlearn export --out``, or its ``.json`` or ``.safetensors``.
    device
        Torch device of a torch model; None: cuda when available, else cpu.

    Raises :class:`ModelFileError` naming the file and the field when something is missing or
    does not fit (a tensor of another shape, a safetensors file that is not the JSON's).
    """
    import numpy as np
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    info = read_info(path)
    json_path, _ = _paths(path)
    file = json_path
    learner_desc = _require(info, "learner", file, dict, "an object describing the learner")
    features = _require(info, "features", file, list, "the list of feature names")
    task = _require(info, "task", file, str, "'classification' or 'regression'")
    desc = dict(learner_desc, features=features, classes=info.get("classes"), task=task)
    if "classes" not in info:
        raise ModelFileError(f"{file}: field 'classes' is missing (null for a regression model)")
    learner = build_learner(desc, device=device, file=file)

    tinfo = _require(info, "tensors", file, dict, "an object naming the safetensors file")
    st_name = _require(tinfo, "file", file, str, "the safetensors file's name")
    if os.path.basename(st_name) != st_name:
        raise ModelFileError(f"{file}: field 'tensors.file' must be a file name beside the JSON, got {st_name!r}")
    st_path = os.path.join(os.path.dirname(os.path.abspath(json_path)), st_name)
    if not os.path.isfile(st_path):
        raise ModelFileError(f"{st_path}: the tensors named by {file} (field 'tensors.file') are missing")
    sha = tinfo.get("sha256")
    if sha is not None and _sha256(st_path) != sha:
        raise ModelFileError(f"{st_path}: its SHA-256 is not the one {file} records (field 'tensors.sha256'): "
                             f"the two files do not belong together")
    try:
        tensors = load_file(st_path)
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{st_path}: not a readable safetensors file ({exc})") from None

    expected = _expected_tensors(learner)
    layout = tinfo.get("layout")
    if layout is not None and (not isinstance(layout, list)
                               or [e.get("name") if isinstance(e, dict) else e for e in layout] != list(expected)):
        raise ModelFileError(f"{file}: field 'tensors.layout' lists {layout!r}; the model described takes "
                             f"{list(expected)}")
    for name, (shape, _) in expected.items():
        if name not in tensors:
            raise ModelFileError(f"{st_path}: tensor {name!r} is missing (the model takes {list(expected)})")
        t = tensors[name]
        if t.dtype.kind != "f":
            raise ModelFileError(f"{st_path}: tensor {name!r} has dtype {t.dtype}; model weights are floats")
        if tuple(t.shape) != shape:
            raise ModelFileError(f"{st_path}: tensor {name!r} has shape {tuple(t.shape)}; {file} describes a model "
                                 f"whose {name!r} has shape {shape}")
        if not np.isfinite(t).all():
            raise ModelFileError(f"{st_path}: tensor {name!r} holds NaN or infinite values")
    extra = sorted(set(tensors) - set(expected))
    if extra:
        raise ModelFileError(f"{st_path}: tensors {extra} are not part of the model {file} describes")

    if learner_desc.get("type") == "TorchLearner":
        import torch

        params = torch.from_numpy(np.concatenate([tensors[k].astype(np.float32).reshape(-1) for k in expected]))
        stats = learner.get_flat()[learner.n_params:].cpu()  # the scalers' slots; set exactly just below
        learner.set_flat(torch.cat([params, stats]))
        scale = bool(learner_desc.get("params", {}).get("scale"))
        if scale:
            if "scaler" not in info or info["scaler"] is None:
                raise ModelFileError(f"{file}: field 'scaler' is missing; the model standardises its features "
                                     f"(params.scale is true)")
            _set_scaler(learner.scaler_, info["scaler"], len(features), file, "scaler")
        target = getattr(learner, "target_scaler_", None)
        if target is not None:
            if info.get("target_scaler") is None:
                raise ModelFileError(f"{file}: field 'target_scaler' is missing; the model standardises its target")
            _set_scaler(target, info["target_scaler"], 1, file, "target_scaler")
    else:
        import torch

        learner.set_flat(torch.from_numpy(np.concatenate([tensors["weights"], tensors["intercept"]]).astype(np.float64)))
    learner.model_info_ = info
    return learner


# ---- streamlearn export: from a node's checkpoint or the sync service's state ------------------------

def _node_store_dir(checkpoint_dir: str, node: int | None) -> str:
    """The checkpoint store of one node: ``checkpoint_dir`` itself, or its ``node-<id>`` subdirectory."""
    import re

    if not os.path.isdir(checkpoint_dir):
        raise ModelFileError(f"--checkpoint-dir {checkpoint_dir!r}: no such directory")
    entries = os.listdir(checkpoint_dir)
    if any(re.fullmatch(r"node-\d{12}", e) and os.path.isfile(os.path.join(checkpoint_dir, e, "manifest.json"))
           for e in entries):
        return checkpoint_dir  # already one node's store (<dir>/node-<id>)
    ids = sorted(int(m.group(1)) for e in entries if (m := re.fullmatch(r"node-(\d+)", e))
                 and os.path.isdir(os.path.join(checkpoint_dir, e)))
    if node is not None:
        if node not in ids:
            raise ModelFileError(f"--node {node}: {checkpoint_dir} holds no checkpoint of node {node} "
                                 f"(nodes there: {ids or 'none'})")
        return os.path.join(checkpoint_dir, f"node-{node}")
    if len(ids) == 1:
        return os.path.join(checkpoint_dir, f"node-{ids[0]}")
    if not ids:
        raise ModelFileError(f"--checkpoint-dir {checkpoint_dir!r} holds no node checkpoint (node-<id>/); give "
                             f"the directory a node ran with (streamlearn node --checkpoint-dir)")
    raise ModelFileError(f"--checkpoint-dir {checkpoint_dir!r} holds the checkpoints of nodes {ids}: say which "
                         f"with --node")


def _created(ck_path: str) -> str | None:
    try:
        with open(os.path.join(ck_path, "manifest.json")) as fh:
            created = json.load(fh).get("created")
        return _dt.datetime.fromtimestamp(float(created), _dt.timezone.utc).isoformat(timespec="seconds")
    except (OSError, ValueError, TypeError):
        return None


def export_checkpoint(checkpoint_dir, out, node: int | None = None, model: str = "local",
                      state_dir=None, device: str | None = "cpu") -> tuple[str, str, dict]:
    """``streamlearn export``: save a node's model, or a reference, from the services' checkpoints.

    Parameters
    ----------
    checkpoint_dir
        The directory a node ran with (``streamlearn node --checkpoint-dir``; it holds
        ``node-<id>/``), or one node's ``node-<id>`` directory. Its newest checkpoint that verifies
        gives the model's layout and hyperparameters (and its weights, below).
    out
        Stem of the files written: ``<out>.safetensors`` and ``<out>.json``.
    node
        Which node, when ``checkpoint_dir`` holds several.
    model
        ``"local"``: the node's own model, the one it predicts with. ``"reference"``: the reference it
        holds, the average of the last full sync it took part in (the model every node agrees on).
    state_dir
        The sync service's ``--state-dir``: export its reference (newest kept state), which is
        newer than a node's when the node stopped before the last full sync; the layout still
        comes from the node's checkpoint, and both must describe one model.

    Returns ``(json path, safetensors path, provenance)``.
    """
    import numpy as np
    import torch

    from streamlearn.kafka.checkpoint import CheckpointError, CheckpointStore, restore_learner_state

    if model not in ("local", "reference"):
        raise ModelFileError(f"--model: 'local' or 'reference', got {model!r}")
    if state_dir is not None and model == "local":
        model = "reference"  # a sync state holds a reference only
    store_dir = _node_store_dir(os.fspath(checkpoint_dir), node)
    ck = CheckpointStore(store_dir, "node", readonly=True).latest()  # the node may be running: leave its saves be
    if ck is None:
        raise ModelFileError(f"{store_dir}: no checkpoint that verifies (a node writes one every "
                             f"--checkpoint-every samples and when it stops)")
    meta = ck.meta
    desc = meta.get("model")
    if desc is None:
        raise ModelFileError(f"{ck.path}: field 'model' is missing from the checkpoint's metadata: it was written by "
                             f"a streamlearn without model export; restart the node once to write a new one")
    learner = build_learner(desc, device=device, file=f"{ck.path}/manifest.json")
    prov = {"source": "node checkpoint", "model": model, "node": meta.get("node"),
            "learner": meta.get("learner_name"), "protocol": meta.get("protocol"),
            "samples_seen": meta.get("samples"), "sync_epoch": meta.get("epoch"),
            "syncs": (meta.get("counters") or {}).get("syncs"),
            "checkpoint": os.path.abspath(ck.path), "checkpoint_time": _created(ck.path)}
    try:
        if model == "local":
            restore_learner_state(learner, ck.arrays, meta["learner"])
        elif state_dir is None:
            if "reference" not in ck.arrays:
                raise ModelFileError(f"{ck.path}: array 'reference' is missing from the checkpoint")
            learner.set_flat(torch.from_numpy(np.asarray(ck.arrays["reference"], dtype=np.float32)))
        else:
            if not os.path.isdir(state_dir):
                raise ModelFileError(f"--state-dir {os.fspath(state_dir)!r}: no such directory")
            sync = CheckpointStore(os.fspath(state_dir), "sync", readonly=True).latest()
            if sync is None:
                raise ModelFileError(f"--state-dir {state_dir!r}: no sync state that verifies (the sync service "
                                     f"keeps one with --state-dir)")
            smeta = sync.meta
            if smeta.get("layout") is not None and meta.get("layout") is not None \
                    and smeta["layout"] != meta["layout"]:
                raise ModelFileError(f"{sync.path}: field 'layout' is {smeta['layout']!r}, the node checkpoint "
                                     f"{ck.path} has {meta['layout']!r}: the sync service averaged another model")
            ref = np.asarray(sync.arrays.get("reference"), dtype=np.float32)
            d = int(learner.get_flat().numel())
            if ref.shape != (d,):
                raise ModelFileError(f"{sync.path}: array 'reference' has shape {ref.shape}, the node's model "
                                     f"takes {d} values")
            learner.set_flat(torch.from_numpy(ref))
            stats = (smeta.get("protocol") or {}).get("stats") or {}
            prov.update(source="sync state", node=None, sync_epoch=smeta.get("epoch"), protocol=smeta.get("spec"),
                        full_syncs=stats.get("full_syncs"), sync_state=os.path.abspath(sync.path),
                        sync_state_time=_created(sync.path), layout_from=os.path.abspath(ck.path))
            for key in ("syncs", "samples_seen"):  # the node's, not the reference's
                prov.pop(key, None)
    except (CheckpointError, KeyError) as exc:
        raise ModelFileError(f"{ck.path}: the checkpoint does not restore its model ({exc})") from None
    json_path, st_path = save(learner, out, provenance=prov)
    return json_path, st_path, prov


# ---- the command line ------------------------------------------------------------------------------

def add_export_parser(sub) -> None:
    """Add ``streamlearn export`` to the CLI's subcommands."""
    p = sub.add_parser("export", help="write a node's model (or the sync reference) as safetensors + JSON, "
                                      "for streamlearn.load(path)")
    p.add_argument("--checkpoint-dir", required=True,
                   help="the node's --checkpoint-dir (holding node-<id>/), or one node-<id> directory")
    p.add_argument("--node", type=int, help="node id, when the directory holds several nodes' checkpoints")
    p.add_argument("--model", choices=("local", "reference"), default="local",
                   help="local: the node's own model, as it predicts (default); reference: the average of the "
                        "last full sync it took part in")
    p.add_argument("--state-dir", help="the sync service's --state-dir: export its reference instead, with the "
                                       "layout from the node's checkpoint")
    p.add_argument("--out", required=True, metavar="PATH", help="writes PATH.safetensors and PATH.json")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    json_path, st_path, prov = export_checkpoint(args.checkpoint_dir, args.out, node=args.node, model=args.model,
                                                 state_dir=args.state_dir)
    info = read_info(json_path)
    who = f"node {prov['node']}" if prov.get("node") is not None else "the sync service"
    print(f"exported the {prov['model']} model of {who} ({info['learner']['name']}, {len(info['features'])} "
          f"features, {info['task']}, {prov.get('samples_seen')} samples seen) to {st_path} and {json_path}")
    print(f"load it with: streamlearn.load({os.path.splitext(json_path)[0]!r})")
    return 0
