"""What a benchmark did to the PD cluster, from the workers' and the router's metrics read before and after it:
KV transfers and failures, where TTFT went (bootstrap, KV allocation, transfer), the prefix cache, idle workers,
PD queues left undrained, and the router's per-worker requests, errors, retries and circuit breakers."""

from __future__ import annotations

import time
from typing import Callable, Mapping

from .. import prom
from .result import BenchResult

Workers = Mapping[str, Mapping[str, Mapping[str, float]]]  # role -> URL -> short name -> value
DECODE_QUEUES = ("decode_prealloc_queue", "decode_transfer_queue")
DRAIN_S = 5.0  # how long the decode queues may take to empty after the last response


def _delta(before: Workers, after: Workers, role: str, name: str) -> float | None:
    now = prom.role_sum(after, role, name)
    return None if now is None else now - (prom.role_sum(before, role, name) or 0.0)


def _mean(before: Workers, after: Workers, role: str, total: str, count: str) -> float | None:
    n = _delta(before, after, role, count)
    return _delta(before, after, role, total) / n if n else None


def kv_metrics(before: Workers, after: Workers) -> dict[str, float]:
    """The KV transfers of a benchmark (warmup included); {} where the workers export no PD metrics or there is no
    prefill worker (aggregated mode moves no KV)."""
    if not prom.exports_pd(after) or not after.get("prefill"):
        return {}
    out = {"kv_handoffs": _delta(before, after, "prefill", "kv_transfers") or 0.0}
    for role in ("prefill", "decode"):  # per role, as each side counts its own
        failed = [_delta(before, after, role, name) for name in ("transfer_failed", "bootstrap_failed")]
        out[f"kv_transfer_failures_{role}"] = sum(f for f in failed if f is not None)
    out["kv_transfer_failures"] = out["kv_transfer_failures_prefill"] + out["kv_transfer_failures_decode"]
    megabytes, latency_ms = _delta(before, after, "prefill", "kv_total_mb"), _delta(before, after, "prefill", "kv_latency_ms")
    if megabytes is not None:
        out["kv_transfer_bytes"] = megabytes * 1024 * 1024
        if latency_ms:
            out["kv_transfer_throughput"] = out["kv_transfer_bytes"] / (latency_ms / 1000)
    breakdown = {"mean_kv_transfer_ms": _mean(before, after, "prefill", "kv_latency_ms", "kv_transfers"),
                 "mean_kv_bootstrap_ms": _mean(before, after, "prefill", "kv_bootstrap_ms", "kv_bootstraps"),
                 "mean_kv_alloc_ms": _mean(before, after, "decode", "kv_alloc_ms", "kv_allocs")
                 or _mean(before, after, "prefill", "kv_alloc_ms", "kv_allocs")}
    out.update({k: v for k, v in breakdown.items() if v is not None})
    return out


def per_prefill(before: Workers, after: Workers, result: BenchResult) -> None:
    """Each prefill worker's KV transfers and their mean time into ``result.workers`` (SGLang's labels name no
    decode peer, so this is as close to a prefill -> decode pair as the metrics go)."""
    for url, now in after.get("prefill", {}).items():
        then = before.get("prefill", {}).get(url, {})
        n = now.get("kv_transfers", 0.0) - then.get("kv_transfers", 0.0)
        if n > 0:
            ms = now.get("kv_latency_ms", 0.0) - then.get("kv_latency_ms", 0.0)
            result.workers.setdefault(url, {}).update(kv_transfers=n, mean_kv_transfer_ms=ms / n)


def cache_metrics(before: Workers, after: Workers) -> dict[str, float]:
    """`cache_hit_rate` from the prefill workers' prompt and cached token counters."""
    prompt, cached = _delta(before, after, "prefill", "prompt_tokens"), _delta(before, after, "prefill", "cached_tokens")
    return {"cache_hit_rate": cached / prompt} if prompt and cached is not None else {}


def idle_workers(before: Workers, after: Workers, router: Mapping[str, float] | None, errors: list[str]) -> dict[str, float]:
    """`idle_workers`: workers that received no request while a peer of their role did, from the workers' own
    request counters (the router's per-worker counts, where it has them, are named beside)."""
    idle = 0
    for role, workers in after.items():
        served = {url: w.get("requests", 0.0) - before.get(role, {}).get(url, {}).get("requests", 0.0)
                  for url, w in workers.items() if "requests" in w}
        if len(served) < 2:
            continue
        for url, n in sorted(served.items()):
            peers = sum(served.values()) - n
            if n == 0 and peers > 0:
                idle += 1
                routed = f"; the router counts {router[url]:g} for it" if router and url in router else ""
                errors.append(f"{role} worker {url} received no requests while its {len(served) - 1} peer(s) served "
                              f"{peers:g} (its own sglang:num_requests_total){routed}")
    return {"idle_workers": float(idle)} if any(len(w) > 1 for w in after.values()) else {}


def queue_leaks(read: Callable[[], Workers], errors: list[str], *, drain_s: float = DRAIN_S) -> dict[str, float]:
    """`kv_queue_leaks`: requests still in a decode worker's prealloc or transfer queue ``drain_s`` after the
    benchmark, each such queue named (they hold decode KV slots)."""
    deadline = time.monotonic() + drain_s
    while True:
        decode = read().get("decode", {})
        stuck = {(url, q): w[q] for url, w in decode.items() for q in DECODE_QUEUES if w.get(q)}
        if not stuck or time.monotonic() >= deadline:
            break
        time.sleep(0.2)
    if not any(q in w for w in decode.values() for q in DECODE_QUEUES):
        return {}
    errors.extend(f"decode worker {url}: sglang:num_{q}_reqs is {n:g} {drain_s:g} s after the benchmark ended "
                  "(requests leaked in the queue hold KV slots)" for (url, q), n in sorted(stuck.items()))
    return {"kv_queue_leaks": float(sum(stuck.values()))}


def router_metrics(before: Mapping[str, Mapping[str, float]] | None, after: Mapping[str, Mapping[str, float]] | None,
                   result: BenchResult) -> dict[str, float]:
    """The router's counters over the benchmark: errors and retries (per worker type in totals), circuits open,
    rendezvous failures, the mean prefill time (smg); each worker's routed requests into ``result.workers``."""
    if after is None:
        return {}
    before = before or {}

    def grown(name: str) -> dict[str, float]:
        return {k: v - before.get(name, {}).get(k, 0.0) for k, v in after[name].items()}

    for kind in ("errors", "retries"):
        for worker_type, n in grown(kind).items():
            result.totals[f"router_{kind}_{worker_type or 'all'}"] = n
    for url, n in grown("requests").items():
        result.workers.setdefault(url, {})["router_requests"] = n
    out = {"router_errors": sum(grown("errors").values()), "router_retries": sum(grown("retries").values()),
           "router_cb_open": float(sum(1 for v in after["cb_state"].values() if v != 0)),
           "router_rendezvous_failures": sum(grown("rendezvous_failures").values())}
    prefill = grown("prefill_seconds")
    if prefill["count"] > 0:
        out["mean_router_prefill_ms"] = prefill["sum"] / prefill["count"] * 1000
    return out
