"""Weight and KV-cache dtypes of a simulated worker, resolved as SGLang resolves them: ``--quantization``,
else the checkpoint (an FP8 model path), else the catalog's default; ``--kv-cache-dtype``, with ``auto`` the
model's activation dtype (bf16 for the catalog's bf16 and FP8 checkpoints alike)."""

from __future__ import annotations

import dataclasses
import re

from pytest_sglang_pd.sim.catalog import ModelProfile


@dataclasses.dataclass(frozen=True)
class Dtype:
    name: str
    bytes: float  # per weight or per KV element
    compute: str  # the tensor-core format its GEMMs run in: "bf16" or "fp8"


BF16 = Dtype("bf16", 2.0, "bf16")
FP8 = Dtype("fp8", 1.0, "fp8")
INT8 = Dtype("int8", 1.0, "fp8")  # W8A8 int8: the catalog's GPUs have the same dense int8 and fp8 peaks
INT4 = Dtype("int4", 0.5, "bf16")  # weight-only 4 bit (AWQ/GPTQ): dequantised to bf16 GEMMs
FP4 = Dtype("fp4", 0.5, "fp8")  # the catalog holds no FP4 rates: FP4 GEMMs are counted at the FP8 ones

# SGLang 0.5.23 --quantization values (srt/arg_groups/choices.py QUANTIZATION_CHOICES) that fix the weight
# dtype; the others (modelopt, compressed-tensors, quark, gguf, bitsandbytes, auto-round, unquant, ...) take
# it from the checkpoint, i.e. from the model path here.
QUANTIZATION_DTYPES: dict[str, Dtype] = {
    **dict.fromkeys(("fp8", "mxfp8", "modelopt_fp8", "w8a8_fp8"), FP8),
    **dict.fromkeys(("w8a8_int8", "auto-round-int8", "mlx_q8"), INT8),
    **dict.fromkeys(("awq", "awq_marlin", "gptq", "gptq_marlin", "moe_wna16", "mlx_q4"), INT4),
    **dict.fromkeys(("modelopt_fp4", "nvfp4_online", "petit_nvfp4", "mxfp4", "quark_mxfp4", "w4afp8"), FP4),
}
# each of releases.KV_CACHE_DTYPES; "auto" is the model's dtype
KV_CACHE_DTYPES: dict[str, Dtype | None] = {
    "auto": None, "fp8_e5m2": FP8, "fp8_e4m3": FP8, "mxfp8": FP8, "bf16": BF16, "bfloat16": BF16,
    "nvfp4": FP4, "fp4_mx_block16": FP4,
}
_FP8_PATH = re.compile(r"fp8", re.IGNORECASE)


def weight_dtype(quantization: str | None, model_path: str, profile: ModelProfile) -> Dtype:
    """The weight dtype: the quantization method's, else FP8 when the model path names it, else the catalog's."""
    if quantization in QUANTIZATION_DTYPES:
        return QUANTIZATION_DTYPES[quantization]
    if _FP8_PATH.search(model_path):
        return FP8
    return FP8 if profile.weight_bytes_per_param <= 1 else BF16


def kv_dtype(kv_cache_dtype: str, profile: ModelProfile) -> Dtype:
    """The KV cache dtype: the flag's, or with ``auto`` the catalog's (bf16 unless the profile says otherwise)."""
    if kv_cache_dtype not in KV_CACHE_DTYPES:
        raise ValueError(f"--kv-cache-dtype {kv_cache_dtype!r} is not one of {', '.join(KV_CACHE_DTYPES)}")
    return KV_CACHE_DTYPES[kv_cache_dtype] or (FP8 if profile.kv_bytes_per_element <= 1 else BF16)


def with_dtypes(profile: ModelProfile, quantization: str | None, kv_cache_dtype: str, model_path: str) -> ModelProfile:
    """The catalog profile with the worker's weight and KV dtypes: bytes per weight and KV element, GEMM format."""
    weights = weight_dtype(quantization, model_path, profile)
    kv = kv_dtype(kv_cache_dtype, profile)
    return dataclasses.replace(profile, weight_bytes_per_param=weights.bytes, kv_bytes_per_element=kv.bytes,
                               weight_dtype=weights.name, kv_dtype=kv.name, compute_dtype=weights.compute)
