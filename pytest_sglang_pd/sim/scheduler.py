"""The simulated worker's step loop: KV admission and queueing, chunked prefill, continuous batching.

One asyncio task runs steps back to back. Each step is a prefill step (up to
``chunked_prefill_size`` prompt tokens of the admitted requests, prefill first as in SGLang) or a
decode step (one token for every running sequence). An aggregated worker (no --disaggregation-mode) does what
SGLang 0.5.23 does by default (srt/managers/scheduler.py get_next_batch_to_run: a new prefill batch runs as its own
forward, the running decode batch waits for it); with --enable-mixed-chunk it runs the chunk and the decode batch
in one mixed step (get_new_batch_prefill's mix_with_running). A step's duration comes from the performance
model; its end is an ABSOLUTE deadline (previous deadline + step time), so event-loop overhead and
timer slack do not add up over steps. Requests wait in the queue until their KV reservation
(prompt + max_new_tokens tokens; prompt only on a prefill worker) fits beside the running ones;
cached prefixes are evicted (LRU) to make room.

``BatchStats`` counts, per forward mode, the batches the loop actually ran (``sim_*`` metrics): a
client differences the counters over its own interval to get the mean batch it was served with.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from pytest_sglang_pd.sim.perf_model import PerfModel
from pytest_sglang_pd.sim.radix_cache import RadixCache

# Behind schedule by more than this (a stall), the schedule restarts from now; less, the next steps catch up (a
# process that a shared CPU left waiting for tens of ms still ends its steps on time on average).
MAX_LAG_S = 0.5


WINDOW_S = 10.0  # the window of the running-batch gauges (wall seconds)


class Rejected(ValueError):
    """A request that can never be admitted (too long for the KV pool)."""


@dataclass(eq=False)
class Sequence:
    rid: str
    prompt_ids: list[int]
    output_tokens: int  # tokens this request will generate (planned; stop/length already applied)
    reserve_tokens: int
    arrival: float = field(default_factory=time.monotonic)
    cached_tokens: int = 0
    prefilled: int = 0
    generated: int = 0
    token_times: list[float] = field(default_factory=list)
    admitted: asyncio.Future | None = None
    prefill_done: asyncio.Future | None = None
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    finished: bool = False
    room: int | None = None  # bootstrap_room and routed_dp_rank: what a DP load balancer reads (sim/dp.py)
    routed_dp_rank: int | None = None

    @property
    def context(self) -> int:
        return len(self.prompt_ids) + self.generated


@dataclass
class BatchStats:
    """What one forward mode's steps ran: counters (monotonic, for differencing) and a sliding window.

    Per step of ``batch`` requests holding ``context`` KV tokens, modelled ``seconds`` long:
    ``steps`` += 1, ``reqs`` += batch, ``reqs_squared`` += batch^2, ``reqs_context`` += batch * context,
    ``seconds`` += seconds, ``reqs_seconds`` += batch * seconds. Over an interval, the token-weighted
    mean batch (what an average output token saw) is d(reqs_squared) / d(reqs), its mean KV context
    d(reqs_context) / d(reqs); the time-weighted mean batch d(reqs_seconds) / d(seconds).
    """

    steps: int = 0
    reqs: int = 0
    reqs_squared: int = 0
    reqs_context: int = 0
    seconds: float = 0.0
    reqs_seconds: float = 0.0
    window: deque = field(default_factory=deque)  # (wall end, batch, modelled seconds) of recent steps

    def record(self, batch: int, context: int, seconds: float, now: float) -> None:
        self.steps += 1
        self.reqs += batch
        self.reqs_squared += batch * batch
        self.reqs_context += batch * context
        self.seconds += seconds
        self.reqs_seconds += batch * seconds
        self.window.append((now, batch, seconds))
        while self.window and self.window[0][0] < now - WINDOW_S:
            self.window.popleft()

    def window_mean_max(self, now: float) -> tuple[float, int]:
        """Time-weighted mean and max batch of the steps that ended in the last ``WINDOW_S`` seconds."""
        recent = [(batch, seconds) for end, batch, seconds in self.window if end >= now - WINDOW_S]
        total = sum(seconds for _, seconds in recent)
        mean = sum(batch * seconds for batch, seconds in recent) / total if total else 0.0
        return mean, max((batch for batch, _ in recent), default=0)


async def cancel(task: asyncio.Task | None) -> None:
    """Cancel a step loop's task and wait until it has ended."""
    if task:
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass


class Scheduler:
    def __init__(
        self,
        model: PerfModel,
        *,
        role: str,
        capacity_tokens: int,
        max_running: int,
        chunked_prefill_size: int,
        cache: RadixCache,
        policy: str,
        time_scale: Callable[[], float],
        seed: int = 0,
        wake: asyncio.Event | None = None,
        mixed_chunk: bool = False,
    ) -> None:
        self.model = model
        self.role = role
        self.capacity_tokens = capacity_tokens
        self.max_running = max_running
        self.chunk = chunked_prefill_size
        self.mixed_chunk = mixed_chunk and role == "null"
        self.cache = cache
        self.policy = policy
        self.time_scale = time_scale
        self._rng = random.Random(seed)
        self.waiting: deque[Sequence] = deque()
        self.prefilling: list[Sequence] = []
        self.decoding: list[Sequence] = []
        self.admitted_count = 0
        self.reserved = 0
        self.paused = False
        self.on_tokens: Callable[[Sequence, int], None] = lambda seq, n: None
        self._wake = wake or asyncio.Event()  # the schedulers of a DP group share one (sim/dp.py)
        self._task: asyncio.Task | None = None
        self.matched_tokens = 0
        self.prompt_tokens_seen = 0
        self.batches = {"prefill": BatchStats(), "decode": BatchStats()}

    # ------------------------------------------------------------------ entry points (server side)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="sim-scheduler")

    async def stop(self) -> None:
        await cancel(self._task)

    def check_fits(self, seq: Sequence) -> None:
        if seq.reserve_tokens > self.capacity_tokens:
            raise Rejected(
                f"request needs {seq.reserve_tokens} KV tokens (prompt {len(seq.prompt_ids)} + max_new_tokens), "
                f"more than the KV pool's {self.capacity_tokens} tokens"
            )

    async def prefill(self, seq: Sequence) -> None:
        """Queue ``seq`` for prefill; returns when its whole prompt is in KV (holding its reservation)."""
        self.check_fits(seq)
        loop = asyncio.get_running_loop()
        seq.admitted, seq.prefill_done = loop.create_future(), loop.create_future()
        self.waiting.append(seq)
        self._wake.set()
        await seq.prefill_done

    async def reserve(self, seq: Sequence) -> None:
        """Queue ``seq`` for a KV reservation only (a decode worker's pre-allocation)."""
        self.check_fits(seq)
        seq.admitted = asyncio.get_running_loop().create_future()
        self.waiting.append(seq)
        self._wake.set()
        await seq.admitted

    def start_decode(self, seq: Sequence, first_token_time: float) -> None:
        """An admitted ``seq`` with its prompt in KV emits its first token now and joins the batch."""
        self._emit(seq, first_token_time)
        if not seq.finished:
            self.decoding.append(seq)
            self._wake.set()

    def release(self, seq: Sequence) -> None:
        """Free everything ``seq`` holds (finished, aborted or handed off); safe to call twice."""
        seq.finished = True
        if seq in self.waiting:
            self.waiting.remove(seq)
        if seq in self.prefilling:
            self.prefilling.remove(seq)
        if seq in self.decoding:
            self.decoding.remove(seq)
        if seq.admitted is not None and seq.admitted.done() and not seq.admitted.cancelled() and seq.reserve_tokens:
            self.reserved -= seq.reserve_tokens
            self.admitted_count -= 1
            seq.reserve_tokens = 0
        seq.progress.set()
        self._wake.set()

    # -------------------------------------------------------------------------------------- state

    @property
    def num_running(self) -> int:
        """SGLang's num_running_reqs: the requests in the batches that run forwards (prefilling or decoding), not
        those that only hold KV (a decode's transfer queue, a prefill's inflight queue: gauges of their own)."""
        return len(self.prefilling) + len(self.decoding)

    @property
    def num_admitted(self) -> int:
        """Requests holding a KV reservation: what a DP load balancer counts as a rank's load."""
        return self.admitted_count

    @property
    def num_queued(self) -> int:
        return len(self.waiting)

    @property
    def cache_hit_rate(self) -> float:
        return self.matched_tokens / self.prompt_tokens_seen if self.prompt_tokens_seen else 0.0

    def flush_cache(self) -> None:
        self.cache.reset()

    # ----------------------------------------------------------------------------------- the loop

    def _admit(self) -> None:
        if not self.waiting:
            return
        if self.policy == "lpm":
            ordered = sorted(self.waiting, key=lambda s: -self.cache.match_prefix(s.prompt_ids))
        elif self.policy == "random":
            ordered = list(self.waiting)
            self._rng.shuffle(ordered)
        else:
            ordered = list(self.waiting)
        for seq in ordered:
            if self.admitted_count >= self.max_running:
                break
            free = self.capacity_tokens - self.reserved - self.cache.size
            if seq.reserve_tokens > free:
                self.cache.evict(seq.reserve_tokens - free)
                if seq.reserve_tokens > self.capacity_tokens - self.reserved - self.cache.size:
                    break  # FCFS-like: the head waits for room, nothing overtakes it
            self.waiting.remove(seq)
            self.reserved += seq.reserve_tokens
            self.admitted_count += 1
            assert seq.admitted is not None
            seq.admitted.set_result(None)
            if seq.prefill_done is not None:
                seq.cached_tokens = min(self.cache.match_prefix(seq.prompt_ids), len(seq.prompt_ids) - 1)
                seq.prefilled = seq.cached_tokens
                self.matched_tokens += seq.cached_tokens
                self.prompt_tokens_seen += len(seq.prompt_ids)
                self.prefilling.append(seq)

    def _chunk_plan(self) -> list[tuple[Sequence, int]]:
        """The next prefill chunk: (sequence, prompt tokens it takes), within the chunk budget."""
        budget = self.chunk
        plan: list[tuple[Sequence, int]] = []
        for seq in self.prefilling:
            if budget <= 0:
                break
            take = min(len(seq.prompt_ids) - seq.prefilled, budget)
            plan.append((seq, take))
            budget -= take
        return plan

    def _prefill_step(self) -> tuple[float, Callable[[float], None]]:
        plan = self._chunk_plan()
        seconds = self.model.prefill_seconds([(take, seq.prefilled) for seq, take in plan])

        def apply(now: float) -> None:
            self.batches["prefill"].record(len(plan), sum(take for _, take in plan), seconds, now)
            for seq, take in plan:
                seq.prefilled += take
                if seq.prefilled >= len(seq.prompt_ids):
                    self.prefilling.remove(seq)
                    self.cache.insert(seq.prompt_ids)
                    assert seq.prefill_done is not None
                    if not seq.prefill_done.done():
                        seq.prefill_done.set_result(None)
                    if self.role == "null":
                        self.start_decode(seq, now)

        return seconds, apply

    def _decode_step(self) -> tuple[float, Callable[[float], None]]:
        batch = list(self.decoding)
        context = sum(s.context for s in batch)
        seconds = self.model.decode_step_seconds(len(batch), context)

        def apply(now: float) -> None:
            self.batches["decode"].record(len(batch), context, seconds, now)
            for seq in batch:
                if not seq.finished:
                    self._emit(seq, now)

        return seconds, apply

    def _mixed_step(self) -> tuple[float, Callable[[float], None]]:
        """An aggregated worker's step with --enable-mixed-chunk: the next prefill chunk rides with the decode batch
        (one forward, timed from both); every sequence decoding gets its token and the chunk's sequences move on."""
        _, prefill_apply = self._prefill_step()
        _, decode_apply = self._decode_step()
        chunks = [(take, seq.prefilled) for seq, take in self._chunk_plan()]
        batch = list(self.decoding)
        seconds = self.model.mixed_step_seconds(chunks, len(batch), sum(s.context for s in batch))

        def apply(now: float) -> None:
            decode_apply(now)
            prefill_apply(now)

        return seconds, apply

    def _emit(self, seq: Sequence, now: float) -> None:
        seq.generated += 1
        seq.token_times.append(now)
        self.on_tokens(seq, 1)
        if seq.generated >= seq.output_tokens:
            self.release(seq)
        seq.progress.set()

    def next_step(self) -> tuple[float, Callable[[float], None]] | None:
        """Admit what fits, then plan the next step: (modelled seconds, apply(now)); None when idle or paused."""
        self._admit()
        if self.paused or not (self.prefilling or self.decoding):
            return None
        if self.mixed_chunk and self.prefilling and self.decoding:  # --enable-mixed-chunk: one batch of both
            return self._mixed_step()
        return self._prefill_step() if self.prefilling else self._decode_step()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time()
        while True:
            step = self.next_step()
            if step is None:
                self._wake.clear()
                await self._wake.wait()
                deadline = loop.time()
                continue
            seconds, apply = step
            now = loop.time()
            deadline = max(deadline, now - MAX_LAG_S) + seconds * self.time_scale()
            await asyncio.sleep(max(deadline - now, 0.0))  # behind schedule: the writes of the last step go first
            apply(time.monotonic())
