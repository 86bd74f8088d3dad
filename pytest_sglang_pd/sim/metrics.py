"""The simulated worker's Prometheus metrics: SGLang 0.5.23's names, types, labels and buckets, produced with
``prometheus_client`` as SGLang does (``sglang/srt/observability/metrics_collector.py``).

Scheduler metrics carry ``model_name, engine_type, tp_rank, pp_rank, moe_ep_rank`` (one simulated process is the
first attention-TP rank of its instance, the one that exports) and, with data parallelism, ``dp_rank``: each DP
rank's scheduler exports its own series (``tp_rank`` = its first TP rank; 0 for each replica of ``--dp-size``);
the worker-wide ones (PD queues, KV transfers) are rank 0's. Tokenizer metrics carry ``model_name, engine_type``. With DP attention every lockstep step
is observed per rank: ``dp_attention_tokens_total{kind}``, ``dp_attention_pairs_total{kind}``,
``dp_attention_steps_total{rank_state}``, ``dp_attention_sync_wait_seconds``; and once, on rank 0,
``dp_attention_token_imbalance_ratio``.
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
IMBALANCE_BUCKETS = (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0)
SYNC_WAIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
SCHEDULER_GAUGES = ("num_running_reqs", "num_queue_reqs", "cache_hit_rate", "gen_throughput", "token_usage")
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
    """The ``sim_`` batch metrics, read from each DP rank's ``BatchStats`` at scrape time (one rank without DP)."""

    def __init__(self, rank_labels: Sequence[Mapping[str, str]],
                 source: Callable[[], Sequence[Mapping[str, BatchStats]]]) -> None:
        self.rank_labels, self.source = [dict(labels) for labels in rank_labels], source

    def collect(self) -> Iterator[Metric]:
        names = [*self.rank_labels[0], "forward_mode"]
        ranks, now = list(zip(self.rank_labels, self.source())), time.monotonic()
        for attribute, name, doc in BATCH_COUNTERS:
            family = CounterMetricFamily(name, doc, labels=names)
            for labels, stats in ranks:
                for mode, batch in stats.items():
                    family.add_metric([*labels.values(), mode], getattr(batch, attribute))
            yield family
        mean = GaugeMetricFamily("sim_running_reqs_window_mean", "Time-weighted mean batch of the last "
                                 "window's steps.", labels=names)
        peak = GaugeMetricFamily("sim_running_reqs_window_max", "Largest batch of the last window's steps.",
                                 labels=names)
        for labels, stats in ranks:
            for mode, batch in stats.items():
                window_mean, window_max = batch.window_mean_max(now)
                mean.add_metric([*labels.values(), mode], window_mean)
                peak.add_metric([*labels.values(), mode], window_max)
        yield mean
        yield peak


class WorkerMetrics:
    """One worker's collectors in a registry of its own; ``render`` is its /metrics text."""

    def __init__(self, role: str, model_name: str, engine: str, *, dp_ranks: int = 1, tp_per_rank: int = 1) -> None:
        self.role, self.engine = role, engine
        self.registry = CollectorRegistry()
        self.generation_tokens = 0  # also read for the gen_throughput gauge
        tokenizer = {"model_name": model_name, "engine_type": ENGINE_TYPE.get(role, role)}
        self.rank_labels = [{**tokenizer, "tp_rank": str(r * tp_per_rank), "pp_rank": "0", "moe_ep_rank": "0",
                             **({"dp_rank": str(r)} if dp_ranks > 1 else {})} for r in range(dp_ranks)]
        self.labels = self.rank_labels[0]
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
                        for name in (*QUEUES.get(role, ()), *SCHEDULER_GAUGES)}
        self._dp: dict[str, list] = {}
        if dp_ranks > 1:
            self._dp_collectors(sched)

    def _dp_collectors(self, sched: list[str]) -> None:
        """SGLang's DP-attention collectors, children made per rank at start (a ratio chart needs both kinds)."""
        r = self.registry
        tokens = Counter("sglang:dp_attention_tokens", "Tokens of MLP-sync steps on this DP rank (kind: scheduled, "
                         "imbalance).", [*sched, "kind"], registry=r)
        pairs = Counter("sglang:dp_attention_pairs", "Causal (query, key) pairs attended by MLP-sync steps on this DP "
                        "rank (kind: scheduled, imbalance).", [*sched, "kind"], registry=r)
        steps = Counter("sglang:dp_attention_steps", "MLP-sync steps on this DP rank (rank_state: active, idle).",
                        [*sched, "rank_state"], registry=r)
        wait = Histogram("sglang:dp_attention_sync_wait_seconds", "Wall time of this DP rank's scheduler MLP-sync "
                         "all-gather per step.", sched, buckets=SYNC_WAIT_BUCKETS, registry=r)
        ratio = Histogram("sglang:dp_attention_token_imbalance_ratio", "Per MLP-sync step, max tokens over mean tokens "
                          "across the DP ranks.", sched, buckets=IMBALANCE_BUCKETS, registry=r)
        self._dp = {
            "tokens": [{k: tokens.labels(**lab, kind=k) for k in ("scheduled", "imbalance")} for lab in self.rank_labels],
            "pairs": [{k: pairs.labels(**lab, kind=k) for k in ("scheduled", "imbalance")} for lab in self.rank_labels],
            "steps": [{k: steps.labels(**lab, rank_state=k) for k in ("active", "idle")} for lab in self.rank_labels],
            "wait": [wait.labels(**lab) for lab in self.rank_labels],
            "ratio": [ratio.labels(**self.labels)],
        }

    def dp_step(self, tokens: list[int], pairs: list[int], sync_wait_s: list[float], imbalance: float | None) -> None:
        """One DP-attention lockstep step: per rank its tokens and pairs, its wait for the slowest rank."""
        top_tokens, top_pairs = max(tokens), max(pairs)
        for rank, (mine, my_pairs, waited) in enumerate(zip(tokens, pairs, sync_wait_s)):
            self._dp["tokens"][rank]["scheduled"].inc(mine)
            self._dp["tokens"][rank]["imbalance"].inc(top_tokens - mine)
            self._dp["pairs"][rank]["scheduled"].inc(my_pairs)
            self._dp["pairs"][rank]["imbalance"].inc(top_pairs - my_pairs)
            self._dp["steps"][rank]["active" if mine else "idle"].inc()
            self._dp["wait"][rank].observe(waited)
        if imbalance is not None:
            self._dp["ratio"][0].observe(imbalance)

    def watch_batches(self, source: Callable[[], Sequence[Mapping[str, BatchStats]]]) -> None:
        """Export the ``sim_`` batch metrics of the forward mode -> ``BatchStats`` of each DP rank ``source`` returns."""
        self.registry.register(BatchCollector(self.rank_labels, source))

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

    def render(self, gauges: dict[str, float], per_rank: list[dict[str, float]] | None = None) -> str:
        """The exposition, with ``gauges`` set on rank 0's series and ``per_rank[r]`` on rank r's."""
        for labels, values in ((self.labels, gauges), *zip(self.rank_labels, per_rank or [])):
            for name, value in values.items():
                if name in self._gauges:
                    self._gauges[name].labels(**labels).set(value)
        return generate_latest(self.registry).decode()
