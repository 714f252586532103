"""Sources by name: the ``SOURCES`` catalogue (for ``streamlearn streams``) and ``make_source``."""

from __future__ import annotations

import inspect

from streamlearn.errors import ConfigError
from streamlearn.streams.base import Stream
from streamlearn.streams.csv_source import CSVSource, Elec2
from streamlearn.streams.generators import AgrawalStream, HyperplaneStream, RBFStream, SEAStream, STAGGERStream

__all__ = ["SOURCES", "make_source", "is_finite_source"]

_FACTORIES = {
    "sea": SEAStream,
    "hyperplane": HyperplaneStream,
    "rbf": RBFStream,
    "agrawal": AgrawalStream,
    "stagger": STAGGERStream,
    "elec2": Elec2,
    "csv": CSVSource,
}

_DESCRIPTIONS = {
    "sea": "river SEA: 3 features in [0, 10], label x0 + x1 > threshold; alternate concept: next variant",
    "hyperplane": "river Hyperplane (numpy, separate model seed): label of a random hyperplane in [0, 1]^d; "
                  "alternate concept: model_seed + 1",
    "rbf": "river RandomRBFDrift: Gaussian clusters with random labels, optionally moving; "
           "alternate concept: model_seed + 1",
    "agrawal": "river Agrawal: 9 loan-applicant features, 10 rules; alternate concept: next rule",
    "stagger": "river STAGGER: size, color, shape codes, 3 rules; alternate concept: next rule",
    "elec2": "Elec2 electricity market, 45,312 samples, 6 features, label UP/DOWN (shipped); "
             "alternate concept: labels swapped",
    "csv:PATH": "replay a CSV file (.gz ok; , ; tab | guessed): label=COLUMN, features=A,B,... (default: all "
                "other columns), classes=..., on_bad_record=raise|skip; text columns one-hot (categorical=COL=a|b|c, "
                "else the first lookahead rows; dates dropped); key=COLUMN kept as text for a split by key; "
                "alternate concept: labels cyclically shifted",
}

# Parameters that define the concept rather than the samples: node_streams shares them across nodes.
CONCEPT_SEED_PARAMS = {"hyperplane": "model_seed", "rbf": "model_seed"}


def _defaults(factory) -> dict:
    params = inspect.signature(factory.__init__).parameters
    return {name: (None if p.default is inspect.Parameter.empty else p.default)
            for name, p in params.items() if name not in ("self", "seed", "path")}


SOURCES: dict = {
    ("csv:PATH" if name == "csv" else name): {
        "description": _DESCRIPTIONS["csv:PATH" if name == "csv" else name],
        "params": _defaults(factory),
    }
    for name, factory in _FACTORIES.items()
}


def _coerce(name, value, default):
    """Turn text from a command line into the type of the default (numbers, booleans); other values pass."""
    if not isinstance(value, str) or isinstance(default, str) or default is None and name != "model_seed":
        return value
    text = value.strip()
    try:
        if isinstance(default, bool):
            if text.lower() in ("1", "true", "yes"):
                return True
            if text.lower() in ("0", "false", "no"):
                return False
            raise ValueError
        if isinstance(default, int) or name == "model_seed":
            return None if text.lower() == "none" else int(text)
        if isinstance(default, float):
            return float(text)
    except ValueError:
        raise ConfigError(f"parameter {name}={value!r} should be a {type(default).__name__}") from None
    return value


def is_finite_source(name: str) -> bool:
    """Whether source ``name`` is a file (finite, replayed) rather than an endless generator.

    >>> is_finite_source("elec2"), is_finite_source("csv:data.csv"), is_finite_source("sea")
    (True, True, False)
    """
    factory = _FACTORIES.get(str(name).partition(":")[0].strip().lower())
    return factory is not None and issubclass(factory, CSVSource)


def make_source(name: str, seed: int = 0, **params) -> Stream:
    """Build a source by name: ``sea``, ``hyperplane``, ``rbf``, ``agrawal``, ``stagger``, ``elec2`` or ``csv:PATH``.

    Parameters are those listed in ``SOURCES[name]["params"]``; text values (from a command line) are
    converted to the type of the default.

    Examples
    --------
    >>> s = make_source("sea", seed=3, variant=2)
    >>> s, s.feature_names
    (SEAStream(seed=3, variant=2, noise=0.0), ['x0', 'x1', 'x2'])
    >>> make_source("nope")
    Traceback (most recent call last):
    ...
    streamlearn.errors.ConfigError: unknown source 'nope'; known: sea, hyperplane, rbf, agrawal, stagger, elec2, csv:PATH
    """
    if not isinstance(name, str):
        raise ConfigError(f"source name must be a string, got {name!r}")
    key, _, path = name.partition(":")
    key = key.strip().lower()
    if key not in _FACTORIES or (key == "csv") != bool(path):
        raise ConfigError(f"unknown source {name!r}; known: {', '.join(SOURCES)}")
    factory = _FACTORIES[key]
    defaults = _defaults(factory)
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ConfigError(f"source {key!r} has no parameter {', '.join(map(repr, unknown))}; "
                          f"it takes {', '.join(defaults) or 'none'}")
    params = {k: _coerce(k, v, defaults[k]) for k, v in params.items()}
    seed = _coerce("seed", seed, 0)
    if key == "csv":
        if params.get("label") is None:
            raise ConfigError(f"source {name!r} needs label=COLUMN")
        if isinstance(params.get("classes"), str):
            params["classes"] = [c.strip() for c in params["classes"].split(",") if c.strip()]
        return factory(path, seed=seed, **params)
    return factory(seed=seed, **params)
