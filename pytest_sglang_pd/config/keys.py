"""One description per config key: its JSON key, kind, default, range and where it takes effect.

A config dataclass declares each of its keys once, as ``key(...)`` (a dataclass field whose metadata is a
``Key``); from those descriptions come the reading of a section (with a problem at the key's JSON path for
a value out of range), the JSON Schema and the docs' key table. No default is written anywhere else.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

_INT = r"^\s*-?[0-9]+\s*$"
_NUMBER = r"^\s*-?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?\s*$"


def _num_or_string(json_type: str, pattern: str) -> list[dict]:
    return [{"type": json_type}, {"type": "string", "pattern": pattern}]


def to_int(v: Any) -> int:
    return int(str(v).strip())


def to_float(v: Any) -> float:
    return float(str(v).strip())


def to_percent(v: Any) -> float:
    """10, "10" or "10%" -> 10.0."""
    return float(str(v).strip().rstrip("%").strip())


def to_rate(v: Any) -> float:
    return math.inf if str(v).strip() == "inf" else to_float(v)


def to_csv(v: Any) -> tuple[str, ...]:
    """A comma-separated string or a list -> a tuple of its non-empty items."""
    items = v if isinstance(v, list) else str(v).split(",")
    return tuple(s.strip() for s in items if str(s).strip())


def to_bool(v: Any) -> bool:
    """true / false, also as the strings "true" / "false" (the CVS format writes values as strings)."""
    if isinstance(v, bool):
        return v
    text = str(v).strip().lower()
    if text not in ("true", "false"):
        raise ValueError(v)
    return text == "true"


def to_bool_or_int(v: Any) -> bool | int:
    """true / false, or an integer (a count that also means true)."""
    try:
        return to_bool(v)
    except ValueError:
        return to_int(v)


def to_int_list(v: Any) -> tuple[int, ...]:
    return tuple(to_int(x) for x in v) if isinstance(v, list) else (to_int(v),)


@dataclass(frozen=True)
class Kind:
    """How a value is written in the config (its JSON Schema) and read (its converter)."""

    name: str  # as the docs show it
    schema: dict
    convert: Callable[[Any], Any] = lambda v: v
    expect: str | None = None  # what an error says was expected


STRING = Kind("string", {"type": "string"})
TEXT = Kind("non-empty string", {"type": "string", "minLength": 1})
INT = Kind("integer", {"anyOf": _num_or_string("integer", _INT)}, to_int,
           'an integer (a number or a string such as "8")')
_BOOL = [{"type": "boolean"}, {"type": "string", "pattern": r"^\s*(true|false)\s*$"}]
BOOL = Kind("boolean", {"anyOf": _BOOL}, to_bool, 'true or false (or the string "true" / "false")')
BOOL_OR_INT = Kind("boolean or integer", {"anyOf": [*_BOOL, *_num_or_string("integer", _INT)]}, to_bool_or_int,
                   "true, false or an integer")
NUMBER = Kind("number", {"anyOf": _num_or_string("number", _NUMBER)}, to_float,
              'a number (or a string such as "0.7")')
PORT = Kind("port", {"anyOf": _num_or_string("integer", _INT)}, to_int,
            'a TCP port 1-65535 (a number or a string such as "30001")')
PERCENT = Kind("percent", {"anyOf": [{"type": "number"}, {"type": "string", "pattern": r"^\s*-?[0-9]+\.?[0-9]*\s*%?\s*$"}]},
               to_percent, 'a percentage such as 10, "10" or "10%"')
RATE = Kind("requests/s or \"inf\"", {"anyOf": [{"type": "number"}, {"type": "string", "pattern": r"^\s*(inf|-?[0-9]+\.?[0-9]*)\s*$"}]},
            to_rate, 'a number of requests per second, or "inf"')
INT_OR_LIST = Kind("integer or list of integers",
                   {"anyOf": [{"anyOf": _num_or_string("integer", _INT)},
                              {"type": "array", "minItems": 1, "items": {"anyOf": _num_or_string("integer", _INT)}}]},
                   to_int_list, "an integer or a list of integers (a concurrency sweep)")
CSV = Kind("comma list", {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}, to_csv,
           'a comma-separated string or a list of strings')
ARGS = Kind("list of strings", {"type": "array", "items": {"type": "string"}}, tuple)
NODES = Kind("list of nodes", {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}}, tuple)
STRING_MAP = Kind("object of strings", {"type": "object", "additionalProperties": {"type": "string"}}, dict)
LIST_MAP = Kind("object of string lists",
                {"type": "object", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
                lambda v: {k: tuple(x) for k, x in v.items()},
                'an object of role (prefill, decode) or process (prefill_0) -> list of fault specs, such as '
                '{"decode": ["slow=2"]}')
OBJECT = Kind("object", {"type": "object"}, dict)
RELEASE = Kind("release", {"type": "string", "pattern": r"^v?[0-9]+[.][0-9]+"}, str,
               'an SGLang release such as "0.5.23"')


def choice(*values: str) -> Kind:
    return Kind("one of " + ", ".join(values), {"enum": list(values)})


@dataclass(frozen=True)
class Key:
    """A config key as the suite reads it."""

    key: str
    kind: Kind
    effect: str  # where the value takes effect (argv flag, env variable, check) or why it has none
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    required: bool = False
    ignored: str | None = None  # the key is read but the suite cannot honour it: why (a warning when set)
    section: type | None = None  # a nested section (a dataclass of keys)
    default_doc: str | None = None  # the default as the docs say it, where it is derived rather than fixed

    def out_of_range(self, value: Any) -> str | None:
        """Why ``value`` (converted) is out of this key's range, or None."""
        values = value if isinstance(value, tuple) and all(isinstance(v, (int, float)) for v in value) else (value,)
        for v in values:
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            if self.minimum is not None and (v <= self.minimum if self.exclusive_minimum else v < self.minimum):
                return f"{_fmt(v)} is {'at or ' if self.exclusive_minimum else ''}below the minimum: {self.range_text()}"
            if self.maximum is not None and v > self.maximum:
                return f"{_fmt(v)} is above the maximum: {self.range_text()}"
        return None

    def range_text(self) -> str:
        lo = None if self.minimum is None else f"{'>' if self.exclusive_minimum else '>='} {_fmt(self.minimum)}"
        hi = None if self.maximum is None else f"<= {_fmt(self.maximum)}"
        return " and ".join(filter(None, (lo, hi))) or ""


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


def key(json_key: str, default: Any = dataclasses.MISSING, kind: Kind = STRING, effect: str = "", **spec: Any) -> Any:
    """A dataclass field read from ``json_key`` of its section (its only default is the one given here)."""
    meta = {"key": Key(json_key, kind, effect, **spec)}
    if spec.get("section") is not None:
        return dataclasses.field(default_factory=spec["section"], metadata=meta)
    if isinstance(default, dict):
        return dataclasses.field(default_factory=lambda: dict(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def count(json_key: str, default: Any, effect: str, **spec: Any) -> Any:
    """An integer >= 1."""
    return key(json_key, default, INT, effect, minimum=1, **spec)


def port(json_key: str, default: Any, effect: str, **spec: Any) -> Any:
    return key(json_key, default, PORT, effect, minimum=1, maximum=65535, **spec)


def keys_of(cls: type) -> list[tuple[dataclasses.Field, Key]]:
    """The keyed fields of a config dataclass, in declaration order, with the extra keys it reads by hand."""
    out = [(f, f.metadata["key"]) for f in dataclasses.fields(cls) if "key" in f.metadata]
    return out + [(None, k) for k in getattr(cls, "EXTRA_KEYS", ())]


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


@dataclass(frozen=True)
class Problem:
    path: str  # JSON path, e.g. $.config.prefill_node_list[0]
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def json_path(base: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{base}[{name}]"
    return f"{base}.{name}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else f"{base}[{json.dumps(name)}]"


def read(cls: type, raw: Mapping | None, path: str, problems: list[Problem],
         defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Field name -> value of every keyed field of ``cls`` from its section ``raw``; extra keys by their JSON key.

    An absent or null key takes the field's default (or ``defaults[name]``, for defaults derived from other
    keys); a nested section is read recursively; a value that does not convert or is out of range is a
    problem at its JSON path and takes the default.
    """
    raw = raw or {}
    values: dict[str, Any] = {}
    for f, k in keys_of(cls):
        name = f.name if f is not None else k.key
        default = (defaults or {}).get(name, default_of(f) if f is not None else None)
        where = json_path(path, k.key)
        if k.section is not None:
            values[name] = k.section(**read(k.section, raw.get(k.key), where, problems))
            continue
        if raw.get(k.key) is None:
            values[name] = None if default is dataclasses.MISSING else default
            continue
        try:
            value = k.kind.convert(raw[k.key])
        except (TypeError, ValueError, AttributeError):
            problems.append(Problem(where, f"expected {k.kind.expect or k.kind.name}, got {json.dumps(raw[k.key])}"))
            values[name] = default
            continue
        why = k.out_of_range(value)
        if why:
            problems.append(Problem(where, why))
        values[name] = value
    return values


def ignored_keys(cls: type, raw: Mapping | None, path: str) -> list[Problem]:
    """A warning for every key of ``raw`` that the suite reads but cannot honour, recursively."""
    out = []
    for _, k in keys_of(cls):
        if k.section is not None and isinstance((raw or {}).get(k.key), Mapping):
            out += ignored_keys(k.section, raw[k.key], json_path(path, k.key))
        elif k.ignored and (raw or {}).get(k.key) is not None:
            out.append(Problem(json_path(path, k.key), f"is read but has no effect: {k.ignored}"))
    return out


def schema_of(cls: type, refs: Mapping[str, dict] | None = None) -> dict:
    """The JSON Schema of a config section: every key with its kind, enum and range; no other key allowed."""
    props: dict[str, dict] = {}
    for _, k in keys_of(cls):
        if k.section is not None:
            props[k.key] = schema_of(k.section, refs)
            continue
        s = dict((refs or {}).get(k.key) or k.kind.schema)
        if k.kind.expect:
            s["x-expect"] = k.kind.expect
        doc = "; ".join(filter(None, (k.effect, k.range_text() and f"range {k.range_text()}",
                                      k.ignored and f"not honoured: {k.ignored}")))
        if doc:
            s["description"] = doc
        props[k.key] = s
    out: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": props}
    required = [k.key for _, k in keys_of(cls) if k.required]
    if required:
        out["required"] = required
    return out


def table_rows(cls: type, prefix: str) -> list[tuple[str, str, str, str, str]]:
    """(key path, kind, default, range, effect) of every key of a section, nested sections flattened."""
    rows = []
    for f, k in keys_of(cls):
        where = f"{prefix}.{k.key}"
        if k.section is not None:
            rows += table_rows(k.section, where)
            continue
        if k.default_doc is not None:
            default = k.default_doc
        elif f is None or k.required:
            default = "required" if k.required else ""
        else:
            d = default_of(f)
            default = "" if d in (None, (), {}) else json.dumps(d if not isinstance(d, tuple) else list(d))
        effect = k.effect + (f" **Not honoured:** {k.ignored}" if k.ignored else "")
        rows.append((where, k.kind.name, default, k.range_text(), effect))
    return rows
