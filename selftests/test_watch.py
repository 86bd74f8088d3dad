"""The cluster watch's causes from what its probes found: a stall names the side and the queue, an idle cluster is no
stall, progress resets the bound, an unanswered /health names the worker (no cluster: the probes' findings set)."""

from __future__ import annotations

import time

import pytest

from pytest_sglang_pd.external_cluster import ExternalCluster
from pytest_sglang_pd.watch import ClusterWatch

PREFILL, DECODE = "http://127.0.0.1:30001", "http://127.0.0.1:30002"


def _watch(stall_s: float = 0.05) -> ClusterWatch:
    cluster = ExternalCluster("http://127.0.0.1:30000", True, worker_urls={"prefill": [PREFILL], "decode": [DECODE]})
    watch = ClusterWatch(cluster, "llama-8b-gsm8k", stall_s=stall_s)
    for w in watch.workers:
        w.metrics = {"generation_tokens": 100.0, "running": 0.0}
    return watch


def _after_the_bound(watch: ClusterWatch) -> str | None:
    assert watch.check() is None  # the first look starts the bound
    time.sleep(watch.stall_s * 2)
    return watch.check()


def test_a_stall_names_the_side_and_the_queue_holding_the_requests_first():
    watch = _watch()
    prefill, decode = watch.workers
    decode.metrics.update(decode_transfer_queue=16.0, running=16.0)
    prefill.metrics.update(prefill_bootstrap_queue=16.0)
    cause = _after_the_bound(watch)
    first = cause.splitlines()[0]
    assert "running requests" not in first  # the PD queues say where they wait
    assert first.startswith(f"stall: decode {DECODE} on node 127.0.0.1 holds 16 request(s) in its transfer queue "
                            "(waiting for KV) (sglang:num_decode_transfer_queue_reqs); prefill"), first
    assert "($.config.timeouts.stall_s = 0.05) from 0.0 s into llama-8b-gsm8k" in first
    assert "  the workers' metrics (last read):" in cause and "decode_transfer_queue 16" in cause
    assert watch.cluster.broken == cause


def test_a_prefill_inflight_queue_is_named_before_the_decode_waiting_on_it():
    watch = _watch()
    prefill, decode = watch.workers
    prefill.metrics.update(prefill_inflight_queue=3.0)
    decode.metrics.update(decode_transfer_queue=3.0)
    assert _after_the_bound(watch).startswith(f"stall: prefill {PREFILL} on node 127.0.0.1 holds 3 request(s) in its "
                                              "inflight queue")


def test_an_idle_cluster_is_no_stall_and_progress_resets_the_bound():
    watch = _watch()
    assert _after_the_bound(watch) is None  # nothing held anywhere: the client is idle
    watch.workers[1].metrics.update(running=4.0)
    watch.workers[1].metrics["generation_tokens"] = 200.0  # tokens generated: progress
    assert watch.check() is None
    watch.completions(5, 10, 1.0)
    assert watch.check() is None
    time.sleep(watch.stall_s * 2)
    assert watch.check().startswith(f"stall: decode {DECODE} on node 127.0.0.1 holds 4 request(s) in its running requests")


def test_tokens_streamed_to_the_client_are_progress_while_the_workers_counters_stand_still():
    watch = _watch()
    watch.workers[1].metrics.update(running=4.0)  # requests held, generation_tokens frozen (e.g. /metrics lagging)
    assert watch.check() is None
    for _ in range(4):
        time.sleep(watch.stall_s * 0.6)
        watch.streamed(2)
        assert watch.check() is None
    time.sleep(watch.stall_s * 2)
    cause = watch.check()
    assert cause.startswith(f"stall: decode {DECODE} on node 127.0.0.1 holds 4 request(s)")
    assert "nothing streamed, nothing generated and no request completed for" in cause.splitlines()[0]
    assert "    client: 0 request(s) completed, 8 output token(s) streamed" in cause


def test_a_worker_not_answering_health_is_named_with_when_it_stopped():
    watch = _watch(stall_s=60)
    decode = watch.workers[1]
    decode.misses, decode.missed_since, decode.said = watch.health_misses, time.monotonic(), "no answer in 5 s"
    first = watch.check().splitlines()[0]
    assert first == f"decode {DECODE} on node 127.0.0.1 stopped answering /health (no answer in 5 s) from 0.0 s into llama-8b-gsm8k"


def test_a_silent_metrics_endpoint_during_a_stall_is_named():
    watch = _watch()
    watch.workers[1].metrics = None
    assert "decode http://127.0.0.1:30002 on node 127.0.0.1 does not answer /metrics" in _after_the_bound(watch)


@pytest.mark.integration
def test_health_deadline_and_misses_come_from_the_config(tmp_path):
    """A worker whose port accepts but never answers (a real socket): ended after timeouts.health_misses probes of
    timeouts.health_s each, the deadline named."""
    import socket

    from pytest_sglang_pd import config

    cfg = config.load(config.resolve_path("local-sim.json"))
    assert (cfg.timeouts.health_s, cfg.timeouts.health_misses) == (5.0, 2)  # the defaults
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        cluster = ExternalCluster("http://127.0.0.1:30000", True, worker_urls={"prefill": [], "decode": [url]})
        started = time.monotonic()
        with ClusterWatch(cluster, "llama-8b-gsm8k", stall_s=60, health_s=0.3, health_misses=1) as watch:
            while watch.cause is None and time.monotonic() - started < 10:
                time.sleep(0.05)
        assert watch.cause and watch.cause.startswith(f"decode {url} on node 127.0.0.1 stopped answering /health "
                                                      "(no answer in 0.3 s)"), watch.cause
        assert time.monotonic() - started < 3
