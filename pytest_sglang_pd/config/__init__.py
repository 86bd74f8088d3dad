"""The cluster config: load (JSON or YAML), validate (JSON Schema + ranges + cross-field checks), type.

Every key is described once, on its dataclass field (``keys.key``): the reading, the schema
(``schema()``) and the docs' key table (``key_table()``) come from those descriptions.

This module reads a file (``load``, ``from_dict``) and hands on the package's names; beside it stand the types
(``model.py``, ``cluster.py``, ``cases.py``), the typing of the raw JSON (``build.py``), the checks between fields
(``checks.py``) and the schema (``schema.py``).
"""

from __future__ import annotations

import difflib
import getpass
import json
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import yaml

from .build import build_config
from .cases import InferenceCase, cases
from .checks import capacity_warnings, cross_field_problems, slurm_nodes_needed
from .cluster import ClusterConfig, KVTransferSettings, SimSettings, SlurmSettings, SSHSettings, Timeouts
from .keys import Problem, json_path, to_percent
from .layout import (AGGREGATED, DECODE_ALONE, DISAGGREGATED, ROLES, SYSFS, Layout, RoleSettings, key_path, resolve,
                     role_nodes)
from .model import InferenceTest, ModelConfig, Threshold
from .schema import key_table, schema, schema_problems

__all__ = ["AGGREGATED", "CONFIG_DIR", "DECODE_ALONE", "DISAGGREGATED", "PACKAGE_DIR", "ROLES", "SCHEMA_PATH", "SYSFS",
           "ClusterConfig", "ConfigError", "InferenceCase", "InferenceTest", "KVTransferSettings", "Layout",
           "ModelConfig", "Problem", "RoleSettings", "SSHSettings", "SimSettings", "SlurmSettings", "Threshold",
           "Timeouts", "capacity_warnings", "cases", "from_dict", "json_path", "key_path", "key_table", "load",
           "parse_text", "percent", "resolve", "resolve_path", "role_nodes", "schema", "slurm_nodes_needed"]

PLACEHOLDER = "<changeme>"
USER_TOKEN = "{user-id}"
PACKAGE_DIR = Path(__file__).resolve().parent.parent
SCHEMA_PATH = PACKAGE_DIR / "schemas" / "cluster_config.schema.json"
CONFIG_DIR = PACKAGE_DIR / "cluster_configs"
percent = to_percent  # a percentage as the config and the command line write it: 10, "10" or "10%"


# --------------------------------------------------------------------------------------- errors
class ConfigError(Exception):
    """Every problem of one config file at once."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {len(problems)} problem{'s' if len(problems) != 1 else ''}"]
        lines += [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


Check = Callable[[ClusterConfig], list[Problem]]  # more problems of a typed config (the plan's, for one)


# --------------------------------------------------------------------------------------- loading
def resolve_path(name: str | Path) -> Path:
    """A config path as given, or a bare file name looked up in the shipped cluster_configs/."""
    path = Path(name)
    if path.exists() or path.is_absolute() or len(path.parts) > 1:
        return path
    shipped = CONFIG_DIR / path
    return shipped if shipped.exists() else path


def not_found(name: Path) -> str:
    """Every place a config name was looked for, and the nearest existing config file's name (difflib)."""
    places = [name.resolve()] + ([] if name.is_absolute() or len(name.parts) > 1 else [CONFIG_DIR / name])
    near = {}
    for folder in dict.fromkeys(p.parent for p in places):
        if folder.is_dir():
            near.update({f.name: f for f in sorted(folder.iterdir()) if f.suffix in (".json", ".yaml", ".yml")})
    close = difflib.get_close_matches(name.name, list(near), n=1, cutoff=0.6)
    hint = f"; did you mean {near[close[0]]}?" if close else ""
    return "no such config file; looked for " + " and ".join(str(p) for p in places) + hint


def load(name: str | Path, *, user: str | None = None, checks: Sequence[Check] = ()) -> ClusterConfig:
    """Load, validate and type a cluster config; raises ConfigError listing every problem (those ``checks``
    find too: ``plan.load_config`` adds the plan's)."""
    path = resolve_path(name)
    source = str(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(source, [Problem("$", not_found(Path(name)))]) from None
    except OSError as exc:
        raise ConfigError(source, [Problem("$", f"cannot read the config file: {exc.strerror}")]) from None
    raw = parse_text(text, source)
    return from_dict(raw, source=source, user=user, checks=checks)


def parse_text(text: str, source: str) -> Any:
    if source.endswith((".yaml", ".yml")):
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(source, [Problem("$", f"not valid YAML: {exc}")]) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(source, [Problem("$", f"not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")]) from None


def from_dict(raw: Any, *, source: str = "<config>", user: str | None = None,
              checks: Sequence[Check] = ()) -> ClusterConfig:
    if not isinstance(raw, dict):
        raise ConfigError(source, [Problem("$", f"the config must be an object with 'config' and 'benchmark_params', got {type(raw).__name__}")])
    raw = substitute_user(raw, user or getpass.getuser())
    problems = [Problem(p, f"still holds the placeholder {PLACEHOLDER}: fill it in") for p in placeholder_paths(raw)]
    problems += schema_problems(raw, skip=set(p.path for p in problems))
    try:  # the later stages too, so that one run lists every problem of the file
        cfg, more = build_config(raw, source)
        more += cross_field_problems(cfg)
        for check in checks:
            more += check(cfg)
    except (KeyError, TypeError, AttributeError, ValueError):
        if not problems:
            raise
        more = []  # the file's shape is too broken to type; the problems above say why
    # a later stage's problem already told above, or one about a value that is still a placeholder, is not new
    problems += [p for p in more if not _under(p.path, [q.path for q in problems]) and PLACEHOLDER not in p.message]
    if problems:
        raise ConfigError(source, problems)
    return cfg


def _under(path: str, reported: Sequence[str]) -> bool:
    """Whether a problem at ``path`` is already told by one at it or above it."""
    return any(path == r or path.startswith((r + ".", r + "[")) for r in reported)


def substitute_user(value: Any, user: str) -> Any:
    if isinstance(value, str):
        return value.replace(USER_TOKEN, user)
    if isinstance(value, list):
        return [substitute_user(v, user) for v in value]
    if isinstance(value, dict):
        return {substitute_user(k, user): substitute_user(v, user) for k, v in value.items()}
    return value


def _walk(value: Any, path: str = "$") -> Iterator[tuple[str, Any]]:
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, json_path(path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, f"{path}[{i}]")


def placeholder_paths(raw: Any) -> list[str]:
    return [p for p, v in _walk(raw) if isinstance(v, str) and PLACEHOLDER in v]
