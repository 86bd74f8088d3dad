"""The cluster config: load (JSON or YAML), validate (JSON Schema + ranges + cross-field checks), type.

Every key is described once, on its dataclass field (``keys.key``): the reading, the schema
(``schema()``) and the docs' key table (``key_table()``) come from those descriptions.
"""

from __future__ import annotations

import dataclasses
import difflib
import getpass
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import jsonschema
import yaml

from .. import metrics, nic, releases
from .keys import (ARGS, BOOL_OR_INT, CSV, INT, INT_OR_LIST, LIST_MAP, NODES, NUMBER, OBJECT, PERCENT, RATE, RELEASE,
                   STRING, STRING_MAP, TEXT, Key, Kind, Problem, choice, count, json_path, key, port, read, to_float,
                   to_percent)
from . import keys as keys_mod
from .hicache import HiCacheSettings, hicache_problems
from .layout import (AGGREGATED, DECODE_ALONE, DISAGGREGATED, LOAD_BALANCE_METHODS, ROLES, SYSFS, Layout, MooncakeSettings,
                     RoleSettings, device_map_problems, key_path, layout_problems, read_mooncake_json, resolve,
                     role_nodes, translate_mooncake_json)

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


# --------------------------------------------------------------------------------------- types
# Each keyed field is the one description of its key (keys.py): JSON key, kind, default, range, effect.
POLICIES = ("cache_aware", "fcfs", "round_robin", "random", "power_of_two")
WORKER_ARGV = "worker argv"
NOT_SEEN_BY_WORKERS = "the suite's own setting"


@dataclass(frozen=True)
class Threshold:
    metric: str  # as the user wrote it
    canonical: str  # the metric the suite measures (metrics.METRICS)
    value: float
    direction: str  # "max" (upper bound) | "min" (lower bound)
    explicit: bool  # written as {"min": x} / {"max": x}


_SLO_DEFAULT = "the loosest {} upper limit (any statistic) in expected_results, else none"


@dataclass(frozen=True)
class SLOSettings:
    """A test's per-request latency limits for goodput (bench/figures.py)."""

    ttft_ms: float | None = key("ttft_ms", None, NUMBER, "a request's TTFT limit, ms", minimum=0,
                                exclusive_minimum=True, default_doc=_SLO_DEFAULT.format("TTFT"))
    tpot_ms: float | None = key("tpot_ms", None, NUMBER, "a request's TPOT limit, ms", minimum=0,
                                exclusive_minimum=True, default_doc=_SLO_DEFAULT.format("TPOT"))
    itl_ms: float | None = key("itl_ms", None, NUMBER, "a request's mean inter-token latency limit, ms", minimum=0,
                               exclusive_minimum=True, default_doc=_SLO_DEFAULT.format("ITL"))


@dataclass(frozen=True)
class InferenceTest:
    EXTRA_KEYS = (
        Key("type", choice("gsm8k", "bench_serving"), "which benchmark (else told from the name and data_set_name)"),
        Key("data_set_name", choice("random", "random-ids", "generated-shared-prefix", "sharegpt", "synthetic"),
            "bench_serving --dataset-name (synthetic = random)"),
        Key("expected_results", OBJECT, "dtype key (the model's dtype) -> metric -> limit: the test's gates"),
    )
    name: str
    kind: str  # "gsm8k" | "bench_serving"
    dataset: str | None  # bench_serving --dataset-name: random | random-ids | generated-shared-prefix | sharegpt
    backend: str = key("backend", "sglang", choice("sglang", "sglang-oai", "sglang-oai-chat"),
                       "bench_serving --backend (the builtin client: which API it streams)")
    bench_client: str = key("bench_client", "sglang", choice("sglang", "builtin"),
                            "sglang: SGLang's own bench_serving / few_shot_gsm8k; builtin: the suite's client",
                            default_doc="config.bench_client")
    num_prompts: int = count("num_prompts", 1000, "bench_serving --num-prompts",
                             default_doc="1000; generated-shared-prefix: gsp_num_groups x gsp_prompts_per_group")
    num_questions: int = count("num_questions", 200, "few_shot_gsm8k --num-questions")
    num_shots: int = key("num_shots", 5, INT, "few_shot_gsm8k --num-shots", minimum=0)
    data_path: str | None = key("data_path", None, STRING, "few_shot_gsm8k --data-path (a GSM8K jsonl on the bench node)")
    dataset_path: str | None = key("dataset_path", None, STRING, "bench_serving --dataset-path")
    max_concurrency: tuple[int, ...] = key("max_concurrency", (64,), INT_OR_LIST,
                                           "bench_serving --max-concurrency; a list is a sweep, one test each",
                                           minimum=1, default_doc="gsm8k: the model's max_concurrency; bench_serving: "
                                           "none, every prompt at once (the seed suite's command)")
    request_rate: float = key("request_rate", math.inf, RATE, "bench_serving --request-rate",
                              minimum=0, exclusive_minimum=True, default_doc='"inf"')
    input_length: int = count("input_length", 1024, "bench_serving --random-input-len")
    output_length: int = count("output_length", 1024, "bench_serving --random-output-len")
    random_range_ratio: float = key("random_range_ratio", 0.0, NUMBER, "bench_serving --random-range-ratio",
                                    minimum=0, maximum=1)
    gsp_num_groups: int = count("gsp_num_groups", 1, "bench_serving --gsp-num-groups")
    gsp_prompts_per_group: int = count("gsp_prompts_per_group", 16, "bench_serving --gsp-prompts-per-group")
    gsp_system_prompt_len: int = key("gsp_system_prompt_len", 0, INT, "bench_serving --gsp-system-prompt-len",
                                     minimum=0)
    gsp_question_len: int = count("gsp_question_len", 1024, "bench_serving --gsp-question-len")
    gsp_output_len: int = count("gsp_output_len", 1024, "bench_serving --gsp-output-len")
    seed: int = key("seed", 1, INT, "bench_serving --seed (the builtin client's prompts too)", minimum=0)
    warmup_requests: int = key("warmup_requests", 1, INT, "bench_serving --warmup-requests", minimum=0)
    tolerance_pct: float | None = key("tolerance", None, PERCENT, "slack on every limit of the test, in percent",
                                      minimum=0, default_doc="--perf-tolerance, else 0")
    allow_failed_requests: int = key("allow_failed_requests", 0, INT, "failed requests the test tolerates",
                                     minimum=0)
    window: str = key("window", "whole", choice("whole", "steady"), "which figures the limits gate: the whole run, or "
                      "the steady-state window (steady_* figures; the builtin client records the start times it needs)")
    steady_state_ratio: float = key("steady_state_ratio", 0.8, NUMBER, "the steady-state window: the longest interval "
                                    "with in-flight requests >= this x their peak (SGLang's "
                                    "--steady-state-concurrency-ratio)", minimum=0, exclusive_minimum=True, maximum=1)
    repeats: int = count("repeats", 1, "benchmark runs on the same deployment; each metric's mean is gated, with its "
                         "standard deviation, CV and 95% confidence interval recorded", default_doc="--repeats, else 1")
    max_cv_pct: float | None = key("max_cv_pct", None, PERCENT, "a gated metric whose coefficient of variation over "
                                   "the repeats exceeds this fails as unstable (needs repeats >= 2)", minimum=0,
                                   default_doc="unset: not checked")
    mode: str = key("mode", "pd", choice("pd", "decode_alone"),
                    "pd: requests through the router, prefill -> decode; decode_alone: straight to the first decode "
                    "worker with SGLang's fake bootstrap host (bench_serving --fake-prefill), so no prefill computes and "
                    "no KV moves: decode measured alone, at a batch as large as max_concurrency (bench_serving only); "
                    "implied by the model's mode decode_alone")
    slo: SLOSettings = key("slo", section=SLOSettings, effect="the per-request SLO of goodput and slo_attainment; "
                           "any key set here replaces every limit taken from expected_results")
    thresholds: tuple[Threshold, ...] = ()
    unbounded: bool = False  # bench_serving without --max-concurrency: every prompt at once (the seed's meaning)

    @property
    def is_sweep(self) -> bool:
        return len(self.max_concurrency) > 1

    @property
    def decode_alone(self) -> bool:
        return self.mode == "decode_alone"


@dataclass(frozen=True)
class ModelConfig:
    EXTRA_KEYS = (Key("inference_tests", OBJECT, "test name -> inference test", required=True),)
    id: str
    model: str = key("model", kind=TEXT, effect=f"{WORKER_ARGV} --model-path; bench_serving --model", required=True)
    backend: str = key("backend", "sglang", choice("sglang"), "the serving engine (SGLang)")
    max_concurrency: int = count("max_concurrency", 64, "the default max_concurrency of the model's tests")
    prefill_policy: str = key("prefill_policy", "cache_aware", choice(*POLICIES),
                              "router --prefill-policy; prefill workers' --schedule-policy (aggregated mode: router "
                              "--policy and every worker's --schedule-policy)")
    decode_policy: str = key("decode_policy", "cache_aware", choice(*POLICIES),
                             "router --decode-policy; decode workers' --schedule-policy")
    tensor_parallelism: int = count("tensor_parallelism", 8, f"{WORKER_ARGV} --tp-size (x nodes in multi_node)")
    memory_fraction: float = key("memory_fraction", 0.7, NUMBER, f"{WORKER_ARGV} --mem-fraction-static",
                                 minimum=0, exclusive_minimum=True, maximum=1)
    tokenizer_mode: str = key("tokenizer_mode", "auto", choice("auto", "slow"), f"{WORKER_ARGV} --tokenizer-mode")
    tokenizer: str | None = key("tokenizer", None, TEXT, "bench_serving --tokenizer: a tokenizer folder on the "
                                "benchmark node; HF_HUB_OFFLINE=1 for the tools only when it is a local folder",
                                default_doc="the model path the workers load")
    dp_size: int | None = count("dp_size", None, f"DP ranks of each worker instance: {WORKER_ARGV} --attn-dp-size "
                                "(dp_attention) or --dp-size (replicas)", default_doc="1")
    dp_attention: bool | int | None = key("dp_attention", None, BOOL_OR_INT, "DP attention over dp_size ranks inside "
                                          f"the TP group: {WORKER_ARGV} --attn-dp-size N (0.5.23) or --dp-size N "
                                          "--enable-dp-attention (0.5.7); an integer N: dp_size N with DP attention",
                                          minimum=1, default_doc="false")
    load_balance_method: str | None = key("load_balance_method", None, choice(*LOAD_BALANCE_METHODS),
                                          f"{WORKER_ARGV} --load-balance-method (which DP rank takes a request; "
                                          "the choices of the planned release)",
                                          default_doc="unset: SGLang's auto (follow_bootstrap_room on a prefill, "
                                          "round_robin on a decode)")
    mode: str = key("mode", DISAGGREGATED, choice(DISAGGREGATED, AGGREGATED, DECODE_ALONE),
                    "disaggregated: prefill and decode instances behind the router's PD mode; aggregated: plain "
                    "workers (no --disaggregation-mode) on every node of prefill_node_list and decode_node_list "
                    "(each once), laid out by the aggregated section, behind the router's regular mode "
                    "(--worker-urls); decode_alone: decode instances only (--disaggregation-transfer-backend fake), "
                    "no prefill, no router: every test is a decode_alone test, sent to the first decode worker")
    prefill: RoleSettings = key("prefill", section=RoleSettings)
    decode: RoleSettings = key("decode", section=RoleSettings)
    aggregated: RoleSettings = key("aggregated", section=RoleSettings)
    hicache: HiCacheSettings = key("hicache", section=HiCacheSettings)
    inference_poll_iterations: int = count(
        "inference_poll_iterations", 16, "",
        ignored="the suite follows each benchmark's own process and bounds it by config.timeouts.benchmark_s "
                "instead of polling its log a number of times")
    dtype: str = key("dtype", "auto", TEXT, "selects the expected_results entry the tests gate on (the workers "
                                            "load the checkpoint's dtype; add --dtype to server_args to force one)")
    quantization: str | None = key("quantization", None, STRING,
                                   f"{WORKER_ARGV} --quantization (e.g. fp8, w8a8_fp8, modelopt_fp8: SGLang's "
                                   "methods); the simulator models its weight bytes and GEMM format",
                                   default_doc="unset: the checkpoint's (the simulator: FP8 when the model path "
                                   "names fp8, else the catalog's bf16)")
    kv_cache_dtype: str | None = key("kv_cache_dtype", None, choice(*releases.KV_CACHE_DTYPES),
                                     f"{WORKER_ARGV} --kv-cache-dtype; the simulator models its KV bytes (capacity, "
                                     "decode reads, PD transfer)", default_doc="unset: SGLang's auto (the model's "
                                     "dtype)")
    server_args: tuple[str, ...] = key("server_args", (), ARGS, f"appended to every {WORKER_ARGV}")
    prefill_server_args: tuple[str, ...] = key("prefill_server_args", (), ARGS, f"appended to the prefill {WORKER_ARGV}")
    decode_server_args: tuple[str, ...] = key("decode_server_args", (), ARGS, f"appended to the decode {WORKER_ARGV}")
    sim_model_profile: str | None = key("sim_model_profile", None, STRING,
                                        "simulator --sim-model-profile (else told from the model path)")
    tests: tuple[InferenceTest, ...] = ()

    def layout(self, role: str) -> Layout:
        """The role's parallelism, instances per node and DP: its section over the model's keys."""
        return resolve(role, getattr(self, role), self)

    @property
    def roles(self) -> tuple[str, ...]:
        """The worker roles the model's mode deploys: prefill and decode, aggregated, or decode alone."""
        return {AGGREGATED: (AGGREGATED,), DECODE_ALONE: ("decode",)}.get(self.mode, ROLES)


@dataclass(frozen=True)
class SSHSettings:
    user: str | None = key("user", None, STRING, "the SSH login", default_doc="~/.ssh/config, else your user")
    key_file: str | None = key("key_file", None, STRING, "the private key (~ expanded); must exist",
                               default_doc="~/.ssh/config, the agent, the default keys")
    port: int | None = port("port", None, "the SSH port", default_doc="~/.ssh/config, else 22")
    connect_timeout: float = key("connect_timeout", 10.0, NUMBER, "seconds to open a connection",
                                 minimum=0, exclusive_minimum=True)


SLURM_DEFAULT = "required; with transport slurm: from the allocation (docs/slurm.md)"
_SLURM_TIME = Kind("Slurm time", {"type": "string", "pattern": r"^([0-9]+-)?[0-9]+(:[0-9]+){0,2}$"}, str,
                   'a Slurm time limit: minutes, "MM:SS", "HH:MM:SS" or "D-HH[:MM[:SS]]" (sbatch --time)')
_JOB_ID = Kind("job id", {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "string", "pattern": r"^[0-9]+$"}]},
               lambda v: str(v).strip(), "a Slurm job id such as 4242")


@dataclass(frozen=True)
class SlurmSettings:
    """How the run gets its nodes from Slurm (transport slurm): an allocation it is in, is given, or makes."""

    partition: str | None = key("partition", None, TEXT, "sbatch --partition of the allocation the suite makes",
                                default_doc="the cluster's default partition")
    account: str | None = key("account", None, TEXT, "sbatch --account of the allocation the suite makes")
    time_limit: str | None = key("time_limit", None, _SLURM_TIME, "sbatch --time of the allocation the suite makes",
                                 default_doc="the partition's default")
    nodes: int | None = count("nodes", None, "sbatch --nodes of the allocation the suite makes (at least the "
                              "nodes the roles need)", default_doc="1 router node + the prefill and decode nodes")
    prefill_nodes: int = count("prefill_nodes", 1, "prefill nodes taken from the allocation when "
                               "prefill_node_list is omitted (xP: nodes 2..xP+1)")
    decode_nodes: int = count("decode_nodes", 1, "decode nodes taken from the allocation when decode_node_list "
                              "is omitted (yD: the nodes after the prefill nodes)")
    job_id: str | None = key("job_id", None, _JOB_ID, "an existing allocation to run in (the suite never "
                             "cancels it)", default_doc="$SLURM_JOB_ID inside an allocation, else the suite allocates")
    extra_args: tuple[str, ...] = key("extra_args", (), ARGS, "more sbatch arguments of the allocation the suite "
                                      "makes (--gres=gpu:8, --exclusive, --reservation=R, ...)")
    queue_timeout_s: float = key("queue_timeout_s", 3600.0, NUMBER, "how long the allocation the suite makes may "
                                 "wait in the queue before the run fails (and cancels it)", minimum=0,
                                 exclusive_minimum=True)
    containers: str = key("containers", "docker", choice("docker", "pyxis"), "how runtime docker's containers start: "
                          "docker run through an srun step, or pyxis/enroot (srun --container-image; planned and "
                          "shown by sglang-pd plan, not started by this release)")
    # filled in when the nodes are known (slurm.allocation), never read from the file
    node_names: Mapping[str, str] = dataclasses.field(default_factory=dict)  # node address -> Slurm node name
    owned: bool = False  # the suite made the allocation: it releases it


@dataclass(frozen=True)
class KVTransferSettings:
    backend: str = key("backend", "mooncake", choice("mooncake", "nixl", "mooncake_tcp", "mori", "tcp"),
                       f"{WORKER_ARGV} --disaggregation-transfer-backend (tcp: the simulator's own sockets)")
    ib_devices: tuple[str, ...] = key("ib_devices", (), CSV, f"{WORKER_ARGV} --disaggregation-ib-device; "
                                      "NIXL's UCX_NET_DEVICES; the device precheck",
                                      default_doc="nccl_ib_hca, else nccl_ib_hca_list")
    bootstrap_port: int = port("bootstrap_port", 8998, f"prefill {WORKER_ARGV} --disaggregation-bootstrap-port "
                                                       "(+1 per further prefill instance on one node)")
    env: Mapping[str, str] = key("env", {}, STRING_MAP, "extra environment of every worker (MC_*, UCX_*, ...)")
    min_gbps: float | None = key("min_gbps", None, NUMBER, "floor of the GB/s each prefill -> decode pair moves a "
                                 "payload at through the engine before the benchmarks (recorded always; "
                                 "unset: not gated)", minimum=0, exclusive_minimum=True)
    mooncake: MooncakeSettings = key("mooncake", section=MooncakeSettings)


@dataclass(frozen=True)
class Timeouts:
    server_start_s: float = key("server_start_s", 1800.0, NUMBER, "each worker's readiness deadline; router "
                                "--worker-startup-timeout-secs", minimum=0, exclusive_minimum=True)
    services_s: float = key("services_s", 60.0, NUMBER, "the side services' readiness deadline (HiCache's Mooncake "
                            "Store: master and metadata service, before any worker)", minimum=0, exclusive_minimum=True)
    router_ready_s: float = key("router_ready_s", 600.0, NUMBER, "the router's readiness deadline",
                                minimum=0, exclusive_minimum=True)
    smoke_s: float = key("smoke_s", 60.0, NUMBER, "the smoke requests' deadline (bring-up's proof of prefill -> "
                         "decode)", minimum=0, exclusive_minimum=True)
    benchmark_s: float = key("benchmark_s", 7200.0, NUMBER, "each benchmark's deadline",
                             minimum=0, exclusive_minimum=True)
    stall_s: float = key("stall_s", 60.0, NUMBER, "a benchmark ends as a stall when nothing is generated and no "
                         "request completes for this long (the cluster watch; independent of benchmark_s)",
                         minimum=0, exclusive_minimum=True)
    health_s: float = key("health_s", 5.0, NUMBER, "the cluster watch's deadline for each worker's /health answer "
                          "during a benchmark", minimum=0, exclusive_minimum=True)
    health_misses: int = count("health_misses", 2, "unanswered /health probes in a row that end a benchmark (the "
                               "cluster watch)")


@dataclass(frozen=True)
class SimSettings:
    gpu: str = key("gpu", "MI355X", STRING, "simulator --sim-gpu (MI300X, MI325X, MI355X, H100, H200, B200)")
    speedup: float = key("speedup", 1.0, NUMBER, "simulator --sim-speedup (simulated time runs this much faster); "
                         "< 1 is time dilation for a machine that cannot keep up: figures rescaled to modelled time",
                         minimum=0, exclusive_minimum=True)
    startup_delay_s: float = key("startup_delay_s", 0.0, NUMBER, "simulator --sim-startup-delay (model loading)",
                                 minimum=0)
    kv_payload_bytes_per_token: int = count("kv_payload_bytes_per_token", 64,
                                            "simulator --sim-kv-payload-bytes-per-token (bytes moved per token)")
    seed: int = key("seed", 0, INT, "simulator --sim-seed", minimum=0)
    accuracy: float = key("accuracy", 1.0, NUMBER, "simulator --sim-accuracy (fraction of right gsm8k answers)",
                          minimum=0, maximum=1)
    prefill_of_matmul: float | None = key("prefill_of_matmul", None, NUMBER, "simulator --sim-prefill-of-matmul: the "
                                          "share of the GPU's measured matmul rate a prefill forward reaches, to "
                                          "calibrate the model's TTFT to a measured stack (docs/simulator.md)",
                                          minimum=0, exclusive_minimum=True, maximum=1,
                                          default_doc="0.659, from NVIDIA NIM's H100 TTFT")
    faults: Mapping[str, tuple[str, ...]] = key("faults", {}, LIST_MAP, "simulator --sim-fault per role "
                                                "(prefill, decode) or process (prefill_0): see docs/simulator.md")


@dataclass(frozen=True)
class ContainerConfig:
    device_list: tuple[str, ...] = key("device_list", (), ARGS, "docker run --device of every container")
    volume_dict: Mapping[str, str] = key("volume_dict", {}, STRING_MAP, "docker run -v host:container")
    env_dict: Mapping[str, str] = key("env_dict", {}, STRING_MAP, "environment of every container and process")


@dataclass(frozen=True)
class RouterSettings:
    package: str = key("package", "sglang-router", choice("sglang-router", "smg"),
                       "sglang-router (what images ship: python -m sglang_router.launch_router) or its successor "
                       "smg (python -m smg launch)")
    python: str | None = key("python", None, TEXT, "the python that has the router package",
                             default_doc="the nodes' python")
    args: tuple[str, ...] = key("args", (), ARGS, "extra router flags (after router_args)")


@dataclass(frozen=True)
class ClusterConfig:
    EXTRA_KEYS = (port("proxy_router_serv_port", None, "must equal proxy_router_port (the seed format names "
                                                       "the one router port twice)").metadata["key"],)
    prefill_port: int = port("prefill_serv_port", dataclasses.MISSING, f"prefill {WORKER_ARGV} --port", required=True)
    decode_port: int = port("decode_serv_port", dataclasses.MISSING, f"decode {WORKER_ARGV} --port", required=True)
    router_port: int = port("proxy_router_port", dataclasses.MISSING, "router --port", required=True)
    prefill_nodes: tuple[str, ...] = key("prefill_node_list", (), NODES, "one prefill instance per node "
                                         "(per_node) or one over all (multi_node)", default_doc=SLURM_DEFAULT)
    decode_nodes: tuple[str, ...] = key("decode_node_list", (), NODES, "the decode instances, likewise",
                                        default_doc=SLURM_DEFAULT)
    router_node: str = key("proxy_router_node", None, TEXT, "where the router runs", default_doc=SLURM_DEFAULT)
    source: str = "<config>"
    models: tuple[ModelConfig, ...] = ()
    warnings: tuple[Problem, ...] = ()  # keys read but not honoured
    container_image: str = key("container_image", "", TEXT, "the image of every container (runtime docker)")
    container_name: str = key("container_name", "sglang_container", TEXT,
                              "the containers' name prefix (<name>-<run id>-<role>-<i>)")
    benchmark_node: str = key("benchmark_serv_node", None, TEXT, "where the benchmark clients run",
                              default_doc="proxy_router_node")
    nnodes: int | None = count("nnodes", None, "checked against the node lists")
    hf_token_file: str | None = key("hf_token_file", None, STRING, "HF_TOKEN of the workers, read on each node "
                                    "(never on a command line)")
    shm_size: str | None = key("shm_size", None, STRING, "docker run --shm-size")
    log_dir: str = key("log_dir", "/tmp/sglang-pd-logs", TEXT, "each process's log folder on its node")
    log_level: str = key("log_level", "info", choice("debug", "info", "warning", "error", "critical"),
                         "--log-level of workers and router")
    nic_type: str | None = key("nic_type", None, STRING, "the NIC's verbs provider: its library mounts, GID "
                               "index and device check (ainic, bnxt, mlx5; docs/nic-types.md)")
    nccl_ib_hca_list: tuple[str, ...] = key("nccl_ib_hca_list", (), CSV, "NCCL_IB_HCA where nccl_ib_hca is unset")
    nccl_ib_hca: tuple[str, ...] = key("nccl_ib_hca", (), CSV, "NCCL_IB_HCA of every container; "
                                       "kv_transfer.ib_devices' default")
    nccl_socket_ifname: str | None = key("nccl_socket_ifname", None, STRING, "NCCL_SOCKET_IFNAME")
    gloo_socket_ifname: str | None = key("gloo_socket_ifname", None, STRING, "GLOO_SOCKET_IFNAME")
    gloo_tcp_ifname: str | None = key("gloo_tcp_ifname", None, STRING, "GLOO_TCP_IFNAME")
    nccl_ib_gid_index: int | None = key("nccl_ib_gid_index", None, INT, "NCCL_IB_GID_INDEX; Mooncake's MC_GID_INDEX",
                                        minimum=0, default_doc="the nic_type's, else unset")
    nccl_debug: str | None = key("nccl_debug", None, choice("VERSION", "WARN", "INFO", "TRACE", "ERROR", "version",
                                                            "warn", "info", "trace", "error"), "NCCL_DEBUG")
    prefill_coordinator_addr: str | None = key("prefill_coordinator_addr", None, STRING,
                                               f"prefill {WORKER_ARGV} --dist-init-addr (multi_node)")
    decode_coordinator_addr: str | None = key("decode_coordinator_addr", None, STRING,
                                              f"decode {WORKER_ARGV} --dist-init-addr (multi_node)")
    prefill_coordinator_port: int = port("prefill_coordinator_port", 40001, "the prefill --dist-init-addr port")
    decode_coordinator_port: int = port("decode_coordinator_port", 40002, "the decode --dist-init-addr port")
    container: ContainerConfig = key("container_config", section=ContainerConfig)
    engine: str = key("engine", "sglang", choice("sglang", "sim"), "sim: the simulated worker instead of "
                      "sglang.launch_server")
    runtime: str = key("runtime", "docker", choice("docker", "process"), "process: plain processes instead of "
                       "one container per logical node")
    transport: str = key("transport", "ssh", choice("ssh", "local", "slurm"), "local: every node is this machine; "
                         "slurm: every command runs as an srun step of the run's allocation (docs/slurm.md)")
    bench_client: str = key("bench_client", "sglang", choice("sglang", "builtin"), "the tests' default bench_client",
                            default_doc="builtin with engine sim, else sglang")
    python: str | None = key("python", None, STRING, "the python of every planned process",
                             default_doc="python3 (this interpreter on local clusters)")
    bench_python: str | None = key("bench_python", None, TEXT, "the python that runs SGLang's bench_serving / "
                                   "few_shot_gsm8k on the benchmark node", default_doc="the nodes' python")
    sglang_version: str | None = key("sglang_version", None, RELEASE, "the SGLang release every command is planned "
                                     "for (bench_serving's module, few_shot_gsm8k's --host form, the DP-attention "
                                     "flags); a probed release that differs is an error",
                                     default_doc="probed from the nodes' python or image before the workers start")
    ssh: SSHSettings = key("ssh", section=SSHSettings)
    slurm: SlurmSettings = key("slurm", section=SlurmSettings)
    kv_transfer: KVTransferSettings = key("kv_transfer", section=KVTransferSettings)
    instance_layout: str = key("instance_layout", "per_node", choice("per_node", "multi_node"),
                               "per_node: each node an instance of TP = tensor_parallelism; multi_node: each "
                               "group one instance over its nodes")
    gpus_per_node: int = count("gpus_per_node", 8, "tensor_parallelism must fit")
    router_prometheus_port: int = port("router_prometheus_port", 29000, "router --prometheus-port")
    router_args: tuple[str, ...] = key("router_args", (), ARGS, "appended to the router argv (then router.args)")
    router: RouterSettings = key("router", section=RouterSettings)
    timeouts: Timeouts = key("timeouts", section=Timeouts)
    sim: SimSettings = key("sim", section=SimSettings)

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

    @property
    def time_dilation(self) -> float:
        """How many times slower than modelled time the simulator's clock runs (``sim.speedup`` < 1), else 1; every
        time figure the suite reports is rescaled by it (``bench.result.undilate``). A speedup > 1 fast-forwards a
        quick run: its figures stay wall-clock."""
        return 1 / self.sim.speedup if self.simulated and self.sim.speedup < 1 else 1.0

    @property
    def router_package(self) -> str:
        return self.router.package

    @property
    def router_python(self) -> str | None:
        return self.router.python


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


# --------------------------------------------------------------------------------------- schema
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
