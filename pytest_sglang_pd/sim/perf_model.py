"""The simulator's performance model: prefill, decode-step and KV-transfer times and KV capacity.

All times are modelled hardware seconds; the scheduler divides them by ``--sim-speedup``.
Formulas (docs/simulator.md repeats them):

    prefill(chunk)  = sum_r [2 * P_active * n_r + 4 * L * H * d * n_r * (c_r + n_r / 2)]
                      / (G * matmul * PREFILL_OF_MATMUL) + overhead
    decode(batch)   = (W(batch) + KV_read) / G / (HBM_bw * mbu)
                      + (2 * P_active * B + 4 * L * H * d * sum ctx) / (G * peak * mfu) + overhead
    overhead        = L * layer_s
    mixed(chunk, batch) = decode(batch) + prefill compute of the chunk
                      (an aggregated worker with --enable-mixed-chunk: chunk and decode batch in one step)
    transfer(n)     = n * kv_bytes_per_token / (G * NIC_bw) + TRANSFER_SETUP
    capacity        = G * (HBM * mem_fraction - W / G) / (kv_bytes_per_token * replication)

n_r new (uncached) prompt tokens of request r, c_r its cached prefix, L layers, H heads, d head
dim, G GPUs of the instance, W weight bytes read, B the batch size; matmul and peak are the GPU's measured and peak
FLOP/s in the weights' GEMM dtype, mbu, mfu and layer_s its decode fit (all in catalog.py, with their sources).
"""

from __future__ import annotations

from dataclasses import dataclass

from pytest_sglang_pd.sim.catalog import GPU, ModelProfile

# The fraction of the max-achievable matmul rate a serving engine's prefill forward reaches (attention, norms,
# activations and all-reduces beside the GEMMs). From NVIDIA's NIM 1.8.0 table, Llama-3.3-70B FP8 on 2 x H100 (TP2),
# 5000 input tokens at concurrency 1: TTFT 406.77 ms (https://docs.nvidia.com/nim/benchmarking/llm/1.0.0/performance).
# FLOPs 2 x 70.6e9 x 5000 + 4 x 80 x 64 x 128 x 5000 x 2500 = 7.388e14; less 80 layers x 89.6 us of overhead
# (catalog.NVIDIA_DECODE) the prefill took 399.6 ms: 7.388e14 / 0.3996 s / 2 GPUs = 924 TFLOPS per GPU, 0.467 of the
# FP8 peak and 0.659 of the H100's measured FP8 matmul rate (1402.6 TFLOPS). The same table's 500-token TTFT
# (47.77 ms) gives 0.441 of the peak. Applied to every GPU's measured matmul rate: only the H100 has a published
# prefill time of a dense 70B model at concurrency 1 in this form.
PREFILL_OF_MATMUL = 0.659
# Mooncake/NIXL per-transfer setup (notification, descriptor exchange) on RDMA; order of magnitude
# from the Mooncake transfer engine benchmarks, https://kvcache-ai.github.io/Mooncake/performance/
TRANSFER_SETUP_S = 1e-3


@dataclass(frozen=True)
class PerfModel:
    gpu: GPU
    model: ModelProfile
    gpus: int  # GPUs of one instance (TP x PP by default)
    prefill_of_matmul: float = PREFILL_OF_MATMUL  # --sim-prefill-of-matmul: calibrated to a stack's measured TTFT

    @property
    def _fp8(self) -> bool:
        return self.model.compute_dtype == "fp8"

    @property
    def _peak_flops(self) -> float:
        return self.gpu.fp8_flops if self._fp8 else self.gpu.bf16_flops

    @property
    def prefill_flops_per_gpu(self) -> float:
        """The FLOP/s one GPU runs a prefill at: its measured matmul rate in the GEMM dtype x ``prefill_of_matmul``."""
        return (self.gpu.fp8_matmul if self._fp8 else self.gpu.bf16_matmul) * self.prefill_of_matmul

    @property
    def decode_flops_per_gpu(self) -> float:
        return self._peak_flops * self.gpu.decode.mfu

    @property
    def decode_bytes_per_s_per_gpu(self) -> float:
        return self.gpu.hbm_bytes_per_s * self.gpu.decode.mbu

    @property
    def step_overhead_s(self) -> float:
        return self.model.layers * self.gpu.decode.layer_s

    def _attention_flops(self, new_tokens: int, context_before: int) -> float:
        m = self.model
        return 4.0 * m.layers * m.heads * m.head_dim * new_tokens * (context_before + new_tokens / 2)

    def _prefill_compute_s(self, chunks: list[tuple[int, int]]) -> float:
        flops = sum(
            2.0 * self.model.active_params * new + self._attention_flops(new, before) for new, before in chunks
        )
        return flops / (self.gpus * self.prefill_flops_per_gpu)

    def prefill_seconds(self, chunks: list[tuple[int, int]]) -> float:
        """One prefill step over ``chunks`` = [(new tokens, tokens already in KV before them)]."""
        return self._prefill_compute_s(chunks) + self.step_overhead_s

    @property
    def _kv_replication(self) -> float:
        """How many GPUs hold a copy of each KV byte: MLA's single latent head is replicated on every
        TP rank; GQA heads are sharded until there are fewer KV heads than GPUs."""
        if self.model.kv_lora_rank:
            return float(self.gpus)
        return max(1.0, self.gpus / self.model.kv_heads)

    def decode_step_seconds(self, batch: int, context_tokens: int) -> float:
        """One decode step of ``batch`` sequences holding ``context_tokens`` KV tokens in total."""
        if batch <= 0:
            return 0.0
        return (self._decode_memory_s(batch, context_tokens) + self._decode_compute_s(batch, context_tokens)
                + self.step_overhead_s)

    def _decode_memory_s(self, batch: int, context_tokens: int) -> float:
        m = self.model
        kv_read = context_tokens * m.kv_bytes_per_token * self._kv_replication
        return (m.weight_bytes_read_per_step(batch) + kv_read) / self.gpus / self.decode_bytes_per_s_per_gpu

    def _decode_compute_s(self, batch: int, context_tokens: int) -> float:
        m = self.model
        flops = 2.0 * m.active_params * batch + 4.0 * m.layers * m.heads * m.head_dim * context_tokens
        return flops / (self.gpus * self.decode_flops_per_gpu)

    def mixed_step_seconds(self, chunks: list[tuple[int, int]], batch: int, context_tokens: int) -> float:
        """One step of an aggregated worker with --enable-mixed-chunk: a prefill chunk and a decode batch in one
        forward. The weights are read once and there is one overhead; the chunk's compute adds to the decode's."""
        prefill_s = self._prefill_compute_s(chunks)
        if not batch:
            return prefill_s + self.step_overhead_s
        return self.decode_step_seconds(batch, context_tokens) + prefill_s

    def kv_bytes(self, tokens: int) -> float:
        return tokens * self.model.kv_bytes_per_token

    def transfer_seconds(self, tokens: int) -> float:
        """Moving the FULL model KV of ``tokens`` over the instance's NICs (one per GPU)."""
        return self.kv_bytes(tokens) / (self.gpus * self.gpu.nic_bytes_per_s) + TRANSFER_SETUP_S

    def kv_capacity_tokens(self, mem_fraction_static: float) -> int:
        """KV tokens that fit beside the weights; raises when the weights alone do not fit."""
        per_gpu_budget = self.gpu.hbm_bytes * mem_fraction_static
        per_gpu_weights = self.model.weight_bytes / self.gpus
        free = per_gpu_budget - per_gpu_weights
        if free <= 0:
            raise ValueError(
                f"{self.model.name} weights need {per_gpu_weights / 1e9:.1f} GB per GPU on {self.gpus} x "
                f"{self.gpu.name}, but --mem-fraction-static {mem_fraction_static} leaves "
                f"{per_gpu_budget / 1e9:.1f} GB of {self.gpu.hbm_bytes / 1e9:.0f} GB: not enough memory"
            )
        return int(free * self.gpus / (self.model.kv_bytes_per_token * self._kv_replication))
