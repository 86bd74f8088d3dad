"""The simulated SGLang worker: scheduler, PD handoff through the real KV transfer engine, faults and
metrics. Its HTTP API (SGLang's and OpenAI's formats) is ``api.py`` / ``openai_api.py``."""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from pytest_sglang_pd.kv_transfer import KVTransferError, TransferEngine, open_engine
from pytest_sglang_pd.sim import dp, pd
from pytest_sglang_pd.sim.catalog import GPU, ModelProfile
from pytest_sglang_pd.sim.faults import Faults
from pytest_sglang_pd.sim.metrics import WorkerMetrics
from pytest_sglang_pd.sim.output import OutputPlan, plan_output
from pytest_sglang_pd.sim.request import Aborted, GenInput, Progress, as_list
from pytest_sglang_pd.sim.perf_model import PerfModel
from pytest_sglang_pd.sim.radix_cache import RadixCache
from pytest_sglang_pd.sim.scheduler import Rejected, Scheduler, Sequence
from pytest_sglang_pd.textgen import tokenizer

log = logging.getLogger("pytest_sglang_pd.sim")
SGLANG_VERSION = "0.5.23"
RECEIVE_REGION_MIN = 64 << 20


class SimWorker:
    """One simulated SGLang worker: scheduler, KV transfer engine, PD handoff, faults, metrics; its HTTP API
    is ``api.build_app``."""

    def __init__(self, args: argparse.Namespace, gpu: GPU, model: ModelProfile) -> None:
        self.args = args
        self.role = args.disaggregation_mode
        self.gpu, self.profile = gpu, model
        self.served_model_name = args.served_model_name or args.model_path
        self.context_length = args.context_length or model.context_length
        self.perf = PerfModel(gpu, model, args.sim_gpus_per_instance or args.tp_size * args.pp_size,
                              args.sim_prefill_of_matmul)
        self.faults = Faults()
        for spec in args.sim_fault:
            self.faults.apply(spec)

        def build(model: PerfModel, capacity: int, max_running: int, seed: int, wake: asyncio.Event | None) -> Scheduler:
            return Scheduler(
                model, role=self.role, capacity_tokens=capacity, max_running=max_running,
                chunked_prefill_size=args.chunked_prefill_size if args.chunked_prefill_size > 0 else 1 << 30,
                cache=RadixCache(args.page_size, enabled=not args.disable_radix_cache), policy=args.schedule_policy,
                time_scale=lambda: self.faults.slow / args.sim_speedup, seed=seed, wake=wake,
                mixed_chunk=args.enable_mixed_chunk,
            )

        self.scheduler = dp.make_scheduler(args, self.perf, build)
        self.dp_ranks = dp.dp_ranks(args)
        self.scheduler.on_tokens = self._on_tokens
        self.scheduler.paused = self.faults.hang
        self.engine: TransferEngine | None = None
        self.metrics = WorkerMetrics(self.role, self.served_model_name, "none", dp_ranks=self.dp_ranks,
                                     tp_per_rank=args.tp_size // args.attn_dp_size if args.attn_dp_size > 1 else 0)
        if isinstance(self.scheduler, dp.DPGroup):
            self.scheduler.on_step = lambda s: self.metrics.dp_step(s.tokens, s.pairs, s.sync_wait_s,
                                                                    s.imbalance_ratio)
        self.metrics.watch_batches(lambda: [rank.batches for rank in self.ranks])
        self.rooms = pd.RoomTable()
        self.queue_reqs: collections.Counter[str] = collections.Counter()
        self.bootstrap: pd.BootstrapServer | None = None
        self.handoff: pd.DecodeHandoff | None = None
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="kv-write")
        self.generation_requests = 0
        self._throughput_mark = (time.monotonic(), [0] * self.dp_ranks)

    # ---------------------------------------------------------------------------- life cycle

    async def start(self) -> None:
        self.scheduler.start()
        if self.role == "null" or self.args.disaggregation_transfer_backend == dp.FAKE_BACKEND:
            return  # the fake backend (decode alone) opens no engine and registers nowhere
        loop = asyncio.get_running_loop()
        ib_devices = [d for d in (self.args.disaggregation_ib_device or "").split(",") if d and "{" not in d]
        self.engine = await loop.run_in_executor(None, lambda: open_engine(
            self.args.disaggregation_transfer_backend, hostname=self.args.host, ib_devices=ib_devices))
        self.metrics.engine = self.engine.name
        log.info("KV transfer engine %s over %s, session %s", self.engine.name, self.engine.protocol,
                 self.engine.session_id)
        if self.role == "prefill":
            info = {"engine": self.engine.name, "protocol": self.engine.protocol, "session_id": self.engine.session_id,
                    "tp_size": self.args.tp_size, "page_size": self.args.page_size}
            self.bootstrap = pd.BootstrapServer(self.args.host, self.args.disaggregation_bootstrap_port, self.engine,
                                                self.rooms, self.faults, info)
            await self.bootstrap.start()
            if self.faults.refuse_bootstrap:
                await self.bootstrap.refuse()
        else:
            length = max(RECEIVE_REGION_MIN, 2 * pd.payload_length(self.context_length, self.args.sim_kv_payload_bytes_per_token))
            buffer = self.engine.register_receive_buffer(length)
            self.handoff = pd.DecodeHandoff(self.engine, pd.ReceiveSlots(buffer))

    async def stop(self) -> None:
        await self.scheduler.stop()
        if self.bootstrap is not None:
            await self.bootstrap.stop()
        if self.handoff is not None:
            await self.handoff.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self.engine is not None:
            self.engine.close()

    def sim_info(self) -> dict:
        return {
            "simulated": True, "gpu": self.gpu.name, "model_profile": self.profile.name,
            "weight_dtype": self.profile.weight_dtype, "kv_dtype": self.profile.kv_dtype,
            "gpus_per_instance": self.perf.gpus, "speedup": self.args.sim_speedup,
            "engine": self.engine.name if self.engine else None,
            "engine_protocol": self.engine.protocol if self.engine else None,
            "engine_session": self.engine.session_id if self.engine else None,
            "kv_payload_bytes_per_token": self.args.sim_kv_payload_bytes_per_token,
            "kv_capacity_tokens": self.scheduler.capacity_tokens, "faults": self.faults.as_dict(),
        }

    @property
    def ranks(self) -> list[Scheduler]:
        """The scheduler of each DP rank (one without data parallelism)."""
        return self.scheduler.ranks if isinstance(self.scheduler, dp.DPGroup) else [self.scheduler]

    def gen_throughputs(self) -> list[float]:
        """Tokens per second each DP rank generated, over the last second or more."""
        tokens = self.scheduler.rank_tokens if isinstance(self.scheduler, dp.DPGroup) else [self.metrics.generation_tokens]
        now = time.monotonic()
        then, before = self._throughput_mark
        if now - then >= 1.0:
            self._throughput_mark = (now, list(tokens))
        return [(n - b) / (now - then) if now > then else 0.0 for n, b in zip(tokens, before)]

    def gen_throughput(self) -> float:
        return sum(self.gen_throughputs())

    @contextmanager
    def _queued(self, queue: str) -> Iterator[None]:
        """A request in one of the PD queues SGLang exports as gauges (sglang:<queue>), while the block runs."""
        self.queue_reqs[queue] += 1
        try:
            yield
        finally:
            self.queue_reqs[queue] -= 1

    async def set_fault(self, spec: str) -> dict:
        """Apply a ``--sim-fault`` spec at run time (ValueError for a bad one); the faults now in force."""
        self.faults.apply(spec)
        log.warning("sim fault set: %s -> %s", spec, self.faults.as_dict())
        self.scheduler.paused = self.faults.hang
        self.scheduler._wake.set()
        if self.bootstrap is not None:
            await (self.bootstrap.refuse() if self.faults.refuse_bootstrap else self.bootstrap.open())
        return self.faults.as_dict()

    async def _kv_stalled(self, room: int) -> None:
        """Fault ``kv_stall``: the KV of ``room`` does not move while it is set (the request stays queued)."""
        if self.faults.kv_stall:
            log.warning("sim fault kv_stall: the KV of room %d waits in the %s queue", room,
                        "transfer" if self.role == "decode" else "inflight")
        while self.faults.kv_stall:
            await asyncio.sleep(0.2)

    def _on_tokens(self, seq: Sequence, count: int) -> None:
        self.metrics.generated(count)
        times = seq.token_times
        if len(times) == 1:
            self.metrics.ttft.observe(times[0] - seq.arrival)
        else:
            self.metrics.itl.observe(times[-1] - times[-2])

    def count_request(self) -> None:
        self.generation_requests += 1
        crash_after = self.faults.crash_after
        if crash_after is not None and self.generation_requests > crash_after:
            log.error("sim fault crash_after=%d: request %d arrived, exiting with code 1 now", crash_after,
                      self.generation_requests)
            logging.shutdown()
            os._exit(1)

    def make_input(self, *, text: str | None, ids: list[int] | None, max_new_tokens: int | None, stop: object,
                    stop_token_ids: object, rid: str | None, room: object, host: object, port: object,
                    routed: object, default_max: int) -> GenInput:
        if ids is None:
            if text is None:
                raise Aborted("either text, input_ids or a prompt is required", 400)
            ids = tokenizer.encode(text)
        elif text is None:
            text = tokenizer.decode(ids)
        if len(ids) >= self.context_length:
            raise Aborted(f"The input ({len(ids)} tokens) is longer than the model's context length "
                          f"({self.context_length} tokens).", 400)
        if not ids:
            raise Aborted("The prompt is empty.", 400)
        max_new = default_max if max_new_tokens is None else int(max_new_tokens)
        max_new = max(1, min(max_new, self.context_length - len(ids)))
        return GenInput(text, list(ids), max_new, [s for s in as_list(stop) if isinstance(s, str)],
                        [int(t) for t in as_list(stop_token_ids)], rid or uuid.uuid4().hex,
                        None if room is None else int(room), None if host is None else str(host),
                        None if port is None else int(port), None if routed is None else int(routed))

    async def run(self, inp: GenInput) -> AsyncIterator[Progress]:
        """Serve one request in this worker's role; yields progress, ends finished or with ``error``."""
        args = self.args
        plan = plan_output(inp.text, inp.max_new_tokens, inp.stop, inp.stop_token_ids, args.sim_seed, args.sim_accuracy)
        if self.role == "prefill":
            plan = OutputPlan(plan.surfaces[:1], plan.ids[:1], len(plan.surfaces[0]),
                              {"type": "length", "length": 1})
        reserve = len(inp.ids) + (1 if self.role == "prefill" else inp.max_new_tokens)
        seq = Sequence(inp.rid, inp.ids, plan.num_tokens, reserve, room=inp.room, routed_dp_rank=inp.routed_dp_rank)
        progress = Progress(0, plan, len(inp.ids), 0, time.monotonic())
        self.metrics.request(len(inp.ids))
        try:
            if self.role == "prefill":
                await self._prefill_and_send(inp, seq, progress)
                progress.tokens, progress.finished = 1, True
                yield progress
                return
            if self.role == "decode":
                await self._receive(inp, seq, progress)
            else:
                await self.scheduler.prefill(seq)
                progress.cached_tokens = seq.cached_tokens
                self.metrics.cached(seq.cached_tokens)
            while True:
                await seq.progress.wait()
                seq.progress.clear()
                progress.tokens = seq.generated
                progress.finished = seq.generated >= plan.num_tokens
                yield progress
                if progress.finished:
                    return
        except Rejected as error:
            progress.error = Aborted(str(error), 400)
            yield progress
        except Aborted as error:
            log.error("request %s aborted: %s", inp.rid, error)
            progress.error = error
            yield progress
        finally:
            self.scheduler.release(seq)

    def fake_transfer(self, inp: GenInput) -> bool:
        """Nothing to transfer: the fake bootstrap host (bench_serving --fake-prefill, /health) on any backend, and
        every request on a decode with the fake backend (SGLang gives them all its fake KV receiver)."""
        return (inp.bootstrap_host == dp.FAKE_BOOTSTRAP_HOST
                or self.args.disaggregation_transfer_backend == dp.FAKE_BACKEND)

    async def _prefill_and_send(self, inp: GenInput, seq: Sequence, progress: Progress) -> None:
        if self.fake_transfer(inp):
            await self.scheduler.prefill(seq)
            return
        assert self.engine is not None
        if inp.room is None:
            raise Aborted("prefill: the request has no bootstrap_room; a prefill worker serves requests from the "
                          "PD router (sglang_router --pd-disaggregation)", 400)
        room = self.rooms.get(inp.room)
        try:
            try:
                with self._queued("num_prefill_bootstrap_queue_reqs"):
                    waited = time.monotonic()
                    destination = await asyncio.wait_for(asyncio.shield(room.destination), pd.bootstrap_timeout())
                    self.metrics.bootstrap_wait(time.monotonic() - waited)
            except TimeoutError:
                self.metrics.bootstrap_failed()
                raise Aborted(f"prefill: no decode registered a KV destination for room {inp.room} within "
                              f"{pd.bootstrap_timeout():.0f} s (KVPoll.Bootstrapping)") from None
            await self.scheduler.prefill(seq)
            progress.cached_tokens = seq.cached_tokens
            self.metrics.cached(seq.cached_tokens)
            blob = pd.build_payload(inp.room, len(inp.ids), seq.cached_tokens, progress.plan.ids[0],
                                    self.args.sim_kv_payload_bytes_per_token)
            modelled = self.perf.transfer_seconds(len(inp.ids)) * self.faults.slow * self.faults.slow_kv / self.args.sim_speedup
            started = time.monotonic()
            try:
                with self._queued("num_prefill_inflight_queue_reqs"):
                    await self._kv_stalled(inp.room)
                    result = await pd.write_room(self.engine, destination, blob, executor=self.executor,
                                                 refuse=self.faults.fails_transfer(inp.room, self.args.sim_seed))
            except KVTransferError as error:
                self.metrics.transfer_failed()
                reason = f"prefill: KV transfer of room {inp.room} failed: {error}"
                if not room.outcome.done():
                    room.outcome.set_result({"status": "failed", "reason": reason})
                raise Aborted(reason) from None
            remaining = modelled - (time.monotonic() - started)
            if remaining > 0:
                await asyncio.sleep(remaining)
            self.metrics.transfer(result.bytes, time.monotonic() - started)
            if not room.outcome.done():
                room.outcome.set_result({"status": "success", "bytes": result.bytes, "seconds": result.seconds,
                                         "engine": result.engine})
        finally:
            self.rooms.discard(inp.room)

    async def _receive(self, inp: GenInput, seq: Sequence, progress: Progress) -> None:
        if self.fake_transfer(inp):  # decode alone: the prompt's KV is taken as there, no prefill computes it
            with self._queued("num_decode_prealloc_queue_reqs"):
                await self.scheduler.reserve(seq)
            self.scheduler.start_decode(seq, time.monotonic())
            return
        assert self.handoff is not None
        if inp.room is None or inp.bootstrap_host is None:
            raise Aborted("decode: the request has no bootstrap_host/bootstrap_room; a decode worker serves requests "
                          "from the PD router (sglang_router --pd-disaggregation)", 400)
        port = inp.bootstrap_port or self.args.disaggregation_bootstrap_port
        with self._queued("num_decode_prealloc_queue_reqs"):
            waited = time.monotonic()
            await self.scheduler.reserve(seq)
            self.metrics.alloc_wait(time.monotonic() - waited)
        try:
            with self._queued("num_decode_transfer_queue_reqs"):
                await self._kv_stalled(inp.room)
                header, _, _ = await self.handoff.receive(
                    inp.bootstrap_host, port, inp.room, len(inp.ids), self.args.sim_kv_payload_bytes_per_token)
        except pd.HandoffError as error:
            self.metrics.transfer_failed()
            raise Aborted(str(error)) from None
        progress.cached_tokens = header.cached_tokens
        self.scheduler.start_decode(seq, time.monotonic())

    async def last(self, inp: GenInput) -> Progress:
        last = None
        async for progress in self.run(inp):
            last = progress
        assert last is not None
        return last

    def meta(self, inp: GenInput, p: Progress) -> dict:
        return {"id": inp.rid, "finish_reason": p.finish_reason(), "prompt_tokens": p.prompt_tokens,
                "completion_tokens": p.tokens, "cached_tokens": p.cached_tokens,
                "e2e_latency": time.monotonic() - p.started}
