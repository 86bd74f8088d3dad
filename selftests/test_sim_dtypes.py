"""The simulator's weight and KV dtypes: resolved from --quantization, the model path and --kv-cache-dtype
(flags the config's quantization / kv_cache_dtype keys plan), and what they change in the performance model."""

from __future__ import annotations

import pytest

from pytest_sglang_pd import releases
from pytest_sglang_pd.sim import catalog, dtypes
from pytest_sglang_pd.sim.launch_server import parse_args
from pytest_sglang_pd.sim.perf_model import PerfModel

LLAMA = catalog.MODELS["Llama-3.3-70B"]
H100 = catalog.GPUS["H100"]
BF16_PATH = "meta-llama/Llama-3.1-70B-Instruct"
FP8_PATH = "neuralmagic/Meta-Llama-3.1-70B-Instruct-FP8"


@pytest.mark.parametrize(("quantization", "path", "expected"), [
    (None, BF16_PATH, "bf16"),
    (None, FP8_PATH, "fp8"),
    ("fp8", BF16_PATH, "fp8"),
    ("w8a8_fp8", BF16_PATH, "fp8"),
    ("modelopt_fp8", BF16_PATH, "fp8"),
    ("w8a8_int8", BF16_PATH, "int8"),
    ("awq", BF16_PATH, "int4"),
    ("modelopt", FP8_PATH, "fp8"),  # a method that takes the dtype from the checkpoint
    ("compressed-tensors", BF16_PATH, "bf16"),
])
def test_weight_dtype_from_quantization_else_path_else_catalog(quantization, path, expected):
    assert dtypes.weight_dtype(quantization, path, LLAMA).name == expected


def test_catalog_default_dtype_of_an_fp8_checkpoint_profile():
    deepseek = catalog.MODELS["DeepSeek-R1"]
    assert dtypes.weight_dtype(None, "deepseek-ai/DeepSeek-R1", deepseek).name == "fp8"
    assert dtypes.with_dtypes(deepseek, None, "auto", "deepseek-ai/DeepSeek-R1") == deepseek


@pytest.mark.parametrize(("flag", "expected"), [("auto", "bf16"), ("bf16", "bf16"), ("bfloat16", "bf16"),
                                                ("fp8_e4m3", "fp8"), ("fp8_e5m2", "fp8"), ("nvfp4", "fp4")])
def test_kv_dtype_from_the_flag_with_auto_the_models(flag, expected):
    assert dtypes.kv_dtype(flag, LLAMA).name == expected


def test_every_sglang_kv_cache_dtype_choice_is_modelled():
    assert tuple(dtypes.KV_CACHE_DTYPES) == releases.KV_CACHE_DTYPES
    with pytest.raises(ValueError, match="fp8_e4m3"):
        dtypes.kv_dtype("int3", LLAMA)


def test_the_sim_parser_takes_sglangs_flags():
    args = parse_args(["--model-path", BF16_PATH, "--quantization", "fp8", "--kv-cache-dtype", "fp8_e4m3"])
    assert (args.quantization, args.kv_cache_dtype) == ("fp8", "fp8_e4m3")
    with pytest.raises(SystemExit):
        parse_args(["--model-path", BF16_PATH, "--kv-cache-dtype", "fp7"])


def _perf(quantization: str | None = None, kv: str = "auto", path: str = BF16_PATH, gpus: int = 8) -> PerfModel:
    return PerfModel(H100, dtypes.with_dtypes(LLAMA, quantization, kv, path), gpus)


def test_fp8_weights_halve_the_weight_bytes_a_decode_step_reads():
    bf16, fp8 = _perf(), _perf(path=FP8_PATH)
    assert fp8.model.weight_bytes_read_per_step(32) == pytest.approx(bf16.model.weight_bytes_read_per_step(32) / 2)
    assert fp8.model.weight_bytes == pytest.approx(70.6e9)
    # a small batch is bound by memory and the weights are most of what it reads: about half the step
    fp8_s, bf16_s = (p.decode_step_seconds(1, 1000) - p.step_overhead_s for p in (fp8, bf16))
    assert 0.5 * bf16_s < fp8_s < 0.52 * bf16_s


def test_fp8_weights_run_prefill_at_the_measured_fp8_matmul_rate():
    bf16, fp8 = _perf(), _perf("fp8")
    bf16_compute = bf16.prefill_seconds([(8192, 0)]) - bf16.step_overhead_s
    fp8_compute = fp8.prefill_seconds([(8192, 0)]) - fp8.step_overhead_s
    assert fp8_compute == pytest.approx(bf16_compute * H100.bf16_matmul / H100.fp8_matmul)
    assert 0.55 * bf16_compute < fp8_compute < 0.6 * bf16_compute  # 794.5 / 1402.6 TFLOPS measured, not 1 / 2


def test_fp8_kv_doubles_the_kv_capacity_and_halves_the_transfer_bytes():
    bf16, fp8_kv = _perf("fp8"), _perf("fp8", "fp8_e4m3")
    assert fp8_kv.model.kv_bytes_per_token == bf16.model.kv_bytes_per_token / 2
    assert fp8_kv.kv_capacity_tokens(0.88) == pytest.approx(2 * bf16.kv_capacity_tokens(0.88), abs=2)
    assert fp8_kv.kv_bytes(3000) == bf16.kv_bytes(3000) / 2
    assert fp8_kv.transfer_seconds(3000) < bf16.transfer_seconds(3000)


def test_fp8_weights_fit_where_bf16_does_not():
    with pytest.raises(ValueError, match="not enough memory"):
        _perf(gpus=1).kv_capacity_tokens(0.9)
    assert _perf("fp8", gpus=1).kv_capacity_tokens(0.9) > 0
