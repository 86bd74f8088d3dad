"""The builtin benchmark client (asyncio + aiohttp): streams /generate through the router like
bench_serving's ``--backend sglang`` and measures every request, failures included. A decode-alone test goes
straight to a decode worker with SGLang's fake bootstrap host, as bench_serving's ``--fake-prefill`` does."""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from typing import Callable

import aiohttp

from .. import __version__, releases, sse
from ..config import InferenceTest
from . import steady_state
from .result import TRUNCATED, BenchResult, RequestRecord, aggregate, first_errors
from .workloads import INVALID_ANSWER, Prompt, answer_value, prompts_for

Progress = Callable[[int, int, float], None]  # (completed or failed so far, total, elapsed seconds)
Streamed = Callable[[int], None]  # told the output tokens each stream delivered, as they arrive
Stop = Callable[[], bool]  # true once the benchmark must end now (the cluster watch found a cause)
STOP_POLL_S = 0.5
ERROR_BODY_CHARS = 300


def _abort_message(finish_reason: object) -> str | None:
    if isinstance(finish_reason, dict) and finish_reason.get("type") == "abort":
        return f"aborted by the server: {finish_reason.get('message') or finish_reason}"
    return None


FAKE_PREFILL = {"bootstrap_host": releases.FAKE_BOOTSTRAP_HOST, "bootstrap_room": 0}  # bench_serving --fake-prefill


async def send_request(session: aiohttp.ClientSession, url: str, prompt: Prompt, extra: dict | None = None,
                       streamed: Streamed | None = None) -> RequestRecord:
    """One streamed /generate; TTFT at the first chunk with text, ITL spread over the new tokens of
    each later chunk, token counts from the server's meta_info. A stream cut short (its connection closed
    or reset before ``[DONE]``) is a failed request whose error says so (``result.TRUNCATED``)."""
    sampling = {"max_new_tokens": prompt.max_new_tokens, "temperature": 0.0, "ignore_eos": prompt.ignore_eos}
    if prompt.stop:
        sampling["stop"] = list(prompt.stop)
    body = {"text": prompt.text, "sampling_params": sampling, "stream": True, **(extra or {})}
    record = RequestRecord(success=False, start_s=time.perf_counter())
    stream = _Stream(record, record.start_s, streamed)
    try:
        async with session.post(f"{url}/generate", json=body) as resp:
            if resp.status != 200:
                text = (await resp.text())[:ERROR_BODY_CHARS]
                record.error = f"HTTP {resp.status} from {url}/generate: {text.strip()}"
                return record
            buffer = bytearray()
            try:
                async for chunk in resp.content.iter_any():
                    buffer += chunk
                    if not stream.take(sse.take_events(buffer)):
                        return record
            except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                record.error = _truncated(url, stream.tokens, f"{type(exc).__name__}: {exc}")
                return record
    except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError, ValueError) as exc:
        record.error = f"{type(exc).__name__} talking to {url}/generate: {exc}".strip()
        return record
    record.latency_s = time.perf_counter() - stream.start
    meta = stream.meta
    abort = _abort_message(meta.get("finish_reason"))
    if abort:
        record.error = abort
    elif not meta:
        record.error = "the stream ended without any output"
    elif not stream.done:
        record.error = _truncated(url, stream.tokens, "the connection closed before the stream's [DONE] event")
    else:
        record.success = True
        record.prompt_tokens = int(meta.get("prompt_tokens", 0))
        record.output_tokens = int(meta.get("completion_tokens", 0))
        record.cached_tokens = int(meta.get("cached_tokens", 0) or 0)
    return record


def _truncated(url: str, tokens: int, cause: str) -> str:
    return f"{TRUNCATED} from {url}/generate after {tokens} output tokens: {cause}"


class _Stream:
    """What one request's stream has delivered so far: meta_info, tokens, timings, its ``[DONE]``."""

    def __init__(self, record: RequestRecord, start: float, streamed: Streamed | None = None) -> None:
        self.record, self.start, self.last_time, self.streamed = record, start, start, streamed
        self.tokens, self.meta, self.done = 0, {}, False

    def take(self, events: list[bytes]) -> bool:
        """Read ``events``; False once the stream carried an error (set on the record)."""
        record = self.record
        for event in events:
            if event == sse.DONE:
                self.done = True
                continue
            data = json.loads(event)
            if "error" in data:
                record.error = f"error in the stream: {json.dumps(data['error'])[:ERROR_BODY_CHARS]}"
                return False
            self.meta = data.get("meta_info") or self.meta
            record.text = data.get("text", record.text)
            tokens = int(self.meta.get("completion_tokens", self.tokens))
            if not data.get("text") and tokens <= self.tokens:
                continue
            now = time.perf_counter()
            if record.ttft_s == 0.0:
                record.ttft_s = now - self.start
            elif tokens > self.tokens:
                new_tokens = tokens - self.tokens
                record.itl_s.extend([(now - self.last_time) / new_tokens] * new_tokens)
            else:
                continue
            if self.streamed is not None and tokens > self.tokens:
                self.streamed(tokens - self.tokens)
            self.last_time, self.tokens = now, tokens
        return True


async def _run_all(url: str, prompts: list[Prompt], concurrency: int, request_rate: float, seed: int,
                   warmup: int, timeout_s: float, progress: Progress | None, stop: Stop, extra: dict | None,
                   streamed: Streamed | None) -> tuple[list[RequestRecord], float, list[str]]:
    timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=30)
    warnings: list[str] = []
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as session:
        for _ in range(warmup if prompts else 0):
            w = prompts[0]
            record = await send_request(session, url, Prompt(w.text, min(w.max_new_tokens, 16), w.ignore_eos, w.stop),
                                        extra)
            if not record.success:
                warnings.append(f"warmup request failed: {record.error}")
        records: list[RequestRecord | None] = [None] * len(prompts)
        limit = asyncio.Semaphore(concurrency)
        rng = random.Random(seed)
        done = 0
        start = time.perf_counter()

        async def one(index: int, prompt: Prompt) -> None:
            nonlocal done
            async with limit:
                records[index] = await send_request(session, url, prompt, extra, streamed)
            done += 1
            if progress is not None:
                progress(done, len(prompts), time.perf_counter() - start)

        tasks = []
        for index, prompt in enumerate(prompts):
            if stop():
                break
            tasks.append(asyncio.create_task(one(index, prompt)))
            if math.isfinite(request_rate) and request_rate > 0:
                await asyncio.sleep(rng.expovariate(request_rate))
        pending = set(tasks)
        while pending and not stop() and (left := timeout_s - (time.perf_counter() - start)) > 0:
            _, pending = await asyncio.wait(pending, timeout=min(left, STOP_POLL_S))
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        duration = time.perf_counter() - start
    why = "stopped by the cluster watch" if stop() else f"not finished within the benchmark timeout of {timeout_s:g} s"
    unfinished = RequestRecord(success=False, error=why)
    return [r if r is not None else unfinished for r in records], duration, warnings


def run(url: str, test: InferenceTest, concurrency: int, *, timeout_s: float, progress: Progress | None = None,
        stop: Stop = lambda: False, streamed: Streamed | None = None) -> BenchResult:
    """Run ``test`` at ``concurrency`` against ``url`` (the router; a decode worker for a decode-alone test);
    gsm8k-shaped tests also score answers; ``streamed`` is told the output tokens as they arrive (the cluster
    watch's progress)."""
    prompts = prompts_for(test)
    url = url.rstrip("/")
    records, duration, warnings = asyncio.run(_run_all(
        url, prompts, concurrency, test.request_rate, test.seed, test.warmup_requests, timeout_s, progress, stop,
        FAKE_PREFILL if test.decode_alone else None, streamed))
    metrics, totals = aggregate(records, duration)
    metrics.update(steady_state.figures(records, test.steady_state_ratio))
    if test.kind == "gsm8k":
        metrics.update(score_answers(prompts, records, duration))
    workload = "gsm8k" if test.kind == "gsm8k" else test.dataset
    rate = "inf" if math.isinf(test.request_rate) else f"{test.request_rate:g}"
    fake = ", fake prefill (decode alone)" if test.decode_alone else ""
    command = (f"builtin client: POST {url}/generate (stream{fake}), {workload}, {len(prompts)} requests, "
               f"max concurrency {concurrency}, request rate {rate}/s, seed {test.seed}, warmup {test.warmup_requests}")
    return BenchResult(tool="builtin", metrics=metrics, num_requests=len(prompts), records=records, totals=totals,
                       errors=warnings + first_errors(records), command=command, tool_version=__version__)


def score_answers(prompts: list[Prompt], records: list[RequestRecord], duration_s: float) -> dict[str, float]:
    """few_shot_gsm8k's accuracy and invalid fractions (a failed request scores as invalid) and latency."""
    preds = [answer_value(r.text) if r.success else INVALID_ANSWER for r in records]
    n = max(len(prompts), 1)
    return {
        "accuracy": sum(p == q.answer for p, q in zip(preds, prompts)) / n,
        "invalid": sum(p == INVALID_ANSWER for p in preds) / n,
        "latency": duration_s,
    }
