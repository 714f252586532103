"""Drift specifications: the catalogue of drift kinds and the CLI syntax ``KIND@POSITION[:NAME=VALUE,...]``.

Examples: ``sudden@5000``, ``gradual@5000:width=1000``, ``recurring@5000:period=5000``,
``label-permutation@3000``, ``feature-shift@2000:shift=1.0``, ``noise@1000:sigma=0.3,flip=0.1``,
``incremental@2000:width=4000``, ``feature-rotation@0:angle=45,features=x0|x1`` (lists use ``|``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from streamlearn.errors import ConfigError

__all__ = ["DRIFT_KINDS", "DriftSpec", "parse_drift"]

_FEATURES_DOC = "feature names to change, '|'-separated (default: all)"
_UNITS_DOC = "'std': shift, sigma and rotation in units of each feature's standard deviation " \
             "(estimated on the first 1000 samples of the wrapped stream); 'raw': in the features' own units"

DRIFT_KINDS: dict = {
    "sudden": {
        "description": "from POSITION on, the stream's alternate concept (SEA variant, Agrawal/STAGGER function, "
                       "Hyperplane/RBF model seed + 1; a cyclic label permutation for CSV and elec2)",
        "params": {},
    },
    "gradual": {
        "description": "moves to the alternate concept with probability 1/(1+exp(-4(t-POSITION)/width)) "
                       "(river's ConceptDriftStream); POSITION is the centre",
        "params": {"width": 1000},
    },
    "incremental": {
        "description": "continuous change starting at POSITION (the event position) and complete after width "
                       "samples: the features rotate by up to angle degrees (a seeded random plane), shift by up "
                       "to shift, scale by up to scale",
        "params": {"width": 1000, "angle": 90.0, "shift": 0.0, "scale": 1.0, "features": None, "units": "std"},
    },
    "recurring": {
        "description": "alternates concept A, B, A, B, ... every period samples from POSITION on "
                       "(count: number of switches, default endless)",
        "params": {"period": 1000, "count": None},
    },
    "label-permutation": {
        "description": "from POSITION on, labels are permuted by a seeded random permutation that moves every class",
        "params": {},
    },
    "feature-shift": {
        "description": "features shift by shift (units) from POSITION on; width > 0 ramps it in linearly",
        "params": {"shift": 1.0, "width": 0, "features": None, "units": "std"},
    },
    "feature-scale": {
        "description": "features are multiplied by scale from POSITION on; width > 0 ramps it in linearly",
        "params": {"scale": 2.0, "width": 0, "features": None},
    },
    "feature-rotation": {
        "description": "features rotate by angle degrees about their mean, in a seeded random plane, "
                       "from POSITION on; width > 0 turns them progressively",
        "params": {"angle": 90.0, "width": 0, "features": None, "units": "std"},
    },
    "noise": {
        "description": "from POSITION on, Gaussian noise of sd sigma (units) on the features and, with "
                       "probability flip, a label replaced by another class",
        "params": {"sigma": 0.1, "flip": 0.0, "features": None, "units": "std"},
    },
}

for _entry in DRIFT_KINDS.values():
    _entry["param_docs"] = {k: v for k, v in (("features", _FEATURES_DOC), ("units", _UNITS_DOC))
                            if k in _entry["params"]}


def _to_int(v):
    if isinstance(v, bool):
        raise ValueError
    if isinstance(v, str):
        return int(v.strip().replace("_", ""))
    if float(v) != int(v):
        raise ValueError
    return int(v)


def _to_float(v):
    if isinstance(v, bool):
        raise ValueError
    return float(v)


def _check(name, value, kind):
    """Cast and validate one parameter value; raise ValueError with a short reason."""
    if name in ("width", "period", "count"):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
            if name == "count":
                return None
            raise ValueError(f"{name} needs a value")
        try:
            v = _to_int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be an integer, got {value!r}") from None
        lowest = 0 if (name == "width" and kind.startswith("feature-")) else 1
        if v < lowest:
            raise ValueError(f"{name} must be >= {lowest}, got {v}")
        return v
    if name in ("angle", "shift", "scale", "sigma", "flip"):
        try:
            v = _to_float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be a number, got {value!r}") from None
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError(f"{name} must be finite, got {value!r}")
        if name == "sigma" and v < 0:
            raise ValueError(f"sigma must be >= 0, got {v}")
        if name == "flip" and not 0.0 <= v <= 1.0:
            raise ValueError(f"flip must be in [0, 1], got {v}")
        return v
    if name == "features":
        if value is None:
            return None
        names = value.split("|") if isinstance(value, str) else list(value)
        names = tuple(str(n).strip() for n in names if str(n).strip())
        if not names:
            raise ValueError("features must name at least one feature")
        return names
    if name == "units":
        if value not in ("std", "raw"):
            raise ValueError(f"units must be 'std' or 'raw', got {value!r}")
        return value
    raise ValueError(f"unknown parameter {name!r}")  # pragma: no cover - guarded by the caller


def _format(v) -> str:
    if isinstance(v, tuple):
        return "|".join(v)
    if isinstance(v, float) and v.is_integer():
        return repr(v)
    return str(v)


def _normalize(kind, position, given, name):
    """Validated (position, params with defaults); ConfigError naming the spec ``name``."""
    if kind not in DRIFT_KINDS:
        raise ConfigError(f"bad drift spec {name!r}: unknown kind {kind!r}; known: {', '.join(DRIFT_KINDS)}")
    try:
        position = _to_int(position)
    except (TypeError, ValueError):
        raise ConfigError(f"bad drift spec {name!r}: position must be an integer") from None
    if position < 0:
        raise ConfigError(f"bad drift spec {name!r}: position must be >= 0")
    defaults = DRIFT_KINDS[kind]["params"]
    params = {}
    for key, value in dict(given).items():
        if key not in defaults:
            known = ", ".join(defaults) or "none"
            raise ConfigError(f"bad drift spec {name!r}: unknown parameter {key!r} (known: {known})")
        try:
            params[key] = _check(key, value, kind)
        except ValueError as exc:
            raise ConfigError(f"bad drift spec {name!r}: {exc}") from None
    for key, value in defaults.items():
        params.setdefault(key, value)
    return position, params


@dataclass(frozen=True)
class DriftSpec:
    """One drift to inject: a kind of ``DRIFT_KINDS``, a position and its parameters (defaults filled in).

    Examples
    --------
    >>> spec = DriftSpec("gradual", 5000, {"width": 500})
    >>> spec.params, str(spec)
    ({'width': 500}, 'gradual@5000:width=500')
    >>> str(spec.shifted(100))
    'gradual@5100:width=500'
    """

    kind: str
    position: int
    params: dict = field(default_factory=dict)

    def __post_init__(self):
        position, params = _normalize(self.kind, self.position, self.params, f"{self.kind}@{self.position}")
        object.__setattr__(self, "position", position)
        object.__setattr__(self, "params", params)

    def shifted(self, offset: int) -> "DriftSpec":
        """The same drift ``offset`` samples later."""
        return DriftSpec(self.kind, self.position + int(offset), self.params)

    def __str__(self):
        defaults = DRIFT_KINDS[self.kind]["params"]
        given = [f"{k}={_format(v)}" for k, v in self.params.items() if v != defaults[k] and v is not None]
        return f"{self.kind}@{self.position}" + (":" + ",".join(given) if given else "")


def parse_drift(spec) -> DriftSpec:
    """Parse ``KIND@POSITION[:NAME=VALUE,...]`` (a ``DriftSpec`` passes through).

    Errors are ``ConfigError`` naming the spec.

    Examples
    --------
    >>> parse_drift("noise@1000:sigma=0.3")
    DriftSpec(kind='noise', position=1000, params={'sigma': 0.3, 'flip': 0.0, 'features': None, 'units': 'std'})
    >>> parse_drift("sudden")
    Traceback (most recent call last):
    ...
    streamlearn.errors.ConfigError: bad drift spec 'sudden': expected KIND@POSITION[:NAME=VALUE,...]
    """
    if isinstance(spec, DriftSpec):
        return spec
    if not isinstance(spec, str):
        raise ConfigError(f"a drift spec must be a string like 'sudden@5000', got {spec!r}")
    text = spec.strip()
    head, _, tail = text.partition(":")
    kind, at, position = head.partition("@")
    if not at or not kind.strip() or not position.strip():
        raise ConfigError(f"bad drift spec {spec!r}: expected KIND@POSITION[:NAME=VALUE,...]")
    params = {}
    for item in filter(None, (p.strip() for p in tail.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"bad drift spec {spec!r}: parameter {item!r} is not NAME=VALUE")
        if key.strip() in params:
            raise ConfigError(f"bad drift spec {spec!r}: parameter {key.strip()!r} given twice")
        params[key.strip()] = value.strip()
    try:
        pos = _to_int(position)
    except ValueError:
        raise ConfigError(f"bad drift spec {spec!r}: position {position.strip()!r} is not an integer") from None
    kind = kind.strip().lower()
    _normalize(kind, pos, params, text)  # errors name the spec as written
    return DriftSpec(kind, pos, params)
