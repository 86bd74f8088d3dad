"""The builtin benchmark client (asyncio on uvloop, ``http_stream``): streams /generate through the router like
bench_serving's ``--backend sglang`` and measures every request, failures included."""

from __future__ import annotations

import asyncio
import json
import math
import random
import re
import time
from dataclasses import replace
from typing import Callable, Sequence

import uvloop

from .. import __version__, interrupts, releases, sse
from ..config import InferenceTest
from . import http_stream, steady_state
from .result import TRUNCATED, BenchResult, RequestRecord, aggregate, first_errors
from .workloads import INVALID_ANSWER, Prompt, answer_value, prompts_for

Progress = Callable[[int, int, float], None]  # (completed or failed so far, total, elapsed seconds)
Streamed = Callable[[int], None]  # told the output tokens each stream delivered, as they arrive
Stop = Callable[[], bool]  # true once the benchmark must end now (the cluster watch found a cause)
STOP_POLL_S = 0.5
ERROR_BODY_CHARS = 300
WARMUP_MAX_NEW_TOKENS = 32  # bench_serving's warmup: min(output_len, 32)
WARMUP_PAUSE_S = 1.0  # and its asyncio.sleep(1.0) before the measured run


def _abort_message(finish_reason: object) -> str | None:
    if isinstance(finish_reason, dict) and finish_reason.get("type") == "abort":
        return f"aborted by the server: {finish_reason.get('message') or finish_reason}"
    return None


async def send_request(url: str, prompt: Prompt, extra: dict | None = None,
                       streamed: Streamed | None = None) -> RequestRecord:
    """One streamed /generate, measured as bench_serving's ``async_request_sglang_generate`` measures it (see
    ``_Stream``). A stream cut short (its connection closed or reset before ``[DONE]``) is a failed request whose
    error says so (``result.TRUNCATED``). ``extra``: more fields of the body (decode alone: the fake bootstrap host);
``streamed`` is told the output tokens as they arrive."""
    sampling = {"max_new_tokens": prompt.max_new_tokens, "temperature": 0.0, "ignore_eos": prompt.ignore_eos}
    if prompt.stop:
        sampling["stop"] = list(prompt.stop)
    body = {"text": prompt.text, "sampling_params": sampling, "stream": True, **(extra or {})}
    record = RequestRecord(success=False, start_s=time.perf_counter())
    stream = _Stream(record, streamed)
    try:
        await http_stream.post_stream(f"{url}/generate", body, stream.feed)
    except http_stream.HTTPStatusError as exc:
        text = exc.body.decode(errors="replace")[:ERROR_BODY_CHARS]
        record.error = f"HTTP {exc.status} from {url}/generate: {text.strip()}"
        return record
    except http_stream.StreamCut as exc:
        record.error = _truncated(url, stream.tokens, str(exc))
        return record
    except (OSError, asyncio.TimeoutError, json.JSONDecodeError, ValueError) as exc:
        record.error = f"{type(exc).__name__} talking to {url}/generate: {exc}".strip()
        return record
    if record.error:  # the stream carried an error event
        return record
    stream.finish(url)
    return record


def _truncated(url: str, tokens: int, cause: str) -> str:
    return f"{TRUNCATED} from {url}/generate after {tokens} output tokens: {cause}"


_COMPLETION_TOKENS = b'"completion_tokens":'
_TEXT = b'"text":'
_DIGITS = re.compile(rb"\s*(\d+)")


def _completion_tokens(event: bytes) -> int | None:
    """meta_info.completion_tokens read from the event's bytes (None: not there). A key inside a JSON string
    has escaped quotes, so the unescaped ``"completion_tokens":`` is meta_info's own."""
    at = event.rfind(_COMPLETION_TOKENS)
    if at < 0:
        return None
    digits = _DIGITS.match(event, at + len(_COMPLETION_TOKENS))
    return int(digits.group(1)) if digits else None


def _has_text(event: bytes) -> bool:
    """Whether the event's top-level ``text`` is a non-empty string (bench_serving's ``data["text"]``)."""
    at = event.find(_TEXT)
    return at >= 0 and event[at + len(_TEXT):at + len(_TEXT) + 4].lstrip()[:2] not in (b'""', b"")



class _Stream:
    """One request's stream, timed by bench_serving's rules: TTFT when the first event with a non-empty ``text``
    arrives; each later event with text and n new tokens (its ``completion_tokens`` grew by n) adds n inter-token
    latencies of (gap since the previous such event) / n; latency ends at the last event (``[DONE]`` included);
    token counts are the server's meta_info of the last event. Only the last event is parsed whole: the others
    are read for their token count (the cost of parsing every cumulative chunk grows with the output)."""

    def __init__(self, record: RequestRecord, streamed: Streamed | None = None) -> None:
        self.record, self.last_time, self.streamed = record, record.start_s, streamed
        self.tokens, self.last_event, self.done = 0, b"", False
        self.rest = b""  # the start of an event whose end has not arrived yet

    def feed(self, data: bytes, now: float) -> bool:
        """Body bytes that arrived at ``now``; False once the stream carried an error (set on the record)."""
        events, self.rest = sse.split_events(self.rest + data if self.rest else data)
        return self.take(events, now) if events else True

    def take(self, events: list[bytes], now: float) -> bool:
        """Read ``events`` that arrived at ``now``; False once the stream carried an error (set on the record)."""
        record = self.record
        for event in events:
            record.latency_s = now - record.start_s
            if event == sse.DONE:
                self.done = True
                continue
            tokens = _completion_tokens(event)
            if tokens is None:  # not a token event (an error, or a form this reader does not know): read it whole
                data = json.loads(event)
                if "error" in data:
                    record.error = f"error in the stream: {json.dumps(data['error'])[:ERROR_BODY_CHARS]}"
                    return False
                tokens = int((data.get("meta_info") or {}).get("completion_tokens", self.tokens))
            self.last_event = event
            if not _has_text(event):
                continue
            if record.ttft_s == 0.0:
                record.ttft_s = now - record.start_s
            elif tokens > self.tokens:
                new_tokens = tokens - self.tokens
                record.itl_s.extend([(now - self.last_time) / new_tokens] * new_tokens)
            else:
                continue
            if self.streamed is not None and tokens > self.tokens:
                self.streamed(tokens - self.tokens)
            self.last_time, self.tokens = now, tokens
        return True

    def finish(self, url: str) -> None:
        """The stream has ended: success, or the error that says why not, from its last event read whole."""
        record = self.record
        data = json.loads(self.last_event) if self.last_event else {}
        meta = data.get("meta_info") or {}
        record.text = data.get("text", "")
        abort = _abort_message(meta.get("finish_reason"))
        if abort:
            record.error = abort
        elif not meta:
            record.error = "the stream ended without any output"
        elif not self.done:
            record.error = _truncated(url, self.tokens, "the connection closed before the stream's [DONE] event")
        else:
            record.success = True
            record.prompt_tokens = int(meta.get("prompt_tokens", 0))
            record.output_tokens = int(meta.get("completion_tokens", 0))
            record.cached_tokens = int(meta.get("cached_tokens", 0) or 0)


async def _warm_up(url: str, prompt: Prompt, count: int, limit: asyncio.Semaphore, timeout_s: float,
                   extra: dict | None) -> list[str]:
    """bench_serving's warmup: ``count`` times the first prompt with at most WARMUP_MAX_NEW_TOKENS output tokens, at
    the run's concurrency, then WARMUP_PAUSE_S of quiet before the measured run; a failed warmup is a warning."""
    short = replace(prompt, max_new_tokens=min(prompt.max_new_tokens, WARMUP_MAX_NEW_TOKENS))

    async def one() -> RequestRecord:
        async with limit:
            return await send_request(url, short, extra)

    try:
        records = await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), timeout_s)
    except asyncio.TimeoutError:
        return [f"the warmup requests did not finish within the benchmark timeout of {timeout_s:g} s"]
    await asyncio.sleep(WARMUP_PAUSE_S)
    return [f"warmup request failed: {r.error}" for r in records if not r.success]


async def _run_all(url: str, prompts: Sequence[Prompt], concurrency: int, request_rate: float, seed: int,
                   warmup: int, timeout_s: float, progress: Progress | None, stop: Stop, extra: dict | None,
                   streamed: Streamed | None) -> tuple[list[RequestRecord], float, list[str]]:
    limit = asyncio.Semaphore(concurrency)
    warnings = await _warm_up(url, prompts[0], warmup, limit, timeout_s, extra) if prompts and warmup else []
    records: list[RequestRecord | None] = [None] * len(prompts)
    rng = random.Random(seed)
    done = 0
    start = time.perf_counter()

    async def one(index: int, prompt: Prompt) -> None:
        nonlocal done
        async with limit:
            records[index] = await send_request(url, prompt, extra, streamed)
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
    records, duration, warnings = interrupts.loop_cancelled_on_sigterm(
        uvloop.run,  # uvloop: a third less CPU per chunk than asyncio's own loop
        _run_all(url, prompts, concurrency, test.request_rate, test.seed, test.warmup_requests, timeout_s, progress,
                 stop, releases.FAKE_PREFILL if test.decode_alone else None, streamed))
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


def score_answers(prompts: Sequence[Prompt], records: list[RequestRecord], duration_s: float) -> dict[str, float]:
    """few_shot_gsm8k's accuracy and invalid fractions (a failed request scores as invalid) and latency."""
    preds = [answer_value(r.text) if r.success else INVALID_ANSWER for r in records]
    n = max(len(prompts), 1)
    return {
        "accuracy": sum(p == q.answer for p, q in zip(preds, prompts)) / n,
        "invalid": sum(p == INVALID_ANSWER for p in preds) / n,
        "latency": duration_s,
    }
