"""Gating: directions, explicit bounds, tolerance sources, percentiles, failed requests, baselines, messages."""

from __future__ import annotations

import pytest

from pytest_sglang_pd import config as config_mod
from pytest_sglang_pd import gating
from pytest_sglang_pd.bench.result import BenchResult
from pytest_sglang_pd.config import InferenceTest


def _test(expected: dict, **kw) -> InferenceTest:
    """An InferenceTest typed by the real config loader from an expected_results table."""
    raw = {
        "config": {"container_image": "img", "prefill_node_list": ["10.0.0.1"], "decode_node_list": ["10.0.0.2"],
                   "proxy_router_node": "10.0.0.3", "prefill_serv_port": 30001, "decode_serv_port": 30002,
                   "proxy_router_port": 8000},
        "benchmark_params": {"m": {"model": "org/model", "tensor_parallelism": 8, "inference_tests": {
            "bench_serv_random": {"data_set_name": "random", "expected_results": {"auto": expected}, **kw}}}},
    }
    return config_mod.from_dict(raw).models[0].tests[0]


def _result(completed: int = 10, sent: int = 10, errors: list[str] | None = None, **metrics: float) -> BenchResult:
    return BenchResult("builtin", {"completed": float(completed), **metrics}, sent, errors=errors or [])


def test_latency_is_an_upper_bound_with_the_exact_message() -> None:
    t = _test({"mean_tpot_ms": 50})
    gate = gating.evaluate("m-bench_serv_random", t, _result(mean_tpot_ms=61.2), tol_pct=10)
    assert not gate.passed
    assert [v.message for v in gate.failures] == ["mean_tpot_ms 61.2 > 55.0 (expected 50, tolerance 10%)"]
    assert gating.evaluate("x", t, _result(mean_tpot_ms=54.9), tol_pct=10).passed


def test_throughput_and_accuracy_are_lower_bounds() -> None:
    t = _test({"output_throughput": 500, "accuracy": 0.6})
    gate = gating.evaluate("x", t, _result(output_throughput=440.0, accuracy=0.59), tol_pct=10)
    messages = [v.message for v in gate.failures]
    assert messages == ["output_throughput 440.0 < 450.0 (expected 500, tolerance 10%)"]
    gate = gating.evaluate("x", t, _result(output_throughput=460.0, accuracy=0.53), tol_pct=10)
    assert [v.message for v in gate.failures] == ["accuracy 0.53 < 0.54 (expected 0.6, tolerance 10%)"]


def test_explicit_min_max_override_the_metric_direction() -> None:
    # a latency that must be at LEAST 5 ms (e.g. a sanity floor) and a throughput that must stay BELOW a cap
    t = _test({"mean_ttft_ms": {"min": 5}, "output_throughput": {"max": 100}})
    gate = gating.evaluate("x", t, _result(mean_ttft_ms=4.0, output_throughput=150.0), tol_pct=0)
    assert sorted(v.message for v in gate.failures) == [
        "mean_ttft_ms 4.0 < 5.0 (expected 5, tolerance 0%)",
        "output_throughput 150.0 > 100.0 (expected 100, tolerance 0%)",
    ]


def test_aliases_keep_the_users_name_and_gate_the_canonical_metric() -> None:
    t = _test({"tokens_per_sec": 300})
    gate = gating.evaluate("x", t, _result(output_throughput=250.0), tol_pct=0)
    assert gate.failures[0].canonical == "output_throughput"
    assert gate.failures[0].message == "tokens_per_sec 250.0 < 300.0 (expected 300, tolerance 0%)"


def test_percentile_metrics_gate_like_any_other() -> None:
    t = _test({"p99_ttft_ms": 1000, "p90_tpot_ms": 20})
    gate = gating.evaluate("x", t, _result(p99_ttft_ms=1200.0, p90_tpot_ms=19.0), tol_pct=0)
    assert [v.message for v in gate.failures] == ["p99_ttft_ms 1200.0 > 1000.0 (expected 1000, tolerance 0%)"]


def test_a_metric_the_tool_did_not_measure_fails_and_says_so() -> None:
    t = _test({"cache_hit_rate": 0.3})
    gate = gating.evaluate("x", t, _result(), tol_pct=0)
    assert gate.failures[0].message == "cache_hit_rate was not measured by this benchmark (expected 0.3, tolerance 0%)"


def test_tolerance_option_wins_over_the_test_then_zero() -> None:
    with_test_tol = _test({"mean_ttft_ms": 100}, tolerance="20%")
    assert gating.tolerance_pct(None, with_test_tol) == 20
    assert gating.tolerance_pct(5, with_test_tol) == 5
    assert gating.tolerance_pct(None, _test({"mean_ttft_ms": 100})) == 0
    assert gating.evaluate("x", with_test_tol, _result(mean_ttft_ms=115.0),
                           tol_pct=gating.tolerance_pct(None, with_test_tol)).passed
    assert not gating.evaluate("x", with_test_tol, _result(mean_ttft_ms=115.0),
                               tol_pct=gating.tolerance_pct(5, with_test_tol)).passed


def test_failed_requests_fail_unless_allowed() -> None:
    t = _test({})
    gate = gating.evaluate("x", t, _result(completed=8, sent=10, errors=["2 x HTTP 502 from /generate"]), tol_pct=0)
    assert [v.message for v in gate.failures] == [
        "failed requests 2 of 10 > allowed 0; first error: 2 x HTTP 502 from /generate"]
    allowing = _test({}, allow_failed_requests=2)
    assert gating.evaluate("x", allowing, _result(completed=8, sent=10), tol_pct=0).passed


def test_one_message_lists_every_failing_metric() -> None:
    t = _test({"mean_tpot_ms": 50, "mean_ttft_ms": 100, "output_throughput": 10})
    gate = gating.evaluate("llama-8b-bench_serv_random", t,
                           _result(completed=9, mean_tpot_ms=70.0, mean_ttft_ms=150.0, output_throughput=50.0), tol_pct=0)
    assert gate.message().splitlines() == [
        "llama-8b-bench_serv_random: 3 of 4 checks failed: failed, mean_tpot_ms, mean_ttft_ms",
        "  failed requests 1 of 10 > allowed 0",
        "  mean_tpot_ms 70.0 > 50.0 (expected 50, tolerance 0%)",
        "  mean_ttft_ms 150.0 > 100.0 (expected 100, tolerance 0%)",
    ]


def test_baseline_regression_fails_at_the_baseline_tolerance_even_when_thresholds_pass() -> None:
    t = _test({"output_throughput": 100, "mean_tpot_ms": 50})
    baseline = {"output_throughput": 1000.0, "mean_tpot_ms": 10.0}
    result = _result(output_throughput=850.0, mean_tpot_ms=10.5)
    gate = gating.evaluate("x", t, result, tol_pct=0, baseline=baseline, baseline_name="run 20250101-aaaa",
                           baseline_tol_pct=10)
    assert [v.message for v in gate.failures] == [
        "output_throughput 850.0 < 900.0 (baseline 1000 in run 20250101-aaaa, -15.0%, tolerance 10%)"]
    assert {v.source for v in gate.verdicts} == {"requests", "threshold", "baseline"}
    assert gating.evaluate("x", t, result, tol_pct=0, baseline=baseline, baseline_tol_pct=20).passed


def test_every_metric_both_runs_measured_is_compared_and_an_ungated_drop_is_a_warning() -> None:
    t = _test({"cache_hit_rate": 0.2})
    before = {"cache_hit_rate": 0.5, "output_throughput": 1000.0, "mean_ttft_ms": 100.0, "only_before": 1.0}
    result = _result(cache_hit_rate=0.5, output_throughput=600.0, mean_ttft_ms=90.0)
    gate = gating.evaluate("x", t, result, tol_pct=0, baseline=before, baseline_tol_pct=15)
    assert gate.passed  # a warning never fails the test
    changes = {c.metric: c for c in gate.changes}
    assert set(changes) == {"cache_hit_rate", "output_throughput", "mean_ttft_ms"}
    assert changes["output_throughput"].change_pct == pytest.approx(-40.0)
    assert [c.metric for c in gate.warnings] == ["output_throughput"]  # 40% worse; TTFT got better
    assert changes["mean_ttft_ms"].worse_pct == pytest.approx(-10.0) and changes["cache_hit_rate"].gated
    assert gate.warnings[0].message == "output_throughput 1000 -> 600 (-40.0%)"


def test_gate_of_a_case_takes_the_runs_tolerances_and_the_baseline_of_the_same_case_id() -> None:
    t = _test({"output_throughput": 100}, tolerance="20%")
    case = config_mod.InferenceCase(config_mod.ModelConfig(id="m", model="org/model", tests=(t,)), t, 64)
    assert case.id == "m-bench_serv_random"
    baseline = gating.Baseline(source="before/results.json", run_id="before",
                               metrics={case.id: {"output_throughput": 1000.0}, "other": {"output_throughput": 1.0}})
    result = _result(output_throughput=870.0)
    # the baseline has its own tolerance (default 15%), whatever --perf-tolerance says of the absolute limits
    assert gating.gate(case, result, baseline=baseline, perf_tolerance_pct=0).passed
    gate = gating.gate(case, result, baseline=baseline, baseline_tolerance_pct=10)
    assert [v.message for v in gate.failures] == [
        "output_throughput 870.0 < 900.0 (baseline 1000 in run before, -13.0%, tolerance 10%)"]
    assert [v.source for v in gating.gate(case, result).verdicts] == ["requests", "threshold"]  # no baseline


@pytest.mark.parametrize(("actual", "limit", "expected"), [
    (61.2, 55.0, ("61.2", "55.0")),
    (55.04, 55.0, ("55.04", "55.00")),
    (0.553, 0.54, ("0.553", "0.54")),
])
def test_numbers_are_printed_so_actual_and_limit_differ(actual, limit, expected) -> None:
    assert gating._fmt_pair(actual, limit) == expected
