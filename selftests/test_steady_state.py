"""The steady-state window: SGLang's definition on a known request timeline, the figures over it, gating on it, and
its figures in a simulated run's results.json."""

from __future__ import annotations

import json

import pytest

from pytest_sglang_pd import config as config_mod
from pytest_sglang_pd import gating
from pytest_sglang_pd.bench import steady_state
from pytest_sglang_pd.bench.result import BenchResult, RequestRecord
from selftests.configs import REPO, sim_config
from selftests.test_gating import _test


def _req(start: float, latency: float, out: int = 10, prompt: int = 100) -> RequestRecord:
    return RequestRecord(success=True, prompt_tokens=prompt, output_tokens=out, ttft_s=0.1, latency_s=latency,
                         itl_s=[(latency - 0.1) / (out - 1)] * (out - 1), start_s=start)


def test_the_window_is_the_longest_interval_at_or_above_the_ratio_of_the_peak():
    # ramp-up: 1, 2, then 4 in flight from t=2 to t=6, then drain
    records = [_req(0, 6), _req(1, 5), _req(2, 4.5), _req(2, 4)]
    start, end, threshold, peak = steady_state.window(records, 0.8)
    assert (start, end, threshold, peak) == (2, 6, 4, 4)
    found = steady_state.figures(records, 0.8)
    assert found["steady_window_s"] == 4 and found["steady_window_start_s"] == 2
    assert found["steady_requests"] == 2.0  # the two sent at t=2
    assert found["steady_input_throughput"] == pytest.approx(200 / 4)
    # a lower ratio takes the ramp in: 2 in flight from t=1
    assert steady_state.window(records, 0.5)[:2] == (1, 6)


def test_no_start_times_no_window():
    assert steady_state.figures([RequestRecord(success=True, latency_s=1.0)], 0.8) == {}


def test_window_steady_gates_the_steady_figure_and_a_metric_without_one_is_a_config_error():
    t = _test({"mean_tpot_ms": 20}, window="steady")
    assert [th.canonical for th in t.thresholds] == ["steady_mean_tpot_ms"]
    result = BenchResult("builtin", {"completed": 10.0, "mean_tpot_ms": 30.0, "steady_mean_tpot_ms": 15.0}, 10)
    assert gating.evaluate("m-t", t, result, tol_pct=0).passed  # the ramp's slow tail is not gated
    with pytest.raises(config_mod.ConfigError) as err:
        _test({"p99_ttft_ms": 20}, window="steady")
    assert "$.benchmark_params.m.inference_tests.bench_serv_random.window: p99_ttft_ms has no steady-state figure" \
        in str(err.value)


@pytest.mark.integration
def test_a_simulated_run_records_its_steady_state_window(tmp_path, pytester):
    config = sim_config(tmp_path, tests=("bench_serv_random",))
    data = json.loads(config.read_text())
    data["benchmark_params"]["llama-8b"]["inference_tests"]["bench_serv_random"].update(
        num_prompts="64", input_length="128", output_length="64", max_concurrency="8")
    config.write_text(json.dumps(data))
    out = pytester.runpytest_subprocess(str(REPO / "pytest_sglang_pd" / "suite" / "test_inference.py"),
                                        f"--cluster-config={config}", f"--results-dir={tmp_path / 'r'}", "--run-id=run",
                                        "-p", "no:cacheprovider", timeout=240)
    metrics = json.loads((tmp_path / "r" / "run" / "results.json").read_text())["tests"][0]["metrics"]
    assert out.ret == 0, out.stdout.str()
    assert metrics["steady_peak_concurrency"] == 8 and metrics["steady_concurrency_threshold"] == 7
    assert 0 < metrics["steady_window_s"] <= metrics["duration"]
    assert 0 < metrics["steady_requests"] < 64
    assert metrics["steady_output_throughput"] > 0 and metrics["steady_mean_tpot_ms"] > 0
