"""The steady-state window of a benchmark, as SGLang's ``benchmark.steady_state`` defines it: the longest continuous
interval in which the requests in flight stay at or above ``ratio`` x their peak; the figures over that window
(output tokens weighted by the share of each request's token timestamps inside it, prompt tokens and requests by
arrival inside it, TTFT/TPOT of the requests that started inside it)."""

from __future__ import annotations

import math

from .result import RequestRecord

STEADY = "steady_"  # the prefix of every figure over the window


def window(records: list[RequestRecord], ratio: float) -> tuple[float, float, int, int] | None:
    """(start, end, in-flight threshold, peak) in the records' clock, or None without timed successful requests."""
    timed = [r for r in records if r.success and r.start_s is not None and r.latency_s > 0]
    if not timed:
        return None
    events: dict[float, int] = {}
    for r in timed:
        events[r.start_s] = events.get(r.start_s, 0) + 1
        events[r.start_s + r.latency_s] = events.get(r.start_s + r.latency_s, 0) - 1
    times = sorted(events)
    intervals, level = [], 0
    for t, following in zip(times, times[1:]):
        level += events[t]
        intervals.append((t, following, level))
    peak = max((n for _, _, n in intervals), default=0)
    threshold = max(1, math.ceil(peak * ratio))
    spans, start, end = [], None, None
    for a, b, n in intervals:
        if n >= threshold:
            start, end = (a if start is None else start), b
        elif start is not None:
            spans.append((start, end))
            start = end = None
    if start is not None:
        spans.append((start, end))
    if not spans:
        return None
    best = max(spans, key=lambda span: span[1] - span[0])  # the first of equal spans, as SGLang's
    return best[0], best[1], threshold, peak


def figures(records: list[RequestRecord], ratio: float) -> dict[str, float]:
    """``steady_*`` figures and the window's facts; empty when no window exists (e.g. no per-request start times,
    as in SGLang bench_serving's output file)."""
    found = window(records, ratio)
    if found is None:
        return {}
    start, end, threshold, peak = found
    duration = end - start
    if duration <= 0:
        return {}
    t0 = min(r.start_s for r in records if r.start_s is not None)
    output_tokens = 0.0
    for r in records:
        if not r.success or r.start_s is None or r.latency_s <= 0:
            continue
        stamps = [r.start_s + r.ttft_s]
        for gap in r.itl_s:
            stamps.append(stamps[-1] + gap)
        output_tokens += r.output_tokens * sum(start <= s <= end for s in stamps) / len(stamps)
    arrived = [r for r in records if r.success and r.start_s is not None and start <= r.start_s < end]
    out = {"steady_output_throughput": output_tokens / duration,
           "steady_input_throughput": sum(r.prompt_tokens for r in arrived) / duration,
           "steady_request_throughput": len(arrived) / duration,
           "steady_window_start_s": start - t0, "steady_window_s": duration, "steady_requests": float(len(arrived)),
           "steady_concurrency_threshold": float(threshold), "steady_peak_concurrency": float(peak)}
    if arrived:
        out["steady_mean_ttft_ms"] = sum(r.ttft_s for r in arrived) / len(arrived) * 1000
        tpots = [t for r in arrived if (t := r.tpot_s) is not None]
        if tpots:
            out["steady_mean_tpot_ms"] = sum(tpots) / len(tpots) * 1000
    return out
