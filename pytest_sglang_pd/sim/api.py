"""The simulated worker's HTTP API in SGLang's own format (docs/sglang-interfaces.md section 2): health and
info endpoints, /generate, /metrics, the /sim/fault admin routes; and ``serve``, which runs requests and
answers them whole or as a server-sent-event stream for every format (the OpenAI ones: ``openai_api.py``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from aiohttp import web

from pytest_sglang_pd.sim import loads, openai_api
from pytest_sglang_pd.sim import worker as worker_mod
from pytest_sglang_pd.sim.request import Aborted, GenInput, Progress, as_list
from pytest_sglang_pd.textgen import tokenizer

if TYPE_CHECKING:
    from pytest_sglang_pd.sim.worker import SimWorker


class API:
    """SGLang's routes over one worker."""

    def __init__(self, worker: SimWorker) -> None:
        self.worker = worker

    def build(self) -> web.Application:
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
        get("/v1/loads", self._loads)
        get("/metrics", self._metrics)
        post("/generate", self._generate)
        post("/v1/completions", lambda request: openai_api.completions(self, request))
        post("/v1/chat/completions", lambda request: openai_api.chat(self, request))
        get("/sim/fault", self._get_faults)
        post("/sim/fault", self._set_fault)
        return app

    @web.middleware
    async def _hang_middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        while self.worker.faults.hang and not request.path.startswith("/sim/"):
            await asyncio.sleep(3600)
        return await handler(request)

    async def _health(self, _: web.Request) -> web.Response:
        return web.Response(text="")

    async def _health_generate(self, _: web.Request) -> web.Response:
        if self.worker.scheduler._task is None or self.worker.scheduler._task.done():
            return web.Response(status=503, text="scheduler is not running")
        return web.Response(text="")

    async def _server_info(self, _: web.Request) -> web.Response:
        resolved = {k: v for k, v in vars(self.worker.args).items() if not k.startswith("sim_")}
        resolved["tokenizer_path"] = str(tokenizer.tokenizer_dir())
        return web.json_response({
            **resolved, "version": worker_mod.SGLANG_VERSION, "disaggregation_mode": self.worker.role,
            "enable_dp_attention": self.worker.args.attn_dp_size > 1,
            "max_total_num_tokens": self.worker.ranks[0].capacity_tokens,
            "internal_states": [{"last_gen_throughput": self.worker.gen_throughput()}], "sim": self.worker.sim_info(),
        })

    async def _model_info(self, _: web.Request) -> web.Response:
        return web.json_response({
            "model_path": self.worker.args.model_path, "served_model_name": self.worker.served_model_name,
            "tokenizer_path": str(tokenizer.tokenizer_dir()), "is_generation": True,
            "model_type": self.worker.profile.name.split("-")[0].lower(), "architectures": ["SimulatedForCausalLM"],
            "disaggregation_mode": self.worker.role, "context_length": self.worker.context_length,
        })

    async def _models(self, _: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{
            "id": self.worker.served_model_name, "object": "model", "created": 0, "owned_by": "sglang",
            "root": self.worker.served_model_name, "max_model_len": self.worker.context_length}]})

    async def _flush_cache(self, _: web.Request) -> web.Response:
        self.worker.scheduler.flush_cache()
        return web.Response(text="Cache flushed.\nPlease check backend logs for more details. (When there are "
                                 "running or waiting requests, the operation will not be performed.)\n")

    async def _get_load(self, _: web.Request) -> web.Response:
        """The older per-DP-rank load list that sglang-router 0.3.2 polls."""
        return web.json_response([{"dp_rank": load["dp_rank"], "num_reqs": load["num_running_reqs"] + load["num_waiting_reqs"],
                                   "num_waiting_reqs": load["num_waiting_reqs"], "num_tokens": load["num_total_tokens"]}
                                  for load in loads.rank_loads(self.worker)])

    async def _loads(self, request: web.Request) -> web.Response:
        """SGLang 0.5.23's ``GET /v1/loads`` (``?include=core,...``, ``?dp_rank=N``), which smg polls."""
        try:
            return web.json_response(loads.v1_loads(self.worker, request.query.get("include"),
                                                    request.query.get("dp_rank")))
        except ValueError as error:
            return web.json_response({"detail": str(error)}, status=400)

    async def _metrics(self, _: web.Request) -> web.Response:
        if not self.worker.args.enable_metrics:
            return web.Response(status=404, text="metrics are disabled; start with --enable-metrics")
        per_rank = [{"num_running_reqs": load["num_running_reqs"], "num_queue_reqs": load["num_waiting_reqs"],
                     "cache_hit_rate": load["cache_hit_rate"], "gen_throughput": load["gen_throughput"],
                     "token_usage": load["token_usage"]} for load in loads.rank_loads(self.worker)]
        text = self.worker.metrics.render(dict(self.worker.queue_reqs), per_rank)
        return web.Response(text=text, content_type="text/plain")

    async def _get_faults(self, _: web.Request) -> web.Response:
        return web.json_response(self.worker.faults.as_dict())

    async def _set_fault(self, request: web.Request) -> web.Response:
        try:
            return web.json_response(await self.worker.set_fault((await request.json()).get("spec", "")))
        except ValueError as error:
            return web.json_response({"error": str(error)}, status=400)

    async def json_body(self, request: web.Request) -> dict:
        try:
            body = await request.json()
        except json.JSONDecodeError as error:
            raise Aborted(f"request body is not JSON: {error}", 400) from None
        if not isinstance(body, dict):
            raise Aborted("request body must be a JSON object", 400)
        return body

    async def serve(self, request: web.Request, inputs: list[GenInput], stream: bool,
                     chunks: Callable[[int, Progress, int], list[dict]], final: Callable[[list[Progress]], dict],
                     error_body: Callable[[Aborted], dict], tail: Callable[[list[Progress]], list[dict]]) -> web.StreamResponse:
        """Run ``inputs``; stream ``chunks`` (index, progress, tokens already sent) or answer ``final``."""
        for _ in inputs:
            self.worker.count_request()
        number = self.worker.generation_requests
        cut = stream and self.worker.faults.cuts_stream(number, self.worker.args.sim_seed)
        if not stream:
            results = await asyncio.gather(*(self.worker.last(inp) for inp in inputs))
            errors = [p.error for p in results if p.error is not None]
            if errors:
                return web.json_response(error_body(errors[0]), status=errors[0].status)
            return web.json_response(final(results))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        sent = [0] * len(inputs)
        last: list[Progress | None] = [None] * len(inputs)
        closed = [False] * len(inputs)
        async with contextlib.aclosing(self._progress_of(inputs)) as updates:
            async for index, progress in updates:
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
                    if cut:
                        return self._cut(request, response, number)
        extra = tail([p for p in last if p is not None])
        await response.write(b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in extra)
                             + b"data: [DONE]\n\n")
        return response

    async def _progress_of(self, inputs: list[GenInput]) -> AsyncIterator[tuple[int, Progress]]:
        """(index, progress) of every run of ``inputs`` as it comes; one input is iterated in place (no task and
        queue hop per token: the common streamed request), several are merged through a queue."""
        if len(inputs) == 1:
            async for progress in self.worker.run(inputs[0]):
                yield 0, progress
            return
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(index: int, inp: GenInput) -> None:
            try:
                async for progress in self.worker.run(inp):
                    queue.put_nowait((index, progress))
            finally:
                queue.put_nowait((index, None))

        tasks = [asyncio.create_task(pump(i, inp)) for i, inp in enumerate(inputs)]
        open_runs = len(inputs)
        try:
            while open_runs:
                index, progress = await queue.get()
                if progress is None:
                    open_runs -= 1
                else:
                    yield index, progress
        finally:
            for task in tasks:
                task.cancel()

    def _cut(self, request: web.Request, response: web.StreamResponse, number: int) -> web.StreamResponse:
        """The ``cut_streams`` fault: the connection closes before the chunked body's last chunk."""
        worker_mod.log.warning("sim fault cut_streams: streamed response %d cut short after its first chunk",
                               number)
        response.force_close()
        if request.transport is not None:
            request.transport.abort()
        return response

    async def _generate(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await self.json_body(request)
            batch = isinstance(body.get("text"), list) or (
                isinstance(body.get("input_ids"), list) and bool(body["input_ids"]) and isinstance(body["input_ids"][0], list))
            texts = as_list(body.get("text")) if body.get("text") is not None else None
            id_lists = (body["input_ids"] if batch else [body["input_ids"]]) if body.get("input_ids") is not None else None
            count = len(texts) if texts is not None else len(id_lists or [None])
            params = body.get("sampling_params") or {}
            rooms = body.get("bootstrap_room")

            def pick(value: object, i: int) -> object:
                return value[i] if batch and isinstance(value, list) else value

            inputs = []
            for i in range(count):
                sp = pick(params, i) or {}
                inputs.append(self.worker.make_input(
                    text=texts[i] if texts is not None else None, ids=id_lists[i] if id_lists is not None else None,
                    max_new_tokens=sp.get("max_new_tokens"), stop=sp.get("stop"),
                    stop_token_ids=sp.get("stop_token_ids"), rid=pick(body.get("rid"), i), room=pick(rooms, i),
                    host=pick(body.get("bootstrap_host"), i), port=pick(body.get("bootstrap_port"), i),
                    routed=pick(body.get("routed_dp_rank", body.get("data_parallel_rank")), i), default_max=128))
        except Aborted as error:
            return web.json_response({"error": {"message": str(error)}}, status=error.status)

        def result(i: int, p: Progress) -> dict:
            inp = inputs[i]
            out = {"text": p.plan.text(p.tokens), "output_ids": list(p.plan.ids[:p.tokens]), "meta_info": self.worker.meta(inp, p)}
            if batch:
                out["index"] = i
            if p.error is not None:
                out["error"] = {"message": str(p.error)}
            return out

        def final(results: list[Progress]) -> dict | list:
            outs = [result(i, p) for i, p in enumerate(results)]
            return outs if batch else outs[0]

        return await self.serve(
            request, inputs, bool(body.get("stream")),
            chunks=lambda i, p, sent: [result(i, p)],
            final=final,  # type: ignore[arg-type]
            error_body=lambda e: {"error": {"message": str(e)},
                                  "meta_info": {"finish_reason": {"type": "abort", "message": str(e),
                                                                  "status_code": e.status}}},
            tail=lambda ps: [],
        )



def build_app(worker: SimWorker) -> web.Application:
    return API(worker).build()
