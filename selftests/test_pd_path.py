"""The PD path on the simulated cluster with the real router: streams cut short are failed requests, counted and
named in the verdict (docs/failure-modes.md row 19)."""

from __future__ import annotations

import pytest

from pytest_sglang_pd import gating
from pytest_sglang_pd.bench import builtin
from pytest_sglang_pd.bench.result import TRUNCATED, truncated_count
from selftests.live import alive, sim_cluster
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
