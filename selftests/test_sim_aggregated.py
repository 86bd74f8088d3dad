"""The simulated aggregated worker (no --disaggregation-mode): chunked prefill and decode share one step."""

from __future__ import annotations

import asyncio

import pytest

from pytest_sglang_pd.sim import catalog
from pytest_sglang_pd.sim.perf_model import PerfModel
from pytest_sglang_pd.sim.radix_cache import RadixCache
from pytest_sglang_pd.sim.scheduler import Scheduler, Sequence

MODEL = PerfModel(catalog.GPUS["H100"], catalog.MODELS["Llama-3.3-70B"], 4)


def test_a_mixed_step_is_timed_from_its_prefill_tokens_and_its_decode_batch():
    chunk, batch, context = [(2048, 0)], 32, 32 * 3000
    mixed = MODEL.mixed_step_seconds(chunk, batch, context)
    prefill, decode = MODEL.prefill_seconds(chunk), MODEL.decode_step_seconds(batch, context)
    assert max(prefill, decode) < mixed < prefill + decode  # one forward: one overhead, weights read once
    assert MODEL.mixed_step_seconds([], batch, context) == pytest.approx(decode)
    assert MODEL.mixed_step_seconds(chunk, 0, 0) == pytest.approx(prefill)
    assert MODEL.mixed_step_seconds([(4096, 0)], batch, context) > mixed


def test_an_aggregated_worker_keeps_decoding_while_a_long_prompt_is_prefilled():
    """A running stream gets a token in every step of another request's chunked prefill (the PD prefill worker and
    a worker without mixed steps would hold it for the whole prefill)."""
    async def run() -> tuple[int, int]:
        sched = Scheduler(MODEL, role="null", capacity_tokens=10**6, max_running=64, chunked_prefill_size=512,
                          cache=RadixCache(), policy="fcfs", time_scale=lambda: 0.05)
        sched.start()
        try:
            streaming = Sequence("a", list(range(16)), output_tokens=10**4, reserve_tokens=20000)
            await sched.prefill(streaming)
            while streaming.generated < 3:
                await asyncio.sleep(0.001)
            long = Sequence("b", list(range(1000, 1000 + 8 * 512)), output_tokens=4, reserve_tokens=8 * 512 + 4)
            await asyncio.sleep(0)
            submitted = asyncio.get_running_loop().time()
            await sched.prefill(long)
            done = asyncio.get_running_loop().time()
            during = [t for t in streaming.token_times if submitted < t < done]
            return len(during), len(long.prompt_ids) // 512
        finally:
            await sched.stop()

    tokens_during_prefill, chunks = asyncio.run(run())
    assert tokens_during_prefill >= chunks - 1
