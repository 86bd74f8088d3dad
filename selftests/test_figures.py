"""Per-GPU, per-user and goodput figures (bench/figures.py) on hand-built records, and their path to the gates."""

from __future__ import annotations

import pytest

from pytest_sglang_pd import config, gating, metrics, plan
from pytest_sglang_pd.bench.figures import SLO, GPUs, figures, gpus_of, goodput, per_gpu, per_user, slo_of, with_figures
from pytest_sglang_pd.bench.result import BenchResult, RequestRecord, aggregate, combine
from pytest_sglang_pd.config import InferenceCase
from selftests.configs import raw


def seed_request() -> RequestRecord:
    """The seed's aggregated TP4 row: ISL 3000, OSL 150, TTFT 709.25 ms, ITL 15.266 ms."""
    ttft, itl = 0.70925, 0.015266
    return RequestRecord(True, prompt_tokens=3000, output_tokens=150, ttft_s=ttft, latency_s=ttft + 149 * itl,
                         itl_s=[itl] * 149)


def test_user_output_rate_is_the_seeds_genai_perf_figure():
    """150 / (709.25 ms + 149 x 15.266 ms) = 50.27 tok/s (the seed's table), not 1000 / TPOT = 65.5."""
    records = [seed_request()]
    m, _ = aggregate(records, duration_s=10.0)
    got = per_user(m, records)
    assert round(got["user_output_throughput"], 2) == 50.27
    assert got["interactivity"] == pytest.approx(1000 / 15.266) and round(got["interactivity"], 1) == 65.5


def test_user_output_rate_averages_per_request_and_skips_failures():
    records = [RequestRecord(True, output_tokens=100, latency_s=1.0), RequestRecord(True, output_tokens=100, latency_s=4.0),
               RequestRecord(False, output_tokens=0, latency_s=0.5, error="HTTP 500")]
    assert per_user({}, records) == {"user_output_throughput": pytest.approx((100 + 25) / 2)}


def test_per_gpu_divides_by_the_role_that_does_the_work():
    m = {"output_throughput": 1200.0, "input_throughput": 6000.0, "total_throughput": 7200.0}
    assert per_gpu(m, GPUs(prefill=8, decode=4)) == {"output_throughput_per_decode_gpu": 300.0,
                                                       "input_throughput_per_prefill_gpu": 750.0,
                                                       "total_throughput_per_gpu": 600.0}
    assert per_gpu(m, GPUs(aggregated=4)) == {"output_throughput_per_decode_gpu": 300.0,
                                               "input_throughput_per_prefill_gpu": 1500.0,
                                               "total_throughput_per_gpu": 1800.0}
    assert per_gpu(m, GPUs()) == {}


def _mixed_records() -> list[RequestRecord]:
    """Four requests against TTFT <= 500 ms and TPOT <= 20 ms: one meets both, one is late to its first token, one
    decodes too slowly, one failed."""
    return [RequestRecord(True, output_tokens=11, ttft_s=0.2, latency_s=0.2 + 10 * 0.015),  # met
            RequestRecord(True, output_tokens=21, ttft_s=0.9, latency_s=0.9 + 20 * 0.010),  # TTFT over
            RequestRecord(True, output_tokens=6, ttft_s=0.1, latency_s=0.1 + 5 * 0.030),  # TPOT over
            RequestRecord(False, error="HTTP 502")]


def test_goodput_counts_only_the_requests_within_the_slo():
    records = _mixed_records()
    m, _ = aggregate(records, duration_s=2.0)  # 3 completed: 1.5 req/s, 38 output tokens: 19 tok/s
    got = goodput(m, records, SLO(ttft_ms=500, tpot_ms=20))
    assert got["slo_attainment"] == pytest.approx(1 / 4)  # of the requests sent
    assert got["goodput"] == pytest.approx(0.5)  # 1 request in 2 s
    assert got["goodput_output_throughput"] == pytest.approx(11 / 2.0)
    assert goodput(m, records, SLO(ttft_ms=1000))["slo_attainment"] == pytest.approx(3 / 4)
    assert goodput(m, records, SLO(itl_ms=12))["slo_attainment"] == pytest.approx(1 / 4)  # mean ITL 10 ms only
    assert goodput(m, records, SLO()) == {} and goodput(m, [], SLO(ttft_ms=1)) == {}


def _case(test_extra: dict, expected: dict) -> InferenceCase:
    data = raw("local-sim.json")
    model = data["benchmark_params"]["llama-8b"]
    model["inference_tests"] = {"bench_serv_random": {"data_set_name": "random", "num_prompts": "4",
                                                      "max_concurrency": "4", **test_extra,
                                                      "expected_results": {"auto": expected}}}
    return config.cases(config.from_dict(data))[0]


def test_the_slo_comes_from_the_loosest_latency_limits_or_the_explicit_slo_keys():
    case = _case({}, {"mean_ttft_ms": "400", "p99_ttft_ms": "900", "mean_tpot_ms": "25", "mean_e2e_latency_ms": "1"})
    assert slo_of(case.test) == SLO(ttft_ms=900, tpot_ms=25)
    case = _case({"slo": {"ttft_ms": "2000"}}, {"mean_ttft_ms": "400", "mean_tpot_ms": "25"})
    assert slo_of(case.test) == SLO(ttft_ms=2000)
    assert slo_of(_case({}, {"output_throughput": "1"}).test) == SLO()


def test_figures_are_gateable_metrics_and_gate_like_the_others():
    for name in ("output_throughput_per_decode_gpu", "input_throughput_per_prefill_gpu", "total_throughput_per_gpu",
                 "interactivity", "user_output_throughput", "goodput", "goodput_output_throughput", "slo_attainment"):
        assert metrics.METRICS[name].direction == "min", name
    assert metrics.canonical("user_tok_s") == "user_output_throughput"
    case = _case({}, {"mean_ttft_ms": "500", "mean_tpot_ms": "20", "slo_attainment": "0.5",
                      "total_throughput_per_gpu": "5", "user_tok_s": "20"})
    records = _mixed_records()
    m, totals = aggregate(records, duration_s=2.0)
    result = with_figures(BenchResult("builtin", m, len(records), records, totals), GPUs(prefill=1, decode=2),
                          slo_of(case.test))
    assert result.deployment == {"mode": "disaggregated",
                                 "gpus": {"prefill": 1, "decode": 2, "aggregated": 0, "total": 3}}
    assert result.metrics["total_throughput_per_gpu"] == pytest.approx(m["total_throughput"] / 3)
    verdicts = {v.canonical: v for v in gating.gate(case, result, perf_tolerance_pct=0).verdicts}
    assert not verdicts["slo_attainment"].passed and "slo_attainment" in verdicts["slo_attainment"].message
    assert verdicts["total_throughput_per_gpu"].passed and verdicts["user_output_throughput"].passed


def test_repeats_keep_their_own_per_gpu_figures():
    one, two = ([seed_request()], 10.0), ([seed_request(), seed_request()], 10.0)
    runs = [BenchResult("builtin", aggregate(r, d)[0], len(r), r) for r, d in (one, two)]
    result = with_figures(combine(runs), GPUs(aggregated=4), SLO(ttft_ms=1000))
    assert [run["output_throughput_per_decode_gpu"] for run in result.runs] == pytest.approx([15 / 4, 30 / 4])
    assert result.metrics["output_throughput_per_decode_gpu"] == pytest.approx(22.5 / 4)
    assert result.metrics["slo_attainment"] == 1.0 and result.deployment["mode"] == "aggregated"
    assert figures(result, None, SLO()).keys() == {"interactivity", "user_output_throughput"}


def test_the_gpus_of_a_plan():
    cfg = config.from_dict(raw("local-sim-2tp4-1tp8.json"))
    assert gpus_of(plan.plan(cfg, "llama-70b", run_id="r")) == GPUs(prefill=8, decode=8)
    cfg = config.from_dict(raw("local-sim-aggregated.json"))
    assert gpus_of(plan.plan(cfg, "llama-8b", run_id="r")) == GPUs(aggregated=4)
