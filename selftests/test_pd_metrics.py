"""The PD path read from the metrics real SGLang 0.5.23 and its router export, parsed by prometheus_client."""

from __future__ import annotations

from pytest_sglang_pd import gating, prom
from pytest_sglang_pd.bench import pd_metrics
from pytest_sglang_pd.bench.result import BenchResult
from pytest_sglang_pd.config import InferenceCase, InferenceTest, ModelConfig

# a prefill worker's /metrics as SGLang 0.5.23 writes it (prometheus_client's exposition; labels of the scheduler)
PREFILL = """\
# HELP sglang:kv_transfer_latency_ms Histogram of KV cache transfer latency in ms.
# TYPE sglang:kv_transfer_latency_ms histogram
sglang:kv_transfer_latency_ms_bucket{engine_type="prefill",le="1.0",model_name="m",moe_ep_rank="0",pp_rank="0",tp_rank="0"} 0.0
sglang:kv_transfer_latency_ms_bucket{engine_type="prefill",le="+Inf",model_name="m",moe_ep_rank="0",pp_rank="0",tp_rank="0"} 4.0
sglang:kv_transfer_latency_ms_count{engine_type="prefill",model_name="m",moe_ep_rank="0",pp_rank="0",tp_rank="0"} 4.0
sglang:kv_transfer_latency_ms_sum{engine_type="prefill",model_name="m",moe_ep_rank="0",pp_rank="0",tp_rank="0"} 20.0
# HELP sglang:kv_transfer_total_mb Histogram of KV cache transfer size in MB.
# TYPE sglang:kv_transfer_total_mb histogram
sglang:kv_transfer_total_mb_count{engine_type="prefill",model_name="m",moe_ep_rank="0",pp_rank="0",tp_rank="0"} 4.0
sglang:kv_transfer_total_mb_sum{engine_type="prefill",model_name="m",moe_ep_rank="0",pp_rank="0",tp_rank="0"} 2.0
# HELP sglang:num_transfer_failed_reqs_total The number of transfer failed requests.
# TYPE sglang:num_transfer_failed_reqs_total counter
sglang:num_transfer_failed_reqs_total{engine_type="prefill",model_name="m",moe_ep_rank="0",pp_rank="0",tp_rank="0"} 1.0
# HELP sglang:num_requests_total Number of requests processed.
# TYPE sglang:num_requests_total counter
sglang:num_requests_total{engine_type="prefill",is_streaming="true",model_name="m"} 3.0
sglang:num_requests_total{engine_type="prefill",is_streaming="false",model_name="m"} 1.0
"""


def test_a_real_exposition_is_read_with_prometheus_clients_parser():
    samples = prom.parse(PREFILL)
    assert prom.total(samples, "sglang:kv_transfer_latency_ms_count") == 4
    assert prom.total(samples, "sglang:num_requests_total") == 4  # summed over is_streaming
    assert prom.total(samples, "sglang:kv_transfer_handoffs_total") is None  # the simulator's old name: gone
    tp = {s.labels["tp_rank"] for s in samples if s.name.startswith("sglang:kv_transfer")}
    assert tp == {"0"}


def _workers(**prefill: float) -> pd_metrics.Workers:
    return {"prefill": {"http://p:1": dict(prefill)}, "decode": {"http://d:2": {"decode_transfer_queue": 0.0}}}


def test_kv_metrics_from_the_real_histograms_and_counters():
    before = _workers(kv_transfers=10, kv_latency_ms=50, kv_total_mb=5, transfer_failed=1)
    after = _workers(kv_transfers=14, kv_latency_ms=70, kv_total_mb=7, transfer_failed=2, kv_bootstrap_ms=8,
                     kv_bootstraps=4)
    got = pd_metrics.kv_metrics(before, after)
    assert got == {"kv_handoffs": 4, "kv_transfer_failures": 1, "kv_transfer_failures_prefill": 1,
                   "kv_transfer_failures_decode": 0, "kv_transfer_bytes": 2 * 1024 * 1024,
                   "kv_transfer_throughput": 2 * 1024 * 1024 / 0.02, "mean_kv_transfer_ms": 5.0,
                   "mean_kv_bootstrap_ms": 2.0}
    assert pd_metrics.kv_metrics({}, {"prefill": {"http://p:1": {"requests": 3}}}) == {}  # no PD metrics: not measured


def test_an_idle_worker_is_named_from_the_workers_own_counters():
    before = {"decode": {"http://d:1": {"requests": 5}, "http://d:2": {"requests": 7}}}
    after = {"decode": {"http://d:1": {"requests": 25}, "http://d:2": {"requests": 7}}}
    errors: list[str] = []
    assert pd_metrics.idle_workers(before, after, {"http://d:2": 0.0}, errors) == {"idle_workers": 1.0}
    assert errors == ["decode worker http://d:2 received no requests while its 1 peer(s) served 20 "
                      "(its own sglang:num_requests_total); the router counts 0 for it"]
    balanced = {"decode": {"http://d:1": {"requests": 6}, "http://d:2": {"requests": 8}}}
    assert pd_metrics.idle_workers(before, balanced, None, []) == {"idle_workers": 0.0}


def test_decode_queues_that_do_not_drain_are_a_leak():
    errors: list[str] = []
    stuck = {"decode": {"http://d:1": {"decode_prealloc_queue": 0.0, "decode_transfer_queue": 3.0}}}
    assert pd_metrics.queue_leaks(lambda: stuck, errors, drain_s=0) == {"kv_queue_leaks": 3.0}
    assert errors == ["decode worker http://d:1: sglang:num_decode_transfer_queue_reqs is 3 0 s after the benchmark "
                      "ended (requests leaked in the queue hold KV slots)"]
    drained = {"decode": {"http://d:1": {"decode_prealloc_queue": 0.0, "decode_transfer_queue": 0.0}}}
    assert pd_metrics.queue_leaks(lambda: drained, [], drain_s=0) == {"kv_queue_leaks": 0.0}


def test_a_silent_fallback_to_non_pd_serving_fails_with_that_cause():
    test = InferenceTest("bench_serv_random", "bench_serving", "random", num_prompts=10)
    case = InferenceCase(ModelConfig("m", "org/m", tests=(test,)), test, 4)
    result = BenchResult("builtin", {"completed": 10.0, "kv_handoffs": 0.0}, 10)
    verdict = gating.gate(case, result)
    assert not verdict.passed
    assert ("no KV transfer for 10 completed requests (kv_handoffs 0): the cluster served them without "
            "prefill -> decode, a silent fallback to non-PD serving") in verdict.message()
    assert gating.gate(case, BenchResult("builtin", {"completed": 10.0, "kv_handoffs": 11.0}, 10)).passed


ROUTER = """\
smg_worker_requests_total{worker="http://p:1",model="m"} 12
smg_worker_requests_total{worker="http://d:2",model="m"} 12
smg_worker_errors_total{worker_type="decode",connection_mode="http",error_type="timeout"} 2
smg_worker_cb_state{worker="http://p:1"} 0
smg_worker_cb_state{worker="http://d:2"} 1
smg_pd_rendezvous_failures_total{leg="prefill",phase="probe"} 1
"""


def test_the_routers_smg_metrics_per_worker_and_worker_type():
    after = prom.router_summary(prom.parse(ROUTER))
    result = BenchResult("builtin", {}, 0)
    got = pd_metrics.router_metrics(None, after, result)
    assert got == {"router_errors": 2, "router_retries": 0, "router_cb_open": 1, "router_rendezvous_failures": 1}
    assert result.totals == {"router_errors_decode": 2}
    assert result.workers == {"http://p:1": {"router_requests": 12}, "http://d:2": {"router_requests": 12}}
