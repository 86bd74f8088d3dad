"""The simulated worker's OpenAI-compatible routes (/v1/completions, /v1/chat/completions), as SGLang
serves them: one response builder for both, whole or streamed."""

from __future__ import annotations

import time
import uuid
from typing import Any, Protocol

from aiohttp import web

from pytest_sglang_pd.sim.request import Aborted, GenInput, Progress
from pytest_sglang_pd.textgen import tokenizer


class API(Protocol):
    """What these routes need of the worker's API (``api.API``): the worker, body parsing, ``serve``."""

    worker: Any

    async def json_body(self, request: web.Request) -> dict: ...

    async def serve(self, request: web.Request, inputs: list[GenInput], stream: bool, *formats: Any) -> web.StreamResponse: ...


def error_body(error: Aborted) -> dict:
    kind = "BadRequestError" if error.status == 400 else "InternalServerError"
    return {"object": "error", "message": str(error), "type": kind, "param": None, "code": error.status,
            "error": {"message": str(error), "type": kind, "code": error.status}}


def _finish(reason: dict | None) -> str | None:
    if reason is None:
        return None
    return {"length": "length", "stop": "stop"}.get(reason["type"], "abort")


def usage(ps: list[Progress]) -> dict:
    prompt = sum(p.prompt_tokens for p in ps)
    completion = sum(p.tokens for p in ps)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": sum(p.cached_tokens for p in ps)}}


class Response:
    """The bodies of one completions (``chat=False``) or chat completions response: stream chunks, the
    whole answer, and the usage chunk that ``stream_options.include_usage`` asks for."""

    def __init__(self, *, chat: bool, model: str, include_usage: bool) -> None:
        self.chat, self.model, self.include_usage = chat, model, include_usage
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _envelope(self, stream: bool, choices: list[dict], **extra: object) -> dict:
        kind = ("chat.completion.chunk" if stream else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices,
                **extra}

    def _choice(self, i: int, p: Progress, body: dict) -> dict:
        return {"index": i, **body, "logprobs": None, "finish_reason": _finish(p.finish_reason()),
                "matched_stop": (p.finish_reason() or {}).get("matched")}

    def chunk(self, i: int, p: Progress, sent: int) -> list[dict]:
        if p.error is not None:
            return [{"error": error_body(p.error)["error"]}]
        delta = p.plan.text(p.tokens)[len(p.plan.text(sent)):]
        if not self.chat:
            return [self._envelope(True, [self._choice(i, p, {"text": delta})])]
        body: dict = {"content": delta, **({"role": "assistant"} if sent == 0 else {})}
        return [self._envelope(True, [self._choice(i, p, {"delta": body})])]

    def final(self, ps: list[Progress]) -> dict:
        if self.chat:
            ps = ps[:1]
        choices = [self._choice(i, p, {"message": {"role": "assistant", "content": p.plan.text(p.tokens)}}
                                if self.chat else {"text": p.plan.text(p.tokens)}) for i, p in enumerate(ps)]
        return self._envelope(False, choices, usage=usage(ps))

    def tail(self, ps: list[Progress]) -> list[dict]:
        return [self._envelope(True, [], usage=usage(ps))] if self.include_usage else []


def _inputs(api: API, body: dict, prompts: list, default_max: int) -> list[GenInput]:
    def pick(name: str, i: int) -> object:
        value = body.get(name)
        return value[i] if isinstance(value, list) else value

    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    return [api.worker.make_input(
        text=None if isinstance(prompt, list) else prompt, ids=prompt if isinstance(prompt, list) else None,
        max_new_tokens=max_tokens, stop=body.get("stop"), stop_token_ids=body.get("stop_token_ids"),
        rid=body.get("rid"), room=pick("bootstrap_room", i), host=pick("bootstrap_host", i),
        port=pick("bootstrap_port", i), routed=pick("routed_dp_rank", i), default_max=default_max) for i, prompt in enumerate(prompts)]


async def _respond(api: API, request: web.Request, *, chat: bool) -> web.StreamResponse:
    try:
        body = await api.json_body(request)
        if chat:
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise Aborted("messages must be a non-empty list", 400)
            inputs = _inputs(api, body, [tokenizer.apply_chat_template(messages)], default_max=256)
        else:
            prompt = body.get("prompt")
            prompts = prompt if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else [prompt]
            inputs = _inputs(api, body, prompts, default_max=16)
    except Aborted as error:
        return web.json_response(error_body(error), status=error.status)
    out = Response(chat=chat, model=api.worker.served_model_name,
                   include_usage=bool((body.get("stream_options") or {}).get("include_usage")))
    return await api.serve(request, inputs, bool(body.get("stream")), out.chunk, out.final, error_body, out.tail)


async def completions(api: API, request: web.Request) -> web.StreamResponse:
    return await _respond(api, request, chat=False)


async def chat(api: API, request: web.Request) -> web.StreamResponse:
    return await _respond(api, request, chat=True)
