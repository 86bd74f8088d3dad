"""Prometheus /metrics read with prometheus_client's own parser: every sample of a target, and the workers' PD
metrics and the router's ``smg_*`` metrics by the names real SGLang 0.5.23 and its router export."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence, TypeVar

import requests
from prometheus_client.parser import text_string_to_metric_families


T = TypeVar("T")


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


def parse(text: str) -> list[Sample]:
    """Every sample of a text exposition (histograms as their _bucket / _sum / _count samples)."""
    return [Sample(s.name, dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(text) for s in family.samples]


def fetch(url: str) -> list[Sample] | None:
    """The samples of ``url`` (a /metrics URL); None when it does not answer or is no exposition."""
    try:
        resp = requests.get(url, timeout=5)
        return parse(resp.text) if resp.ok else None
    except (requests.RequestException, ValueError):
        return None


def total(samples: Sequence[Sample], name: str) -> float | None:
    """The sum of every sample of ``name`` over its label sets; None when there is none."""
    values = [s.value for s in samples if s.name == name]
    return sum(values) if values else None


# the workers' metrics the suite reads, by short name (SGLang 0.5.23's metrics_collector.py)
WORKER_METRICS = {
    "kv_transfers": "sglang:kv_transfer_latency_ms_count",  # prefill side: one observation per KV transfer
    "kv_latency_ms": "sglang:kv_transfer_latency_ms_sum",
    "kv_total_mb": "sglang:kv_transfer_total_mb_sum",
    "kv_bootstrap_ms": "sglang:kv_transfer_bootstrap_ms_sum",
    "kv_bootstraps": "sglang:kv_transfer_bootstrap_ms_count",
    "kv_alloc_ms": "sglang:kv_transfer_alloc_ms_sum",
    "kv_allocs": "sglang:kv_transfer_alloc_ms_count",
    "transfer_failed": "sglang:num_transfer_failed_reqs_total",
    "bootstrap_failed": "sglang:num_bootstrap_failed_reqs_total",
    "requests": "sglang:num_requests_total",
    "prompt_tokens": "sglang:prompt_tokens_total",
    "cached_tokens": "sglang:cached_tokens_total",
    "prefill_bootstrap_queue": "sglang:num_prefill_bootstrap_queue_reqs",
    "prefill_inflight_queue": "sglang:num_prefill_inflight_queue_reqs",
    "decode_prealloc_queue": "sglang:num_decode_prealloc_queue_reqs",
    "decode_transfer_queue": "sglang:num_decode_transfer_queue_reqs",
    "generation_tokens": "sglang:generation_tokens_total",
    "running": "sglang:num_running_reqs",
    "waiting": "sglang:num_queue_reqs",
}
PD_EXPORTED = ("kv_transfers", "transfer_failed", "prefill_bootstrap_queue", "decode_transfer_queue")


def _each_worker(urls_by_role: Mapping[str, Sequence[str]], read: Callable[[list[Sample]], T]) -> dict[str, dict[str, T]]:
    """role -> worker URL -> ``read`` of its /metrics, for each worker that answered."""
    out: dict[str, dict[str, T]] = {}
    for role, urls in urls_by_role.items():
        out[role] = {}
        for url in urls:
            samples = fetch(f"{url}/metrics")
            if samples is not None:
                out[role][url] = read(samples)
    return out


def worker_metrics(urls_by_role: Mapping[str, Sequence[str]]) -> dict[str, dict[str, dict[str, float]]]:
    """role -> worker URL -> short name -> value, for each worker that answered (a metric it lacks is absent)."""
    def found(samples: list[Sample]) -> dict[str, float]:
        values = {short: total(samples, name) for short, name in WORKER_METRICS.items()}
        return {k: v for k, v in values.items() if v is not None}

    return _each_worker(urls_by_role, found)


def role_sum(metrics: Mapping[str, Mapping[str, Mapping[str, float]]], role: str, name: str) -> float | None:
    """One metric summed over a role's workers; None when none of them has it."""
    values = [w[name] for w in metrics.get(role, {}).values() if name in w]
    return sum(values) if values else None


def exports_pd(metrics: Mapping[str, Mapping[str, Mapping[str, float]]]) -> bool:
    """Whether any worker exports SGLang's PD metrics (else every KV figure is 'not measured')."""
    return any(name in w for role in metrics.values() for w in role.values() for name in PD_EXPORTED)


# the workers' DP-attention metrics, per DP rank (label dp_rank): short name -> (metric, the label values it keeps)
DP_RANK_METRICS = {
    "tokens": ("sglang:dp_attention_tokens_total", {"kind": "scheduled"}),  # tokens the rank's steps scheduled
    "active_steps": ("sglang:dp_attention_steps_total", {"rank_state": "active"}),
    "idle_steps": ("sglang:dp_attention_steps_total", {"rank_state": "idle"}),  # steps it ran an idle batch
    "sync_wait_s": ("sglang:dp_attention_sync_wait_seconds_sum", {}),  # its wait for the slowest rank
}
DP_STEP_IMBALANCE = ("sglang:dp_attention_token_imbalance_ratio_sum", "sglang:dp_attention_token_imbalance_ratio_count")


def dp_ranks(samples: Sequence[Sample]) -> dict[str, dict[int, float]]:
    """short name -> DP rank -> value of a worker's DP-attention samples, and "step_imbalance_sum" / "_count"
    (rank -1: the worker's, observed once on rank 0); {} for a worker without DP attention."""
    out: dict[str, dict[int, float]] = {}
    for short, (name, wanted) in DP_RANK_METRICS.items():
        for s in samples:
            if s.name == name and "dp_rank" in s.labels and all(s.labels.get(k) == v for k, v in wanted.items()):
                rank = int(s.labels["dp_rank"])
                out.setdefault(short, {})[rank] = out.get(short, {}).get(rank, 0.0) + s.value
    if out:
        for short, name in zip(("step_imbalance_sum", "step_imbalance_count"), DP_STEP_IMBALANCE):
            out[short] = {-1: total(samples, name) or 0.0}
    return out


def worker_dp_ranks(urls_by_role: Mapping[str, Sequence[str]]) -> dict[str, dict[str, dict[str, dict[int, float]]]]:
    """role -> worker URL -> ``dp_ranks`` of it ({} for a worker without DP attention), for each worker that answered."""
    return _each_worker(urls_by_role, dp_ranks)


# the router's (sglang-router 0.3.2 and smg 1.13.0 both export only smg_*; smg adds per-worker request counts)
def router_metrics(url: str) -> dict[str, dict[str, float]] | None:
    """``router_summary`` of the router's /metrics; None when it does not answer."""
    samples = fetch(url)
    return None if samples is None else router_summary(samples)


def router_summary(samples: Sequence[Sample]) -> dict[str, dict[str, float]]:
    """short name -> key (worker URL or worker type) -> value of the router's smg_* samples."""
    def by(name: str, label: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for s in samples:
            if s.name == name:
                key = s.labels.get(label, "")
                out[key] = out.get(key, 0.0) + s.value
        return out

    requests_total = by("smg_worker_requests_total", "worker")  # smg only
    return {
        "requests": requests_total or by("smg_worker_cb_outcomes_total", "worker"),  # both: outcomes per worker
        "errors": by("smg_worker_errors_total", "worker_type"),
        "retries": by("smg_worker_retries_total", "worker_type"),
        "cb_state": by("smg_worker_cb_state", "worker"),
        "rendezvous_failures": by("smg_pd_rendezvous_failures_total", "leg"),
        "prefill_seconds": {"sum": total(samples, "smg_pd_prefill_duration_seconds_sum") or 0.0,  # smg only
                            "count": total(samples, "smg_pd_prefill_duration_seconds_count") or 0.0},
    }
