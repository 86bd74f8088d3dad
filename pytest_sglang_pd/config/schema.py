"""The config format's JSON Schema and the docs' key table, both made from the keys' descriptions; the schema's
errors as problems at their JSON paths (an unknown key with the nearest known one)."""

from __future__ import annotations

import difflib
import json
from typing import Any

import jsonschema

from . import keys as keys_mod
from .cluster import ClusterConfig
from .keys import NUMBER, Problem, json_path
from .model import InferenceTest, ModelConfig

_THRESHOLD = {
    "x-expect": 'a number, or {"min": x} / {"max": x}',
    "anyOf": [NUMBER.schema, {"type": "object", "additionalProperties": False, "minProperties": 1,
                              "maxProperties": 1, "properties": {"min": NUMBER.schema, "max": NUMBER.schema}}],
}


def schema() -> dict:
    """The JSON Schema of the config format, made from the keys' descriptions."""
    test = keys_mod.schema_of(InferenceTest, {"expected_results": {
        "type": "object", "additionalProperties": {"type": "object", "additionalProperties": _THRESHOLD}}})
    model = keys_mod.schema_of(ModelConfig, {"inference_tests": {
        "type": "object", "minProperties": 1, "additionalProperties": test}})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "pytest-sglang-pd cluster config",
        "description": "The CVS sglang_disagg_pd cluster config format, with optional pytest-sglang-pd extensions. "
                       'Numbers may be written as strings ("8"). Generated from the keys\' descriptions '
                       "(sglang-pd schema).",
        "type": "object", "additionalProperties": False, "required": ["config", "benchmark_params"],
        "properties": {"config": keys_mod.schema_of(ClusterConfig),
                       "benchmark_params": {"type": "object", "minProperties": 1, "additionalProperties": model}},
    }


def key_table() -> str:
    """The docs' table of every key (Markdown), from the keys' descriptions."""
    lines = ["| key | kind | default | range | effect |", "|---|---|---|---|---|"]
    for prefix, cls in (("config", ClusterConfig), ("benchmark_params.<model>", ModelConfig),
                        ("benchmark_params.<model>.inference_tests.<test>", InferenceTest)):
        for where, kind, default, rng, effect in keys_mod.table_rows(cls, prefix):
            cells = (f"`{where}`", kind, f"`{default}`" if default and default != "required" else default, rng, effect)
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def schema_problems(raw: Any, skip: set[str] = frozenset()) -> list[Problem]:
    validator = jsonschema.Draft202012Validator(schema())
    problems: list[Problem] = []
    for err in sorted(validator.iter_errors(raw), key=lambda e: list(map(str, e.absolute_path))):
        path = "$"
        for part in err.absolute_path:
            path = json_path(path, part)
        if err.validator == "required":
            path = json_path(path, err.message.split("'")[1])  # the missing key itself
        if path in skip:
            continue
        if err.validator == "additionalProperties":
            problems += _unknown_keys(err, path)
        else:
            problems.append(Problem(path, _describe(err)))
    return problems


def _unknown_keys(err: jsonschema.ValidationError, path: str) -> list[Problem]:
    known = list(err.schema.get("properties", {}))
    out = []
    for name in err.instance:
        if name in known:
            continue
        hint = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        suggestion = f"; did you mean {hint[0]!r}?" if hint else f"; known keys here: {', '.join(sorted(known))}"
        out.append(Problem(json_path(path, name), f"unknown key {name!r}{suggestion}"))
    return out


def _describe(err: jsonschema.ValidationError) -> str:
    expect = err.schema.get("x-expect") if isinstance(err.schema, dict) else None
    if expect:
        return f"expected {expect}, got {json.dumps(err.instance)}"
    if err.validator == "enum":
        return f"{json.dumps(err.instance)} is not one of {', '.join(map(json.dumps, err.validator_value))}"
    if err.validator == "required":
        return "is required but missing"
    if err.validator in ("minItems", "minProperties") and not err.instance:
        return "must not be empty"
    return err.message
