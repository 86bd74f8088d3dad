"""BenchResult: what one benchmark run measured, with bench_serving's aggregate definitions."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterable

import numpy as np

from .. import metrics as metrics_mod
from ..stats import Summary, summarize


@dataclass
class RequestRecord:
    """One request as the client saw it; token counts are the server's (meta_info / usage)."""

    success: bool
    prompt_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    ttft_s: float = 0.0
    latency_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    error: str = ""
    text: str = ""
    start_s: float | None = None  # when it was sent, in the client's clock (None: the tool does not say)

    @property
    def tpot_s(self) -> float | None:
        """bench_serving's per-request TPOT: (latency - ttft) / (output_len - 1), only when output_len > 1."""
        if not self.success or self.output_tokens <= 1:
            return None
        return (self.latency_s - self.ttft_s) / (self.output_tokens - 1)


@dataclass
class BenchResult:
    """A benchmark run normalised to canonical metric names (metrics.METRICS)."""

    tool: str  # "builtin" or the SGLang module that ran, e.g. "sglang.benchmark.serving", "sglang.test.few_shot_gsm8k"
    metrics: dict[str, float]
    num_requests: int  # requests sent (warmup excluded)
    records: list[RequestRecord] = field(default_factory=list)
    totals: dict[str, float] = field(default_factory=dict)  # total_input_tokens, total_output_tokens, concurrency
    errors: list[str] = field(default_factory=list)  # one line per failed request (or tool failure)
    artifacts: dict[str, str] = field(default_factory=dict)  # name -> local path
    command: str = ""  # what ran (argv with shlex.join), for the report
    tool_version: str | None = None  # the version of the package that measured it (sglang's, or this suite's)
    router: str | None = None  # "<package> <version>" of the router it went through
    workers: dict[str, dict] = field(default_factory=dict)  # worker URL -> role, requests (its own count), router_requests
    runs: list[dict[str, float]] = field(default_factory=list)  # each repeat's metrics (empty: one run)
    time_dilation: float = 1.0  # the simulator's clock ran this many times slower; figures are rescaled (undilate)
    deployment: dict = field(default_factory=dict)  # what it ran on: mode, GPUs per role (bench/figures.py)

    @cached_property
    def spread(self) -> dict[str, Summary]:
        """Per metric measured in every repeat: mean, sd, CV and 95% CI over the repeats (empty for one run);
        computed once (gating, results.json, JUnit and the report all read it)."""
        if len(self.runs) < 2:
            return {}
        common = set.intersection(*(set(run) for run in self.runs))
        return {name: summarize([run[name] for run in self.runs]) for name in sorted(common)
                if all(run[name] == run[name] for run in self.runs)}

    @property
    def completed(self) -> int:
        return int(self.metrics.get("completed", 0))

    @property
    def failed(self) -> int:
        return max(self.num_requests - self.completed, 0)

    def distribution_ms(self, latency: str) -> list[float]:
        """Per-request values of "ttft", "tpot", "e2e_latency" or (per token) "itl", in ms."""
        ok = [r for r in self.records if r.success]
        if latency == "ttft":
            values = [r.ttft_s for r in ok]
        elif latency == "tpot":
            values = [t for r in ok if (t := r.tpot_s) is not None]
        elif latency == "e2e_latency":
            values = [r.latency_s for r in ok]
        elif latency == "itl":
            values = [x for r in ok for x in r.itl_s]
        else:
            raise ValueError(f"unknown latency {latency!r}")
        return [v * 1000.0 for v in values]


def latency_stats(name: str, values_s: Iterable[float]) -> dict[str, float]:
    """{mean,median,std,p90,p95,p99}_<name>_ms as numpy computes them in bench_serving (0 when empty)."""
    data = np.fromiter(values_s, dtype=float)  # one conversion for the six figures
    if not data.size:
        data = np.zeros(1)
    return {
        f"mean_{name}_ms": float(np.mean(data)) * 1000,
        f"median_{name}_ms": float(np.median(data)) * 1000,
        f"std_{name}_ms": float(np.std(data)) * 1000,
        f"p90_{name}_ms": float(np.percentile(data, 90)) * 1000,
        f"p95_{name}_ms": float(np.percentile(data, 95)) * 1000,
        f"p99_{name}_ms": float(np.percentile(data, 99)) * 1000,
    }


def aggregate(records: list[RequestRecord], duration_s: float) -> tuple[dict[str, float], dict[str, float]]:
    """(metrics, totals) over the records, exactly as bench_serving's calculate_metrics defines them:
    failed requests add nothing but count against ``completed``; TPOT only for outputs longer than 1."""
    ok = [r for r in records if r.success]
    total_input = sum(r.prompt_tokens for r in ok)
    total_output = sum(r.output_tokens for r in ok)
    dur = duration_s if duration_s > 0 else float("nan")
    out: dict[str, float] = {
        "completed": float(len(ok)),
        "failed": float(len(records) - len(ok)),
        "duration": duration_s,
        "request_throughput": len(ok) / dur,
        "input_throughput": total_input / dur,
        "output_throughput": total_output / dur,
        "total_throughput": (total_input + total_output) / dur,
    }
    out.update(latency_stats("ttft", (r.ttft_s for r in ok)))
    out.update(latency_stats("tpot", (t for r in ok if (t := r.tpot_s) is not None)))
    out.update(latency_stats("itl", (x for r in ok for x in r.itl_s)))
    out.update(latency_stats("e2e_latency", (r.latency_s for r in ok)))
    if total_input:
        out["cache_hit_rate"] = sum(r.cached_tokens for r in ok) / total_input
    totals = {
        "total_input_tokens": float(total_input),
        "total_output_tokens": float(total_output),
        "concurrency": sum(r.latency_s for r in ok) / dur,
    }
    return out, totals


TRUNCATED = "truncated stream"  # how a response cut short mid-stream starts its error


def truncated_count(records: list[RequestRecord]) -> int:
    """The failed requests whose stream was cut short (chunked length error, connection reset or closed)."""
    return sum(1 for r in records if not r.success and (r.error or "").startswith(TRUNCATED))


# what aiohttp (bench_serving's client) raises for a response cut short mid-stream
_CUT_SHORT = ("ClientPayloadError", "TransferEncodingError", "ServerDisconnectedError", "ConnectionResetError",
              "Response payload is not completed")


def tool_error(text: str) -> str:
    """A client tool's per-request error (often a whole traceback) as one line: its last, the exception; a
    response cut short mid-stream starts with ``TRUNCATED``."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else text.strip()
    return f"{TRUNCATED}: {last}" if any(mark in text for mark in _CUT_SHORT) else last


def first_errors(records: list[RequestRecord], limit: int = 20) -> list[str]:
    """The distinct errors of failed requests, most frequent first, with their counts."""
    counts: dict[str, int] = {}
    for r in records:
        if not r.success:
            counts[r.error or "unknown error"] = counts.get(r.error or "unknown error", 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:limit]
    return [f"{n} x {err}" if n > 1 else err for err, n in ranked]


def undilate(result: BenchResult, dilation: float) -> BenchResult:
    """``result`` measured on a simulator whose clock ran ``dilation`` times slower, in modelled time: every time
    figure (unit ms or s, and each request's times) divided by it, every rate (unit .../s) multiplied by it;
    counts and ratios unchanged. ``result.time_dilation`` says it was done (1: nothing to do)."""
    if dilation == 1:
        return result

    def scaled(metrics: dict[str, float]) -> dict[str, float]:
        out = {}
        for name, value in metrics.items():
            unit = metrics_mod.METRICS[name].unit if name in metrics_mod.METRICS else ""
            out[name] = value / dilation if unit in ("ms", "s") else value * dilation if unit.endswith("/s") else value
        return out

    result.metrics = scaled(result.metrics)
    result.runs = [scaled(run) for run in result.runs]
    for r in result.records:
        r.ttft_s, r.latency_s = r.ttft_s / dilation, r.latency_s / dilation
        r.itl_s = [x / dilation for x in r.itl_s]
        r.start_s = None if r.start_s is None else r.start_s / dilation
    result.time_dilation = dilation
    result.__dict__.pop("spread", None)  # computed from the runs
    return result


def combine(results: list[BenchResult]) -> BenchResult:
    """Repeats of one benchmark on one deployment as one result: each metric the mean over the repeats (request
    counts summed), every request record and error kept, each repeat's metrics in ``runs``."""
    if len(results) == 1:
        return results[0]
    names = set.intersection(*(set(r.metrics) for r in results))
    metrics = {}
    for name in names:
        values = [r.metrics[name] for r in results]
        counted = metrics_mod.METRICS.get(name) is not None and metrics_mod.METRICS[name].unit == "req"
        metrics[name] = sum(values) if counted else sum(values) / len(values)
    last = results[-1]
    totals = {k: sum(r.totals.get(k, 0.0) for r in results) for k in last.totals}
    if "concurrency" in last.totals:
        totals["concurrency"] = sum(r.totals.get("concurrency", 0.0) for r in results) / len(results)
    workers = {url: {**w, **{k: sum(r.workers.get(url, {}).get(k, 0.0) for r in results)
                             for k in ("requests", "router_requests") if k in w}} for url, w in last.workers.items()}
    errors = list(dict.fromkeys(e for r in results for e in r.errors))[:20]
    artifacts = {f"{name} (repeat {i + 1})": path for i, r in enumerate(results) for name, path in r.artifacts.items()}
    return BenchResult(tool=last.tool, metrics=metrics, num_requests=sum(r.num_requests for r in results),
                       records=[rec for r in results for rec in r.records], totals=totals, errors=errors,
                       artifacts=artifacts, command=last.command, tool_version=last.tool_version, router=last.router,
                       workers=workers, runs=[dict(r.metrics) for r in results], deployment=last.deployment,
                       time_dilation=last.time_dilation)
