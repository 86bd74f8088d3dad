"""The metrics the suite measures: canonical names (bench_serving's), aliases, units and gate direction."""

from __future__ import annotations

from dataclasses import dataclass

_LATENCIES = ("e2e_latency", "ttft", "tpot", "itl")
_STATS = ("mean", "median", "std", "p90", "p95", "p99")


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    direction: str  # "max": lower is better (an upper bound); "min": higher is better (a lower bound)
    description: str


def _catalog() -> dict[str, Metric]:
    metrics = [
        Metric("request_throughput", "req/s", "min", "completed requests per second"),
        Metric("input_throughput", "tok/s", "min", "prompt tokens per second"),
        Metric("output_throughput", "tok/s", "min", "generated tokens per second"),
        Metric("total_throughput", "tok/s", "min", "prompt + generated tokens per second"),
        Metric("completed", "req", "min", "requests that completed without error"),
        Metric("failed", "req", "max", "requests that failed"),
        Metric("duration", "s", "max", "wall time of the benchmark"),
        Metric("accuracy", "", "min", "fraction of correct answers (gsm8k)"),
        Metric("invalid", "", "max", "fraction of answers without a number (gsm8k)"),
        Metric("latency", "s", "max", "wall time of the gsm8k run"),
        Metric("cache_hit_rate", "", "min", "fraction of prompt tokens served from the prefix cache"),
        Metric("kv_handoffs", "", "min", "KV transfers the prefill workers made during the benchmark (warmup included; "
               "sglang:kv_transfer_latency_ms_count)"),
        Metric("kv_transfer_failures", "", "max", "failed KV transfers and bootstraps, prefill and decode side "
               "(sglang:num_transfer_failed_reqs_total + sglang:num_bootstrap_failed_reqs_total)"),
        Metric("kv_transfer_bytes", "B", "min", "KV bytes moved prefill -> decode (sglang:kv_transfer_total_mb_sum)"),
        Metric("kv_transfer_failures_prefill", "", "max", "failed KV transfers and bootstraps the prefill side counted"),
        Metric("kv_transfer_failures_decode", "", "max", "failed KV transfers and bootstraps the decode side counted"),
        Metric("mean_kv_transfer_ms", "ms", "max", "mean KV transfer time of a request (prefill side)"),
        Metric("mean_kv_bootstrap_ms", "ms", "max", "mean wait of a prefill for its decode's bootstrap"),
        Metric("mean_kv_alloc_ms", "ms", "max", "mean wait for KV room on the decode"),
        Metric("kv_queue_leaks", "req", "max", "requests left in the decode prealloc / transfer queues after the benchmark"),
        Metric("idle_workers", "", "max", "workers that received no request while a peer of their role did"),
        Metric("router_errors", "", "max", "router errors to workers (smg_worker_errors_total)"),
        Metric("router_retries", "", "max", "router retries to workers (smg_worker_retries_total)"),
        Metric("router_cb_open", "", "max", "workers whose circuit breaker is not closed after the benchmark"),
        Metric("router_rendezvous_failures", "", "max", "PD rendezvous failures the router counted (smg)"),
        Metric("mean_router_prefill_ms", "ms", "max", "mean prefill duration the router measured (smg_pd_prefill_duration_seconds)"),
        Metric("nic_errors", "", "max", "growth of the worker nodes' RDMA port error counters during the benchmark"),
        Metric("kv_transfer_throughput", "B/s", "min", "KV bytes per second of transfer time (prefill side)"),
    ]
    worst = "the worst worker with DP attention"
    metrics += [Metric("dp_imbalance_ratio", "", "max", f"tokens scheduled on the busiest DP rank over the mean rank, {worst} "
                       "(sglang:dp_attention_tokens_total{kind=scheduled} by dp_rank)"),
                Metric("dp_step_imbalance_ratio", "", "max", f"mean per step of max over mean tokens across the DP ranks, {worst} "
                       "(sglang:dp_attention_token_imbalance_ratio)"),
                Metric("dp_idle_step_fraction", "", "max", f"fraction of DP rank steps run as idle batches, {worst} "
                       "(sglang:dp_attention_steps_total{rank_state})"),
                Metric("mean_dp_sync_wait_ms", "ms", "max", f"mean wait of a DP rank's step for the slowest rank, {worst} "
                       "(sglang:dp_attention_sync_wait_seconds)")]
    per_gpu = "(aggregated: every GPU)"
    metrics += [Metric("output_throughput_per_decode_gpu", "tok/s/GPU", "min", f"generated tokens per second per decode GPU {per_gpu}"),
                Metric("input_throughput_per_prefill_gpu", "tok/s/GPU", "min", f"prompt tokens per second per prefill GPU {per_gpu}"),
                Metric("total_throughput_per_gpu", "tok/s/GPU", "min", "prompt + generated tokens per second per GPU of the deployment"),
                Metric("interactivity", "tok/s/user", "min", "1000 / mean TPOT (InferenceX's per-user axis)"),
                Metric("user_output_throughput", "tok/s/user", "min", "mean over requests of output tokens / end-to-end "
                       "latency (genai-perf's output token throughput per user)"),
                Metric("goodput", "req/s", "min", "completed requests per second that met the test's SLO"),
                Metric("goodput_output_throughput", "tok/s", "min", "generated tokens per second of the requests that met the SLO"),
                Metric("slo_attainment", "", "min", "fraction of the requests sent that met the test's SLO")]
    steady = "over the steady-state window (in-flight requests >= steady_state_ratio x peak)"
    metrics += [Metric("steady_output_throughput", "tok/s", "min", f"generated tokens per second {steady}"),
                Metric("steady_input_throughput", "tok/s", "min", f"prompt tokens of the requests sent {steady}, per second"),
                Metric("steady_request_throughput", "req/s", "min", f"requests sent {steady}, per second"),
                Metric("steady_mean_ttft_ms", "ms", "max", f"mean TTFT of the requests sent {steady}"),
                Metric("steady_mean_tpot_ms", "ms", "max", f"mean TPOT of the requests sent {steady}"),
                Metric("steady_window_start_s", "s", "min", "where the steady-state window starts, from the first request"),
                Metric("steady_window_s", "s", "min", "the steady-state window's length"),
                Metric("steady_requests", "", "min", "requests sent inside the steady-state window"),
                Metric("steady_concurrency_threshold", "", "min", "the in-flight requests the window holds at least"),
                Metric("steady_peak_concurrency", "", "min", "the peak of in-flight requests")]
    for lat in _LATENCIES:
        for stat in _STATS:
            direction = "max"
            metrics.append(Metric(f"{stat}_{lat}_ms", "ms", direction, f"{stat} {lat.replace('_', ' ')}"))
    return {m.name: m for m in metrics}


METRICS: dict[str, Metric] = _catalog()

# Names users write in expected_results (the CVS config) -> canonical names.
ALIASES: dict[str, str] = {
    "tokens_per_sec": "output_throughput",
    "output_throughput_per_sec": "output_throughput",
    "output_tokens_per_sec": "output_throughput",
    "input_throughput_per_sec": "input_throughput",
    "total_throughput_per_sec": "total_throughput",
    "requests_per_sec": "request_throughput",
    "tok_s_per_gpu": "total_throughput_per_gpu",
    "user_tok_s": "user_output_throughput",
    "ttft_ms": "mean_ttft_ms",  # the short latency names of an SLO (`sglang-pd tune --sla`)
    "tpot_ms": "mean_tpot_ms",
    "itl_ms": "mean_itl_ms",
    "e2e_latency_ms": "mean_e2e_latency_ms",
}


def canonical(name: str) -> str | None:
    """The canonical metric a user-written name means, or None when the suite cannot measure it."""
    name = ALIASES.get(name, name)
    return name if name in METRICS else None


def known_names() -> list[str]:
    return sorted(set(METRICS) | set(ALIASES))
