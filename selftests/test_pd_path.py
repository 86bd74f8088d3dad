"""The PD path on the simulated cluster with the real router: a refused bootstrap named within the smoke deadline,
a slowed prefill -> decode pair below kv_transfer.min_gbps named before any benchmark, each pair's GB/s recorded,
streams cut short counted and named in the verdict (docs/failure-modes.md row 19); nothing left running."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from pytest_sglang_pd import gating
from pytest_sglang_pd.bench import builtin
from pytest_sglang_pd.bench.result import TRUNCATED, truncated_count
from selftests.configs import REPO, sim_config
from selftests.live import CLUSTER_TESTS, alive, sim_cluster
from selftests.test_lifecycle import assert_nothing_left
from selftests.test_bench_builtin import FAST, RANDOM

pytestmark = pytest.mark.integration


def test_cut_streams_are_failed_requests_counted_and_named_in_the_verdict(tmp_path):
    with sim_cluster(tmp_path, 1, 1, backend="tcp", worker_args=FAST, decode_args=["--sim-fault", "cut_streams=0.5"]) as c:
        result = builtin.run(c.router_url, RANDOM, 8, timeout_s=60)
        pids = [rp.pid for rp in c.procs.values()]
    cut = truncated_count(result.records)
    assert 0 < cut == result.failed < result.num_requests  # the others complete; none counted as a short success
    assert all(r.output_tokens == 0 for r in result.records if not r.success)
    assert "Not enough data to satisfy transfer length header" in result.errors[0]
    verdict = gating.check_requests(result, 0)
    assert not verdict.passed
    assert verdict.message.startswith(f"failed requests {cut} of {RANDOM.num_prompts} > allowed 0 "
                                      f"({cut} of them {TRUNCATED}s: responses cut short mid-stream); first error: ")
    assert not [p for p in pids if alive(p)]


SUITE = str(REPO / "pytest_sglang_pd" / "suite")


def run_whole_suite(pytester: pytest.Pytester, config: Path, results: Path):
    return pytester.runpytest_subprocess(SUITE, f"--cluster-config={config}", f"--results-dir={results}",
                                         "--run-id=run", "-p", "no:cacheprovider", timeout=240)


def benchmarks_run(results: Path) -> list[str]:
    """The tests that measured anything; the gsm8k benchmark must be recorded, as an error."""
    tests = json.loads((results / "run" / "results.json").read_text())["tests"]
    assert [t["outcome"] for t in tests if t["test"] == "gsm8k"] == ["error"], tests
    return [t["nodeid"] for t in tests if t["metrics"]]


def test_refused_bootstrap_is_named_within_the_smoke_deadline(pytester, tmp_path):
    smoke_s = 20
    config = sim_config(tmp_path, tests=("gsm8k",), timeouts={"smoke_s": smoke_s},
                        sim={"faults": {"prefill": ["refuse_bootstrap"]}})
    address = f"127.0.0.1:{json.loads(config.read_text())['config']['kv_transfer']['bootstrap_port']}"
    t0 = time.monotonic()
    result = run_whole_suite(pytester, config, tmp_path / "results")
    took = time.monotonic() - t0
    out = result.stdout.str()
    assert result.ret == 1 and took < smoke_s + 10, (took, out[-3000:])
    assert (f"decode decode_0 on node 127.0.0.1 cannot connect to the bootstrap server {address} of prefill prefill_0 "
            "($.config.kv_transfer.bootstrap_port): ConnectionRefusedError") in out
    assert "PD handshake cannot start (KV engine mooncake)" in out and "Read timed out" not in out
    assert not benchmarks_run(tmp_path / "results")
    assert_nothing_left(tmp_path / "results")


def test_a_slowed_pair_below_min_gbps_is_named_before_any_benchmark(pytester, tmp_path):
    config = sim_config(tmp_path, decode=("127.0.0.1", "127.0.0.2"), tests=("gsm8k",),
                        kv_transfer={"min_gbps": 0.02}, sim={"faults": {"decode_1": ["slow_kv=100"]}})
    result = run_whole_suite(pytester, config, tmp_path / "results")
    out = result.stdout.str()
    assert result.ret == 1, out[-3000:]
    assert "KV transfer check failed for 1 of 2 prefill -> decode pair(s) (16 MiB each):" in out
    assert re.search(r"prefill_0 on 127\.0\.0\.1 -> decode_1 on 127\.0\.0\.2: 0\.00\d+ GB/s through mooncake < 0\.02 "
                     r"\(\$\.config\.kv_transfer\.min_gbps\)", out), out[-3000:]
    assert "-> decode_0 on 127.0.0.1: " not in out.split("KV transfer check failed", 1)[1].split("\n\n", 1)[0]
    assert not benchmarks_run(tmp_path / "results")
    assert_nothing_left(tmp_path / "results")


def test_each_pairs_gbps_is_recorded_in_results_json(pytester, tmp_path):
    config = sim_config(tmp_path, decode=("127.0.0.1", "127.0.0.2"), kv_transfer={"min_gbps": 0.001})
    result = pytester.runpytest_subprocess(CLUSTER_TESTS, f"--cluster-config={config}",
                                           f"--results-dir={tmp_path / 'results'}", "--run-id=run",
                                           "-p", "no:cacheprovider", timeout=240)
    result.assert_outcomes(passed=4, skipped=1)
    pairs = json.loads((tmp_path / "results" / "run" / "results.json").read_text())["cluster"]["kv_pairs_gbps"]
    assert set(pairs) == {"prefill_0 -> decode_0", "prefill_0 -> decode_1"} and all(v > 0.001 for v in pairs.values())
    assert_nothing_left(tmp_path / "results")
