"""Data parallelism in the simulated worker, as SGLang 0.5.23 runs it (``srt/arg_groups/parallel_hook.py``,
``srt/managers/data_parallel_controller.py``).

- ``resolve_parallelism``: the DP flags resolved with SGLang's rules and errors: ``--dp-size N --enable-dp-attention``
  becomes ``--attn-dp-size N``; ``--dp-size`` with ``--attn-dp-size`` is an error; with DP attention the chunked
  prefill size is divided among the ranks; ``--load-balance-method auto`` is ``follow_bootstrap_room`` on a PD prefill
  and ``round_robin`` elsewhere; a prefill refuses the ``fake`` transfer backend.
- ``Balancer``: the DP rank of a request: its ``routed_dp_rank`` when it has one, else the load-balance method.
- ``DPAttentionModel``: one DP-attention step. Rank r's attention runs on G / dp GPUs over r's own requests (its
  own KV pool), the MoE/MLP on all G GPUs over every rank's tokens; the ranks meet in the MoE collectives each
  layer, so a step lasts as long as the slowest rank, and a rank with nothing to do still runs an idle batch.
- ``DPGroup``: one ``Scheduler`` per DP rank behind the one interface the worker uses. Attention DP: one loop
  steps every rank in lockstep. DP replicas (``--dp-size`` alone): independent schedulers, full copies of the model.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from pytest_sglang_pd.sim.perf_model import PerfModel
from pytest_sglang_pd.sim.scheduler import MAX_LAG_S, Rejected, Scheduler, Sequence, cancel

FAKE_BACKEND = "fake"  # --disaggregation-transfer-backend fake: decode alone, no KV moves
FAKE_BOOTSTRAP_HOST = "2.2.2.2"  # sglang.srt.disaggregation.utils.FAKE_BOOTSTRAP_HOST (bench_serving --fake-prefill)
LOAD_BALANCE_METHODS = ("auto", "round_robin", "follow_bootstrap_room", "total_requests", "total_tokens")


def resolve_parallelism(args: argparse.Namespace) -> None:
    """Resolve the DP flags of ``args`` in place as SGLang does; ValueError with SGLang's message."""
    if args.enable_dp_attention:
        print("WARNING: '--enable-dp-attention' is deprecated and will be removed in a future release. "
              "Use '--attn-dp-size <dp-size>' instead.", file=sys.stderr)
        if args.attn_dp_size == 1:
            args.attn_dp_size, args.dp_size = args.dp_size, 1
        args.enable_dp_attention = False
    if args.disaggregation_mode == "prefill" and args.disaggregation_transfer_backend == FAKE_BACKEND:
        raise ValueError("Prefill server does not support 'fake' as the transfer backend")
    if args.attn_dp_size < 1:
        raise ValueError(f"--attn-dp-size must be positive (got {args.attn_dp_size}).")
    if args.attn_dp_size > 1 and args.dp_size > 1:
        raise ValueError(f"--dp-size {args.dp_size} with --attn-dp-size {args.attn_dp_size}: data-parallel replicas "
                         "combined with attention data parallelism are not supported.")
    if args.attn_dp_size > 1:
        if args.tp_size % args.attn_dp_size:
            raise ValueError(f"tp_size must be divisible by attn_dp_size (--tp-size {args.tp_size}, "
                             f"--attn-dp-size {args.attn_dp_size})")
        if args.chunked_prefill_size > 0:
            original = args.chunked_prefill_size
            args.chunked_prefill_size = original // args.attn_dp_size
            print(f"WARNING: DP attention is enabled. chunked prefill size is adjusted from {original} to "
                  f"{args.chunked_prefill_size}.", file=sys.stderr)
    if args.load_balance_method == "auto":
        args.load_balance_method = "follow_bootstrap_room" if args.disaggregation_mode == "prefill" else "round_robin"


def dp_ranks(args: argparse.Namespace) -> int:
    """Schedulers of one instance: attention-DP ranks or DP replicas (resolved args)."""
    return max(args.attn_dp_size, args.dp_size)


# --------------------------------------------------------------------------------------------- the balancer

class Balancer:
    """SGLang's DataParallelController dispatch: ``routed_dp_rank`` first, else the method. The load-aware methods
    read each rank's live load (SGLang reads a snapshot at most 20 ms old)."""

    def __init__(self, method: str, ranks: list[Scheduler]) -> None:
        self.method, self.ranks = method, ranks
        self._next = 0

    def pick(self, seq: Sequence) -> int:
        n = len(self.ranks)
        if seq.routed_dp_rank is not None:
            if not 0 <= seq.routed_dp_rank < n:
                raise Rejected(f"DP rank {seq.routed_dp_rank} is not active.")
            return seq.routed_dp_rank
        if self.method == "follow_bootstrap_room":
            if seq.room is None:
                raise Rejected("req.bootstrap_room should not be None. Do not send requests directly to prefill or "
                               "decode instances; send to the router instead.")
            return seq.room % n
        if self.method == "total_requests":
            return min(range(n), key=lambda r: self.ranks[r].num_admitted + self.ranks[r].num_queued)
        if self.method == "total_tokens":
            return min(range(n), key=lambda r: (rank_tokens(self.ranks[r]),
                                                self.ranks[r].num_admitted + self.ranks[r].num_queued))
        rank, self._next = self._next, (self._next + 1) % n
        return rank


def rank_tokens(rank: Scheduler) -> int:
    """KV tokens a rank holds or has queued (SGLang's num_total_tokens)."""
    return rank.reserved + sum(seq.reserve_tokens for seq in rank.waiting)


# ----------------------------------------------------------------------------------------- the cost model

@dataclass(frozen=True)
class RankLoad:
    """What one rank runs in a step: forward tokens, attention FLOPs, KV bytes read, attention (query, key) pairs."""

    tokens: int = 0
    attention_flops: float = 0.0
    kv_read_bytes: float = 0.0
    pairs: int = 0
    prefill: bool = False


IDLE = RankLoad()


@dataclass(frozen=True)
class DPAttentionModel:
    """DP-attention step times over ``base``, the PerfModel of the whole instance (G GPUs, ``ranks`` ranks of
    g = G / ranks GPUs). With one rank it gives the base model's times."""

    base: PerfModel
    ranks: int

    @property
    def rank_gpus(self) -> float:
        return self.base.gpus / self.ranks

    @property
    def _kv_replication(self) -> float:
        """Copies of each KV byte among a rank's g GPUs: MLA's latent on each; GQA heads sharded down to one."""
        if self.base.model.kv_lora_rank:
            return self.rank_gpus
        return max(1.0, self.rank_gpus / self.base.model.kv_heads)

    def kv_capacity_tokens(self, mem_fraction_static: float) -> int:
        """One rank's KV pool: its g GPUs' memory beside their share of the weights."""
        whole = self.base.kv_capacity_tokens(mem_fraction_static)  # raises when the weights do not fit
        return int(whole * self.base._kv_replication / self._kv_replication / self.ranks)  # noqa: SLF001

    def prefill_load(self, chunks: list[tuple[int, int]]) -> RankLoad:
        flops = sum(self.base._attention_flops(new, before) for new, before in chunks)  # noqa: SLF001
        pairs = sum(new * before + new * (new + 1) // 2 for new, before in chunks)
        return RankLoad(sum(new for new, _ in chunks), flops, 0.0, pairs, prefill=True)

    def decode_load(self, batch: int, context_tokens: int) -> RankLoad:
        m = self.base.model
        return RankLoad(batch, 4.0 * m.layers * m.heads * m.head_dim * context_tokens,
                        context_tokens * m.kv_bytes_per_token * self._kv_replication, context_tokens)

    def rank_seconds(self, load: RankLoad, total_tokens: int) -> float:
        """One rank's share of a step whose ranks run ``total_tokens`` tokens together (no step overhead)."""
        base, g = self.base, self.rank_gpus
        mlp_flops = 2.0 * base.model.active_params * total_tokens / base.gpus
        if load.prefill:
            return (mlp_flops + load.attention_flops / g) / base.prefill_flops_per_gpu
        weights = base.model.weight_bytes_read_per_step(total_tokens) / base.gpus
        memory_s = (weights + load.kv_read_bytes / g) / base.decode_bytes_per_s_per_gpu
        compute_s = (mlp_flops + load.attention_flops / g) / base.decode_flops_per_gpu
        return memory_s + compute_s

    def step(self, loads: list[RankLoad]) -> tuple[float, list[float]]:
        """(the step's modelled seconds, each rank's own seconds): the slowest rank's time plus the overhead."""
        total = sum(load.tokens for load in loads)
        own = [self.rank_seconds(load, total) for load in loads]
        return max(own) + self.base.step_overhead_s, own


class _RankFace:
    """The performance model one rank's Scheduler calls: it keeps the rank's planned load for the lockstep step."""

    def __init__(self, model: DPAttentionModel) -> None:
        self.model, self.load = model, IDLE

    def prefill_seconds(self, chunks: list[tuple[int, int]]) -> float:
        self.load = self.model.prefill_load(chunks)
        return 0.0

    def decode_step_seconds(self, batch: int, context_tokens: int) -> float:
        self.load = self.model.decode_load(batch, context_tokens)
        return 0.0


@dataclass
class StepStats:
    """One lockstep step, per rank: tokens, attention pairs, seconds spent waiting for the slowest rank (wall)."""

    tokens: list[int]
    pairs: list[int]
    sync_wait_s: list[float]

    @property
    def imbalance_ratio(self) -> float | None:
        """Max over mean tokens across the ranks (1.0 balanced, ranks = one busy rank); None when none has tokens."""
        mean = sum(self.tokens) / len(self.tokens)
        return max(self.tokens) / mean if mean else None


# ---------------------------------------------------------------------------------------------- the group

class DPGroup:
    """One Scheduler per DP rank behind the Scheduler interface the worker and the API use."""

    def __init__(self, ranks: list[Scheduler], method: str, *, lockstep: DPAttentionModel | None,
                 time_scale: Callable[[], float], wake: asyncio.Event) -> None:
        self.ranks = ranks
        self.balancer = Balancer(method, ranks)
        self.lockstep = lockstep
        self.time_scale = time_scale
        self._wake = wake  # shared by every rank (set on any change); the API's fault route sets it too
        self._rank_of: dict[Sequence, int] = {}
        self._task: asyncio.Task | None = None
        self.rank_tokens = [0] * len(ranks)  # tokens generated per rank
        self.on_step: Callable[[StepStats], None] = lambda stats: None
        self.on_tokens = lambda seq, n: None
        for index, rank in enumerate(ranks):
            rank.on_tokens = self._counter(index)

    def _counter(self, index: int) -> Callable[[Sequence, int], None]:
        def count(seq: Sequence, n: int) -> None:
            self.rank_tokens[index] += n
            self.on_tokens(seq, n)
        return count

    # ------------------------------------------------------------------ the Scheduler interface

    @property
    def capacity_tokens(self) -> int:
        return sum(rank.capacity_tokens for rank in self.ranks)

    @property
    def reserved(self) -> int:
        return sum(rank.reserved for rank in self.ranks)

    @property
    def num_running(self) -> int:
        return sum(rank.num_running for rank in self.ranks)

    @property
    def num_queued(self) -> int:
        return sum(rank.num_queued for rank in self.ranks)

    @property
    def cache_hit_rate(self) -> float:
        seen = sum(rank.prompt_tokens_seen for rank in self.ranks)
        return sum(rank.matched_tokens for rank in self.ranks) / seen if seen else 0.0

    @property
    def paused(self) -> bool:
        return self.ranks[0].paused

    @paused.setter
    def paused(self, value: bool) -> None:
        for rank in self.ranks:
            rank.paused = value

    def flush_cache(self) -> None:
        for rank in self.ranks:
            rank.flush_cache()

    def _place(self, seq: Sequence) -> Scheduler:
        index = self.balancer.pick(seq)
        self._rank_of[seq] = index
        seq.routed_dp_rank = index
        return self.ranks[index]

    async def prefill(self, seq: Sequence) -> None:
        await self._place(seq).prefill(seq)

    async def reserve(self, seq: Sequence) -> None:
        await self._place(seq).reserve(seq)

    def start_decode(self, seq: Sequence, first_token_time: float) -> None:
        self.ranks[self._rank_of[seq]].start_decode(seq, first_token_time)

    def release(self, seq: Sequence) -> None:
        self.ranks[self._rank_of.pop(seq, 0)].release(seq)

    # -------------------------------------------------------------------------------- the loops

    def start(self) -> None:
        if self.lockstep is None:  # replicas: each its own loop
            for rank in self.ranks:
                rank.start()
            self._task = asyncio.get_running_loop().create_task(
                _watch([rank._task for rank in self.ranks if rank._task]), name="sim-dp-replicas")  # noqa: SLF001
        else:
            self._task = asyncio.get_running_loop().create_task(self._run(self.lockstep), name="sim-dp-attention")

    async def stop(self) -> None:
        for rank in self.ranks:
            await rank.stop()
        await cancel(self._task)

    async def _run(self, model: DPAttentionModel) -> None:
        """Every rank plans a step (an idle one when it has nothing); the step lasts as long as the slowest rank."""
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        faces: list[_RankFace] = [rank.model for rank in self.ranks]  # type: ignore[misc]
        while True:
            steps = [rank.next_step() for rank in self.ranks]
            if all(step is None for step in steps):
                self._wake.clear()
                await self._wake.wait()
                deadline = loop.time()
                continue
            loads = [face.load if step is not None else IDLE for face, step in zip(faces, steps)]
            seconds, own = model.step(loads)
            scale = self.time_scale()
            slowest = max(own)
            self.on_step(StepStats([load.tokens for load in loads], [load.pairs for load in loads],
                                   [(slowest - mine) * scale for mine in own]))
            now = loop.time()
            deadline = max(deadline, now - MAX_LAG_S) + seconds * scale
            if deadline > now:
                await asyncio.sleep(deadline - now)
            applied = time.monotonic()
            for step in steps:
                if step is not None:
                    step[1](applied)


async def _watch(tasks: list[asyncio.Task]) -> None:
    await asyncio.gather(*tasks)


def make_scheduler(args: argparse.Namespace, perf: PerfModel, build: Callable[..., Scheduler]) -> Scheduler | DPGroup:
    """The worker's scheduler: one Scheduler, or a DPGroup of ``dp_ranks(args)`` schedulers. ``build(model,
    capacity_tokens, max_running, seed, wake)`` makes one. ``--max-total-tokens`` is one scheduler's pool (else the
    modelled KV of one rank); with DP attention ``--max-running-requests`` is divided among the ranks."""
    ranks = dp_ranks(args)
    if ranks == 1:
        return build(perf, args.max_total_tokens or perf.kv_capacity_tokens(args.mem_fraction_static),
                     args.max_running_requests, args.sim_seed, None)
    wake = asyncio.Event()
    if args.attn_dp_size > 1:
        model = DPAttentionModel(perf, ranks)
        pool = args.max_total_tokens or model.kv_capacity_tokens(args.mem_fraction_static)
        running = max(1, args.max_running_requests // ranks)
        members = [build(_RankFace(model), pool, running, args.sim_seed + r, wake) for r in range(ranks)]
    else:
        model = None
        pool = args.max_total_tokens or perf.kv_capacity_tokens(args.mem_fraction_static)
        members = [build(perf, pool, args.max_running_requests, args.sim_seed + r, wake) for r in range(ranks)]
    return DPGroup(members, args.load_balance_method, lockstep=model, time_scale=members[0].time_scale, wake=wake)
