"""Profiles (TTFT against ISL, ITL against decode batch, per TP) and what they predict of a layout at a concurrency
(the model is in docs/tune.md); the bisection that finds the highest concurrency meeting the SLA, predicted or
measured."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..config import AGGREGATED
from .layouts import Layout, profile_name
from .sla import Constraint, Workload, sla_met


DEFAULT_BATCHES = (1, 4, 16, 64)  # decode-alone batch sizes profiled per TP
PROFILE_ISL_FRACTIONS = (0.5, 1.0)  # prefill profiled at these fractions of the ISL (TTFT fitted as a line)


@dataclass
class Profile:
    """One TP size (with DP attention over ``dpa`` ranks, or none) measured alone: TTFT (ms) against ISL at concurrency
    1, ITL (ms) against decode batch."""

    tp: int
    ttft_ms: dict[int, float] = field(default_factory=dict)
    itl_ms: dict[int, float] = field(default_factory=dict)
    error: str | None = None
    cache_hit_rate: dict[str, float] = field(default_factory=dict)  # per measurement ("prefill ISL 1500", ...)
    dpa: int = 1

    @property
    def name(self) -> str:
        return profile_name(self.tp, self.dpa)

    def ttft_at(self, isl: int) -> float:
        """TTFT on the line through the two measured ISLs nearest ``isl`` (one point: proportional to ISL)."""
        return _interpolate(self.ttft_ms, isl, through_origin=True)

    def prefill_split(self, isl: int) -> tuple[float, float]:
        """``ttft_at(isl)`` as (fixed ms, service ms): the part that does not grow with the prompt (router, KV
        transfer, the first decode step: the line's intercept) and the prefill forward that occupies the instance.
        All of it the service where the profile cannot split it: one ISL measured, or a TTFT that did not grow with
        the ISL (noise: the split would leave no service, an instance of unbounded capacity)."""
        ttft = self.ttft_at(isl)
        xs = sorted(self.ttft_ms)
        lo, hi = _bracket(xs, isl) if len(xs) > 1 else (xs[0], xs[0])
        slope = (self.ttft_ms[hi] - self.ttft_ms[lo]) / (hi - lo) if hi > lo else 0.0
        if slope <= 0:
            return 0.0, ttft
        fixed = min(max(self.ttft_ms[lo] - slope * lo, 0.0), ttft)
        return fixed, ttft - fixed

    def itl_at(self, batch: float) -> float:
        """ITL interpolated linearly between the measured batches, extended along the last two beyond them."""
        return _interpolate(self.itl_ms, max(batch, 1.0), through_origin=False)

    @classmethod
    def from_dict(cls, d: dict) -> Profile:
        return cls(d["tp"], {int(k): v for k, v in d["ttft_ms"].items()}, {int(k): v for k, v in d["itl_ms"].items()},
                   d.get("error"), d.get("cache_hit_rate", {}), d.get("dpa", 1))


def _bracket(xs: list[int], x: float) -> tuple[int, int]:
    """The two measured points a line through is used at ``x``: around it, else the nearest two."""
    return (xs[0], xs[1]) if x <= xs[0] else (xs[-2], xs[-1]) if x >= xs[-1] else \
        next((a, b) for a, b in zip(xs, xs[1:]) if a <= x <= b)


def _interpolate(points: dict[int, float], x: float, *, through_origin: bool) -> float:
    xs = sorted(points)
    if len(xs) == 1:
        return points[xs[0]] * x / xs[0] if through_origin else points[xs[0]]
    lo, hi = _bracket(xs, x)
    y = points[lo] + (points[hi] - points[lo]) * (x - lo) / (hi - lo)
    return max(y, min(points.values()) if not through_origin else 0.0)


def _wait(service_ms: float, rho: float, instances: int, others: float) -> float:
    """A request's wait for its prefill instance: Kingman's G/D/1 rho / (1 - rho) x (Ca^2 / 2) services, the router
    dealing the requests round-robin over the instances (each sees every n-th of Poisson arrivals: Ca^2 = 1 / n; one
    instance is M/D/1), at most the ``others`` services a closed loop can hold ahead of it (its C - 1 other requests
    shared over the instances)."""
    rho = min(rho, 0.999)
    return service_ms * min(rho / (1.0 - rho) / (2.0 * instances), others)


def _disaggregated(layout: Layout, profiles: dict[str, Profile], work: Workload, c: int) -> tuple[float, float, float]:
    """(TTFT, ITL, decode batch) at the request rate the closed loop of ``c`` requests settles at: the rate X with
    X = c / (TTFT(X) + (OSL - 1) x ITL(X)), found by bisection below the prefill capacity."""
    fixed, service = profiles[layout.prefill.profile].prefill_split(work.isl)
    decode = profiles[layout.decode.profile]
    steps = work.osl - 1
    capacity = layout.prefill.instances / service  # requests per ms

    def at(x: float) -> tuple[float, float, float]:
        ttft = fixed + service + _wait(service, x / capacity, layout.prefill.instances,
                                            (c - 1) / layout.prefill.instances)
        itl, batch = decode.itl_at(1), 1.0
        for _ in range(30):  # Little's law on the decode: X x the time a request decodes, over its instances
            batch = x * steps * itl / layout.decode.instances
            itl = decode.itl_at(batch)
        return ttft, itl, batch

    lo, hi = 0.0, capacity
    for _ in range(50):
        x = (lo + hi) / 2
        ttft, itl, _ = at(x)
        lo, hi = (x, hi) if c / (ttft + steps * itl) > x else (lo, x)
    return at(lo)


def _aggregated(layout: Layout, profiles: dict[str, Profile], work: Workload, c: int) -> tuple[float, float, float]:
    """(TTFT, ITL, decode batch) of ``c`` requests over the aggregated instances, each holding k = c / instances in
    step (identical requests in a closed loop fall into step): k prefills one after another (SGLang runs a prefill
    forward alone, the decode batch waits), then the k decode together; so the latency is fixed + k x service +
    (OSL - 1) x ITL(k), a request's TTFT fixed + service x (k + 1) / 2, and its ITL the rest over OSL - 1 tokens."""
    fixed, service = profiles[layout.aggregated.profile].prefill_split(work.isl)
    k = c / layout.aggregated.instances
    steps = work.osl - 1
    latency = fixed + k * service + steps * profiles[layout.aggregated.profile].itl_at(k)
    ttft = fixed + service * (k + 1) / 2
    return ttft, (latency - ttft) / steps, k


def predict(layout: Layout, profiles: dict[str, Profile], work: Workload, concurrency: int) -> dict[str, float]:
    """The figures a layout should reach at ``concurrency`` in-flight requests, from its profiles (docs/tune.md)."""
    model = _aggregated if layout.mode == AGGREGATED else _disaggregated
    ttft, itl, batch = model(layout, profiles, work, concurrency)
    latency_ms = ttft + (work.osl - 1) * itl
    rate_s = concurrency / latency_ms * 1000.0
    out_tok_s = rate_s * work.osl
    return {"mean_ttft_ms": ttft, "mean_itl_ms": itl, "mean_tpot_ms": itl, "mean_e2e_latency_ms": latency_ms,
            "request_throughput": rate_s, "output_throughput": out_tok_s,
            "total_throughput": rate_s * (work.isl + work.osl),
            "total_throughput_per_gpu": rate_s * (work.isl + work.osl) / layout.gpus,
            "output_throughput_per_gpu": out_tok_s / layout.gpus,
            "user_output_throughput": work.osl / latency_ms * 1000.0, "interactivity": 1000.0 / itl,
            "decode_batch": batch}


def highest_passing(measure: Callable[[int], bool], *, start: int = 1, hi: int = 1024,
                    tolerance: float = 0.1) -> int | None:
    """The highest concurrency in [1, hi] that ``measure`` passes, assuming it passes below some value and fails
    above: doubles up from ``start`` while it passes (halves down while it fails), then bisects until the gap is
    within ``tolerance`` of the passing value. None: even 1 fails."""
    start = max(1, min(start, hi))
    if measure(start):
        good, bad = start, None
        while bad is None and good < hi:
            step = min(good * 2, hi)
            if measure(step):
                good = step
            else:
                bad = step
        if bad is None:
            return good
    else:
        bad, good = start, None
        while good is None and bad > 1:
            step = max(bad // 2, 1)
            if measure(step):
                good = step
            else:
                bad = step
        if good is None:
            return None
    while bad - good > max(1, int(good * tolerance)):
        mid = (good + bad) // 2
        if measure(mid):
            good = mid
        else:
            bad = mid
    return good


def predicted_best(layout: Layout, profiles: dict[str, Profile], work: Workload, sla: tuple[Constraint, ...],
                   max_batch: int) -> tuple[int | None, dict[str, float]]:
    """The highest concurrency the prediction says meets the SLA (at most ``max_batch`` per decoding instance: the
    profiles say nothing beyond) and the figures predicted there."""
    shape = layout.aggregated or layout.decode
    best = highest_passing(lambda c: sla_met(sla, predict(layout, profiles, work, c)),
                           hi=max_batch * shape.instances, tolerance=0.0)
    return best, (predict(layout, profiles, work, best) if best else {})
