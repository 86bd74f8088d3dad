"""The simulator's performance model: prefill, decode-step and KV-transfer times and KV capacity.

All times are modelled hardware seconds; the scheduler divides them by ``--sim-speedup``.
Formulas (docs/simulator.md repeats them):

    prefill(chunk)  = sum_r [2 * P_active * n_r + 4 * L * H * d * n_r * (c_r + n_r / 2)]
                      / (G * peak * MFU) + step_overhead
    decode(batch)   = max((W(batch) / G + KV_read / G) / (HBM_bw * MBU),
                          (2 * P_active * B + 4 * L * H * d * sum ctx) / (G * peak * MFU))
                      + step_overhead
    step_overhead   = STEP_BASE + L * (LAYER_LAUNCH + (2 * ALLREDUCE if G > 1 else 0))
    mixed(chunk, batch) = max(decode memory time, prefill compute + decode compute) + step_overhead
                      (an aggregated worker with --enable-mixed-chunk: chunk and decode batch in one step)
    transfer(n)     = n * kv_bytes_per_token / (G * NIC_bw) + TRANSFER_SETUP
    capacity        = G * (HBM * mem_fraction - W / G) / (kv_bytes_per_token * replication)

n_r new (uncached) prompt tokens of request r, c_r its cached prefix, L layers, H heads, d head
dim, G GPUs of the instance, W weight bytes read, B the batch size.
"""

from __future__ import annotations

from dataclasses import dataclass

from pytest_sglang_pd.sim.catalog import GPU, ModelProfile

# Efficiencies and overheads are calibration assumptions, not vendor numbers. They put the model in
# the range public serving benchmarks report for SGLang (SemiAnalysis InferenceMAX,
# https://inferencemax.semianalysis.com/ ; SGLang's own MI300X/H100 blogs,
# https://lmsys.org/blog/2024-07-25-sglang-llama3/): large-GEMM prefill at ~45 % of peak, decode
# streaming weights at ~60 % of HBM bandwidth, ~1.5 ms of scheduler/launch time per step, ~10 us of
# kernel launch per layer and two ~20 us tensor-parallel all-reduces per layer.
PREFILL_MFU = 0.45
DECODE_MFU = 0.30
DECODE_MBU = 0.60
STEP_BASE_S = 1.5e-3
LAYER_LAUNCH_S = 10e-6
ALLREDUCE_S = 20e-6
# Mooncake/NIXL per-transfer setup (notification, descriptor exchange) on RDMA; order of magnitude
# from the Mooncake transfer engine benchmarks, https://kvcache-ai.github.io/Mooncake/performance/
TRANSFER_SETUP_S = 1e-3


@dataclass(frozen=True)
class PerfModel:
    gpu: GPU
    model: ModelProfile
    gpus: int  # GPUs of one instance (TP x PP by default)

    @property
    def _peak_flops(self) -> float:
        return self.gpu.fp8_flops if self.model.compute_dtype == "fp8" else self.gpu.bf16_flops

    @property
    def step_overhead_s(self) -> float:
        per_layer = LAYER_LAUNCH_S + (2 * ALLREDUCE_S if self.gpus > 1 else 0.0)
        return STEP_BASE_S + self.model.layers * per_layer

    def _attention_flops(self, new_tokens: int, context_before: int) -> float:
        m = self.model
        return 4.0 * m.layers * m.heads * m.head_dim * new_tokens * (context_before + new_tokens / 2)

    def prefill_seconds(self, chunks: list[tuple[int, int]]) -> float:
        """One prefill step over ``chunks`` = [(new tokens, tokens already in KV before them)]."""
        flops = sum(
            2.0 * self.model.active_params * new + self._attention_flops(new, before) for new, before in chunks
        )
        return flops / (self.gpus * self._peak_flops * PREFILL_MFU) + self.step_overhead_s

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
        return max(self._decode_memory_s(batch, context_tokens),
                   self._decode_compute_s(batch, context_tokens)) + self.step_overhead_s

    def _decode_memory_s(self, batch: int, context_tokens: int) -> float:
        m = self.model
        kv_read = context_tokens * m.kv_bytes_per_token * self._kv_replication
        return (m.weight_bytes_read_per_step(batch) + kv_read) / self.gpus / (self.gpu.hbm_bytes_per_s * DECODE_MBU)

    def _decode_compute_s(self, batch: int, context_tokens: int) -> float:
        m = self.model
        flops = 2.0 * m.active_params * batch + 4.0 * m.layers * m.heads * m.head_dim * context_tokens
        return flops / (self.gpus * self._peak_flops * DECODE_MFU)

    def mixed_step_seconds(self, chunks: list[tuple[int, int]], batch: int, context_tokens: int) -> float:
        """One step of an aggregated worker: a prefill chunk and a decode batch in one forward. The weights are read
        once; the prefill's compute adds to the decode's, so the step takes the larger of the decode's memory time
        and both computes, plus one step overhead."""
        prefill_compute_s = self.prefill_seconds(chunks) - self.step_overhead_s if chunks else 0.0
        compute_s = prefill_compute_s + self._decode_compute_s(batch, context_tokens)
        return max(self._decode_memory_s(batch, context_tokens) if batch else 0.0, compute_s) + self.step_overhead_s

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
