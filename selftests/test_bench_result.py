"""Aggregation math of BenchResult against hand-computed values (bench_serving's definitions)."""

from __future__ import annotations

import math

import pytest

from pytest_sglang_pd import metrics
from pytest_sglang_pd.bench.result import RequestRecord, aggregate, first_errors, latency_stats


def _records() -> list[RequestRecord]:
    return [
        # ttft 0.1 s, latency 1.1 s, 11 tokens -> tpot (1.1 - 0.1) / 10 = 0.1 s
        RequestRecord(True, prompt_tokens=100, output_tokens=11, cached_tokens=50, ttft_s=0.1, latency_s=1.1,
                      itl_s=[0.1] * 10),
        # ttft 0.3 s, latency 0.7 s, 5 tokens -> tpot (0.7 - 0.3) / 4 = 0.1 s
        RequestRecord(True, prompt_tokens=200, output_tokens=5, cached_tokens=0, ttft_s=0.3, latency_s=0.7,
                      itl_s=[0.05, 0.15, 0.1, 0.1]),
        # one output token: no TPOT, but TTFT and latency count
        RequestRecord(True, prompt_tokens=100, output_tokens=1, ttft_s=0.2, latency_s=0.2),
        # a failure adds nothing
        RequestRecord(False, prompt_tokens=999, output_tokens=999, ttft_s=9, latency_s=9, error="HTTP 502"),
    ]


def test_aggregate_matches_hand_computed_values() -> None:
    m, totals = aggregate(_records(), duration_s=2.0)
    assert m["completed"] == 3 and m["failed"] == 1
    assert m["request_throughput"] == pytest.approx(1.5)
    assert m["input_throughput"] == pytest.approx(400 / 2)
    assert m["output_throughput"] == pytest.approx(17 / 2)
    assert m["total_throughput"] == pytest.approx(417 / 2)
    assert m["mean_ttft_ms"] == pytest.approx(200.0)
    assert m["median_ttft_ms"] == pytest.approx(200.0)
    assert m["std_ttft_ms"] == pytest.approx(math.sqrt(((0.1 - 0.2) ** 2 + (0.3 - 0.2) ** 2 + 0) / 3) * 1000)
    # numpy linear percentile over [0.1, 0.2, 0.3]: p99 = 0.2 + 0.98 * 0.1
    assert m["p99_ttft_ms"] == pytest.approx(298.0)
    assert m["p90_ttft_ms"] == pytest.approx(280.0)
    assert m["mean_tpot_ms"] == pytest.approx(100.0)  # both TPOTs are 0.1 s; the 1-token request has none
    assert m["mean_itl_ms"] == pytest.approx(sum([0.1] * 10 + [0.05, 0.15, 0.1, 0.1]) / 14 * 1000)
    assert m["mean_e2e_latency_ms"] == pytest.approx((1.1 + 0.7 + 0.2) / 3 * 1000)
    assert m["cache_hit_rate"] == pytest.approx(50 / 400)
    assert totals == {"total_input_tokens": 400, "total_output_tokens": 17, "concurrency": pytest.approx(1.0)}


def test_aggregate_uses_only_names_metrics_py_knows() -> None:
    m, _ = aggregate(_records(), duration_s=1.0)
    assert set(m) <= set(metrics.METRICS)
    for stat in ("mean", "median", "std", "p90", "p95", "p99"):
        for lat in ("ttft", "tpot", "itl", "e2e_latency"):
            assert f"{stat}_{lat}_ms" in m


def test_all_failed_gives_zeros_not_errors() -> None:
    m, _ = aggregate([RequestRecord(False, error="boom")] * 3, duration_s=1.0)
    assert m["completed"] == 0 and m["failed"] == 3
    assert m["output_throughput"] == 0 and m["mean_ttft_ms"] == 0
    assert "cache_hit_rate" not in m  # no prompt tokens: not measured rather than 0


def test_latency_stats_of_empty_is_zero_like_bench_serving() -> None:
    assert latency_stats("ttft", []) == {f"{s}_ttft_ms": 0.0 for s in ("mean", "median", "std", "p90", "p95", "p99")}


def test_first_errors_are_counted_not_dropped() -> None:
    records = [RequestRecord(False, error="HTTP 502")] * 3 + [RequestRecord(False, error="timeout"),
                                                             RequestRecord(True)]
    assert first_errors(records) == ["3 x HTTP 502", "timeout"]


def test_distribution_in_ms() -> None:
    from pytest_sglang_pd.bench.result import BenchResult

    result = BenchResult("builtin", {}, 4, records=_records())
    assert result.distribution_ms("ttft") == pytest.approx([100.0, 300.0, 200.0])
    assert result.distribution_ms("tpot") == pytest.approx([100.0, 100.0])
    assert result.failed == 4  # metrics without "completed": nothing counts as completed
