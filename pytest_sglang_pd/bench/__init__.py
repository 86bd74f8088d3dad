"""Benchmark tools -> BenchResult: the one entry point ``run_benchmark`` and the target it runs against."""

from __future__ import annotations

from pathlib import Path

from .. import prom
from ..config import InferenceCase
from . import builtin, sglang_tools
from .builtin import Progress
from .result import BenchResult, RequestRecord
from .sglang_tools import BenchToolError
from .target import BenchTarget

__all__ = ["BenchResult", "BenchTarget", "BenchToolError", "Progress", "RequestRecord", "run_benchmark"]


def run_benchmark(target: BenchTarget, case: InferenceCase, *, timeout_s: float, artifacts_dir: Path,
                  progress: Progress | None = None) -> BenchResult:
    """Run ``case`` against ``target`` with the tool its test names (bench_client builtin | sglang)."""
    test = case.test
    nic_counters = getattr(target, "nic_error_counters", dict)  # RDMA port error counters (real clusters)
    before, nic_before = prom.kv_counters(target.worker_urls), nic_counters()
    if test.bench_client == "builtin":
        result = builtin.run(target.router_url, test, case.concurrency, timeout_s=timeout_s, progress=progress)
    else:
        result = sglang_tools.run(target, test, case.concurrency, timeout_s=timeout_s, artifacts_dir=artifacts_dir)
    after = prom.kv_counters(target.worker_urls)
    result.metrics.update(kv_metrics(before, after))
    result.metrics.update({k: v for k, v in cache_metrics(before, after).items() if k not in result.metrics})
    result.metrics.update(nic_metrics(nic_before, nic_counters(), result.errors))
    return result


def nic_metrics(before: dict[str, int], after: dict[str, int], errors: list[str]) -> dict[str, float]:
    """`nic_errors`: how much the RDMA error counters grew during the benchmark; each grown one is named in errors."""
    if not after:
        return {}
    grown = {name: value - before.get(name, 0) for name, value in after.items() if value > before.get(name, 0)}
    errors.extend(f"RDMA error counter {name} grew by {delta}" for name, delta in sorted(grown.items()))
    return {"nic_errors": float(sum(grown.values()))}


def cache_metrics(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, float]:
    """`cache_hit_rate` from the prefill workers' prompt and cached token counters (bench_serving reports none)."""
    def delta(name: str) -> float:
        return after.get("prefill", {}).get(name, 0.0) - before.get("prefill", {}).get(name, 0.0)

    prompt = delta("prompt_tokens")
    return {"cache_hit_rate": delta("cached_tokens") / prompt} if prompt > 0 and "cached_tokens" in after.get("prefill", {}) else {}


def kv_metrics(before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]) -> dict[str, float]:
    """The KV transfer of a benchmark (warmup included) from the workers' counters; {} where they have none."""
    if "handoffs" not in after.get("decode", {}):
        return {}

    def delta(role: str, name: str) -> float:
        return after.get(role, {}).get(name, 0.0) - before.get(role, {}).get(name, 0.0)

    seconds = delta("prefill", "seconds")
    return {
        "kv_handoffs": delta("decode", "handoffs"),
        "kv_transfer_failures": delta("prefill", "failures") + delta("decode", "failures"),
        "kv_transfer_bytes": delta("decode", "bytes"),
        "kv_transfer_throughput": delta("prefill", "bytes") / seconds if seconds > 0 else 0.0,
    }
