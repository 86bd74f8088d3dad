"""A model's keys (``$.benchmark_params.<model>``): ``ModelConfig``, its inference tests (``InferenceTest``), their
thresholds and per-request SLO."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import releases
from .hicache import HiCacheSettings
from .keys import (ARGS, BOOL_OR_INT, INT, INT_OR_LIST, NUMBER, OBJECT, PERCENT, RATE, STRING, TEXT, Key, choice, count,
                   key)
from .layout import AGGREGATED, DECODE_ALONE, DISAGGREGATED, LOAD_BALANCE_METHODS, ROLES, Layout, RoleSettings, resolve

# Each keyed field is the one description of its key (keys.py): JSON key, kind, default, range, effect.
POLICIES = ("cache_aware", "fcfs", "round_robin", "random", "power_of_two")
WORKER_ARGV = "worker argv"


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
