"""Per-GPU, per-user and goodput figures of a benchmark, from its request records and the deployment's GPUs.

Pure functions over plain values (a ``BenchResult``, the GPUs per role, an ``SLO``), usable without pytest or a
live cluster; the formulas are in docs/reports.md:

    output_throughput_per_decode_gpu  = output_throughput / decode GPUs      (aggregated: all GPUs)
    input_throughput_per_prefill_gpu  = input_throughput / prefill GPUs      (aggregated: all GPUs)
    total_throughput_per_gpu          = total_throughput / all GPUs
    interactivity                     = 1000 / mean_tpot_ms                  (InferenceX's tok/s/user axis)
    user_output_throughput            = mean over completed requests of output tokens / end-to-end latency
                                        (genai-perf's output token throughput per user)
    slo_attainment                    = requests that met the SLO / requests sent
    goodput                           = request_throughput x met / completed
    goodput_output_throughput         = output_throughput x (output tokens of the requests that met it) / all
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable

from ..config import AGGREGATED, InferenceTest
from ..plan import WORKER_ROLES, Deployment
from .result import BenchResult, RequestRecord


@dataclass(frozen=True)
class GPUs:
    """GPUs per worker role of a deployment (aggregated: all in ``aggregated``)."""

    prefill: int = 0
    decode: int = 0
    aggregated: int = 0

    @property
    def total(self) -> int:
        return self.prefill + self.decode + self.aggregated

    @property
    def mode(self) -> str:
        return AGGREGATED if self.aggregated else "disaggregated"

    def as_dict(self) -> dict[str, int]:
        return {"prefill": self.prefill, "decode": self.decode, "aggregated": self.aggregated, "total": self.total}


def gpus_of(dep: Deployment) -> GPUs:
    """The GPUs the plan gives each worker role (every rank of every instance)."""
    return GPUs(**{role: sum(len(p.gpus) for p in dep.role(role)) for role in WORKER_ROLES})


@dataclass(frozen=True)
class SLO:
    """Per-request latency limits (ms); None: not limited."""

    ttft_ms: float | None = None
    tpot_ms: float | None = None
    itl_ms: float | None = None

    @property
    def limited(self) -> bool:
        return any(v is not None for v in (self.ttft_ms, self.tpot_ms, self.itl_ms))

    def met(self, r: RequestRecord) -> bool:
        """A completed request within every limit: its TTFT, its TPOT, its mean inter-token latency (its TPOT where the
        tool recorded no inter-token gaps)."""
        if not r.success:
            return False
        tpot = r.tpot_s
        itl = sum(r.itl_s) / len(r.itl_s) if r.itl_s else tpot
        return all(limit is None or value is None or value * 1000.0 <= limit
                   for limit, value in ((self.ttft_ms, r.ttft_s), (self.tpot_ms, tpot), (self.itl_ms, itl)))


_LATENCY_OF = {"ttft": "ttft_ms", "tpot": "tpot_ms", "itl": "itl_ms"}


def slo_of(test: InferenceTest) -> SLO:
    """The test's per-request SLO: its ``slo`` keys, else the loosest upper limit of each latency (TTFT, TPOT, ITL,
    any statistic) among its expected_results."""
    found: dict[str, float] = {}
    for th in test.thresholds:
        parts = th.canonical.split("_")
        if th.direction == "max" and len(parts) == 3 and parts[1] in _LATENCY_OF and parts[2] == "ms":
            name = _LATENCY_OF[parts[1]]
            found[name] = max(found.get(name, th.value), th.value)
    explicit = {name: getattr(test.slo, name) for name in _LATENCY_OF.values() if getattr(test.slo, name) is not None}
    return SLO(**(explicit or found))


def per_gpu(metrics: dict[str, float], gpus: GPUs) -> dict[str, float]:
    """Throughput per GPU of the role that does the work (aggregated: every GPU does both)."""
    if not gpus.total:
        return {}
    decode = gpus.decode or gpus.aggregated
    prefill = gpus.prefill or gpus.aggregated
    out = {}
    for name, value, n in (("output_throughput_per_decode_gpu", metrics.get("output_throughput"), decode),
                           ("input_throughput_per_prefill_gpu", metrics.get("input_throughput"), prefill),
                           ("total_throughput_per_gpu", metrics.get("total_throughput"), gpus.total)):
        if value is not None and n:
            out[name] = value / n
    return out


def per_user(metrics: dict[str, float], records: Iterable[RequestRecord]) -> dict[str, float]:
    """Interactivity (1000 / mean TPOT) and the mean of each completed request's output tokens / its latency."""
    out = {}
    if metrics.get("mean_tpot_ms"):
        out["interactivity"] = 1000.0 / metrics["mean_tpot_ms"]
    rates = [r.output_tokens / r.latency_s for r in records if r.success and r.latency_s > 0]
    if rates:
        out["user_output_throughput"] = sum(rates) / len(rates)
    return out


def goodput(metrics: dict[str, float], records: list[RequestRecord], slo: SLO) -> dict[str, float]:
    """The requests (and their output tokens) per second that met the SLO, and the fraction of requests sent that
    did; nothing without an SLO or without per-request records."""
    if not slo.limited or not records:
        return {}
    good = [r for r in records if slo.met(r)]
    completed = sum(r.success for r in records)
    output = sum(r.output_tokens for r in records if r.success)
    out = {"slo_attainment": len(good) / len(records)}
    if completed and "request_throughput" in metrics:
        out["goodput"] = metrics["request_throughput"] * len(good) / completed
    if output and "output_throughput" in metrics:
        out["goodput_output_throughput"] = metrics["output_throughput"] * sum(r.output_tokens for r in good) / output
    return out


def figures(result: BenchResult, gpus: GPUs | None, slo: SLO) -> dict[str, float]:
    """Every figure of a result: per GPU (when the GPUs are known), per user, goodput."""
    return {**(per_gpu(result.metrics, gpus) if gpus else {}), **per_user(result.metrics, result.records),
            **goodput(result.metrics, result.records, slo)}


def with_figures(result: BenchResult, gpus: GPUs | None, slo: SLO) -> BenchResult:
    """The result with its figures among its metrics (so they are gated, recorded and shown like the others) and the
    deployment's mode and GPUs per role; each repeat's run gets its own figures of its metrics."""
    runs = [{**run, **per_gpu(run, gpus)} for run in result.runs] if gpus else result.runs
    return replace(result, metrics={**result.metrics, **figures(result, gpus, slo)}, runs=runs,
                   deployment={"mode": gpus.mode, "gpus": gpus.as_dict()} if gpus else result.deployment)
