"""What a benchmark did to each DP rank of the workers with DP attention, from their ``sglang:dp_attention_*`` metrics
read before and after it: tokens scheduled per rank and its share, the imbalance (max over mean), the steps a rank
ran idle while another had work, its wait for the slowest rank."""

from __future__ import annotations

from typing import Mapping

from .result import BenchResult

Ranks = Mapping[str, Mapping[int, float]]  # short name -> DP rank -> value (prom.dp_ranks)
Workers = Mapping[str, Mapping[str, Ranks]]  # role -> URL -> Ranks


def worker_load(before: Ranks, after: Ranks) -> dict | None:
    """One worker's per-rank load over the benchmark; None when its ranks scheduled nothing."""
    def grown(short: str, rank: int) -> float:
        return after.get(short, {}).get(rank, 0.0) - before.get(short, {}).get(rank, 0.0)

    ranks = sorted(after.get("tokens", {}))
    tokens = [grown("tokens", r) for r in ranks]
    total = sum(tokens)
    if not ranks or total <= 0:
        return None
    idle = [grown("idle_steps", r) for r in ranks]
    steps = [i + grown("active_steps", r) for r, i in zip(ranks, idle)]
    rows = [{"rank": rank, "tokens": n, "share": n / total, "idle_step_fraction": i / k if k else 0.0,
             "sync_wait_s": grown("sync_wait_s", rank)} for rank, n, i, k in zip(ranks, tokens, idle, steps)]
    observed = grown("step_imbalance_count", -1)
    return {"ranks": rows, "tokens": total, "imbalance_ratio": max(tokens) / (total / len(ranks)),
            "step_imbalance_ratio": grown("step_imbalance_sum", -1) / observed if observed else None,
            "idle_step_fraction": sum(idle) / sum(steps) if sum(steps) else 0.0,
            "mean_sync_wait_ms": sum(row["sync_wait_s"] for row in rows) / sum(steps) * 1000 if sum(steps) else 0.0}


def dp_metrics(before: Workers, after: Workers, result: BenchResult) -> dict[str, float]:
    """Each DP worker's per-rank load into ``result.workers[url]["dp"]``; the gateable figures, each the worst over
    the workers: `dp_imbalance_ratio`, `dp_step_imbalance_ratio`, `dp_idle_step_fraction`, `mean_dp_sync_wait_ms`.
    {} where no worker has DP attention."""
    loads = {}
    for role, workers in after.items():
        for url, now in workers.items():
            load = worker_load(before.get(role, {}).get(url, {}), now)
            if load is not None:
                result.workers.setdefault(url, {"role": role})["dp"] = loads[url] = load
    if not loads:
        return {}
    worst = {"dp_imbalance_ratio": "imbalance_ratio", "dp_step_imbalance_ratio": "step_imbalance_ratio",
             "dp_idle_step_fraction": "idle_step_fraction", "mean_dp_sync_wait_ms": "mean_sync_wait_ms"}
    out = {}
    for metric, key in worst.items():
        values = [load[key] for load in loads.values() if load[key] is not None]
        if values:
            out[metric] = max(values)
    return out
