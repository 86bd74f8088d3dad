"""Aggregation math of BenchResult against hand-computed values (bench_serving's definitions)."""

from __future__ import annotations

import math

import pytest

from pytest_sglang_pd import config, metrics
from pytest_sglang_pd.bench.result import (BenchResult, RequestRecord, aggregate, combine, first_errors, latency_stats,
                                           undilate)
from pytest_sglang_pd.report import html
from selftests import configs


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


def test_a_dilated_result_is_rescaled_to_modelled_time_as_if_measured_there() -> None:
    """Under time dilation 4 every time is 4x too long: undilate gives exactly what the records, 4x faster,
    aggregate to; counts and ratios stay, rates grow 4x; the steady-state window's length is a time too."""
    slow = [RequestRecord(r.success, r.prompt_tokens, r.output_tokens, r.cached_tokens, r.ttft_s * 4, r.latency_s * 4,
                          [x * 4 for x in r.itl_s], r.error, start_s=1.0) for r in _records()]
    measured, totals = aggregate(slow, duration_s=8.0)
    measured.update(steady_window_s=6.0, steady_requests=3.0)
    result = undilate(BenchResult("builtin", dict(measured), 4, records=slow, totals=totals, runs=[dict(measured)] * 2), 4)
    expected, _ = aggregate(_records(), duration_s=2.0)
    for name, value in expected.items():
        assert result.metrics[name] == pytest.approx(value), name
    assert result.metrics["steady_window_s"] == 1.5 and result.metrics["steady_requests"] == 3
    assert result.runs[0]["mean_tpot_ms"] == pytest.approx(100.0) and result.spread["mean_tpot_ms"].mean == pytest.approx(100.0)
    assert result.records[0].itl_s == pytest.approx([0.1] * 10) and result.records[0].start_s == 0.25
    assert result.time_dilation == 4 and combine([result, result]).time_dilation == 4
    assert undilate(BenchResult("builtin", {"mean_tpot_ms": 5.0}, 1), 1).metrics == {"mean_tpot_ms": 5.0}


@pytest.mark.parametrize("engine, speedup, dilation", [("sim", "0.25", 4.0), ("sim", "1", 1.0), ("sim", "20", 1.0),
                                                       ("sglang", "0.25", 1.0)])
def test_time_dilation_is_a_simulator_speedup_below_one(tmp_path, engine, speedup, dilation) -> None:
    data = configs.raw("local-sim.json")
    data["config"].update(engine=engine)
    data["config"]["sim"]["speedup"] = speedup
    assert config.load(configs.write(tmp_path, data)).time_dilation == dilation


def test_the_report_header_says_the_figures_were_rescaled(tmp_path) -> None:
    run = {"cluster": {}, "simulated": True, "time_dilation": 4.0, "tolerance_pct": None, "baseline": None,
           "run_id": "r", "versions": {}}
    page = html.summary_html(run, [], overall="", log_files={}, base_dir=tmp_path, results_json=tmp_path / "r.json")
    assert "Time dilation 4x" in page and "sim.speedup 0.25" in page and "rescaled to modelled time" in page
    assert "Time dilation" not in html.summary_html({**run, "time_dilation": 1.0}, [], overall="", log_files={},
                                                    base_dir=tmp_path, results_json=tmp_path / "r.json")
