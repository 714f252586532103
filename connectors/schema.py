"""A stream's schema, declared once in a TOML or JSON file, and the check of every record against it.

The file (TOML shown; JSON has the same structure)::

    key = "meter"            # optional: the field that identifies a reading (delayed labels join on it)
    time = "ts"              # optional: event time, Unix seconds or ISO 8601 (replay speed-up uses it)
    ignore = ["date"]        # optional: fields dropped without complaint
    missing = "null"         # optional: a missing feature value (empty cell, JSON null) passes as null and the
                             # node imputes or skips it (default); "reject": the record is a bad record
    max_bytes = 65536        # optional: largest record, in bytes

    [label]
    name = "label"           # default "y"
    classes = ["DOWN", "UP"] # or: type = "float" for a regression target

    [features]               # name = "float" | "int" | "bool", in the model's order
    day = "int"
    period = "float"

A record is a reading (every feature, the label, which may be null: the
label comes later) or a label record (the key and the label, no feature).
Everything else is a :class:`~streamlearn.connectors.errors.RecordError` naming the field:
a missing or unknown field, a wrong type, NaN or infinity, a label outside
``classes``. Readings come as flat objects (``{"day": 2, "period": 0.5,
"label": "UP"}``) or with the features under ``x`` (``{"x": {...}, "label":
"UP"}``); CSV rows (text) go through :meth:`StreamSchema.check_text`, where an
empty cell is a missing value and an empty label means "label comes later".
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Union

from streamlearn.connectors.errors import RecordError
from streamlearn.kafka.labels import LabelRecord
from streamlearn.errors import ConfigError
from streamlearn.kafka.codecs import MAX_FEATURES, MAX_NAME_CHARS, MAX_SAMPLE_JSON_BYTES

__all__ = ["Reading", "StreamSchema", "load_schema", "parse_schema", "FEATURE_TYPES", "DEFAULT_MAX_BYTES"]

FEATURE_TYPES = ("float", "int", "bool")
DEFAULT_MAX_BYTES = 64 << 10  # one sensor reading; far below the topic's 1 MiB per sample
_TOP_KEYS = ("features", "label", "key", "time", "ignore", "max_bytes", "missing")
MISSING_POLICIES = ("null", "reject")
_TRUE = frozenset(("true", "1", "yes"))
_FALSE = frozenset(("false", "0", "no"))


@dataclass(frozen=True)
class Reading:
    """A checked reading: features as finite floats in schema order, label (None: comes later), key, event time."""

    x: dict
    y: Union[None, bool, int, float, str] = None
    key: str | None = None
    ts: float | None = None


def _name(value, what: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME_CHARS or not _utf8(value):
        raise ConfigError(f"{what} must be a non-empty string of at most {MAX_NAME_CHARS} characters, got {value!r}")
    return value


def _utf8(text: str) -> bool:
    # JSON escapes can make lone surrogates ("\ud800"), which no UTF-8 record can carry.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _family(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, numbers.Number):
        return "number"
    return "str"


@dataclass(frozen=True)
class StreamSchema:
    """Feature names and types, label and classes, optional key and time fields of one stream.

    Parameters
    ----------
    features
        ``{name: type}`` or ``[(name, type), ...]`` in the model's order; type is
        ``"float"``, ``"int"`` or ``"bool"`` (booleans become 1.0/0.0). A list of
        names means all float.
    label
        Name of the label field.
    classes
        The labels a reading may carry (strings, integers or booleans, one kind);
        None: any string, integer or boolean label.
    target
        The label is a regression target (a finite number) instead of a class.
    key, time
        Optional fields: a reading's id (delayed labels join on it) and its event
        time (Unix seconds or ISO 8601; naive times are UTC).
    ignore
        Fields dropped without complaint.
    max_bytes
        Largest record accepted, in bytes.
    missing
        ``"null"``: a feature value that is missing (an empty CSV cell, a JSON ``null``) passes as ``None``
        (``null`` on the wire), for the node to impute or skip and count; ``"reject"``: such a record is bad.
        A feature field that is absent from a JSON record is always bad.

    Examples
    --------
    >>> s = StreamSchema({"temp": "float", "door": "bool"}, label="alarm", classes=[False, True], key="id")
    >>> s.check({"temp": 21, "door": True, "alarm": None, "id": "r1"})
    Reading(x={'temp': 21.0, 'door': 1.0}, y=None, key='r1', ts=None)
    >>> s.check({"id": "r1", "alarm": True})
    LabelRecord(key='r1', y=True, node=None, ts=None)
    >>> s.check({"temp": None, "door": False, "alarm": True})
    Reading(x={'temp': None, 'door': 0.0}, y=True, key=None, ts=None)
    >>> s.check({"temp": float("nan"), "door": False, "alarm": True})
    Traceback (most recent call last):
    ...
    streamlearn.connectors.errors.RecordError: must be a finite number (field 'temp', value nan)
    """

    features: Any
    label: str = "y"
    classes: Any = None
    target: bool = False
    key: str | None = None
    time: str | None = None
    ignore: Any = ()
    max_bytes: int = DEFAULT_MAX_BYTES
    missing: str = "null"
    _lookup: dict = field(default=None, init=False, repr=False, compare=False)
    _text_lookup: dict = field(default=None, init=False, repr=False, compare=False)
    _fields: frozenset = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        feats = self.features
        if isinstance(feats, Mapping):
            feats = list(feats.items())
        elif isinstance(feats, (list, tuple)):
            feats = [(f, "float") if isinstance(f, str) else tuple(f) if isinstance(f, (list, tuple)) else f
                     for f in feats]
        else:
            raise ConfigError(f"features must be a table of name = type, or a list of names, got {feats!r}")
        if not 1 <= len(feats) <= MAX_FEATURES:
            raise ConfigError(f"features: declare 1 to {MAX_FEATURES} features, got {len(feats)}")
        clean = []
        for item in feats:
            if not isinstance(item, tuple) or len(item) != 2:
                raise ConfigError(f"features: each entry is (name, type), got {item!r}")
            name, kind = _name(item[0], "feature name"), item[1]
            if kind not in FEATURE_TYPES:
                raise ConfigError(f"feature {name!r}: type must be one of {', '.join(FEATURE_TYPES)}, got {kind!r}")
            clean.append((name, kind))
        object.__setattr__(self, "features", tuple(clean))
        names = [n for n, _ in clean]
        _name(self.label, "label")
        for what in ("key", "time"):
            if getattr(self, what) is not None:
                _name(getattr(self, what), what)
        ignore = self.ignore
        if isinstance(ignore, str) or not isinstance(ignore, (list, tuple)):
            raise ConfigError(f"ignore must be a list of field names, got {ignore!r}")
        ignore = tuple(_name(n, "ignored field") for n in ignore)
        object.__setattr__(self, "ignore", ignore)
        every = names + [self.label] + [n for n in (self.key, self.time) if n is not None] + list(ignore)
        dupes = sorted({n for n in every if every.count(n) > 1})
        if dupes:
            raise ConfigError(f"fields named twice among features, label, key, time and ignore: {dupes}")
        if not isinstance(self.target, bool):
            raise ConfigError(f"target must be true or false, got {self.target!r}")
        if self.classes is not None:
            if self.target:
                raise ConfigError("a regression target (type = \"float\") has no classes")
            if isinstance(self.classes, (str, bytes)) or not isinstance(self.classes, (list, tuple)) \
                    or not self.classes:
                raise ConfigError(f"classes must be a non-empty list, got {self.classes!r}")
            classes = tuple(self.classes)
            for c in classes:
                if isinstance(c, str):
                    _name(c, "class")
                elif isinstance(c, float) or not isinstance(c, (bool, int)):
                    raise ConfigError(f"classes must be strings, integers or booleans, got {c!r}")
            if len({_family(c) for c in classes}) != 1:
                raise ConfigError(f"classes must all be of one kind (strings, integers or booleans), got {classes!r}")
            if len(set(classes)) != len(classes):
                raise ConfigError(f"classes lists a label twice: {classes!r}")
            object.__setattr__(self, "classes", classes)
            object.__setattr__(self, "_lookup", {(_family(c), c): c for c in classes})
            text = {str(c): c for c in classes}
            if isinstance(classes[0], bool):
                text.update({t: True for t in _TRUE if True in classes})
                text.update({t: False for t in _FALSE if False in classes})
            object.__setattr__(self, "_text_lookup", text)
        object.__setattr__(self, "_fields", frozenset(every))
        if self.missing not in MISSING_POLICIES:
            raise ConfigError(f"missing must be one of {', '.join(MISSING_POLICIES)}, got {self.missing!r}")
        mb = self.max_bytes
        if isinstance(mb, bool) or not isinstance(mb, int) or not 2 <= mb <= MAX_SAMPLE_JSON_BYTES:
            raise ConfigError(f"max_bytes must be an integer in [2, {MAX_SAMPLE_JSON_BYTES}], got {mb!r}")

    # ---- views ---------------------------------------------------------------------------------------

    @property
    def feature_names(self) -> list:
        return [n for n, _ in self.features]

    def fields(self) -> frozenset:
        """Every field name a flat record may carry."""
        return self._fields

    def layout(self) -> tuple:
        """``(features, classes)`` for the node service (``NodeConfig(features=..., classes=...)``)."""
        return self.feature_names, None if self.classes is None else list(self.classes)

    def to_dict(self) -> dict:
        """The schema as the dict its file holds (round-trips through :meth:`from_dict`)."""
        out: dict = {}
        for name in ("key", "time"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.ignore:
            out["ignore"] = list(self.ignore)
        if self.max_bytes != DEFAULT_MAX_BYTES:
            out["max_bytes"] = self.max_bytes
        if self.missing != "null":
            out["missing"] = self.missing
        label: dict = {"name": self.label}
        if self.target:
            label["type"] = "float"
        elif self.classes is not None:
            label["classes"] = list(self.classes)
        out["label"] = label
        out["features"] = dict(self.features)
        return out

    @classmethod
    def from_dict(cls, data) -> "StreamSchema":
        """Build from the structure of a schema file; ConfigError naming what is wrong.

        Examples
        --------
        >>> StreamSchema.from_dict({"label": {"name": "c", "classes": [0, 1]}, "features": {"a": "float"}}).classes
        (0, 1)
        """
        if not isinstance(data, Mapping):
            raise ConfigError(f"a schema is a table (TOML) or an object (JSON), got {type(data).__name__}")
        unknown = sorted(set(data) - set(_TOP_KEYS), key=str)
        if unknown:
            raise ConfigError(f"unknown schema entries {unknown}; expected some of {list(_TOP_KEYS)}")
        if "features" not in data:
            raise ConfigError("a schema needs [features]")
        label = data.get("label", "y")
        classes, target = None, False
        if isinstance(label, Mapping):
            extra = sorted(set(label) - {"name", "classes", "type"}, key=str)
            if extra:
                raise ConfigError(f"unknown [label] entries {extra}; expected name, classes, type")
            kind = label.get("type", "class")
            if kind not in ("class", "float"):
                raise ConfigError(f"[label] type must be \"class\" or \"float\", got {kind!r}")
            target = kind == "float"
            classes = label.get("classes")
            label = label.get("name", "y")
        return cls(features=data["features"], label=label, classes=classes, target=target, key=data.get("key"),
                   time=data.get("time"), ignore=data.get("ignore", ()),
                   max_bytes=data.get("max_bytes", DEFAULT_MAX_BYTES), missing=data.get("missing", "null"))

    @classmethod
    def infer(cls, x: Mapping, y=None, *, label: str = "y", target: bool = False, classes=None) -> "StreamSchema":
        """A schema from one example reading: every feature float (river datasets, quick starts).

        Examples
        --------
        >>> StreamSchema.infer({"a": 1.0, "b": 2}, True).feature_names
        ['a', 'b']
        """
        if not isinstance(x, Mapping):
            raise ConfigError(f"cannot infer a schema from {type(x).__name__}: need a dict of features")
        return cls(features=[(str(k), "float") for k in x], label=label, classes=classes, target=target)

    # ---- checks --------------------------------------------------------------------------------------

    def check(self, obj) -> Union[Reading, LabelRecord]:
        """Check a decoded JSON record: a :class:`Reading` or a :class:`LabelRecord`, else RecordError."""
        return self._check(obj, text=False)

    def check_text(self, row: Mapping) -> Union[Reading, LabelRecord]:
        """Check a text row (CSV cells by column name); an empty cell is a missing value.

        Examples
        --------
        >>> s = StreamSchema(["a", "b"], label="c", classes=["UP", "DOWN"])
        >>> s.check_text({"a": "1.5", "b": "2", "c": "UP"})
        Reading(x={'a': 1.5, 'b': 2.0}, y='UP', key=None, ts=None)
        """
        return self._check(row, text=True)

    def _check(self, obj, text: bool):
        if not isinstance(obj, dict):
            raise RecordError("a record must be a JSON object", field="<root>", value=_kind(obj))
        feats, prefix = obj, ""
        nested = "x" in obj and not text and "x" not in self.feature_names
        if nested:
            feats, prefix = obj["x"], "x."
            if not isinstance(feats, dict):
                raise RecordError("must be an object of feature name to value", field="x", value=_kind(feats))
            allowed = {self.label, "x"} | {n for n in (self.key, self.time) if n} | set(self.ignore)
            for name in obj:
                if name not in allowed:
                    raise RecordError("unknown field", field=name, value=obj[name])
            known = set(self.feature_names)
            for name in feats:
                if name not in known:
                    raise RecordError("unknown feature", field=f"x.{name}", value=feats[name])
        else:
            allowed = self.fields()
            for name in obj:
                if name not in allowed:
                    raise RecordError("unknown field", field=name, value=obj[name])
        key = self._key(obj.get(self.key), text) if self.key else None
        ts = self._time(obj.get(self.time), text) if self.time else None
        if not nested and key is not None and not any(_present(obj.get(n), text) for n in self.feature_names):
            y = self._label(obj, text)
            if y is None:
                raise RecordError("a label record (key, no features) needs a label", field=self.label, value=None)
            return LabelRecord(key=key, y=y, ts=ts)
        x = {}
        for name, kind in self.features:
            if name not in feats:
                raise RecordError("missing field", field=prefix + name)
            v = feats[name]
            if v is None or (text and v == ""):
                if self.missing == "reject":
                    raise RecordError("missing value (the schema says missing = \"reject\")", field=prefix + name)
                x[name] = None  # the node imputes or skips it
                continue
            x[name] = _feature(v, kind, prefix + name, text)
        return Reading(x=x, y=self._label(obj, text), key=key, ts=ts)

    def _label(self, obj, text: bool):
        name = self.label
        if name not in obj:
            raise RecordError("missing field (null or an empty cell: the label comes later)", field=name)
        v = obj[name]
        if v is None or (text and v == ""):
            return None
        if self.target:
            return _number(v, name, text)
        if text:
            if not isinstance(v, str):
                raise RecordError("must be text", field=name, value=v)
            if self.classes is None:
                return _label_text(v, name)
            found = self._text_lookup.get(v)
            if found is None and isinstance(self.classes[0], bool):
                found = self._text_lookup.get(v.strip().lower())
            if found is None:
                raise RecordError(f"unknown label, not one of the classes {list(self.classes)}", field=name, value=v)
            return found
        if isinstance(v, float) and not isinstance(v, bool) and v.is_integer() and abs(v) < 2**53:
            v = int(v)  # 1.0 is the class 1
        if isinstance(v, str):
            _label_text(v, name)
        elif not isinstance(v, (bool, int)):
            raise RecordError("a class label must be a string, an integer or a boolean", field=name, value=v)
        if self.classes is None:
            return v
        found = self._lookup.get((_family(v), v))
        if found is None:
            raise RecordError(f"unknown label, not one of the classes {list(self.classes)}", field=name, value=v)
        return found

    def _key(self, v, text: bool) -> str | None:
        if v is None or (text and v == ""):
            return None
        if isinstance(v, int) and not isinstance(v, bool):
            if v.bit_length() > 800:
                raise RecordError(f"longer than {MAX_NAME_CHARS} characters", field=self.key, value=v)
            v = str(v)
        if not isinstance(v, str):
            raise RecordError("must be a string or an integer", field=self.key, value=v)
        if len(v) > MAX_NAME_CHARS:
            raise RecordError(f"longer than {MAX_NAME_CHARS} characters", field=self.key, value=v)
        if not _utf8(v):
            raise RecordError("not valid Unicode (a lone surrogate)", field=self.key, value=v)
        return v

    def _time(self, v, text: bool) -> float | None:
        if v is None or (text and v == ""):
            return None
        if isinstance(v, str):
            try:  # Unix seconds as text; float() first: a RecordError per ISO time costs more than the parse
                float(v)
            except ValueError:
                pass
            else:
                return _number(v, self.time, True)
            try:
                t = datetime.fromisoformat(v.strip())
            except ValueError:
                raise RecordError("must be Unix seconds or an ISO 8601 time", field=self.time, value=v) from None
            if t.tzinfo is None:
                t = t.replace(tzinfo=timezone.utc)
            try:
                return t.timestamp()
            except (OverflowError, OSError, ValueError):
                raise RecordError("time out of range", field=self.time, value=v) from None
        return _number(v, self.time, False)


def _present(v, text: bool) -> bool:
    return v is not None and not (text and v == "")


def _kind(v) -> str:
    return type(v).__name__ if not isinstance(v, (str, int, float)) else repr(v)[:40]


def _label_text(v: str, name: str) -> str:
    if not v or len(v) > MAX_NAME_CHARS:
        raise RecordError(f"a label must be 1 to {MAX_NAME_CHARS} characters", field=name, value=v)
    if not _utf8(v):
        raise RecordError("not valid Unicode (a lone surrogate)", field=name, value=v)
    return v


def _number(v, name: str, text: bool) -> float:
    if text or isinstance(v, str):
        if not isinstance(v, str):
            raise RecordError("must be text", field=name, value=v)
        try:
            f = float(v)
        except ValueError:
            raise RecordError("must be a number", field=name, value=v) from None
    else:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise RecordError("must be a number", field=name, value=v)
        try:
            f = float(v)
        except OverflowError:  # an integer with hundreds of digits
            raise RecordError("number out of float range", field=name, value=v) from None
    if not math.isfinite(f):
        raise RecordError("must be a finite number", field=name, value=v)
    return f


def _feature(v, kind: str, name: str, text: bool) -> float:
    if kind == "float":
        if text:
            return _number(v, name, True)
        if type(v) is float:  # the common case, checked without the generic path
            if math.isfinite(v):
                return v
            raise RecordError("must be a finite number", field=name, value=v)
        if isinstance(v, str):
            raise RecordError("must be a number, not a string", field=name, value=v)
        return _number(v, name, False)
    if kind == "int":
        if not text and isinstance(v, str):
            raise RecordError("must be an integer, not a string", field=name, value=v)
        f = _number(v, name, text)
        if not f.is_integer():
            raise RecordError("must be an integer", field=name, value=v)
        return f
    # bool
    if text:
        t = v.strip().lower() if isinstance(v, str) else v
        if t in _TRUE:
            return 1.0
        if t in _FALSE:
            return 0.0
    elif isinstance(v, bool) or (isinstance(v, int) and v in (0, 1)):
        return float(v)
    raise RecordError("must be a boolean (true/false, 1/0)", field=name, value=v)


# ---- files -----------------------------------------------------------------------------------------


def _toml_loads(text: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ConfigError("TOML schemas need Python 3.11 or the tomli package; write the schema as JSON") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"schema is not valid TOML: {exc}") from None


def _reject_constant(name: str):
    raise ConfigError(f"schema is not valid JSON: {name} is not a JSON value")


def parse_schema(text, fmt: str) -> StreamSchema:
    """Parse schema text (``fmt`` ``"toml"`` or ``"json"``); only ConfigError on bad input.

    Examples
    --------
    >>> parse_schema('[label]\\nname = "c"\\nclasses = [0, 1]\\n[features]\\na = "int"\\n', "toml").features
    (('a', 'int'),)
    """
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"schema is not UTF-8: {exc.reason}") from None
    if not isinstance(text, str):
        raise ConfigError(f"schema text must be str, got {type(text).__name__}")
    if fmt == "toml":
        data = _toml_loads(text)
    elif fmt == "json":
        try:
            data = json.loads(text, parse_constant=_reject_constant)
        except ConfigError:
            raise
        except (ValueError, RecursionError) as exc:
            raise ConfigError(f"schema is not valid JSON: {exc}") from None
    else:
        raise ConfigError(f"schema format must be toml or json, got {fmt!r}")
    try:
        return StreamSchema.from_dict(data)
    except ConfigError:
        raise
    except (TypeError, ValueError, RecursionError) as exc:  # e.g. an unhashable class inside a list
        raise ConfigError(f"bad schema: {exc}") from None


def load_schema(path) -> StreamSchema:
    """Read a schema file: ``.toml`` or ``.json`` (by suffix; otherwise JSON if it starts with ``{``).

    Examples
    --------
    >>> from streamlearn.connectors.schema import SCHEMA_DIR
    >>> load_schema(SCHEMA_DIR / "elec2.toml").layout()
    (['day', 'period', 'nswdemand', 'vicprice', 'vicdemand', 'transfer'], ['DOWN', 'UP'])
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the schema file {str(path)!r}: {exc.strerror or exc}") from None
    suffix = path.suffix.lower()
    if suffix in (".toml", ".json"):
        fmt = suffix[1:]
    else:
        fmt = "json" if data.lstrip()[:1] == b"{" else "toml"
    try:
        return parse_schema(data, fmt)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
