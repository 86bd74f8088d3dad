"""Benchmark tools -> BenchResult: the one entry point ``run_benchmark`` and the target it runs against."""

from __future__ import annotations

from pathlib import Path

from .. import prom
from ..config import InferenceCase
from . import builtin, dp_load, pd_metrics, sglang_tools
from .builtin import Progress, Streamed
from .result import BenchResult, RequestRecord, combine
from .sglang_tools import BenchToolError
from .target import BenchTarget

__all__ = ["BenchResult", "BenchTarget", "BenchToolError", "Progress", "RequestRecord", "Streamed", "combine", "run_benchmark"]


def run_benchmark(target: BenchTarget, case: InferenceCase, *, timeout_s: float, artifacts_dir: Path,
                  progress: Progress | None = None, streamed: Streamed | None = None) -> BenchResult:
    """Run ``case`` against ``target`` with the tool its test names (bench_client builtin | sglang), then add what
    the workers' and the router's metrics say of the PD path (``pd_metrics``) and of the DP ranks (``dp_load``). It stops as soon as the cluster watch
    finds the target broken (``target.broken``). ``streamed`` is told the output tokens as the client receives them
(the builtin client; SGLang's tools report nothing until they end)."""
    test = case.test
    nic_counters = getattr(target, "nic_error_counters", dict)  # RDMA port error counters (real clusters)
    router_url = getattr(target, "router_metrics_url", None)

    def workers() -> pd_metrics.Workers:
        return prom.worker_metrics(target.worker_urls)

    before, nic_before = workers(), nic_counters()
    dp_before = prom.worker_dp_ranks(target.worker_urls)
    router_before = prom.router_metrics(router_url) if router_url else None
    if test.bench_client == "builtin":
        url = target.worker_urls["decode"][0] if test.decode_alone else target.router_url
        result = builtin.run(url, test, case.concurrency, timeout_s=timeout_s, progress=progress,
                             stop=lambda: target.broken is not None, streamed=streamed)
    else:
        result = sglang_tools.run(target, test, case.concurrency, timeout_s=timeout_s, artifacts_dir=artifacts_dir)
    result.router = target.router_version
    if target.broken:  # the workers' counters of a broken cluster say nothing reliable (and a hung one never answers)
        result.errors.append("the PD metrics were not read: the cluster watch found the cluster broken")
        return result
    after = workers()
    router_after = prom.router_metrics(router_url) if router_url else None
    for role, by_url in after.items():
        for url, values in by_url.items():
            routed = values.get("requests", 0.0) - before.get(role, {}).get(url, {}).get("requests", 0.0)
            result.workers[url] = {"role": role, "requests": routed}
    pd_metrics.per_prefill(before, after, result)
    dp_found = dp_load.dp_metrics(dp_before, prom.worker_dp_ranks(target.worker_urls), result)
    found = {**pd_metrics.kv_metrics(before, after), **pd_metrics.cache_metrics(before, after),
             **pd_metrics.router_metrics(router_before, router_after, result),
             **({} if test.decode_alone else  # decode alone: the prefill and the other decodes idle by design
                pd_metrics.idle_workers(before, after, (router_after or {}).get("requests"), result.errors)),
             **pd_metrics.queue_leaks(workers, result.errors), **dp_found}
    result.metrics.update({k: v for k, v in found.items() if k not in result.metrics})
    result.metrics.update(nic_metrics(nic_before, nic_counters(), result.errors))
    return result


def nic_metrics(before: dict[str, int], after: dict[str, int], errors: list[str]) -> dict[str, float]:
    """`nic_errors`: how much the RDMA error counters grew during the benchmark; each grown one is named in errors."""
    if not after:
        return {}
    grown = {name: value - before.get(name, 0) for name, value in after.items() if value > before.get(name, 0)}
    errors.extend(f"RDMA error counter {name} grew by {delta}" for name, delta in sorted(grown.items()))
    return {"nic_errors": float(sum(grown.values()))}
