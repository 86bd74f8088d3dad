"""The performance model's efficiencies reproduce the public measurements they were derived from (sim/catalog.py,
sim/perf_model.py), and one they were not fitted to."""

from __future__ import annotations

import dataclasses

import pytest

from pytest_sglang_pd.sim import catalog
from pytest_sglang_pd.sim.perf_model import PerfModel

FP8 = {"weight_bytes_per_param": 1.0, "kv_bytes_per_element": 1.0, "weight_dtype": "fp8", "kv_dtype": "fp8",
       "compute_dtype": "fp8"}
LLAMA_70B = dataclasses.replace(catalog.MODELS["Llama-3.3-70B"], **FP8)
# https://huggingface.co/meta-llama/Llama-3.1-405B/blob/main/config.json: 126 layers, hidden 16384, 128 heads,
# 8 KV heads, head dim 128; 405.9 B params
LLAMA_405B = catalog.ModelProfile("Llama-3.1-405B", (), 126, 16384, 128, 8, 128, 405.9e9, 405.9e9, **FP8)
MEAN_CONTEXT = 128 + 1024  # a 128-input / 2048-output run


def per_token_s(gpu: str, model: catalog.ModelProfile, batch: int) -> float:
    return PerfModel(catalog.GPUS[gpu], model, 8).decode_step_seconds(batch, batch * MEAN_CONTEXT)


# AMD's table (rocm.blogs.amd.com/artificial-intelligence/LLM_Inference): end-to-end ms of 2048 tokens, TP8, FP8
@pytest.mark.parametrize("gpu, model, batch, published_ms", [
    ("H100", LLAMA_70B, 1, 20923), ("H100", LLAMA_405B, 1, 58916), ("H100", LLAMA_70B, 32, 26543),
    ("MI300X", LLAMA_70B, 1, 19089), ("MI300X", LLAMA_405B, 1, 51740), ("MI300X", LLAMA_70B, 32, 25343),
])
def test_the_decode_fit_gives_the_published_latencies_it_was_fitted_to(gpu, model, batch, published_ms):
    assert per_token_s(gpu, model, batch) * 2048 * 1e3 == pytest.approx(published_ms, rel=0.01)


@pytest.mark.parametrize("gpu, published_ms", [("H100", 42398), ("MI300X", 45216)])
def test_the_decode_fit_extrapolates_to_the_published_batch_128(gpu, published_ms):
    assert per_token_s(gpu, LLAMA_70B, 128) * 2048 * 1e3 == pytest.approx(published_ms, rel=0.05)


def test_nims_h100_tp2_figures_held_out_are_within_six_percent():
    """NVIDIA NIM 1.8.0, Llama-3.3-70B FP8 on 2 x H100 (TP2), concurrency 1 (not used by the decode fit; the
    5000-token TTFT sets PREFILL_OF_MATMUL, the 500-token one is held out). NIM's KV cache: bf16 here."""
    model = dataclasses.replace(LLAMA_70B, kv_bytes_per_element=2.0)
    tp2 = PerfModel(catalog.GPUS["H100"], model, 2)
    assert tp2.decode_step_seconds(1, 5250) * 1e3 == pytest.approx(18.58, rel=0.06)
    assert tp2.decode_step_seconds(1, 1500) * 1e3 == pytest.approx(18.91, rel=0.06)
    assert tp2.prefill_seconds([(5000, 0)]) * 1e3 == pytest.approx(406.77, rel=0.01)
    assert tp2.prefill_seconds([(500, 0)]) * 1e3 == pytest.approx(47.77, rel=0.06)


def test_prefill_runs_at_each_gpus_measured_matmul_rate():
    chunk = [(8192, 0)]
    h100, mi300x = (PerfModel(catalog.GPUS[g], LLAMA_70B, 8) for g in ("H100", "MI300X"))
    h100_s, mi300x_s = (p.prefill_seconds(chunk) - p.step_overhead_s for p in (h100, mi300x))
    assert mi300x_s / h100_s == pytest.approx(1402.6 / 1273)  # the MI300X's higher FP8 peak is not reached


def test_a_calibrated_prefill_share_scales_the_prefill_compute_and_nothing_else():
    """sim.prefill_of_matmul (--sim-prefill-of-matmul) calibrates the prefill to a measured stack: half the share,
    twice the prefill compute; the decode step is the fit's."""
    shipped = PerfModel(catalog.GPUS["H100"], LLAMA_70B, 4)
    half = dataclasses.replace(shipped, prefill_of_matmul=shipped.prefill_of_matmul / 2)
    compute = [p.prefill_seconds([(3000, 0)]) - p.step_overhead_s for p in (shipped, half)]
    assert compute[1] == pytest.approx(2 * compute[0])
    assert half.decode_step_seconds(48, 48 * 3075) == shipped.decode_step_seconds(48, 48 * 3075)
