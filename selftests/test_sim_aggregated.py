"""The simulated aggregated worker (no --disaggregation-mode): a prefill forward holds the decode batch, as SGLang's
default does; with --enable-mixed-chunk the chunk and the decode batch share one step."""

from __future__ import annotations

import asyncio

import pytest

from pytest_sglang_pd.sim import catalog
from pytest_sglang_pd.sim.launch_server import parse_args
from pytest_sglang_pd.sim.perf_model import PerfModel
from pytest_sglang_pd.sim.radix_cache import RadixCache
from pytest_sglang_pd.sim.scheduler import Scheduler, Sequence
from pytest_sglang_pd.sim.worker import SimWorker

MODEL = PerfModel(catalog.GPUS["H100"], catalog.MODELS["Llama-3.3-70B"], 4)


def test_a_mixed_step_is_timed_from_its_prefill_tokens_and_its_decode_batch():
    chunk, batch, context = [(2048, 0)], 32, 32 * 3000
    mixed = MODEL.mixed_step_seconds(chunk, batch, context)
    prefill, decode = MODEL.prefill_seconds(chunk), MODEL.decode_step_seconds(batch, context)
    assert max(prefill, decode) < mixed < prefill + decode  # one forward: one overhead, weights read once
    assert MODEL.mixed_step_seconds([], batch, context) == pytest.approx(decode)
    assert MODEL.mixed_step_seconds(chunk, 0, 0) == pytest.approx(prefill)
    assert MODEL.mixed_step_seconds([(4096, 0)], batch, context) > mixed


def _tokens_during_a_long_prefill(mixed_chunk: bool) -> tuple[int, int]:
    """Tokens a running stream got while another request's 8-chunk prompt was prefilled, and the chunks."""
    async def run() -> tuple[int, int]:
        sched = Scheduler(MODEL, role="null", capacity_tokens=10**6, max_running=64, chunked_prefill_size=512,
                          cache=RadixCache(), policy="fcfs", time_scale=lambda: 0.05, mixed_chunk=mixed_chunk)
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

    return asyncio.run(run())


def test_by_default_an_aggregated_worker_holds_its_decode_batch_while_a_long_prompt_is_prefilled():
    """SGLang's default (no --enable-mixed-chunk): each prefill chunk is a forward of its own and runs first, so a
    running stream gets no token until the whole prompt is in KV (at most the one of the step already under way)."""
    tokens_during_prefill, chunks = _tokens_during_a_long_prefill(mixed_chunk=False)
    assert chunks == 8 and tokens_during_prefill <= 1


def test_with_mixed_chunk_an_aggregated_worker_keeps_decoding_while_a_long_prompt_is_prefilled():
    """--enable-mixed-chunk: a running stream gets a token in every step of another request's chunked prefill."""
    tokens_during_prefill, chunks = _tokens_during_a_long_prefill(mixed_chunk=True)
    assert tokens_during_prefill >= chunks - 1


@pytest.mark.parametrize("flags, mixed, chunk", [
    (["--sim-gpu", "H100"], False, 8192),  # SGLang's default below 160 GiB of HBM
    (["--sim-gpu", "MI300X"], False, 16384),  # and above
    (["--sim-gpu", "H100", "--chunked-prefill-size", "2048", "--enable-mixed-chunk"], True, 2048),
    (["--sim-gpu", "H100", "--disaggregation-mode", "decode", "--enable-mixed-chunk"], False, 8192),  # PD: never
])
def test_the_worker_flags_set_mixed_steps_and_sglangs_chunk_default(flags, mixed, chunk):
    args = parse_args(["--model-path", "meta-llama/Llama-3.3-70B-Instruct", "--tp", "4", *flags])
    worker = SimWorker(args, catalog.find_gpu(args.sim_gpu), catalog.MODELS["Llama-3.3-70B"])
    assert (worker.scheduler.mixed_chunk, worker.scheduler.chunk) == (mixed, chunk)


@pytest.mark.parametrize("share, ok", [("0.35", True), ("0", False), ("1.5", False)])
def test_the_worker_takes_its_prefill_share_from_the_flag(share, ok, capsys):
    argv = ["--model-path", "meta-llama/Llama-3.3-70B-Instruct", "--tp", "4", "--sim-prefill-of-matmul", share]
    if not ok:
        with pytest.raises(SystemExit):
            parse_args(argv)
        assert "--sim-prefill-of-matmul must be within (0, 1]" in capsys.readouterr().err
        return
    args = parse_args(argv)
    worker = SimWorker(args, catalog.find_gpu(args.sim_gpu), catalog.MODELS["Llama-3.3-70B"])
    assert worker.perf.prefill_of_matmul == 0.35
