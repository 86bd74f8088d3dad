"""Repeats: the statistics (against SciPy's), repeats combined into one result, verdicts on the mean marked within
noise, unstable metrics failing, baseline changes judged by Welch's t-test; and on the simulated cluster through the
suite: an identical rerun against its own baseline passes, a 10% TPOT slowdown with --repeats 3 is reported."""

from __future__ import annotations

import json

import pytest
from scipy import stats as scipy_stats

from pytest_sglang_pd import gating, stats
from pytest_sglang_pd.bench.result import BenchResult, combine
from pytest_sglang_pd.report import results as results_mod
from selftests.configs import REPO, sim_config
from selftests.test_gating import _test


@pytest.mark.parametrize("df", [1, 2, 3, 4, 9, 29, 200])
def test_t_distribution_and_confidence_interval_match_scipy(df):
    assert stats.t_quantile(0.975, df) == pytest.approx(scipy_stats.t.ppf(0.975, df), rel=1e-9)
    for t in (-3.1, -0.4, 0.0, 1.7, 6.0):
        assert stats.t_cdf(t, df) == pytest.approx(scipy_stats.t.cdf(t, df), abs=1e-12)


def test_summary_and_welch_match_scipy():
    values = [50.2, 51.9, 49.4, 50.8, 52.3]
    s = stats.summarize(values)
    low, high = scipy_stats.t.interval(0.95, len(values) - 1, loc=s.mean, scale=scipy_stats.sem(values))
    assert (s.ci_low, s.ci_high) == pytest.approx((low, high), rel=1e-9)
    assert s.cv_pct == pytest.approx(scipy_stats.variation(values, ddof=1) * 100, rel=1e-9)
    other = [55.1, 56.0, 54.7]
    assert stats.welch_p(values, other) == pytest.approx(scipy_stats.ttest_ind(values, other, equal_var=False).pvalue,
                                                         rel=1e-9)
    assert stats.welch_p(values, [1.0]) is None  # one run has no variance to test with
    assert stats.summarize([3.0]).contains(3.0) is False  # one run has no interval


def _run(tpot: float, completed: int = 10) -> BenchResult:
    return BenchResult("builtin", {"completed": float(completed), "mean_tpot_ms": tpot, "output_throughput": 1000.0}, 10)


def test_repeats_combine_into_means_with_request_counts_summed():
    combined = combine([_run(10.0), _run(12.0, completed=9), _run(14.0)])
    assert combined.metrics["mean_tpot_ms"] == 12.0 and combined.metrics["completed"] == 29.0
    assert combined.num_requests == 30 and combined.failed == 1
    assert [r["mean_tpot_ms"] for r in combined.runs] == [10.0, 12.0, 14.0]
    assert combined.spread["mean_tpot_ms"].sd == 2.0


def test_a_limit_inside_the_interval_is_within_noise_and_a_noisy_metric_fails_as_unstable():
    noisy = combine([_run(40.0), _run(52.0), _run(60.0)])  # mean 50.67, CV 19.9%
    gate = gating.evaluate("m-t", _test({"mean_tpot_ms": 55}, max_cv_pct=10), noisy, tol_pct=0)
    tpot = next(v for v in gate.verdicts if v.source == "threshold")
    assert tpot.passed and tpot.within_noise and "(within noise: 95% CI " in tpot.message
    unstable = next(v for v in gate.verdicts if v.source == "stability")
    assert not gate.passed and not unstable.passed
    assert unstable.message.startswith("mean_tpot_ms unstable: CV 19.9% > max_cv_pct 10% (mean 50.67, 95% CI ")
    steady = combine([_run(50.0), _run(50.5), _run(49.8)])
    assert gating.evaluate("m-t", _test({"mean_tpot_ms": 55}, max_cv_pct=10), steady, tol_pct=0).passed


def test_a_baseline_change_inside_the_noise_is_no_regression_and_a_significant_one_is():
    t = _test({"mean_tpot_ms": 100})
    before = [{"mean_tpot_ms": v} for v in (10.0, 11.5, 9.0)]
    noisy_after = combine([_run(9.5), _run(13.5), _run(11.0)])  # +15% on the mean, well inside the spread
    gate = gating.evaluate("m-t", t, noisy_after, tol_pct=0, baseline={"mean_tpot_ms": 10.1667},
                           baseline_tol_pct=5, baseline_runs=before)
    verdict = next(v for v in gate.verdicts if v.source == "baseline")
    assert verdict.passed and verdict.within_noise and ": not significant (Welch p=" in verdict.message
    tight_before = [{"mean_tpot_ms": v} for v in (10.0, 10.1, 9.9)]
    slower = combine([_run(11.0), _run(11.1), _run(10.9)])  # +10%, far beyond the spread
    gate = gating.evaluate("m-t", t, slower, tol_pct=0, baseline={"mean_tpot_ms": 10.0}, baseline_tol_pct=5,
                           baseline_runs=tight_before)
    verdict = next(v for v in gate.verdicts if v.source == "baseline")
    assert not verdict.passed and "(significant: Welch p=" in verdict.message


SUITE = str(REPO / "pytest_sglang_pd" / "suite" / "test_inference.py")


@pytest.mark.integration
def test_repeats_through_the_suite_identical_rerun_passes_and_a_10pct_slowdown_is_reported(tmp_path, pytester):
    def run(name: str, *extra: str, faults: dict | None = None):
        config = sim_config(tmp_path / name, tests=("bench_serv_random",), sim={"faults": faults or {}})
        data = json.loads(config.read_text())
        test = data["benchmark_params"]["llama-8b"]["inference_tests"]["bench_serv_random"]
        test.update(num_prompts="48", input_length="128", output_length="64", max_concurrency="8")
        config.write_text(json.dumps(data))
        out = pytester.runpytest_subprocess(SUITE, f"--cluster-config={config}", f"--results-dir={tmp_path / name}",
                                            "--run-id=run", "--repeats=3", "-p", "no:cacheprovider", *extra,
                                            timeout=300)
        return out, tmp_path / name / "run" / "results.json"

    first, baseline = run("first")
    entry = json.loads(baseline.read_text())["tests"][0]
    assert entry["repeats"] == 3 and len(entry["runs"]) == 3, first.stdout.str()
    spread = entry["spread"]["mean_tpot_ms"]
    assert spread["n"] == 3 and spread["ci95"][0] <= spread["mean"] <= spread["ci95"][1]
    results_mod.validate(json.loads(baseline.read_text()))
    run_dir = baseline.parent
    assert 'name="spread.mean_tpot_ms" value="mean ' in (run_dir / "junit.xml").read_text()
    assert "(95% CI " in (run_dir / "report.html").read_text()  # the gated means with their intervals
    again, _ = run("again", f"--baseline={baseline}", "--baseline-tolerance=5")
    assert again.ret == 0, again.stdout.str()  # an identical rerun against its own baseline passes
    slower, path = run("slower", f"--baseline={baseline}", "--baseline-tolerance=5", faults={"decode": ["slow=1.1"]})
    tpot = next(v for v in json.loads(path.read_text())["tests"][0]["verdicts"]
                if v["source"] == "baseline" and v["canonical"] == "mean_tpot_ms")
    assert not tpot["passed"] and "(significant: Welch p=" in tpot["message"], tpot
    assert slower.ret == 1
