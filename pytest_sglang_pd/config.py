"""The cluster config: load (JSON or YAML), validate (JSON Schema + cross-field checks), type."""

from __future__ import annotations

import difflib
import getpass
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import jsonschema
import yaml

from . import metrics

PLACEHOLDER = "<changeme>"
USER_TOKEN = "{user-id}"
SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "cluster_config.schema.json"
CONFIG_DIR = Path(__file__).resolve().parent / "cluster_configs"
_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# --------------------------------------------------------------------------------------- errors
@dataclass(frozen=True)
class Problem:
    path: str  # JSON path, e.g. $.config.prefill_node_list[0]
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ConfigError(Exception):
    """Every problem of one config file at once."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {len(problems)} problem{'s' if len(problems) != 1 else ''}"]
        lines += [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


# --------------------------------------------------------------------------------------- types
@dataclass(frozen=True)
class Threshold:
    metric: str  # as the user wrote it
    canonical: str  # the metric the suite measures (metrics.METRICS)
    value: float
    direction: str  # "max" (upper bound) | "min" (lower bound)
    explicit: bool  # written as {"min": x} / {"max": x}


@dataclass(frozen=True)
class InferenceTest:
    name: str
    kind: str  # "gsm8k" | "bench_serving"
    dataset: str | None  # bench_serving --dataset-name: random | random-ids | generated-shared-prefix | sharegpt
    backend: str = "sglang"
    bench_client: str = "sglang"
    num_prompts: int = 1000
    num_questions: int = 200
    num_shots: int = 5
    data_path: str | None = None
    dataset_path: str | None = None
    max_concurrency: tuple[int, ...] = (64,)
    request_rate: float = math.inf
    input_length: int = 1024
    output_length: int = 1024
    random_range_ratio: float = 0.0
    gsp_num_groups: int = 1
    gsp_prompts_per_group: int = 16
    gsp_system_prompt_len: int = 0
    gsp_question_len: int = 1024
    gsp_output_len: int = 1024
    seed: int = 1
    warmup_requests: int = 1
    tolerance_pct: float | None = None
    allow_failed_requests: int = 0
    thresholds: tuple[Threshold, ...] = ()

    @property
    def is_sweep(self) -> bool:
        return len(self.max_concurrency) > 1


@dataclass(frozen=True)
class ModelConfig:
    id: str
    model: str
    backend: str = "sglang"
    max_concurrency: int = 64
    prefill_policy: str = "cache_aware"
    decode_policy: str = "cache_aware"
    tensor_parallelism: int = 8
    memory_fraction: float = 0.7
    tokenizer_mode: str = "auto"
    inference_poll_iterations: int = 16
    dtype: str = "auto"
    server_args: tuple[str, ...] = ()
    prefill_server_args: tuple[str, ...] = ()
    decode_server_args: tuple[str, ...] = ()
    sim_model_profile: str | None = None
    tests: tuple[InferenceTest, ...] = ()


@dataclass(frozen=True)
class SSHSettings:
    user: str | None = None  # None: as ~/.ssh/config says, else the local user
    key_file: str | None = None  # None: ~/.ssh/config's IdentityFile, the agent, the default keys
    port: int | None = None  # None: as ~/.ssh/config says, else 22
    connect_timeout: float = 10.0


@dataclass(frozen=True)
class KVTransferSettings:
    backend: str = "mooncake"
    ib_devices: tuple[str, ...] = ()
    bootstrap_port: int = 8998
    env: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Timeouts:
    server_start_s: float = 1800.0
    router_ready_s: float = 600.0
    benchmark_s: float = 7200.0


@dataclass(frozen=True)
class SimSettings:
    gpu: str = "MI355X"
    speedup: float = 1.0
    startup_delay_s: float = 0.0
    kv_payload_bytes_per_token: int = 64
    seed: int = 0
    accuracy: float = 1.0
    faults: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class ContainerConfig:
    device_list: tuple[str, ...] = ()
    volume_dict: Mapping[str, str] = field(default_factory=dict)
    env_dict: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ClusterConfig:
    source: str
    container_image: str
    prefill_nodes: tuple[str, ...]
    decode_nodes: tuple[str, ...]
    router_node: str
    benchmark_node: str
    prefill_port: int
    decode_port: int
    router_port: int
    models: tuple[ModelConfig, ...]
    container_name: str = "sglang_container"
    nnodes: int | None = None
    hf_token_file: str | None = None
    shm_size: str | None = None
    log_dir: str = "/tmp/sglang-pd-logs"
    log_level: str = "info"
    nic_type: str | None = None
    nccl_ib_hca_list: tuple[str, ...] = ()
    nccl_ib_hca: tuple[str, ...] = ()
    nccl_socket_ifname: str | None = None
    gloo_socket_ifname: str | None = None
    gloo_tcp_ifname: str | None = None
    nccl_ib_gid_index: int | None = None
    nccl_debug: str | None = None
    prefill_coordinator_addr: str | None = None
    decode_coordinator_addr: str | None = None
    prefill_coordinator_port: int = 40001
    decode_coordinator_port: int = 40002
    container: ContainerConfig = ContainerConfig()
    engine: str = "sglang"
    runtime: str = "docker"
    transport: str = "ssh"
    bench_client: str = "sglang"
    python: str | None = None
    ssh: SSHSettings = SSHSettings()
    kv_transfer: KVTransferSettings = KVTransferSettings()
    instance_layout: str = "per_node"
    gpus_per_node: int = 8
    router_prometheus_port: int = 29000
    router_args: tuple[str, ...] = ()
    timeouts: Timeouts = Timeouts()
    sim: SimSettings = SimSettings()

    def model(self, model_id: str) -> ModelConfig:
        for m in self.models:
            if m.id == model_id:
                return m
        raise KeyError(f"no model {model_id!r} in {self.source} (have: {', '.join(self.model_ids)})")

    @property
    def model_ids(self) -> tuple[str, ...]:
        return tuple(m.id for m in self.models)

    @property
    def simulated(self) -> bool:
        return self.engine == "sim"


@dataclass(frozen=True)
class InferenceCase:
    """One test of the validation suite: a model, one of its inference tests, one concurrency."""

    model: ModelConfig
    test: InferenceTest
    concurrency: int

    @property
    def id(self) -> str:
        """``<model>-<test>``, with ``-c<N>`` per concurrency of a sweep (the pytest id, the results.json id)."""
        base = f"{self.model.id}-{self.test.name}"
        return f"{base}-c{self.concurrency}" if self.test.is_sweep else base


def cases(cfg: ClusterConfig) -> list[InferenceCase]:
    """Every case of a config: model by model, test by test, each concurrency of a sweep."""
    return [InferenceCase(m, t, c) for m in cfg.models for t in m.tests for c in t.max_concurrency]


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
    if problems:
        raise ConfigError(source, problems)
    cfg, problems = _build(raw, source)
    problems += cross_field_problems(cfg)
    for check in checks:
        problems += check(cfg)
    if problems:
        raise ConfigError(source, problems)
    return cfg


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


def json_path(base: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{base}[{key}]"
    return f"{base}.{key}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key) else f"{base}[{json.dumps(key)}]"


def placeholder_paths(raw: Any) -> list[str]:
    return [p for p, v in _walk(raw) if isinstance(v, str) and PLACEHOLDER in v]


# --------------------------------------------------------------------------------------- schema
def _schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def schema_problems(raw: Any, skip: set[str] = frozenset()) -> list[Problem]:
    schema = _schema()
    validator = jsonschema.Draft202012Validator(schema)
    problems: list[Problem] = []
    for err in sorted(validator.iter_errors(raw), key=lambda e: list(map(str, e.absolute_path))):
        path = "$"
        for part in err.absolute_path:
            path = json_path(path, part)
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
    for key in err.instance:
        if key in known:
            continue
        hint = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        suggestion = f"; did you mean {hint[0]!r}?" if hint else f"; known keys here: {', '.join(sorted(known))}"
        out.append(Problem(json_path(path, key), f"unknown key {key!r}{suggestion}"))
    return out


def _describe(err: jsonschema.ValidationError) -> str:
    expect = err.schema.get("x-expect") if isinstance(err.schema, dict) else None
    if expect:
        return f"expected {expect}, got {json.dumps(err.instance)}"
    if err.validator == "enum":
        return f"{json.dumps(err.instance)} is not one of {', '.join(map(json.dumps, err.validator_value))}"
    if err.validator == "required":
        return err.message.replace("is a required property", "is required but missing")
    if err.validator == "minItems" and not err.instance:
        return "must not be empty"
    return err.message


# --------------------------------------------------------------------------------------- typing
def _int(v: Any) -> int:
    return int(str(v).strip())


def _float(v: Any) -> float:
    return float(str(v).strip())


def _percent(v: Any) -> float:
    return float(str(v).strip().rstrip("%").strip())


def _csv(v: Any) -> tuple[str, ...]:
    if v is None:
        return ()
    items = v if isinstance(v, list) else str(v).split(",")
    return tuple(s.strip() for s in items if s.strip())


def _opt(d: Mapping, key: str, conv, default=None):
    return conv(d[key]) if key in d and d[key] is not None else default


def _build(raw: dict, source: str) -> tuple[ClusterConfig, list[Problem]]:
    c = raw["config"]
    problems: list[Problem] = []
    engine = c.get("engine", "sglang")
    bench_client = c.get("bench_client", "builtin" if engine == "sim" else "sglang")
    models = []
    for model_id, m in raw["benchmark_params"].items():
        model, model_problems = _build_model(model_id, m, bench_client)
        models.append(model)
        problems += model_problems
    ssh = c.get("ssh", {})
    kv = c.get("kv_transfer", {})
    t = c.get("timeouts", {})
    sim = c.get("sim", {})
    cc = c.get("container_config", {})
    hca_list = _csv(c.get("nccl_ib_hca_list"))
    hca = _csv(c.get("nccl_ib_hca"))
    defaults_kv = KVTransferSettings()
    defaults_sim = SimSettings()
    defaults_t = Timeouts()
    cfg = ClusterConfig(
        source=source,
        container_image=c.get("container_image", ""),
        container_name=c.get("container_name", "sglang_container"),
        nnodes=_opt(c, "nnodes", _int),
        hf_token_file=c.get("hf_token_file") or None,
        shm_size=c.get("shm_size"),
        log_dir=c.get("log_dir", ClusterConfig.log_dir),
        log_level=c.get("log_level", "info"),
        nic_type=c.get("nic_type"),
        nccl_ib_hca_list=hca_list,
        nccl_ib_hca=hca,
        nccl_socket_ifname=c.get("nccl_socket_ifname"),
        gloo_socket_ifname=c.get("gloo_socket_ifname"),
        gloo_tcp_ifname=c.get("gloo_tcp_ifname"),
        nccl_ib_gid_index=_opt(c, "nccl_ib_gid_index", _int),
        nccl_debug=c.get("nccl_debug"),
        prefill_nodes=tuple(c["prefill_node_list"]),
        decode_nodes=tuple(c["decode_node_list"]),
        router_node=c["proxy_router_node"],
        benchmark_node=c.get("benchmark_serv_node", c["proxy_router_node"]),
        prefill_port=_int(c["prefill_serv_port"]),
        decode_port=_int(c["decode_serv_port"]),
        router_port=_int(c["proxy_router_port"]),
        prefill_coordinator_addr=c.get("prefill_coordinator_addr") or None,
        decode_coordinator_addr=c.get("decode_coordinator_addr") or None,
        prefill_coordinator_port=_opt(c, "prefill_coordinator_port", _int, 40001),
        decode_coordinator_port=_opt(c, "decode_coordinator_port", _int, 40002),
        container=ContainerConfig(
            device_list=tuple(cc.get("device_list", ())),
            volume_dict=dict(cc.get("volume_dict", {})),
            env_dict=dict(cc.get("env_dict", {})),
        ),
        engine=engine,
        runtime=c.get("runtime", "docker"),
        transport=c.get("transport", "ssh"),
        bench_client=bench_client,
        python=c.get("python"),
        ssh=SSHSettings(
            user=ssh.get("user") or None,
            key_file=os.path.expanduser(ssh["key_file"]) if ssh.get("key_file") else None,
            port=_opt(ssh, "port", _int, None),
            connect_timeout=_opt(ssh, "connect_timeout", _float, 10.0),
        ),
        kv_transfer=KVTransferSettings(
            backend=kv.get("backend", defaults_kv.backend),
            ib_devices=_csv(kv["ib_devices"]) if "ib_devices" in kv else (hca or hca_list),
            bootstrap_port=_opt(kv, "bootstrap_port", _int, defaults_kv.bootstrap_port),
            env=dict(kv.get("env", {})),
        ),
        instance_layout=c.get("instance_layout", "per_node"),
        gpus_per_node=_opt(c, "gpus_per_node", _int, 8),
        router_prometheus_port=_opt(c, "router_prometheus_port", _int, 29000),
        router_args=tuple(c.get("router_args", ())),
        timeouts=Timeouts(
            server_start_s=_opt(t, "server_start_s", _float, defaults_t.server_start_s),
            router_ready_s=_opt(t, "router_ready_s", _float, defaults_t.router_ready_s),
            benchmark_s=_opt(t, "benchmark_s", _float, defaults_t.benchmark_s),
        ),
        sim=SimSettings(
            gpu=sim.get("gpu", defaults_sim.gpu),
            speedup=_opt(sim, "speedup", _float, defaults_sim.speedup),
            startup_delay_s=_opt(sim, "startup_delay_s", _float, defaults_sim.startup_delay_s),
            kv_payload_bytes_per_token=_opt(sim, "kv_payload_bytes_per_token", _int, defaults_sim.kv_payload_bytes_per_token),
            seed=_opt(sim, "seed", _int, defaults_sim.seed),
            accuracy=_opt(sim, "accuracy", _float, defaults_sim.accuracy),
            faults={k: tuple(v) for k, v in sim.get("faults", {}).items()},
        ),
        models=tuple(models),
    )
    if "proxy_router_serv_port" in c and _int(c["proxy_router_serv_port"]) != cfg.router_port:
        problems.append(Problem("$.config.proxy_router_serv_port",
                                f"{_int(c['proxy_router_serv_port'])} differs from proxy_router_port {cfg.router_port}: "
                                "both name the one port the router serves on"))
    return cfg, problems


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
    dtype = m.get("dtype", "auto")
    model_conc = _opt(m, "max_concurrency", _int, 64)
    tests = []
    for name, t in m["inference_tests"].items():
        tpath = json_path(json_path(base, "inference_tests"), name)
        kind, dataset, problem = _classify(name, t)
        if problem:
            problems.append(Problem(tpath, problem))
        conc = t.get("max_concurrency", model_conc)
        conc = tuple(_int(x) for x in conc) if isinstance(conc, list) else (_int(conc),)
        thresholds, tproblems = _thresholds(t.get("expected_results", {}), dtype, json_path(tpath, "expected_results"))
        problems += tproblems
        d = InferenceTest(name=name, kind=kind, dataset=dataset)
        tests.append(InferenceTest(
            name=name, kind=kind, dataset=dataset,
            backend=t.get("backend", "sglang"),
            bench_client=t.get("bench_client", bench_client),
            num_prompts=_opt(t, "num_prompts", _int, d.num_prompts),
            num_questions=_opt(t, "num_questions", _int, d.num_questions),
            num_shots=_opt(t, "num_shots", _int, d.num_shots),
            data_path=t.get("data_path"),
            dataset_path=t.get("dataset_path"),
            max_concurrency=conc,
            request_rate=_opt(t, "request_rate", _float, d.request_rate),
            input_length=_opt(t, "input_length", _int, d.input_length),
            output_length=_opt(t, "output_length", _int, d.output_length),
            random_range_ratio=_opt(t, "random_range_ratio", _float, d.random_range_ratio),
            gsp_num_groups=_opt(t, "gsp_num_groups", _int, d.gsp_num_groups),
            gsp_prompts_per_group=_opt(t, "gsp_prompts_per_group", _int, d.gsp_prompts_per_group),
            gsp_system_prompt_len=_opt(t, "gsp_system_prompt_len", _int, d.gsp_system_prompt_len),
            gsp_question_len=_opt(t, "gsp_question_len", _int, d.gsp_question_len),
            gsp_output_len=_opt(t, "gsp_output_len", _int, d.gsp_output_len),
            seed=_opt(t, "seed", _int, d.seed),
            warmup_requests=_opt(t, "warmup_requests", _int, d.warmup_requests),
            tolerance_pct=_opt(t, "tolerance", _percent),
            allow_failed_requests=_opt(t, "allow_failed_requests", _int, 0),
            thresholds=thresholds,
        ))
    model = ModelConfig(
        id=model_id,
        model=m["model"],
        backend=m.get("backend", "sglang"),
        max_concurrency=model_conc,
        prefill_policy=m.get("prefill_policy", "cache_aware"),
        decode_policy=m.get("decode_policy", "cache_aware"),
        tensor_parallelism=_opt(m, "tensor_parallelism", _int, 8),
        memory_fraction=_opt(m, "memory_fraction", _float, 0.7),
        tokenizer_mode=m.get("tokenizer_mode", "auto"),
        inference_poll_iterations=_opt(m, "inference_poll_iterations", _int, 16),
        dtype=dtype,
        server_args=tuple(m.get("server_args", ())),
        prefill_server_args=tuple(m.get("prefill_server_args", ())),
        decode_server_args=tuple(m.get("decode_server_args", ())),
        sim_model_profile=m.get("sim_model_profile"),
        tests=tuple(tests),
    )
    return model, problems


def _thresholds(expected: Mapping, dtype: str, path: str) -> tuple[tuple[Threshold, ...], list[Problem]]:
    problems = []
    for key, table in expected.items():
        for metric in table:
            if metrics.canonical(metric) is None:
                hint = difflib.get_close_matches(metric, metrics.known_names(), n=1, cutoff=0.6)
                more = f"; did you mean {hint[0]!r}?" if hint else ""
                problems.append(Problem(json_path(json_path(path, key), metric),
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
            out.append(Threshold(metric, canon, _float(value), direction, True))
        else:
            out.append(Threshold(metric, canon, _float(spec), metrics.METRICS[canon].direction, False))
    return tuple(out), problems


# --------------------------------------------------------------------------------------- cross-field
def cross_field_problems(cfg: ClusterConfig) -> list[Problem]:
    """Problems between fields; those that need the plan (two services on one port) are plan.plan_problems."""
    c = "$.config"
    problems: list[Problem] = []
    if cfg.nnodes is not None and cfg.nnodes != len(cfg.prefill_nodes) + len(cfg.decode_nodes):
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
    if cfg.transport == "ssh" and cfg.ssh.key_file and not os.path.isfile(cfg.ssh.key_file):
        problems.append(Problem(f"{c}.ssh.key_file", f"{cfg.ssh.key_file}: no such file on this machine "
                                "(the private key the suite logs in with)"))
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
        if m.tensor_parallelism < 1 or m.tensor_parallelism > cfg.gpus_per_node:
            problems.append(Problem(f"{mpath}.tensor_parallelism",
                                    f"{m.tensor_parallelism} does not fit gpus_per_node {cfg.gpus_per_node}"))
        if not 0 < m.memory_fraction < 1:
            problems.append(Problem(f"{mpath}.memory_fraction", f"{m.memory_fraction} must be between 0 and 1"))
        for role in ("prefill", "decode"):
            nodes = cfg.prefill_nodes if role == "prefill" else cfg.decode_nodes
            n = 1 if cfg.instance_layout == "multi_node" else len(nodes)
            if getattr(m, f"{role}_policy") == "power_of_two" and n < 2:
                problems.append(Problem(f"{mpath}.{role}_policy",
                                        f"power_of_two needs at least 2 {role} instances, the config has {n}"))
        for t in m.tests:
            tpath = json_path(f"{mpath}.inference_tests", t.name)
            if not _ID_PATTERN.match(t.name):
                problems.append(Problem(tpath, f"test name {t.name!r} cannot be used in test ids"))
            if any(x < 1 for x in t.max_concurrency):
                problems.append(Problem(f"{tpath}.max_concurrency", "must be at least 1"))
            if len(set(t.max_concurrency)) != len(t.max_concurrency):
                problems.append(Problem(f"{tpath}.max_concurrency", "lists a value twice"))
            if not 0 <= t.random_range_ratio <= 1:
                problems.append(Problem(f"{tpath}.random_range_ratio", f"{t.random_range_ratio} must be between 0 and 1"))
    return problems
