"""The cluster config: load (JSON or YAML), validate (JSON Schema + ranges + cross-field checks), type.

Every key is described once, on its dataclass field (``keys.key``): the reading, the schema
(``schema()``) and the docs' key table (``key_table()``) come from those descriptions.
"""

from __future__ import annotations

import dataclasses
import difflib
import getpass
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import yaml

from .. import metrics, nic
from .keys import Problem, json_path, read, to_float, to_percent
from . import keys as keys_mod
from .cases import InferenceCase, cases
from .cluster import ClusterConfig, KVTransferSettings, SimSettings, SlurmSettings, SSHSettings, Timeouts
from .hicache import hicache_problems
from .layout import (AGGREGATED, DECODE_ALONE, DISAGGREGATED, ROLES, SYSFS, Layout, RoleSettings, device_map_problems,
                     key_path, layout_problems, read_mooncake_json, resolve, role_nodes, translate_mooncake_json)
from .model import InferenceTest, ModelConfig, Threshold
from .schema import key_table, schema, schema_problems

__all__ = ["AGGREGATED", "CONFIG_DIR", "DECODE_ALONE", "DISAGGREGATED", "PACKAGE_DIR", "ROLES", "SCHEMA_PATH", "SYSFS",
           "ClusterConfig", "ConfigError", "InferenceCase", "InferenceTest", "KVTransferSettings", "Layout", "ModelConfig",
           "Problem", "RoleSettings", "SSHSettings", "SimSettings", "SlurmSettings", "Threshold", "Timeouts",
           "capacity_warnings", "cases", "from_dict", "json_path", "key_path", "key_table", "load", "parse_text", "percent",
           "resolve", "resolve_path", "role_nodes", "schema", "slurm_nodes_needed"]

PLACEHOLDER = "<changeme>"
USER_TOKEN = "{user-id}"
PACKAGE_DIR = Path(__file__).resolve().parent.parent
SCHEMA_PATH = PACKAGE_DIR / "schemas" / "cluster_config.schema.json"
CONFIG_DIR = PACKAGE_DIR / "cluster_configs"
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


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
        cfg, more = _build(raw, source)
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


# --------------------------------------------------------------------------------------- typing
percent = to_percent  # a percentage as the config and the command line write it: 10, "10" or "10%"


def _build(raw: dict, source: str) -> tuple[ClusterConfig, list[Problem]]:
    c = raw["config"]
    problems: list[Problem] = []
    values = read(ClusterConfig, c, "$.config", problems)
    bench_client = values["bench_client"] if c.get("bench_client") else (
        "builtin" if values["engine"] == "sim" else "sglang")
    kv, mooncake_warnings = _kv_transfer(values, c, source, problems)
    ssh = values["ssh"]
    if ssh.key_file:
        ssh = dataclasses.replace(ssh, key_file=os.path.expanduser(ssh.key_file))
    serv_port = values.pop("proxy_router_serv_port")
    models = []
    for model_id, m in raw["benchmark_params"].items():
        model, model_problems = _build_model(model_id, m, bench_client)
        models.append(model)
        problems += model_problems
    values["router_args"] = (*values["router_args"], *values["router"].args)
    cfg = ClusterConfig(**{**values, "source": source, "bench_client": bench_client, "kv_transfer": kv, "ssh": ssh,
                           "benchmark_node": values["benchmark_node"] or values["router_node"],
                           "models": tuple(models)})
    cfg = dataclasses.replace(cfg, warnings=tuple(ignored_keys(raw) + nic_warnings(cfg) + capacity_warnings(cfg)
                                                  + mooncake_warnings))
    if serv_port is not None and serv_port != cfg.router_port:
        problems.append(Problem("$.config.proxy_router_serv_port",
                                f"{serv_port} differs from proxy_router_port {cfg.router_port}: "
                                "both name the one port the router serves on"))
    return cfg, problems


def _kv_transfer(values: dict, c: Mapping, source: str,
                 problems: list[Problem]) -> tuple[KVTransferSettings, list[Problem]]:
    """kv_transfer with its defaults filled in: ib_devices from nccl_ib_hca; a mooncake_json translated into the
    keys SGLang's PD path reads (what it sets explicitly wins). Returns the warnings of that translation."""
    kv = values["kv_transfer"]
    raw_kv = c.get("kv_transfer") or {}
    path = "$.config.kv_transfer.mooncake"
    problems += device_map_problems(kv.mooncake.device_map, f"{path}.device_map")
    warnings: list[Problem] = []
    if raw_kv.get("mooncake") and kv.backend not in ("mooncake", "mooncake_tcp"):
        warnings.append(Problem(path, f"is set, but kv_transfer.backend is {kv.backend!r}: not used"))
    ib_devices = kv.ib_devices if raw_kv.get("ib_devices") else ()
    if kv.mooncake.mooncake_json is not None:
        data, read_problems = read_mooncake_json(kv.mooncake.mooncake_json, Path(source).resolve().parent,
                                                 f"{path}.mooncake_json")
        translated, more, said = translate_mooncake_json(data, f"{path}.mooncake_json")
        problems += read_problems + more
        warnings += said
        ib_devices = ib_devices or translated.get("ib_devices", ())
        if kv.mooncake.protocol is None and "protocol" in translated:
            kv = dataclasses.replace(kv, mooncake=dataclasses.replace(kv.mooncake, protocol=translated["protocol"]))
    return dataclasses.replace(kv, ib_devices=ib_devices or values["nccl_ib_hca"] or values["nccl_ib_hca_list"]), warnings


def ignored_keys(raw: Mapping) -> list[Problem]:
    """A warning for every key the config sets that the suite reads but cannot honour."""
    out = keys_mod.ignored_keys(ClusterConfig, raw.get("config"), "$.config")
    for model_id, m in (raw.get("benchmark_params") or {}).items():
        base = json_path("$.benchmark_params", model_id)
        out += keys_mod.ignored_keys(ModelConfig, m, base)
        for name, t in (m.get("inference_tests") or {}).items():
            out += keys_mod.ignored_keys(InferenceTest, t, json_path(json_path(base, "inference_tests"), name))
    return out


def nic_warnings(cfg: ClusterConfig) -> list[Problem]:
    """A GID index that differs from the one the config's nic_type needs."""
    try:
        profile = nic.profile(cfg.nic_type)
    except KeyError:
        return []  # a problem of cross_field_problems
    if profile and profile.gid_index is not None and cfg.nccl_ib_gid_index not in (None, profile.gid_index):
        return [Problem("$.config.nccl_ib_gid_index",
                        f"{cfg.nccl_ib_gid_index} is kept, but {profile.vendor} NICs (nic_type {cfg.nic_type!r}) "
                        f"need GID index {profile.gid_index} (RoCE v2); unset it to use {profile.gid_index}")]
    return []


def _classify(name: str, t: Mapping) -> tuple[str, str | None, str | None]:
    """(kind, dataset, problem) of an inference test from its name and keys."""
    if t.get("type") == "gsm8k" or (name.lower().startswith("gsm8k") and t.get("type") is None):
        return "gsm8k", None, None
    dataset = t.get("data_set_name")
    if any(k.startswith("gsp_") for k in t) or "shared_prefix" in name.lower():
        if dataset not in (None, "generated-shared-prefix"):
            return "bench_serving", dataset, f"has gsp_* parameters but data_set_name {dataset!r}"
        return "bench_serving", "generated-shared-prefix", None
    if dataset == "synthetic":
        dataset = "random"
    if dataset is None:
        return "bench_serving", None, ("cannot tell which benchmark this is: set \"data_set_name\" "
                                      "(random, random-ids, generated-shared-prefix, sharegpt) or \"type\": \"gsm8k\"")
    return "bench_serving", dataset, None


def _build_model(model_id: str, m: Mapping, bench_client: str) -> tuple[ModelConfig, list[Problem]]:
    base = json_path("$.benchmark_params", model_id)
    problems: list[Problem] = []
    values = read(ModelConfig, m, base, problems)
    values.pop("inference_tests")
    tests = []
    for name, t in m["inference_tests"].items():
        tpath = json_path(json_path(base, "inference_tests"), name)
        kind, dataset, problem = _classify(name, t)
        if problem:
            problems.append(Problem(tpath, problem))
        implied = {"mode": DECODE_ALONE} if values["mode"] == DECODE_ALONE else {}
        if implied and t.get("mode", DECODE_ALONE) != DECODE_ALONE:
            problems.append(Problem(json_path(tpath, "mode"), f"{t['mode']!r}: the model's mode decode_alone "
                                    f"({json_path(base, 'mode')}) deploys no prefill and no router"))
        tv = read(InferenceTest, t, tpath, problems,
                  defaults={"max_concurrency": (values["max_concurrency"],), "bench_client": bench_client, **implied})
        if t.get("num_prompts") is None and dataset == "generated-shared-prefix":  # every group's prompts
            tv["num_prompts"] = tv["gsp_num_groups"] * tv["gsp_prompts_per_group"]
        if kind == "bench_serving" and t.get("max_concurrency") is None:  # the seed suite: every prompt at once
            tv.update(unbounded=True, max_concurrency=(tv["num_prompts"],))
        for extra in ("type", "data_set_name"):
            tv.pop(extra)
        thresholds, tproblems = _thresholds(tv.pop("expected_results") or {}, values["dtype"],
                                            json_path(tpath, "expected_results"))
        problems += tproblems
        if tv.get("window") == "steady":
            thresholds = _steady(thresholds, json_path(tpath, "window"), problems)
        tests.append(InferenceTest(name=name, kind=kind, dataset=dataset, thresholds=thresholds, **tv))
    return ModelConfig(id=model_id, tests=tuple(tests), **values), problems


def _steady(thresholds: tuple[Threshold, ...], path: str, problems: list[Problem]) -> tuple[Threshold, ...]:
    """``window: steady``: each limit gates the metric's figure over the steady-state window (``steady_<name>``)."""
    out = []
    for t in thresholds:
        steady = f"steady_{t.canonical}"
        if steady not in metrics.METRICS:
            have = ", ".join(sorted(m[len("steady_"):] for m in metrics.METRICS if m.startswith("steady_")
                                    and metrics.METRICS[m].unit in ("tok/s", "req/s", "ms")))
            problems.append(Problem(path, f"{t.metric} has no steady-state figure (window steady gates: {have})"))
            continue
        out.append(dataclasses.replace(t, canonical=steady))
    return tuple(out)


def _thresholds(expected: Mapping, dtype: str, path: str) -> tuple[tuple[Threshold, ...], list[Problem]]:
    problems = []
    for dtype_key, table in expected.items():
        for metric in table:
            if metrics.canonical(metric) is None:
                hint = difflib.get_close_matches(metric, metrics.known_names(), n=1, cutoff=0.6)
                more = f"; did you mean {hint[0]!r}?" if hint else ""
                problems.append(Problem(json_path(json_path(path, dtype_key), metric),
                                        f"the suite cannot measure {metric!r}{more}"))
    if not expected:
        return (), problems
    if dtype not in expected:
        problems.append(Problem(path, f"no entry for the model's dtype {dtype!r} (have: {', '.join(expected)}); "
                                      "set the model's \"dtype\" or add that key"))
        return (), problems
    out = []
    for metric, spec in expected[dtype].items():
        canon = metrics.canonical(metric)
        if canon is None:
            continue
        if isinstance(spec, dict):
            (direction, value), = spec.items()
            out.append(Threshold(metric, canon, to_float(value), direction, True))
        else:
            out.append(Threshold(metric, canon, to_float(spec), metrics.METRICS[canon].direction, False))
    return tuple(out), problems


# --------------------------------------------------------------------------------------- cross-field
def slurm_nodes_needed(cfg: ClusterConfig) -> int:
    """Nodes a Slurm run needs: those the config names, 1 router node when it names none, and slurm.prefill_nodes /
    slurm.decode_nodes where the node lists are omitted."""
    s = cfg.slurm
    named = {*cfg.prefill_nodes, *cfg.decode_nodes, *filter(None, [cfg.router_node])}
    return len(named) + (0 if cfg.router_node else 1) + (0 if cfg.prefill_nodes else s.prefill_nodes) + \
        (0 if cfg.decode_nodes else s.decode_nodes)


def _slurm_problems(cfg: ClusterConfig) -> list[Problem]:
    """A slurm section without transport slurm; an allocation too small for the nodes the roles need."""
    c = "$.config.slurm"
    if cfg.transport != "slurm":
        return [Problem(c, f"is read only with \"transport\": \"slurm\" (transport is {cfg.transport!r})")] \
            if cfg.slurm != SlurmSettings() else []
    s = cfg.slurm
    needed = slurm_nodes_needed(cfg)
    if s.containers == "pyxis" and cfg.runtime != "docker":
        return [Problem(f"{c}.containers", f"pyxis starts the containers of runtime docker; runtime is {cfg.runtime!r}")]
    if s.nodes is not None and s.nodes < needed:
        return [Problem(f"{c}.nodes", f"{s.nodes} is fewer than the {needed} nodes the roles need "
                                      "(1 router node + the prefill and decode nodes)")]
    return []


def _slurm_role_nodes(cfg: ClusterConfig, role: str) -> int:
    """How many nodes a Slurm allocation will give a role the config names no nodes for (0 off Slurm)."""
    if cfg.transport != "slurm":
        return 0
    return cfg.slurm.prefill_nodes + cfg.slurm.decode_nodes if role == AGGREGATED else getattr(cfg.slurm, f"{role}_nodes")


def cross_field_problems(cfg: ClusterConfig) -> list[Problem]:
    """Problems between fields; those that need the plan (two services on one port) are plan.plan_problems."""
    c = "$.config"
    problems: list[Problem] = []
    if cfg.transport != "slurm":
        for name, value in (("prefill_node_list", cfg.prefill_nodes), ("decode_node_list", cfg.decode_nodes),
                            ("proxy_router_node", cfg.router_node)):
            if not value:
                problems.append(Problem(f"{c}.{name}", "is required but missing (only with \"transport\": "
                                                       "\"slurm\" do the nodes come from the allocation)"))
    problems += _slurm_problems(cfg)
    if cfg.nnodes is not None and cfg.prefill_nodes and cfg.nnodes != len(cfg.prefill_nodes) + len(cfg.decode_nodes):
        problems.append(Problem(f"{c}.nnodes", f"{cfg.nnodes} does not match the node lists: "
                                               f"{len(cfg.prefill_nodes)} prefill + {len(cfg.decode_nodes)} decode = "
                                               f"{len(cfg.prefill_nodes) + len(cfg.decode_nodes)}"))
    if cfg.instance_layout == "multi_node":
        for role, nodes in (("prefill", cfg.prefill_nodes), ("decode", cfg.decode_nodes)):
            if len(set(nodes)) != len(nodes):
                problems.append(Problem(f"{c}.{role}_node_list", "multi_node layout: a node may appear only once"))
            if len(nodes) > 1 and not getattr(cfg, f"{role}_coordinator_addr"):
                problems.append(Problem(f"{c}.{role}_coordinator_addr",
                                        f"multi_node layout with {len(nodes)} {role} nodes needs a coordinator address"))
    problems += layout_problems(cfg)
    for m in cfg.models:
        problems += hicache_problems(m, json_path("$.benchmark_params", m.id))
    if cfg.transport == "ssh" and cfg.ssh.key_file and not os.path.isfile(cfg.ssh.key_file):
        problems.append(Problem(f"{c}.ssh.key_file", f"{cfg.ssh.key_file}: no such file on this machine "
                                "(the private key the suite logs in with)"))
    try:
        nic.profile(cfg.nic_type)
    except KeyError:
        problems.append(Problem(f"{c}.nic_type", f"unknown NIC type {cfg.nic_type!r}; known: {', '.join(nic.known_types())}"))
    if cfg.router_package == "smg" and "--mini-lb" in cfg.router_args:
        problems.append(Problem(f"{c}.router_args", "smg has no --mini-lb (sglang-router 0.3.2 had it)"))
    if cfg.runtime == "docker" and not cfg.container_image:
        problems.append(Problem(f"{c}.container_image", "runtime docker needs a container image"))
    if cfg.kv_transfer.backend == "tcp" and not cfg.simulated:
        problems.append(Problem(f"{c}.kv_transfer.backend", "'tcp' is the simulator's own socket transfer; "
                                                            "real sglang workers need mooncake, nixl, mooncake_tcp or mori"))
    if cfg.kv_transfer.backend == "mori" and cfg.simulated:
        problems.append(Problem(f"{c}.kv_transfer.backend", "the simulated worker supports mooncake, mooncake_tcp, nixl and tcp, not mori"))
    for m in cfg.models:
        mpath = json_path("$.benchmark_params", m.id)
        if not _ID_PATTERN.match(m.id):
            problems.append(Problem(mpath, f"model id {m.id!r} cannot be used in test ids: use letters, digits, '.', '_' or '-'"))
        for role in m.roles:
            count = len(role_nodes(cfg, role)) or _slurm_role_nodes(cfg, role)
            n = 1 if cfg.instance_layout == "multi_node" else count * m.layout(role).instances_per_node
            if getattr(m, f"{'decode' if role == 'decode' else 'prefill'}_policy") == "power_of_two" and n < 2:
                problems.append(Problem(f"{mpath}.{role}_policy",
                                        f"power_of_two needs at least 2 {role} instances, the config has {n}"))
        for t in m.tests:
            tpath = json_path(f"{mpath}.inference_tests", t.name)
            if not _ID_PATTERN.match(t.name):
                problems.append(Problem(tpath, f"test name {t.name!r} cannot be used in test ids"))
            if len(set(t.max_concurrency)) != len(t.max_concurrency):
                problems.append(Problem(f"{tpath}.max_concurrency", "lists a value twice"))
            if t.decode_alone and t.kind == "gsm8k":
                problems.append(Problem(f"{tpath}.mode", "decode_alone measures decode throughput with bench_serving "
                                                         "workloads; a gsm8k test needs its prefill (mode pd)"))
    return problems


def capacity_warnings(cfg: ClusterConfig) -> list[Problem]:
    """Limits that no cluster can meet at the test's concurrency (Little's law): an output throughput limit above
    concurrency x 1000 / the mean TPOT limit (each stream makes at most 1000 / TPOT tokens per second)."""
    warnings = []
    for m in cfg.models:
        for t in m.tests:
            limits = {th.canonical: th.value for th in t.thresholds}
            tput, tpot = limits.get("output_throughput"), limits.get("mean_tpot_ms")
            if not tput or not tpot:
                continue
            for conc in t.max_concurrency:
                ceiling = conc * 1000.0 / tpot
                if tput > ceiling:
                    path = json_path(json_path(json_path("$.benchmark_params", m.id), "inference_tests"), t.name)
                    warnings.append(Problem(f"{path}.expected_results", (
                        f"output throughput limit {tput:g} tok/s cannot be met at concurrency {conc}: with the mean "
                        f"TPOT limit {tpot:g} ms it needs about {tput * tpot / 1000:g} requests in flight, and "
                        f"{conc} streams make at most {ceiling:g} tok/s (Little's law)")))
    return warnings
