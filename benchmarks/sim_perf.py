"""Simulator fidelity benchmark: modelled vs measured TTFT/TPOT, CPU per token, KV bytes/s per engine.

    python benchmarks/sim_perf.py [--input-len 1024] [--output-len 256] [--concurrency 1 16 64]

A 1P1D sim cluster (Llama-3.3-70B, TP8, MI355X, speedup 1) behind the real sglang router serves
streamed /generate requests at each concurrency (2 x concurrency requests, at least 4). Modelled
TPOT = decode step time at batch = concurrency with the mean context (input + output / 2);
modelled TTFT = one unloaded prefill + the KV transfer. Then each engine moves larger payloads
at concurrency 16, and the prefill's sglang:kv_transfer_total_mb / kv_transfer_latency_ms sums (SGLang's
histograms; the latency includes the modelled transfer time the sim waits out) give its rate.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_sglang_pd import prom  # noqa: E402
from pytest_sglang_pd.sim import catalog  # noqa: E402
from pytest_sglang_pd.textgen import tokenizer  # noqa: E402
from pytest_sglang_pd.sim.perf_model import PerfModel  # noqa: E402
from selftests.live import sim_cluster  # noqa: E402

MODEL_ARGS = ["--sim-model-profile", "Llama-3.3-70B", "--tp", "8", "--sim-gpu", "MI355X"]


async def one_request(session: aiohttp.ClientSession, url: str, prompt: str, output_len: int) -> tuple[float, float]:
    body = {"text": prompt, "sampling_params": {"max_new_tokens": output_len, "ignore_eos": True}, "stream": True}
    started = time.perf_counter()
    first = last = 0.0
    async with session.post(url + "/generate", json=body) as response:
        response.raise_for_status()
        async for line in response.content:
            if line.startswith(b"data: {"):
                last = time.perf_counter()
                first = first or last
    return first - started, (last - first) / (output_len - 1)


async def run_load(url: str, concurrency: int, count: int, input_len: int, output_len: int) -> list[tuple[float, float]]:
    rng = random.Random(concurrency)
    prompts = [tokenizer.random_text(input_len, rng) for _ in range(count)]
    gate = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600),
                                     connector=aiohttp.TCPConnector(limit=0)) as session:
        async def gated(prompt: str) -> tuple[float, float]:
            async with gate:
                return await one_request(session, url, prompt, output_len)
        return await asyncio.gather(*(gated(p) for p in prompts))


def cpu_seconds(groups: list[int]) -> float:
    """CPU seconds used so far by every process of these process groups (each started process leads one)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) in groups:  # pgrp
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def metric(url: str, name: str) -> float:
    return prom.total(prom.fetch(url + "/metrics"), f"sglang:{name}") or 0.0


def fidelity(args: argparse.Namespace) -> None:
    model = PerfModel(catalog.GPUS["MI355X"], catalog.MODELS["Llama-3.3-70B"], 8)
    print(f"# Llama-3.3-70B, TP8, MI355X, 1P1D mooncake, input {args.input_len}, output {args.output_len}, speedup 1")
    print("| concurrency | requests | TTFT modelled ms | TTFT measured ms (median) | TPOT modelled ms "
          "| TPOT measured ms (mean) | TPOT error | worker CPU ms / token | router CPU ms / token |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp, sim_cluster(Path(tmp), 1, 1, worker_args=MODEL_ARGS) as cluster:
        workers = [rp.pid for key, rp in cluster.procs.items() if key != "router"]
        router = [cluster.procs["router"].pid]
        asyncio.run(run_load(cluster.router_url, 2, 2, 32, 4))  # warm-up: connections, engine sessions
        for concurrency in args.concurrency:
            count = max(4, 2 * concurrency)
            cpu_before, router_before = cpu_seconds(workers), cpu_seconds(router)
            results = asyncio.run(run_load(cluster.router_url, concurrency, count, args.input_len, args.output_len))
            tokens = count * args.output_len
            worker_cpu = (cpu_seconds(workers) - cpu_before) / tokens * 1e3
            router_cpu = (cpu_seconds(router) - router_before) / tokens * 1e3
            ttft = statistics.median(r[0] for r in results) * 1e3
            measured = statistics.mean(r[1] for r in results) * 1e3
            context = concurrency * (args.input_len + args.output_len / 2)
            modelled = model.decode_step_seconds(concurrency, int(context)) * 1e3
            modelled_ttft = (model.prefill_seconds([(args.input_len, 0)]) + model.transfer_seconds(args.input_len)) * 1e3
            print(f"| {concurrency} | {count} | {modelled_ttft:.1f} | {ttft:.1f} | {modelled:.2f} | {measured:.2f} "
                  f"| {(measured - modelled) / modelled * 100:+.1f} % | {worker_cpu:.3f} | {router_cpu:.3f} |")


def engine_rates(args: argparse.Namespace) -> None:
    payload = args.kv_payload_bytes_per_token
    print(f"\n# KV bytes/s per engine: 1P1D, concurrency 16, 64 requests, input {args.input_len} tokens x "
          f"{payload} payload bytes per token ({args.input_len * payload / 2**20:.1f} MiB per handoff), speedup 50")
    print("| engine | handoffs | MiB moved | transfer seconds | MiB/s (transfer time) |")
    print("|---|---|---|---|---|")
    for backend in ("mooncake", "nixl", "tcp"):
        extra = [*MODEL_ARGS, "--sim-speedup", "50", "--sim-kv-payload-bytes-per-token", str(payload)]
        with tempfile.TemporaryDirectory() as tmp, sim_cluster(Path(tmp), 1, 1, backend=backend,
                                                                worker_args=extra) as cluster:
            asyncio.run(run_load(cluster.router_url, 16, 64, args.input_len, 4))
            prefill: str = cluster.worker_urls["prefill"][0]
            moved = metric(prefill, "kv_transfer_total_mb_sum") * 2**20
            seconds = metric(prefill, "kv_transfer_latency_ms_sum") / 1000
            handoffs = metric(prefill, "kv_transfer_latency_ms_count")
            print(f"| {backend} | {handoffs:.0f} | {moved / 2**20:.1f} | {seconds:.3f} | {moved / 2**20 / seconds:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input-len", type=int, default=1024)
    parser.add_argument("--output-len", type=int, default=256)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--kv-payload-bytes-per-token", type=int, default=4096)
    args = parser.parse_args()
    fidelity(args)
    engine_rates(args)


if __name__ == "__main__":
    main()
