"""The simulated worker's Prometheus metrics: SGLang 0.5.23's names, types, labels and buckets, produced with
``prometheus_client`` as SGLang does (``sglang/srt/observability/metrics_collector.py``).

Scheduler metrics carry ``model_name, engine_type, tp_rank, pp_rank, moe_ep_rank`` (one simulated process is the
first attention-TP rank of its instance, the one that exports); tokenizer metrics ``model_name, engine_type``.
As in SGLang the KV transfer latency, size and speed histograms are observed on the prefill side only; the sim
observes ``kv_transfer_bootstrap_ms`` on prefill (its wait for the decode's KV destination) and
``kv_transfer_alloc_ms`` on decode (its wait for KV room), where it can tell them apart.

Simulator-only metrics are named ``sim_...`` (SGLang has no such names): per ``forward_mode`` (prefill,
decode) the counters of ``scheduler.BatchStats`` (``sim_forward_steps_total``, ``sim_forward_batch_reqs_total``,
``sim_forward_batch_reqs_squared_total``, ``sim_forward_batch_context_tokens_total``,
``sim_forward_modelled_seconds_total``, ``sim_forward_batch_reqs_seconds_total``) and the gauges
``sim_running_reqs_window_mean`` / ``sim_running_reqs_window_max`` over the last ``scheduler.WINDOW_S`` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from pytest_sglang_pd.prom import Sample
from pytest_sglang_pd.sim.perf_model import PerfModel
from pytest_sglang_pd.sim.scheduler import BatchStats

# SGLang's buckets
TTFT_BUCKETS = (0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0, 20.0, 40.0, 60.0, 80.0, 120.0, 160.0)
ITL_BUCKETS = (0.002, 0.004, 0.006, 0.008, 0.010, 0.015, 0.020, 0.025, 0.030, 0.035, 0.040, 0.060, 0.080,
               0.100, 0.200, 0.400, 0.600, 0.800, 1.0, 2.0, 4.0, 6.0, 8.0)
LATENCY_MS_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
SPEED_GB_S_BUCKETS = (0.1, 0.5, 1, 5, 10, 25, 50, 100, 200, 400)
TOTAL_MB_BUCKETS = (1, 5, 10, 50, 100, 500, 1000, 5000, 10000)
PHASE_MS_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)
ENGINE_TYPE = {"prefill": "prefill", "decode": "decode", "null": "unified"}
# gauges of the PD queues each role has
QUEUES = {"prefill": ("num_prefill_bootstrap_queue_reqs", "num_prefill_inflight_queue_reqs"),
          "decode": ("num_decode_prealloc_queue_reqs", "num_decode_transfer_queue_reqs")}
MB = 1024 * 1024


BATCH_COUNTERS = (  # BatchStats attribute -> sim_ counter name, help
    ("steps", "sim_forward_steps", "Forward steps the simulated scheduler ran."),
    ("reqs", "sim_forward_batch_reqs", "Sum over steps of the requests in the step's batch."),
    ("reqs_squared", "sim_forward_batch_reqs_squared", "Sum over steps of the batch size squared."),
    ("reqs_context", "sim_forward_batch_context_tokens", "Sum over steps of batch size x KV tokens of the batch "
     "(prefill: new tokens)."),
    ("seconds", "sim_forward_modelled_seconds", "Modelled (hardware) seconds of the steps."),
    ("reqs_seconds", "sim_forward_batch_reqs_seconds", "Sum over steps of batch size x modelled seconds."),
)


def batch_counters(samples: Iterable[Sample], mode: str = "decode") -> dict[str, float]:
    """The ``sim_forward_*`` counters of one forward mode in a worker's parsed /metrics, by ``BatchStats`` attribute."""
    attribute_of = {f"{name}_total": attribute for attribute, name, _ in BATCH_COUNTERS}
    out = dict.fromkeys(attribute_of.values(), 0.0)
    for s in samples:
        if s.name in attribute_of and s.labels.get("forward_mode") == mode:
            out[attribute_of[s.name]] += s.value
    return out


@dataclass(frozen=True)
class RanBatch:
    """What one instance's steps ran between two reads of its counters (``batch_counters``)."""

    tokens: float  # requests summed over the steps (decode: the tokens the steps emitted)
    steps: float
    mean_batch: float  # token-weighted: the batch an average token was computed in
    mean_context: float  # the KV tokens of that batch, token-weighted

    @classmethod
    def between(cls, before: Mapping[str, float], after: Mapping[str, float]) -> RanBatch:
        d = {name: after[name] - before[name] for name in after}
        tokens = d["reqs"]
        if not tokens:
            return cls(0.0, d["steps"], 0.0, 0.0)
        return cls(tokens, d["steps"], d["reqs_squared"] / tokens, d["reqs_context"] / tokens)


def modelled_tpot_s(model: PerfModel, batches: Sequence[RanBatch]) -> float:
    """The model's decode step at each instance's measured batch and context, weighted by the tokens it emitted:
    what the mean TPOT of those tokens should be (the step time is affine in batch and context for dense models)."""
    tokens = sum(b.tokens for b in batches)
    return sum(b.tokens * model.decode_step_seconds(b.mean_batch, b.mean_context) for b in batches) / tokens  # type: ignore[arg-type]


class BatchCollector(Collector):
    """The ``sim_`` batch metrics, read from the scheduler's ``BatchStats`` at scrape time."""

    def __init__(self, labels: Mapping[str, str], source: Callable[[], Mapping[str, BatchStats]]) -> None:
        self.labels, self.source = dict(labels), source

    def collect(self) -> Iterator[Metric]:
        names = [*self.labels, "forward_mode"]
        stats, now = self.source(), time.monotonic()
        for attribute, name, doc in BATCH_COUNTERS:
            family = CounterMetricFamily(name, doc, labels=names)
            for mode, batch in stats.items():
                family.add_metric([*self.labels.values(), mode], getattr(batch, attribute))
            yield family
        mean = GaugeMetricFamily("sim_running_reqs_window_mean", "Time-weighted mean batch of the last "
                                 "window's steps.", labels=names)
        peak = GaugeMetricFamily("sim_running_reqs_window_max", "Largest batch of the last window's steps.",
                                 labels=names)
        for mode, batch in stats.items():
            window_mean, window_max = batch.window_mean_max(now)
            mean.add_metric([*self.labels.values(), mode], window_mean)
            peak.add_metric([*self.labels.values(), mode], window_max)
        yield mean
        yield peak


class WorkerMetrics:
    """One worker's collectors in a registry of its own; ``render`` is its /metrics text."""

    def __init__(self, role: str, model_name: str, engine: str) -> None:
        self.role, self.engine = role, engine
        self.registry = CollectorRegistry()
        self.generation_tokens = 0  # also read for the gen_throughput gauge
        tokenizer = {"model_name": model_name, "engine_type": ENGINE_TYPE.get(role, role)}
        self.labels = {**tokenizer, "tp_rank": "0", "pp_rank": "0", "moe_ep_rank": "0"}
        r, sched, tok = self.registry, list(self.labels), list(tokenizer)

        self._prompt = Counter("sglang:prompt_tokens", "Number of prefill tokens processed.", tok, registry=r).labels(**tokenizer)
        self._generated = Counter("sglang:generation_tokens", "Number of generation tokens processed.", tok,
                                  registry=r).labels(**tokenizer)
        self._cached = Counter("sglang:cached_tokens", "Number of cached prompt tokens by source (device/host/storage).",
                               [*tok, "cache_source"], registry=r).labels(**tokenizer, cache_source="device")
        self._requests = Counter("sglang:num_requests", "Number of requests processed.", tok, registry=r).labels(**tokenizer)
        self.ttft = Histogram("sglang:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                              tok, buckets=TTFT_BUCKETS, registry=r).labels(**tokenizer)
        self.itl = Histogram("sglang:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                             tok, buckets=ITL_BUCKETS, registry=r).labels(**tokenizer)

        def histogram(name: str, doc: str, buckets: tuple) -> Histogram:
            return Histogram(f"sglang:{name}", doc, sched, buckets=buckets, registry=r)

        self._latency = histogram("kv_transfer_latency_ms", "Histogram of KV cache transfer latency in ms.", LATENCY_MS_BUCKETS)
        self._speed = histogram("kv_transfer_speed_gb_s", "Histogram of KV cache transfer speed in GB/s.", SPEED_GB_S_BUCKETS)
        self._total = histogram("kv_transfer_total_mb", "Histogram of KV cache transfer size in MB.", TOTAL_MB_BUCKETS)
        self._bootstrap = histogram("kv_transfer_bootstrap_ms", "Histogram of KV transfer bootstrap time in ms.", PHASE_MS_BUCKETS)
        self._alloc = histogram("kv_transfer_alloc_ms", "Histogram of KV transfer allocation waiting time in ms.",
                                PHASE_MS_BUCKETS)
        self._transfer_failed = Counter("sglang:num_transfer_failed_reqs", "The number of transfer failed requests.",
                                        sched, registry=r).labels(**self.labels)
        self._bootstrap_failed = Counter("sglang:num_bootstrap_failed_reqs", "The number of bootstrap failed requests.",
                                         sched, registry=r).labels(**self.labels)
        self._gauges = {name: Gauge(f"sglang:{name}", name.replace("_", " "), sched, registry=r)
                        for name in (*QUEUES.get(role, ()), "num_running_reqs", "num_queue_reqs", "cache_hit_rate",
                                     "gen_throughput", "token_usage")}

    def watch_batches(self, source: Callable[[], Mapping[str, BatchStats]]) -> None:
        """Export the ``sim_`` batch metrics of forward mode -> ``BatchStats`` that ``source`` returns."""
        self.registry.register(BatchCollector(self.labels, source))

    def request(self, prompt_tokens: int) -> None:
        self._requests.inc()
        self._prompt.inc(prompt_tokens)

    def cached(self, tokens: int) -> None:
        self._cached.inc(tokens)

    def generated(self, tokens: int) -> None:
        self.generation_tokens += tokens
        self._generated.inc(tokens)

    def transfer(self, nbytes: int, seconds: float) -> None:
        """A KV write of the prefill side (decode's receipt is no observation, as in SGLang)."""
        if self.role != "prefill":
            return
        self._latency.labels(**self.labels).observe(seconds * 1000)
        self._total.labels(**self.labels).observe(nbytes / MB)
        if seconds > 0:
            self._speed.labels(**self.labels).observe(nbytes / MB / 1024 / seconds)

    def bootstrap_wait(self, seconds: float) -> None:
        self._bootstrap.labels(**self.labels).observe(seconds * 1000)

    def alloc_wait(self, seconds: float) -> None:
        self._alloc.labels(**self.labels).observe(seconds * 1000)

    def transfer_failed(self) -> None:
        self._transfer_failed.inc()

    def bootstrap_failed(self) -> None:
        self._bootstrap_failed.inc()

    def render(self, gauges: dict[str, float]) -> str:
        for name, value in gauges.items():
            if name in self._gauges:
                self._gauges[name].labels(**self.labels).set(value)
        return generate_latest(self.registry).decode()
