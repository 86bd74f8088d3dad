"""The simulator's hardware and model catalog: GPU specs and model shapes, each with its public source."""

from __future__ import annotations

from dataclasses import dataclass

TB = 1e12
GB = 1e9
GBIT = 1e9 / 8  # bytes per second in one Gb/s


@dataclass(frozen=True)
class Decode:
    """What one decode step achieves on a GPU family, fitted to published latencies (the fits are below)."""

    mbu: float  # fraction of the HBM bandwidth at which a step streams the weights and the KV cache
    mfu: float  # fraction of the GEMM dtype's peak at which a step's per-sequence compute runs (added to the streaming)
    layer_s: float  # fixed seconds per layer of every step (kernel launches, TP all-reduces, small kernels)


# Decode efficiencies, fitted to the batch-1 and batch-32 end-to-end latencies AMD published for Llama 3.1 70B and
# 405B in FP8 on 8 GPUs (TP8), 128 input / 2048 output tokens, MI300X on vLLM and H100 on TensorRT-LLM 0.16:
# https://rocm.blogs.amd.com/artificial-intelligence/LLM_Inference/README.html ("vLLM Latency Benchmark Results").
# A token of a batch of B costs t = (W + B x 1152 x kv) / (8 x HBM_bw x mbu) + B x f / (8 x FP8 peak x mfu)
# + layers x layer_s (W FP8 weight bytes, kv FP8 KV bytes per token, 1152 the mean context 128 + 1024, f the FLOPs
# of one token, 2 x params + 4 x layers x heads x 128 x 1152): three published runs, three unknowns:
#   H100:   70B B=1 20923 ms / 2048, 405B B=1 58916 ms / 2048, 70B B=32 26543 ms / 2048
#           -> mbu 0.891, mfu 0.113, layer_s 89.6 us
#   MI300X: 70B B=1 19089 ms, 405B B=1 51740 ms, 70B B=32 25343 ms  -> mbu 0.681, mfu 0.0750, layer_s 84.7 us
# Checked on runs not fitted: the same table's 70B at B=128 (H100 42398 ms, MI300X 45216 ms; the fit gives 43941,
# +4 %, and 44695, -1 %) and NVIDIA's NIM 1.8.0 table (Llama-3.3-70B FP8 on 2 x H100 TP2, concurrency 1,
# https://docs.nvidia.com/nim/benchmarking/llm/1.0.0/performance): ITL 18.58 ms at 5000 input tokens and 18.91 ms
# at 500, the fit 19.6 and 19.4 ms (+6 %, +3 %). No such runs are published for the other GPUs: H200 and B200 take
# the NVIDIA fit, MI325X and MI355X the AMD one (same software stacks); their own HBM bandwidth and peaks enter
# through the formula.
NVIDIA_DECODE = Decode(mbu=0.891, mfu=0.113, layer_s=89.6e-6)
AMD_DECODE = Decode(mbu=0.681, mfu=0.0750, layer_s=84.7e-6)


@dataclass(frozen=True)
class GPU:
    """Peak numbers of one accelerator (dense, no sparsity), its measured matmul rates and the NIC that serves it."""

    name: str
    bf16_flops: float  # dense FLOP/s
    fp8_flops: float  # dense FLOP/s
    hbm_bytes: float
    hbm_bytes_per_s: float
    nic_bytes_per_s: float  # one scale-out NIC per GPU
    bf16_matmul: float  # max achievable dense matmul FLOP/s, measured (sources below)
    fp8_matmul: float
    decode: Decode


# Scale-out NIC: one 400 Gb/s NIC per GPU is the reference design of all six platforms
# (AMD Pensando Pollara 400 / Broadcom Thor2 on MI3xx platforms, NVIDIA ConnectX-7 on HGX H100/H200/B200):
# https://www.amd.com/en/products/accelerators/instinct/mi350.html ,
# https://docs.nvidia.com/dgx/dgxh100-user-guide/introduction-to-dgxh100.html (8x ConnectX-7, 400 Gb/s).
_NIC_400G = 400 * GBIT

# Max achievable matmul rates (large dense GEMMs, no sparsity), measured:
#  NVIDIA and the MI355X: Stas Bekman's MAMF table, https://github.com/stas00/ml-engineering/blob/master/compute/
#  accelerator/README.md#maximum-achievable-matmul-flops-comparison-table (mamf-finder.py, mean of 100 iterations):
#  BF16 H100 SXM 794.5 TFLOPS ("H200 is the same"), B200 1745.0, MI355X 1565.0; FP8 (float8_e4m3fn) H100 1402.6,
#  H200 1453.4, B200 3432.5 (no MI355X FP8 row: taken as 2 x its BF16, the ratio of its peaks).
#  MI300X and MI325X: AMD's Max-Achievable FLOPs (hipBLASLt), https://rocm.blogs.amd.com/software-tools-optimization/
#  measuring-max-achievable-flops-part2/README.html : BF16 708 / 843 TFLOPS, FP8 1273 / 1519 TFLOPS.
GPUS: dict[str, GPU] = {
    g.name: g
    for g in (
        # https://www.amd.com/en/products/accelerators/instinct/mi300/mi300x.html
        # 1307.4 TFLOPS FP16/BF16 dense, 2614.9 TFLOPS FP8 dense, 192 GB HBM3, 5.3 TB/s
        GPU("MI300X", 1307.4 * TB, 2614.9 * TB, 192 * GB, 5.3 * TB, _NIC_400G, 708 * TB, 1273 * TB, AMD_DECODE),
        # https://www.amd.com/en/products/accelerators/instinct/mi300/mi325x.html
        # same compute as MI300X, 256 GB HBM3E, 6 TB/s
        GPU("MI325X", 1307.4 * TB, 2614.9 * TB, 256 * GB, 6.0 * TB, _NIC_400G, 843 * TB, 1519 * TB, AMD_DECODE),
        # https://www.amd.com/en/products/accelerators/instinct/mi350/mi355x.html
        # 2.5 PFLOPS FP16/BF16 dense, 5.0 PFLOPS FP8 dense, 288 GB HBM3E, 8 TB/s
        GPU("MI355X", 2516.6 * TB, 5033.2 * TB, 288 * GB, 8.0 * TB, _NIC_400G, 1565 * TB, 2 * 1565 * TB, AMD_DECODE),
        # https://www.nvidia.com/en-us/data-center/h100/ (SXM; the datasheet's sparse 1979 / 3958 halved)
        GPU("H100", 989.4 * TB, 1978.9 * TB, 80 * GB, 3.35 * TB, _NIC_400G, 794.5 * TB, 1402.6 * TB, NVIDIA_DECODE),
        # https://www.nvidia.com/en-us/data-center/h200/ (SXM; same compute as H100, 141 GB HBM3e, 4.8 TB/s)
        GPU("H200", 989.4 * TB, 1978.9 * TB, 141 * GB, 4.8 * TB, _NIC_400G, 794.5 * TB, 1453.4 * TB, NVIDIA_DECODE),
        # https://www.nvidia.com/en-us/data-center/hgx/ (HGX B200 per GPU: 2.25 PF BF16 dense,
        # 4.5 PF FP8 dense, 180 GB HBM3e, 8 TB/s)
        GPU("B200", 2250 * TB, 4500 * TB, 180 * GB, 8.0 * TB, _NIC_400G, 1745 * TB, 3432.5 * TB, NVIDIA_DECODE),
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
