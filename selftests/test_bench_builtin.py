"""The builtin client end to end: the REAL sglang router in PD mode in front of sim prefill/decode workers."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from typing import Iterator

import pytest

from pytest_sglang_pd import gating
from pytest_sglang_pd.bench import builtin, workloads
from pytest_sglang_pd.config import InferenceTest, Threshold
from pytest_sglang_pd.cluster import LiveCluster
from pytest_sglang_pd.textgen import tokenizer
from selftests.live import sim_cluster

SIM_ACCURACY = 0.5
FAST = ["--sim-speedup", "20", "--sim-kv-payload-bytes-per-token", "64", "--sim-accuracy", str(SIM_ACCURACY)]
RANDOM = InferenceTest(name="bench_serv_random", kind="bench_serving", dataset="random", num_prompts=24,
                       input_length=128, output_length=32, random_range_ratio=0.5, warmup_requests=0)
SHARED = InferenceTest(name="generated_shared_prefix", kind="bench_serving", dataset="generated-shared-prefix",
                       gsp_num_groups=3, gsp_prompts_per_group=4, gsp_system_prompt_len=256, gsp_question_len=16,
                       gsp_output_len=8, warmup_requests=0)
GSM8K = InferenceTest(name="gsm8k", kind="gsm8k", dataset=None, num_questions=60, warmup_requests=0)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[LiveCluster]:
    with sim_cluster(tmp_path_factory.mktemp("cluster"), 1, 1, backend="mooncake", worker_args=FAST) as c:
        yield c


@pytest.mark.integration
def test_random_uses_the_servers_token_counts_and_measures_every_request(cluster: LiveCluster) -> None:
    seen: list[tuple[int, int]] = []
    result = builtin.run(cluster.router_url, RANDOM, 8, timeout_s=120, progress=lambda d, n, e: seen.append((d, n)))
    prompts = workloads.prompts_for(RANDOM)
    assert result.num_requests == 24 and result.failed == 0, result.errors
    for prompt, record in zip(prompts, result.records):
        assert record.prompt_tokens == len(tokenizer.encode(prompt.text))  # the server's count, exact for the sim
        assert 64 <= record.prompt_tokens <= 128  # range ratio 0.5
        assert record.output_tokens == prompt.max_new_tokens  # ignore_eos: exactly max_new_tokens
        assert record.ttft_s > 0 and record.latency_s >= record.ttft_s  # equal: the whole stream in one read
        assert len(record.itl_s) == record.output_tokens - 1
    m = result.metrics
    assert m["total_throughput"] > m["output_throughput"] > 0
    assert 0 < m["mean_ttft_ms"] < m["mean_e2e_latency_ms"] and m["mean_tpot_ms"] > 0
    assert m["input_throughput"] == pytest.approx(sum(r.prompt_tokens for r in result.records) / m["duration"])
    assert seen[-1] == (24, 24) and len(seen) == 24


@pytest.mark.integration
def test_shared_prefix_hits_the_cache_after_the_first_prompt_of_a_group(cluster: LiveCluster) -> None:
    result = builtin.run(cluster.router_url, SHARED, 1, timeout_s=120)
    assert result.failed == 0, result.errors
    records = result.records
    for group in range(SHARED.gsp_num_groups):
        first, *rest = records[group * 4:(group + 1) * 4]
        assert first.cached_tokens < SHARED.gsp_system_prompt_len
        assert all(r.cached_tokens >= SHARED.gsp_system_prompt_len for r in rest), [r.cached_tokens for r in rest]
    assert result.metrics["cache_hit_rate"] > 0.5


@pytest.mark.integration
def test_gsm8k_accuracy_follows_the_sims_accuracy_and_gates_both_ways(cluster: LiveCluster) -> None:
    result = builtin.run(cluster.router_url, GSM8K, 16, timeout_s=120)
    assert result.failed == 0, result.errors
    accuracy = result.metrics["accuracy"]
    assert abs(accuracy - SIM_ACCURACY) < 0.2 and result.metrics["invalid"] == 0
    assert all(r.text.rstrip().endswith(".") and "Question" not in r.text for r in result.records)  # stopped at "Question"
    passing = replace(GSM8K, thresholds=(Threshold("accuracy", "accuracy", 0.3, "min", False),))
    failing = replace(GSM8K, thresholds=(Threshold("accuracy", "accuracy", 0.9, "min", False),))
    assert gating.evaluate("m-gsm8k", passing, result, tol_pct=0).passed
    gate = gating.evaluate("m-gsm8k", failing, result, tol_pct=0)
    shown, _ = gating._fmt_pair(accuracy, 0.9)
    assert [v.message for v in gate.failures] == [f"accuracy {shown} < 0.9 (expected 0.9, tolerance 0%)"]


@pytest.mark.integration
def test_poisson_request_rate_spaces_the_requests(cluster: LiveCluster) -> None:
    rate = 20.0
    test = replace(RANDOM, num_prompts=10, output_length=4, request_rate=rate, seed=3)
    result = builtin.run(cluster.router_url, test, 10, timeout_s=60)
    rng = random.Random(3)
    gaps = sum(rng.expovariate(rate) for _ in range(9))  # the client waits after each of the first 9 sends
    assert result.failed == 0 and result.metrics["duration"] >= gaps


@pytest.mark.integration
def test_failed_requests_are_counted_with_their_errors(tmp_path) -> None:
    with sim_cluster(tmp_path, 1, 1, backend="mooncake", worker_args=FAST, prefill_args=["--sim-fault", "kv_fail_fraction=0.5"]) as c:
        test = replace(RANDOM, num_prompts=16)
        result = builtin.run(c.router_url, test, 8, timeout_s=120)
    assert result.num_requests == 16 and len(result.records) == 16
    assert 0 < result.failed < 16 and result.metrics["completed"] == 16 - result.failed
    assert result.errors and all(e for e in result.errors)
    gate = gating.evaluate("m-x", test, result, tol_pct=0)
    assert gate.failures[0].message.startswith(f"failed requests {result.failed} of 16 > allowed 0; first error: ")


def test_an_unreachable_router_fails_every_request_not_the_run() -> None:
    from selftests.configs import free_port

    result = builtin.run(f"http://127.0.0.1:{free_port()}", replace(RANDOM, num_prompts=3), 2, timeout_s=10)
    assert result.failed == 3 and result.metrics["completed"] == 0
    assert result.errors[0].startswith("3 x ConnectionRefusedError talking to http://127.0.0.1:")
    assert math.isclose(result.metrics["output_throughput"], 0.0)

