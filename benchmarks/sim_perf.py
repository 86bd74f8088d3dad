"""Simulator fidelity benchmark: TPOT measured by the real bench_serving vs the perf model at the decode batch that ran.

    python benchmarks/sim_perf.py [--decodes 1 2] [--concurrency 64 256 1024] [--speedup 1 0.5 0.25]
                                  [--input-len 1024] [--output-len 128]
    python benchmarks/sim_perf.py --engines

Per row, a fresh 1 prefill + N decode sim cluster (Llama-3.3-70B, TP8, MI355X, Mooncake) behind the real sglang
router serves the real ``sglang.bench_serving`` (the tools venv, $BENCH_TOOLS_VENV or .bench-tools) with random
ids of fixed length, 2 x concurrency prompts at that max concurrency. Before and after, each decode worker's
``sim_forward_*{forward_mode="decode"}`` counters are read; their difference gives the batches it ran over the
benchmark: the token-weighted mean batch (what an average output token saw) and its mean KV context. "TPOT
modelled" is the model's decode step at that batch and context (token-weighted over the decode instances).
Where ``--speedup`` < 1 the simulator runs time-dilated (its clock 1/speedup x slower) and every time figure is
rescaled to modelled time (times x speedup, rates / speedup). Worker CPU is the user + system time of the worker
processes per output token; peak RSS is the largest VmHWM of one worker process.
``--engines`` measures instead the KV bytes/s each transfer engine moves on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_sglang_pd import prom  # noqa: E402
from pytest_sglang_pd.sim import catalog  # noqa: E402
from pytest_sglang_pd.sim.metrics import RanBatch, batch_counters, modelled_tpot_s  # noqa: E402
from pytest_sglang_pd.sim.perf_model import PerfModel  # noqa: E402
from pytest_sglang_pd.textgen import tokenizer  # noqa: E402
from selftests.configs import tools_venv  # noqa: E402
from selftests.live import sim_cluster  # noqa: E402

MODEL_ARGS = ["--sim-model-profile", "Llama-3.3-70B", "--tp", "8", "--sim-gpu", "MI355X"]
MODEL = PerfModel(catalog.GPUS["MI355X"], catalog.MODELS["Llama-3.3-70B"], 8)


def decode_counters(url: str) -> dict[str, float]:
    return batch_counters(prom.fetch(url + "/metrics") or [], "decode")


class PeakBatch(threading.Thread):
    """Polls the decode workers' ``sim_running_reqs_window_max`` while a benchmark runs; ``peak`` is the largest."""

    def __init__(self, urls: list[str]) -> None:
        super().__init__(daemon=True)
        self.urls, self.peak, self.done = urls, 0.0, threading.Event()

    def run(self) -> None:
        while not self.done.wait(2.0):
            for url in self.urls:
                for s in prom.fetch(url + "/metrics") or []:
                    if s.name == "sim_running_reqs_window_max" and s.labels.get("forward_mode") == "decode":
                        self.peak = max(self.peak, s.value)


def process_groups_stat(groups: list[int]) -> tuple[float, float]:
    """(CPU seconds used so far, largest peak RSS in MiB) of the processes of these process groups."""
    ticks, cpu, peak = os.sysconf("SC_CLK_TCK"), 0, 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) not in groups:  # pgrp
                continue
            cpu += int(fields[11]) + int(fields[12])  # utime, stime
            status = (stat.parent / "status").read_text()
        except OSError:  # gone meanwhile
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]))
    return cpu / ticks, peak / 1024


def bench_serving(cluster, concurrency: int, prompts: int, args: argparse.Namespace, out: Path) -> dict:
    """The real bench_serving against the router; its JSON result line."""
    python = tools_venv() / "bin" / "python"
    router = cluster.deployment.router
    argv = [str(python), "-m", "sglang.bench_serving", "--backend", "sglang", "--host", router.host,
            "--port", str(router.port), "--model", cluster.deployment.model.model,
            "--tokenizer", str(tokenizer.tokenizer_dir()), "--dataset-name", "random-ids",
            "--random-input-len", str(args.input_len), "--random-output-len", str(args.output_len),
            "--random-range-ratio", "1.0", "--num-prompts", str(prompts), "--max-concurrency", str(concurrency),
            "--request-rate", "inf", "--seed", "1", "--warmup-requests", "1", "--disable-tqdm",
            "--output-file", str(out)]
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0 or not out.exists():
        raise SystemExit(f"bench_serving failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(out.read_text().strip().splitlines()[-1])


@dataclass(frozen=True)
class Row:
    decodes: int
    concurrency: int
    prompts: int
    speedup: float
    batches: list[RanBatch]
    peak_batch: float
    tpot_ms: float  # rescaled to modelled time
    modelled_ms: float
    ttft_ms: float
    output_tok_s: float
    cpu_ms_per_token: float
    peak_rss_mib: float

    @property
    def deviation(self) -> float:
        return (self.tpot_ms - self.modelled_ms) / self.modelled_ms

    def line(self) -> str:
        batch = " / ".join(f"{b.mean_batch:.0f}" for b in self.batches)
        return (f"| {self.decodes} | {self.concurrency} | {self.prompts} | {1 / self.speedup:g}x | {batch} "
                f"| {self.peak_batch:.0f} | {self.tpot_ms:.2f} | {self.modelled_ms:.2f} | {self.deviation * 100:+.1f} % "
                f"| {self.ttft_ms:.0f} | {self.output_tok_s:.0f} | {self.cpu_ms_per_token:.3f} | {self.peak_rss_mib:.0f} |")


HEADER = ("| decodes | streams | prompts | time dilation | mean decode batch (per instance) | max batch "
          "| TPOT measured ms | TPOT modelled at measured batch ms | deviation | mean TTFT ms | output tok/s "
          "| worker CPU ms / token | peak worker RSS MiB |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def measure(decodes: int, concurrency: int, speedup: float, args: argparse.Namespace) -> Row:
    prompts = 2 * concurrency
    with tempfile.TemporaryDirectory() as tmp, sim_cluster(
            Path(tmp), 1, decodes, worker_args=MODEL_ARGS, sim={"speedup": str(speedup)}) as cluster:
        groups = [rp.pid for key, rp in cluster.procs.items() if key != "router"]
        urls = cluster.worker_urls["decode"]
        before = [decode_counters(url) for url in urls]
        cpu_before, _ = process_groups_stat(groups)
        peak = PeakBatch(urls)
        peak.start()
        try:
            result = bench_serving(cluster, concurrency, prompts, args, Path(tmp) / "bench.jsonl")
        finally:
            peak.done.set()
        cpu_after, rss = process_groups_stat(groups)
        batches = [RanBatch.between(b, decode_counters(url)) for b, url in zip(before, urls)]
    tokens = result["total_output_tokens"]
    return Row(decodes, concurrency, prompts, speedup, batches, peak.peak, result["mean_tpot_ms"] * speedup,
               modelled_tpot_s(MODEL, batches) * 1e3, result["mean_ttft_ms"] * speedup, result["output_throughput"] / speedup,
               (cpu_after - cpu_before) / tokens * 1e3, rss)


def fidelity(args: argparse.Namespace) -> list[Row]:
    speedups = dict(zip(args.concurrency, args.speedup or [1.0] * len(args.concurrency)))
    print(f"# Llama-3.3-70B, TP8, MI355X, 1P + N decode, mooncake, bench_serving random-ids {args.input_len}/"
          f"{args.output_len} fixed, 2 x concurrency prompts")
    print(HEADER, flush=True)
    rows = []
    for decodes in args.decodes:
        for concurrency in args.concurrency:
            rows.append(measure(decodes, concurrency, speedups[concurrency], args))
            print(rows[-1].line(), flush=True)
    return rows


async def run_load(url: str, concurrency: int, count: int, input_len: int, output_len: int) -> None:
    """The engine-rate load: streamed /generate requests of random text, ``concurrency`` at a time."""
    rng = random.Random(concurrency)
    prompts = [tokenizer.random_text(input_len, rng) for _ in range(count)]
    gate = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600),
                                     connector=aiohttp.TCPConnector(limit=0)) as session:
        async def one(prompt: str) -> None:
            body = {"text": prompt, "sampling_params": {"max_new_tokens": output_len, "ignore_eos": True}, "stream": True}
            async with gate, session.post(url + "/generate", json=body) as response:
                response.raise_for_status()
                async for _ in response.content:
                    pass
        await asyncio.gather(*(one(p) for p in prompts))


def metric(url: str, name: str) -> float:
    return prom.total(prom.fetch(url + "/metrics") or [], f"sglang:{name}") or 0.0


def engine_rates(args: argparse.Namespace) -> None:
    payload = args.kv_payload_bytes_per_token
    print(f"\n# KV bytes/s per engine: 1P1D, concurrency 16, 64 requests, input {args.input_len} tokens x "
          f"{payload} payload bytes per token ({args.input_len * payload / 2**20:.1f} MiB per handoff), speedup 50")
    print("| engine | handoffs | MiB moved | transfer seconds | MiB/s (transfer time) |")
    print("|---|---|---|---|---|")
    for backend in ("mooncake", "nixl", "tcp"):
        extra = [*MODEL_ARGS, "--sim-kv-payload-bytes-per-token", str(payload)]
        with tempfile.TemporaryDirectory() as tmp, sim_cluster(Path(tmp), 1, 1, backend=backend, worker_args=extra,
                                                                sim={"speedup": "50"}) as cluster:
            asyncio.run(run_load(cluster.router_url, 16, 64, args.input_len, 4))
            prefill: str = cluster.worker_urls["prefill"][0]
            moved = metric(prefill, "kv_transfer_total_mb_sum") * 2**20
            seconds = metric(prefill, "kv_transfer_latency_ms_sum") / 1000
            handoffs = metric(prefill, "kv_transfer_latency_ms_count")
            print(f"| {backend} | {handoffs:.0f} | {moved / 2**20:.1f} | {seconds:.3f} | {moved / 2**20 / seconds:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decodes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--speedup", type=float, nargs="+", help="--sim-speedup per concurrency (default 1)")
    parser.add_argument("--input-len", type=int, default=1024)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--engines", action="store_true", help="measure each KV engine's bytes/s instead")
    parser.add_argument("--kv-payload-bytes-per-token", type=int, default=4096)
    args = parser.parse_args()
    if args.speedup and len(args.speedup) != len(args.concurrency):
        parser.error("--speedup needs one value per --concurrency")
    if args.engines:
        engine_rates(args)
    else:
        fidelity(args)


if __name__ == "__main__":
    main()
