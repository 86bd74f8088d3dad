"""The simulated worker's HTTP server: SGLang's API (docs/sglang-interfaces.md section 2) over the scheduler
and PD handoff."""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

from aiohttp import web

from pytest_sglang_pd.kv_transfer import KVTransferError, TransferEngine, open_engine
from pytest_sglang_pd.sim import pd
from pytest_sglang_pd.sim.catalog import GPU, ModelProfile
from pytest_sglang_pd.sim.faults import Faults
from pytest_sglang_pd.sim.metrics import WorkerMetrics
from pytest_sglang_pd.sim.output import OutputPlan, plan_output
from pytest_sglang_pd.sim.perf_model import PerfModel
from pytest_sglang_pd.sim.radix_cache import RadixCache
from pytest_sglang_pd.sim.scheduler import Rejected, Scheduler, Sequence
from pytest_sglang_pd.textgen import tokenizer

log = logging.getLogger("pytest_sglang_pd.sim")
SGLANG_VERSION = "0.5.23"
RECEIVE_REGION_MIN = 64 << 20


class Aborted(Exception):
    """A request ended with finish_reason abort; the message says which side and why."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class GenInput:
    text: str
    ids: list[int]
    max_new_tokens: int
    stop: list[str]
    stop_token_ids: list[int]
    rid: str
    room: int | None = None
    bootstrap_host: str | None = None
    bootstrap_port: int | None = None


@dataclass
class Progress:
    tokens: int
    plan: OutputPlan
    prompt_tokens: int
    cached_tokens: int
    started: float
    finished: bool = False
    error: Aborted | None = None

    def finish_reason(self) -> dict | None:
        if self.error is not None:
            return {"type": "abort", "message": str(self.error), "status_code": self.error.status}
        return self.plan.finish_reason if self.finished else None


def _as_list(value: object) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _openai_finish(reason: dict | None) -> str | None:
    if reason is None:
        return None
    return {"length": "length", "stop": "stop"}.get(reason["type"], "abort")


class SimWorker:
    def __init__(self, args: argparse.Namespace, gpu: GPU, model: ModelProfile) -> None:
        self.args = args
        self.role = args.disaggregation_mode
        self.gpu, self.profile = gpu, model
        self.served_model_name = args.served_model_name or args.model_path
        self.context_length = args.context_length or model.context_length
        self.perf = PerfModel(gpu, model, args.sim_gpus_per_instance or args.tp_size * args.pp_size)
        self.faults = Faults()
        for spec in args.sim_fault:
            self.faults.apply(spec)
        capacity = args.max_total_tokens or self.perf.kv_capacity_tokens(args.mem_fraction_static)
        self.scheduler = Scheduler(
            self.perf, role=self.role, capacity_tokens=capacity, max_running=args.max_running_requests,
            chunked_prefill_size=args.chunked_prefill_size if args.chunked_prefill_size > 0 else 1 << 30,
            cache=RadixCache(args.page_size, enabled=not args.disable_radix_cache), policy=args.schedule_policy,
            time_scale=lambda: self.faults.slow / args.sim_speedup, seed=args.sim_seed,
        )
        self.scheduler.on_tokens = self._on_tokens
        self.scheduler.paused = self.faults.hang
        self.engine: TransferEngine | None = None
        self.metrics = WorkerMetrics(self.role, self.served_model_name, "none")
        self.rooms = pd.RoomTable()
        self.queue_reqs: collections.Counter[str] = collections.Counter()
        self.bootstrap: pd.BootstrapServer | None = None
        self.handoff: pd.DecodeHandoff | None = None
        self.executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="kv-write")
        self.generation_requests = 0
        self._throughput_mark = (time.monotonic(), 0)
        self.app = self._build_app()

    # ---------------------------------------------------------------------------- life cycle

    async def start(self) -> None:
        self.scheduler.start()
        if self.role == "null":
            return
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

    # ------------------------------------------------------------------------------- routing

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._hang_middleware], client_max_size=256 << 20)
        get, post = app.router.add_get, app.router.add_post
        get("/health", self._health)
        get("/health_generate", self._health_generate)
        for path in ("/server_info", "/get_server_info"):
            get(path, self._server_info)
        for path in ("/model_info", "/get_model_info"):
            get(path, self._model_info)
        get("/v1/models", self._models)
        get("/flush_cache", self._flush_cache)
        post("/flush_cache", self._flush_cache)
        get("/get_load", self._get_load)
        get("/metrics", self._metrics)
        post("/generate", self._generate)
        post("/v1/completions", self._completions)
        post("/v1/chat/completions", self._chat)
        get("/sim/fault", self._get_faults)
        post("/sim/fault", self._set_fault)
        return app

    @web.middleware
    async def _hang_middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        while self.faults.hang and not request.path.startswith("/sim/"):
            await asyncio.sleep(3600)
        return await handler(request)

    # ----------------------------------------------------------------------- info endpoints

    async def _health(self, _: web.Request) -> web.Response:
        return web.Response(text="")

    async def _health_generate(self, _: web.Request) -> web.Response:
        if self.scheduler._task is None or self.scheduler._task.done():
            return web.Response(status=503, text="scheduler is not running")
        return web.Response(text="")

    def sim_info(self) -> dict:
        return {
            "simulated": True, "gpu": self.gpu.name, "model_profile": self.profile.name,
            "gpus_per_instance": self.perf.gpus, "speedup": self.args.sim_speedup,
            "engine": self.engine.name if self.engine else None,
            "engine_protocol": self.engine.protocol if self.engine else None,
            "engine_session": self.engine.session_id if self.engine else None,
            "kv_payload_bytes_per_token": self.args.sim_kv_payload_bytes_per_token,
            "kv_capacity_tokens": self.scheduler.capacity_tokens, "faults": self.faults.as_dict(),
        }

    async def _server_info(self, _: web.Request) -> web.Response:
        resolved = {k: v for k, v in vars(self.args).items() if not k.startswith("sim_")}
        resolved["tokenizer_path"] = str(tokenizer.tokenizer_dir())
        return web.json_response({
            **resolved, "version": SGLANG_VERSION, "disaggregation_mode": self.role,
            "load_balance_method": "round_robin", "max_total_num_tokens": self.scheduler.capacity_tokens,
            "internal_states": [{"last_gen_throughput": self._gen_throughput()}], "sim": self.sim_info(),
        })

    async def _model_info(self, _: web.Request) -> web.Response:
        return web.json_response({
            "model_path": self.args.model_path, "served_model_name": self.served_model_name,
            "tokenizer_path": str(tokenizer.tokenizer_dir()), "is_generation": True,
            "model_type": self.profile.name.split("-")[0].lower(), "architectures": ["SimulatedForCausalLM"],
            "disaggregation_mode": self.role, "context_length": self.context_length,
        })

    async def _models(self, _: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{
            "id": self.served_model_name, "object": "model", "created": 0, "owned_by": "sglang",
            "root": self.served_model_name, "max_model_len": self.context_length}]})

    async def _flush_cache(self, _: web.Request) -> web.Response:
        self.scheduler.flush_cache()
        return web.Response(text="Cache flushed.\nPlease check backend logs for more details. (When there are "
                                 "running or waiting requests, the operation will not be performed.)\n")

    async def _get_load(self, _: web.Request) -> web.Response:
        s = self.scheduler
        return web.json_response([{"dp_rank": 0, "num_reqs": s.num_running + s.num_queued,
                                   "num_waiting_reqs": s.num_queued, "num_tokens": s.reserved}])

    def _gen_throughput(self) -> float:
        now, tokens = time.monotonic(), self.metrics.generation_tokens
        then, before = self._throughput_mark
        if now - then >= 1.0:
            self._throughput_mark = (now, tokens)
        return (tokens - before) / (now - then) if now > then else 0.0

    async def _metrics(self, _: web.Request) -> web.Response:
        if not self.args.enable_metrics:
            return web.Response(status=404, text="metrics are disabled; start with --enable-metrics")
        s = self.scheduler
        gauges = {"num_running_reqs": s.num_running, "num_queue_reqs": s.num_queued,
                  "cache_hit_rate": s.cache_hit_rate, "gen_throughput": self._gen_throughput(),
                  "token_usage": s.reserved / s.capacity_tokens if s.capacity_tokens else 0.0}
        return web.Response(text=self.metrics.render({**gauges, **self.queue_reqs}), content_type="text/plain")

    @contextmanager
    def _queued(self, queue: str) -> Iterator[None]:
        """A request in one of the PD queues SGLang exports as gauges (sglang:<queue>), while the block runs."""
        self.queue_reqs[queue] += 1
        try:
            yield
        finally:
            self.queue_reqs[queue] -= 1

    async def _get_faults(self, _: web.Request) -> web.Response:
        return web.json_response(self.faults.as_dict())

    async def _set_fault(self, request: web.Request) -> web.Response:
        spec = (await request.json()).get("spec", "")
        try:
            self.faults.apply(spec)
        except ValueError as error:
            return web.json_response({"error": str(error)}, status=400)
        log.warning("sim fault set: %s -> %s", spec, self.faults.as_dict())
        self.scheduler.paused = self.faults.hang
        self.scheduler._wake.set()
        if self.bootstrap is not None:
            await (self.bootstrap.refuse() if self.faults.refuse_bootstrap else self.bootstrap.open())
        return web.json_response(self.faults.as_dict())

    # ------------------------------------------------------------------------- generation

    def _on_tokens(self, seq: Sequence, count: int) -> None:
        self.metrics.generated(count)
        times = seq.token_times
        if len(times) == 1:
            self.metrics.ttft.observe(times[0] - seq.arrival)
        else:
            self.metrics.itl.observe(times[-1] - times[-2])

    def _count_request(self) -> None:
        self.generation_requests += 1
        crash_after = self.faults.crash_after
        if crash_after is not None and self.generation_requests > crash_after:
            log.error("sim fault crash_after=%d: request %d arrived, exiting with code 1 now", crash_after,
                      self.generation_requests)
            logging.shutdown()
            os._exit(1)

    def _make_input(self, *, text: str | None, ids: list[int] | None, max_new_tokens: int | None, stop: object,
                    stop_token_ids: object, rid: str | None, room: object, host: object, port: object,
                    default_max: int) -> GenInput:
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
        return GenInput(text, list(ids), max_new, [s for s in _as_list(stop) if isinstance(s, str)],
                        [int(t) for t in _as_list(stop_token_ids)], rid or uuid.uuid4().hex,
                        None if room is None else int(room), None if host is None else str(host),
                        None if port is None else int(port))

    async def run(self, inp: GenInput) -> AsyncIterator[Progress]:
        """Serve one request in this worker's role; yields progress, ends finished or with ``error``."""
        args = self.args
        plan = plan_output(inp.text, inp.max_new_tokens, inp.stop, inp.stop_token_ids, args.sim_seed, args.sim_accuracy)
        if self.role == "prefill":
            plan = OutputPlan(plan.surfaces[:1], plan.ids[:1], len(plan.surfaces[0]),
                              {"type": "length", "length": 1})
        reserve = len(inp.ids) + (1 if self.role == "prefill" else inp.max_new_tokens)
        seq = Sequence(inp.rid, inp.ids, plan.num_tokens, reserve)
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

    async def _prefill_and_send(self, inp: GenInput, seq: Sequence, progress: Progress) -> None:
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
            modelled = self.perf.transfer_seconds(len(inp.ids)) * self.faults.slow / self.args.sim_speedup
            started = time.monotonic()
            try:
                with self._queued("num_prefill_inflight_queue_reqs"):
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
                header, _, _ = await self.handoff.receive(
                    inp.bootstrap_host, port, inp.room, len(inp.ids), self.args.sim_kv_payload_bytes_per_token)
        except pd.HandoffError as error:
            self.metrics.transfer_failed()
            raise Aborted(str(error)) from None
        progress.cached_tokens = header.cached_tokens
        self.scheduler.start_decode(seq, time.monotonic())

    # ---------------------------------------------------------------------- API formats

    async def _json(self, request: web.Request) -> dict:
        try:
            body = await request.json()
        except json.JSONDecodeError as error:
            raise Aborted(f"request body is not JSON: {error}", 400) from None
        if not isinstance(body, dict):
            raise Aborted("request body must be a JSON object", 400)
        return body

    async def _serve(self, request: web.Request, inputs: list[GenInput], stream: bool,
                     chunks: Callable[[int, Progress, int], list[dict]], final: Callable[[list[Progress]], dict],
                     error_body: Callable[[Aborted], dict], tail: Callable[[list[Progress]], list[dict]]) -> web.StreamResponse:
        """Run ``inputs``; stream ``chunks`` (index, progress, tokens already sent) or answer ``final``."""
        for _ in inputs:
            self._count_request()
        if not stream:
            results = await asyncio.gather(*(self._last(inp) for inp in inputs))
            errors = [p.error for p in results if p.error is not None]
            if errors:
                return web.json_response(error_body(errors[0]), status=errors[0].status)
            return web.json_response(final(results))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(index: int, inp: GenInput) -> None:
            try:
                async for progress in self.run(inp):
                    queue.put_nowait((index, progress))
            finally:
                queue.put_nowait((index, None))

        tasks = [asyncio.create_task(pump(i, inp)) for i, inp in enumerate(inputs)]
        sent = [0] * len(inputs)
        last: list[Progress | None] = [None] * len(inputs)
        closed = [False] * len(inputs)
        open_runs = len(inputs)
        try:
            while open_runs:
                index, progress = await queue.get()
                if progress is None:
                    open_runs -= 1
                    continue
                last[index] = progress
                ended = progress.finished or progress.error is not None
                if closed[index] or (progress.tokens == sent[index] and not ended):
                    continue
                closed[index] = ended
                payload = b"".join(b"data: " + json.dumps(c).encode() + b"\n\n"
                                   for c in chunks(index, progress, sent[index]))
                sent[index] = progress.tokens
                if payload:
                    await response.write(payload)
            extra = tail([p for p in last if p is not None])
            await response.write(b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in extra)
                                 + b"data: [DONE]\n\n")
        finally:
            for task in tasks:
                task.cancel()
        return response

    async def _last(self, inp: GenInput) -> Progress:
        last = None
        async for progress in self.run(inp):
            last = progress
        assert last is not None
        return last

    def _meta(self, inp: GenInput, p: Progress) -> dict:
        return {"id": inp.rid, "finish_reason": p.finish_reason(), "prompt_tokens": p.prompt_tokens,
                "completion_tokens": p.tokens, "cached_tokens": p.cached_tokens,
                "e2e_latency": time.monotonic() - p.started}

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._json(request)
            batch = isinstance(body.get("text"), list) or (
                isinstance(body.get("input_ids"), list) and bool(body["input_ids"]) and isinstance(body["input_ids"][0], list))
            texts = _as_list(body.get("text")) if body.get("text") is not None else None
            id_lists = (body["input_ids"] if batch else [body["input_ids"]]) if body.get("input_ids") is not None else None
            count = len(texts) if texts is not None else len(id_lists or [None])
            params = body.get("sampling_params") or {}
            rooms = body.get("bootstrap_room")

            def pick(value: object, i: int) -> object:
                return value[i] if batch and isinstance(value, list) else value

            inputs = []
            for i in range(count):
                sp = pick(params, i) or {}
                inputs.append(self._make_input(
                    text=texts[i] if texts is not None else None, ids=id_lists[i] if id_lists is not None else None,
                    max_new_tokens=sp.get("max_new_tokens"), stop=sp.get("stop"),
                    stop_token_ids=sp.get("stop_token_ids"), rid=pick(body.get("rid"), i), room=pick(rooms, i),
                    host=pick(body.get("bootstrap_host"), i), port=pick(body.get("bootstrap_port"), i),
                    default_max=128))
        except Aborted as error:
            return web.json_response({"error": {"message": str(error)}}, status=error.status)

        def result(i: int, p: Progress) -> dict:
            inp = inputs[i]
            out = {"text": p.plan.text(p.tokens), "output_ids": list(p.plan.ids[:p.tokens]), "meta_info": self._meta(inp, p)}
            if batch:
                out["index"] = i
            if p.error is not None:
                out["error"] = {"message": str(p.error)}
            return out

        def final(results: list[Progress]) -> dict | list:
            outs = [result(i, p) for i, p in enumerate(results)]
            return outs if batch else outs[0]

        return await self._serve(
            request, inputs, bool(body.get("stream")),
            chunks=lambda i, p, sent: [result(i, p)],
            final=final,  # type: ignore[arg-type]
            error_body=lambda e: {"error": {"message": str(e)},
                                  "meta_info": {"finish_reason": {"type": "abort", "message": str(e),
                                                                  "status_code": e.status}}},
            tail=lambda ps: [],
        )

    def _openai_error(self, error: Aborted) -> dict:
        kind = "BadRequestError" if error.status == 400 else "InternalServerError"
        return {"object": "error", "message": str(error), "type": kind, "param": None, "code": error.status,
                "error": {"message": str(error), "type": kind, "code": error.status}}

    @staticmethod
    def _usage(ps: list[Progress]) -> dict:
        prompt = sum(p.prompt_tokens for p in ps)
        completion = sum(p.tokens for p in ps)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": sum(p.cached_tokens for p in ps)}}

    def _openai_inputs(self, body: dict, prompts: list, default_max: int) -> list[GenInput]:
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        rooms = body.get("bootstrap_room")
        inputs = []
        for i, prompt in enumerate(prompts):
            is_ids = isinstance(prompt, list)
            inputs.append(self._make_input(
                text=None if is_ids else prompt, ids=prompt if is_ids else None, max_new_tokens=max_tokens,
                stop=body.get("stop"), stop_token_ids=body.get("stop_token_ids"), rid=body.get("rid"),
                room=rooms[i] if isinstance(rooms, list) else rooms,
                host=body.get("bootstrap_host")[i] if isinstance(body.get("bootstrap_host"), list) else body.get("bootstrap_host"),
                port=body.get("bootstrap_port")[i] if isinstance(body.get("bootstrap_port"), list) else body.get("bootstrap_port"),
                default_max=default_max))
        return inputs

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._json(request)
            prompt = body.get("prompt")
            prompts = prompt if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else [prompt]
            inputs = self._openai_inputs(body, prompts, default_max=16)
        except Aborted as error:
            return web.json_response(self._openai_error(error), status=error.status)
        rid, created, model = f"cmpl-{uuid.uuid4().hex}", int(time.time()), self.served_model_name
        stream_options = body.get("stream_options") or {}

        def chunk(i: int, p: Progress, sent: int) -> list[dict]:
            if p.error is not None:
                return [{"error": self._openai_error(p.error)["error"]}]
            delta = p.plan.text(p.tokens)[len(p.plan.text(sent)):]
            return [{"id": rid, "object": "text_completion", "created": created, "model": model,
                     "choices": [{"index": i, "text": delta, "logprobs": None,
                                  "finish_reason": _openai_finish(p.finish_reason()),
                                  "matched_stop": (p.finish_reason() or {}).get("matched")}]}]

        def final(ps: list[Progress]) -> dict:
            return {"id": rid, "object": "text_completion", "created": created, "model": model,
                    "choices": [{"index": i, "text": p.plan.text(p.tokens), "logprobs": None,
                                 "finish_reason": _openai_finish(p.finish_reason()),
                                 "matched_stop": (p.finish_reason() or {}).get("matched")} for i, p in enumerate(ps)],
                    "usage": self._usage(ps)}

        def tail(ps: list[Progress]) -> list[dict]:
            if not stream_options.get("include_usage"):
                return []
            return [{"id": rid, "object": "text_completion", "created": created, "model": model, "choices": [],
                     "usage": self._usage(ps)}]

        return await self._serve(request, inputs, bool(body.get("stream")), chunk, final, self._openai_error, tail)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self._json(request)
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise Aborted("messages must be a non-empty list", 400)
            inputs = self._openai_inputs(body, [tokenizer.apply_chat_template(messages)], default_max=256)
        except Aborted as error:
            return web.json_response(self._openai_error(error), status=error.status)
        rid, created, model = f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), self.served_model_name
        stream_options = body.get("stream_options") or {}

        def chunk(i: int, p: Progress, sent: int) -> list[dict]:
            if p.error is not None:
                return [{"error": self._openai_error(p.error)["error"]}]
            delta: dict = {"content": p.plan.text(p.tokens)[len(p.plan.text(sent)):]}
            if sent == 0:
                delta["role"] = "assistant"
            return [{"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [{"index": i, "delta": delta, "logprobs": None,
                                  "finish_reason": _openai_finish(p.finish_reason()),
                                  "matched_stop": (p.finish_reason() or {}).get("matched")}]}]

        def final(ps: list[Progress]) -> dict:
            p = ps[0]
            return {"id": rid, "object": "chat.completion", "created": created, "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": p.plan.text(p.tokens)},
                                 "logprobs": None, "finish_reason": _openai_finish(p.finish_reason()),
                                 "matched_stop": (p.finish_reason() or {}).get("matched")}],
                    "usage": self._usage(ps)}

        def tail(ps: list[Progress]) -> list[dict]:
            if not stream_options.get("include_usage"):
                return []
            return [{"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [], "usage": self._usage(ps)}]

        return await self._serve(request, inputs, bool(body.get("stream")), chunk, final, self._openai_error, tail)
