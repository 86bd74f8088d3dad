"""The simulator's hardware and model catalog: GPU specs and model shapes, each with its public source."""

from __future__ import annotations

from dataclasses import dataclass

TB = 1e12
GB = 1e9
GBIT = 1e9 / 8  # bytes per second in one Gb/s


@dataclass(frozen=True)
class GPU:
    """Peak numbers of one accelerator (dense, no sparsity) and the NIC that serves it."""

    name: str
    bf16_flops: float  # dense FLOP/s
    fp8_flops: float  # dense FLOP/s
    hbm_bytes: float
    hbm_bytes_per_s: float
    nic_bytes_per_s: float  # one scale-out NIC per GPU


# Scale-out NIC: one 400 Gb/s NIC per GPU is the reference design of all six platforms
# (AMD Pensando Pollara 400 / Broadcom Thor2 on MI3xx platforms, NVIDIA ConnectX-7 on HGX H100/H200/B200):
# https://www.amd.com/en/products/accelerators/instinct/mi350.html ,
# https://docs.nvidia.com/dgx/dgxh100-user-guide/introduction-to-dgxh100.html (8x ConnectX-7, 400 Gb/s).
_NIC_400G = 400 * GBIT

GPUS: dict[str, GPU] = {
    g.name: g
    for g in (
        # https://www.amd.com/en/products/accelerators/instinct/mi300/mi300x.html
        # 1307.4 TFLOPS FP16/BF16 dense, 2614.9 TFLOPS FP8 dense, 192 GB HBM3, 5.3 TB/s
        GPU("MI300X", 1307.4 * TB, 2614.9 * TB, 192 * GB, 5.3 * TB, _NIC_400G),
        # https://www.amd.com/en/products/accelerators/instinct/mi300/mi325x.html
        # same compute as MI300X, 256 GB HBM3E, 6 TB/s
        GPU("MI325X", 1307.4 * TB, 2614.9 * TB, 256 * GB, 6.0 * TB, _NIC_400G),
        # https://www.amd.com/en/products/accelerators/instinct/mi350/mi355x.html
        # 2.5 PFLOPS FP16/BF16 dense, 5.0 PFLOPS FP8 dense, 288 GB HBM3E, 8 TB/s
        GPU("MI355X", 2516.6 * TB, 5033.2 * TB, 288 * GB, 8.0 * TB, _NIC_400G),
        # https://www.nvidia.com/en-us/data-center/h100/ (SXM; the datasheet's sparse 1979 / 3958 halved)
        GPU("H100", 989.4 * TB, 1978.9 * TB, 80 * GB, 3.35 * TB, _NIC_400G),
        # https://www.nvidia.com/en-us/data-center/h200/ (SXM; same compute as H100, 141 GB HBM3e, 4.8 TB/s)
        GPU("H200", 989.4 * TB, 1978.9 * TB, 141 * GB, 4.8 * TB, _NIC_400G),
        # https://www.nvidia.com/en-us/data-center/hgx/ (HGX B200 per GPU: 2.25 PF BF16 dense,
        # 4.5 PF FP8 dense, 180 GB HBM3e, 8 TB/s)
        GPU("B200", 2250 * TB, 4500 * TB, 180 * GB, 8.0 * TB, _NIC_400G),
    )
}


@dataclass(frozen=True)
class ModelProfile:
    """The shape of one model, enough to count FLOPs, weight bytes and KV bytes."""

    name: str
    path_keywords: tuple[str, ...]  # lower-case substrings of a model path that select this profile
    layers: int
    hidden_size: int
    heads: int
    kv_heads: int
    head_dim: int
    total_params: float
    active_params: float  # per token (MoE: shared + routed experts actually used)
    weight_bytes_per_param: float = 2.0  # bf16
    kv_bytes_per_element: float = 2.0  # bf16 KV cache
    weight_dtype: str = "bf16"  # the names of the two above (sim/dtypes.py resolves a worker's)
    kv_dtype: str = "bf16"
    compute_dtype: str = "bf16"  # the tensor-core format of its GEMMs: "bf16" or "fp8" (peak FLOPs)
    kv_lora_rank: int = 0  # MLA: compressed KV width (0 = ordinary attention)
    rope_head_dim: int = 0  # MLA: decoupled rope key width
    experts: int = 0  # routed experts (0 = dense)
    experts_per_token: int = 0
    context_length: int = 131072

    @property
    def kv_bytes_per_token(self) -> float:
        """Full KV cache bytes of one token, all layers (docs/sglang-interfaces.md section 5)."""
        if self.kv_lora_rank:
            return self.layers * (self.kv_lora_rank + self.rope_head_dim) * self.kv_bytes_per_element
        return 2 * self.layers * self.kv_heads * self.head_dim * self.kv_bytes_per_element

    @property
    def weight_bytes(self) -> float:
        return self.total_params * self.weight_bytes_per_param

    def weight_bytes_read_per_step(self, batch: int) -> float:
        """Weight bytes one decode step reads: all of a dense model; for MoE the shared part plus
        the experts that the batch's tokens select (expected distinct experts, uniform routing)."""
        if not self.experts:
            return self.weight_bytes
        expert_params = (self.total_params - self.active_params) / (1 - self.experts_per_token / self.experts)
        per_expert = expert_params / self.experts
        shared = self.total_params - expert_params
        untouched = (1 - self.experts_per_token / self.experts) ** max(batch, 1)
        distinct = self.experts * (1 - untouched)
        return (shared + distinct * per_expert) * self.weight_bytes_per_param


MODELS: dict[str, ModelProfile] = {
    m.name: m
    for m in (
        # https://huggingface.co/meta-llama/Llama-3.3-70B-Instruct/blob/main/config.json
        # 80 layers, hidden 8192, 64 heads, 8 KV heads, head dim 128; 70.6 B params (model card)
        ModelProfile(
            "Llama-3.3-70B",
            ("llama-3.3-70b", "llama-3.1-70b", "llama-3-70b", "llama3.3-70b", "llama-70b", "llama3-70b"),
            80, 8192, 64, 8, 128, 70.6e9, 70.6e9,
        ),
        # https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct/blob/main/config.json
        # 32 layers, hidden 4096, 32 heads, 8 KV heads, head dim 128; 8.03 B params (model card)
        ModelProfile(
            "Llama-3.1-8B",
            ("llama-3.1-8b", "llama-3-8b", "llama3.1-8b", "llama-8b", "llama3-8b"),
            32, 4096, 32, 8, 128, 8.03e9, 8.03e9,
        ),
        # https://huggingface.co/deepseek-ai/DeepSeek-R1/blob/main/config.json
        # 61 layers, hidden 7168, 128 heads, MLA kv_lora_rank 512 + qk_rope_head_dim 64,
        # 256 routed experts, 8 per token; 671 B total / 37 B active params, FP8 weights (model card)
        ModelProfile(
            "DeepSeek-R1",
            ("deepseek-r1", "deepseek-v3", "deepseek_r1", "deepseek-r1-0528"),
            61, 7168, 128, 128, 128, 671e9, 37e9,
            weight_bytes_per_param=1.0, weight_dtype="fp8", compute_dtype="fp8", kv_lora_rank=512, rope_head_dim=64,
            experts=256, experts_per_token=8, context_length=163840,
        ),
        # https://huggingface.co/Qwen/Qwen3-32B/blob/main/config.json
        # 64 layers, hidden 5120, 64 heads, 8 KV heads, head dim 128; 32.8 B params (model card)
        ModelProfile(
            "Qwen3-32B",
            ("qwen3-32b", "qwen-32b", "qwen3_32b"),
            64, 5120, 64, 8, 128, 32.8e9, 32.8e9, context_length=40960,
        ),
    )
}


def default_chunked_prefill_size(gpu: GPU) -> int:
    """SGLang 0.5.23's --chunked-prefill-size default from the GPU's memory (srt/arg_groups/memory_hook.py
    _handle_gpu_memory_settings): 8192 below 160 GiB (H100, H200), 16384 above (B200, MI300X and later)."""
    return 8192 if gpu.hbm_bytes < 160 * 2**30 else 16384


def find_gpu(name: str) -> GPU:
    for key, gpu in GPUS.items():
        if key.lower() == name.lower():
            return gpu
    raise ValueError(f"unknown --sim-gpu {name!r}; the catalog has: {', '.join(GPUS)}")


def find_model(profile: str | None, model_path: str) -> ModelProfile:
    """The profile named by ``profile``, else the one whose keywords occur in ``model_path``."""
    if profile:
        for key, model in MODELS.items():
            if key.lower() == profile.lower():
                return model
        raise ValueError(f"unknown --sim-model-profile {profile!r}; the catalog has: {', '.join(MODELS)}")
    path = model_path.lower()
    for model in MODELS.values():
        if any(keyword in path for keyword in model.path_keywords):
            return model
    raise ValueError(
        f"cannot infer a model profile from --model-path {model_path!r}; pass --sim-model-profile "
        f"with one of: {', '.join(MODELS)}"
    )
