"""The real SGLang client tools (sglang 0.5.23 from PyPI, in the venv `scripts/setup --bench-tools` builds) against
the embedded simulated cluster: bench_serving and few_shot_gsm8k measure every test of the shipped
local-sim-sglang-tools.json through the real router.

The tools venv is ``$BENCH_TOOLS_VENV`` (default ``.bench-tools`` in the repository); without it these tests skip,
saying so. ``scripts/setup --dev`` (what CI runs) builds it, so nothing skips there.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pytest_sglang_pd.report import results
from selftests.configs import REPO, sim_config, tools_python

pytestmark = pytest.mark.integration
INFERENCE_TESTS = str(REPO / "pytest_sglang_pd" / "suite" / "test_inference.py")


@pytest.fixture(scope="module")
def bench_python() -> str:
    return tools_python()


def test_the_shipped_tools_config_passes_through_the_real_bench_serving_and_few_shot_gsm8k(
        pytester: pytest.Pytester, tmp_path: Path, bench_python: str) -> None:
    config = sim_config(tmp_path, base="local-sim-sglang-tools.json", bench_python=bench_python)
    run = pytester.runpytest_subprocess(INFERENCE_TESTS, f"--cluster-config={config}",
                                        f"--results-dir={pytester.path / 'reports'}", "--run-id=tools",
                                        "-p", "no:cacheprovider", "-rfE", timeout=600)
    run.assert_outcomes(passed=3)
    run_dir = pytester.path / "reports" / "tools"
    data = json.loads((run_dir / "results.json").read_text())
    results.validate(data)
    by_id = {t["id"]: t for t in data["tests"]}
    assert {i: (t["tool"], t["tool_version"]) for i, t in by_id.items()} == {
        "llama-8b-gsm8k": ("sglang.test.few_shot_gsm8k", "0.5.23"),
        "llama-8b-bench_serv_random": ("sglang.benchmark.serving", "0.5.23"),
        "llama-8b-generated_shared_prefix": ("sglang.benchmark.serving", "0.5.23"),
    }
    gsm8k = by_id["llama-8b-gsm8k"]
    assert "--data-path" in gsm8k["command"] and gsm8k["metrics"]["accuracy"] >= 0.8  # the simulator's questions
    assert Path(gsm8k["artifacts"]["gsm8k_data"]).read_text().count("####") == 50
    rnd = by_id["llama-8b-bench_serv_random"]
    assert rnd["metrics"]["completed"] == 100 and rnd["metrics"]["kv_handoffs"] >= 100
    assert by_id["llama-8b-generated_shared_prefix"]["metrics"]["cache_hit_rate"] > 0.5  # from the workers' counters
    html = (run_dir / "report.html").read_text()
    assert "sglang.benchmark.serving (sglang 0.5.23)" in html and "sglang.test.few_shot_gsm8k (sglang 0.5.23)" in html
