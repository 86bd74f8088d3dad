"""Per-DP-rank load, as SGLang 0.5.23's ``LoadSnapshot`` (``srt/managers/load_snapshot.py``) and its ``GET /v1/loads``
(``srt/entrypoints/v1_loads.py``) report it; ``/get_load`` (the older list sglang-router 0.3.2 polls) and the
scheduler gauges of ``/metrics`` read the same figures."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pytest_sglang_pd.sim import dp
from pytest_sglang_pd.sim.worker import SGLANG_VERSION, SimWorker

SECTIONS = ("core", "memory", "spec", "lora", "disagg", "queues", "all")


def rank_loads(worker: SimWorker) -> list[dict]:
    """The core fields of each DP rank's load."""
    out = []
    for index, (rank, throughput) in enumerate(zip(worker.ranks, worker.gen_throughputs())):
        waiting = list(rank.waiting)
        total = dp.rank_tokens(rank)
        out.append({
            "timestamp": time.time(), "dp_rank": index, "num_running_reqs": rank.num_running,
            "num_waiting_reqs": len(waiting), "num_waiting_uncached_tokens": sum(len(s.prompt_ids) for s in waiting),
            "num_used_tokens": rank.reserved, "num_total_tokens": total, "num_active_tokens": total,
            "num_prealloc_ready_tokens": 0, "max_total_num_tokens": rank.capacity_tokens,
            "max_running_requests": rank.max_running,
            "token_usage": round(rank.reserved / rank.capacity_tokens, 4) if rank.capacity_tokens else 0.0,
            "gen_throughput": round(throughput, 2), "cache_hit_rate": round(rank.cache_hit_rate, 4),
            "utilization": round(rank.num_running / rank.max_running, 4) if rank.max_running else 0.0,
        })
    return out


def v1_loads(worker: SimWorker, include: str | None, dp_rank: str | None) -> dict:
    """The body of ``GET /v1/loads``; ValueError (HTTP 400) for an unknown section or DP rank."""
    sections = {s.strip() for s in include.split(",")} if include else {"all"}
    if not sections <= set(SECTIONS):
        raise ValueError(f"Invalid include sections: {sections - set(SECTIONS)}. Valid options: {sorted(SECTIONS)}")
    loads = rank_loads(worker)
    if dp_rank is not None:
        if not dp_rank.lstrip("-").isdigit() or not 0 <= int(dp_rank) < len(loads):
            raise ValueError(f"Invalid dp_rank {dp_rank}: this server has DP ranks 0..{len(loads) - 1}")
        loads = [loads[int(dp_rank)]]
    if sections & {"all", "disagg"}:
        queues = dict(worker.queue_reqs)
        for load in loads:
            load["disaggregation"] = {
                "mode": worker.role,
                **{name: queues.get(f"num_{name}", 0) if load["dp_rank"] == 0 else 0
                   for name in ("prefill_bootstrap_queue_reqs", "prefill_inflight_queue_reqs",
                                "decode_prealloc_queue_reqs", "decode_transfer_queue_reqs")}}
    ranks = dp.dp_ranks(worker.args)
    return {"timestamp": datetime.now(timezone.utc).isoformat(), "version": SGLANG_VERSION, "accelerator": worker.gpu.name,
            "num_accelerators": worker.perf.gpus // ranks if worker.args.attn_dp_size > 1 else worker.perf.gpus,
            "loads": loads}
