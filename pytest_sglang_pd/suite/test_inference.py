"""The validation test: benchmark one model x inference test x concurrency, gate it, record it."""

from __future__ import annotations

import pytest

from pytest_sglang_pd import gating, report
from pytest_sglang_pd.bench import BenchToolError, combine, run_benchmark
from pytest_sglang_pd.bench.figures import gpus_of, slo_of, with_figures
from pytest_sglang_pd.failures import first_error_first
from pytest_sglang_pd.report.progress import terminal_progress


def test_inference(inference_case, pd_cluster, cluster_watch, cluster_config, suite_run,
                   request: pytest.FixtureRequest) -> None:
    """Every threshold of the test (and the baseline, if given) holds, no request failed beyond the allowance, and
    the cluster watch found nothing broken (its cause comes first in the message)."""
    run_report = report.of(request.config)
    show = terminal_progress(request.config, inference_case.id)

    def progress(done: int, total: int, elapsed_s: float) -> None:
        cluster_watch.completions(done, total, elapsed_s)
        run_report.progress(request.node, done, total)
        show(done, total, elapsed_s)

    repeats = suite_run.repeats_of(inference_case.test)
    artifacts = suite_run.run_dir / "bench" / inference_case.id
    runs = []
    try:
        for i in range(repeats):  # on the same deployment; a cluster the watch found broken ends the repeats
            runs.append(run_benchmark(pd_cluster, inference_case, timeout_s=cluster_config.timeouts.benchmark_s,
                                      artifacts_dir=artifacts / f"repeat-{i + 1}" if repeats > 1 else artifacts,
                                      progress=progress, streamed=cluster_watch.streamed,
                                      time_dilation=cluster_config.time_dilation))
            if cluster_watch.look():
                break
        deployment = pd_cluster.deployment  # None behind --router-url: GPUs unknown, no per-GPU figures
        result = with_figures(combine(runs), gpus_of(deployment) if deployment else None, slo_of(inference_case.test))
    except BenchToolError as exc:
        result, no_result = None, f"{inference_case.id}: the benchmark produced no result:\n{exc}"
    if result is None:  # failed outside the except block: pytest would print the tool's error first, chained
        run_report.record(request.node, None, None)
        pytest.fail(first_error_first(cluster_watch.look(), no_result, "in the benchmark"), pytrace=False)
    verdict = gating.gate(inference_case, result, perf_tolerance_pct=suite_run.perf_tolerance_pct,
                          baseline=suite_run.baseline, baseline_tolerance_pct=suite_run.baseline_tolerance_pct)
    run_report.record(request.node, result, verdict)
    cause = cluster_watch.look() if not verdict.passed else cluster_watch.cause
    if cause or not verdict.passed:
        pytest.fail(first_error_first(cause, verdict.message(), "in the benchmark"), pytrace=False)
