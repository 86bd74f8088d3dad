"""Length fidelity: the prompt and output tokens the server reported against what the test asked; a mismatch is an
invalid measurement. On the simulated cluster both clients produce the asked lengths, and a server that cuts the
outputs short (a context length too small for the test) fails the test naming the figures."""

from __future__ import annotations

import json

import pytest

from pytest_sglang_pd import gating
from pytest_sglang_pd.bench.result import BenchResult, RequestRecord
from selftests.configs import REPO, sim_config, tools_python
from selftests.test_gating import _test


def _records(prompts: list[int], outputs: list[int]) -> BenchResult:
    recs = [RequestRecord(success=True, prompt_tokens=p, output_tokens=o) for p, o in zip(prompts, outputs)]
    return BenchResult("builtin", {"completed": float(len(recs))}, len(recs), records=recs)


def test_lengths_within_the_range_pass_and_a_short_mean_or_outliers_are_an_invalid_measurement():
    t = _test({"mean_tpot_ms": 100}, input_length=512, output_length=128, random_range_ratio=0.5)
    assert gating.asked_lengths(t) == {"prompt": (256, 512), "output": (64, 128)}
    fine = gating.check_lengths(t, _records([260, 500, 384, 390], [64, 128, 100, 92]))
    assert [v.passed for v in fine] == [True, True]
    short = gating.check_lengths(t, _records([260, 500, 384, 390], [20, 30, 25, 28]))
    output = next(v for v in short if v.metric == "output_tokens")
    assert not output.passed
    assert output.message == ("invalid measurement: output tokens the server reported: mean 25.8 vs asked 96 "
                              "(-73.2%, allowed 28.9%), min 20, max 30, 4 of 4 requests outside 64..128")
    drift = gating.check_lengths(t, _records(list(range(256, 513)) * 2 + [450] * 100, [96] * 614))[0]
    assert "allowed 5%" in drift.message  # at 512+ requests the sampling allowance is below the 5% rule
    repeated = _records([256, 512] * 30, [64, 128] * 30)
    repeated.runs = [{}] * 30  # 30 repeats of one 2-request draw: its allowance is a 2-request draw's
    assert "allowed 5%)" not in gating.check_lengths(t, repeated)[0].message
    outlier = gating.check_lengths(t, _records([384, 384, 384, 900], [96] * 4))[0]
    assert not outlier.passed and "1 of 4 requests outside 256..512" in outlier.message


@pytest.mark.integration
@pytest.mark.parametrize("client", ["builtin", "sglang"])
def test_both_clients_produce_the_asked_lengths_on_the_simulator(tmp_path, pytester, client):
    extra = {"bench_python": tools_python()} if client == "sglang" else {}
    config = sim_config(tmp_path, tests=("bench_serv_random",), base="local-sim-sglang-tools.json"
                        if client == "sglang" else "local-sim.json", **extra)
    data = json.loads(config.read_text())
    data["benchmark_params"]["llama-8b"]["inference_tests"]["bench_serv_random"].update(
        num_prompts="48", input_length="256", output_length="64", random_range_ratio="0.5", max_concurrency="8",
        bench_client=client)
    config.write_text(json.dumps(data))
    out = pytester.runpytest_subprocess(str(REPO / "pytest_sglang_pd" / "suite" / "test_inference.py"),
                                        f"--cluster-config={config}", f"--results-dir={tmp_path / 'r'}",
                                        "--run-id=run", "-p", "no:cacheprovider", timeout=300)
    test = json.loads((tmp_path / "r" / "run" / "results.json").read_text())["tests"][0]
    lengths = {v["metric"]: v for v in test["verdicts"] if v["source"] == "lengths"}
    assert set(lengths) == {"prompt_tokens", "output_tokens"}, out.stdout.str()
    assert all(v["passed"] for v in lengths.values()), lengths
    assert out.ret == 0, out.stdout.str()


@pytest.mark.integration
def test_outputs_cut_short_by_the_server_fail_as_an_invalid_measurement(tmp_path, pytester):
    config = sim_config(tmp_path, tests=("bench_serv_random",))
    data = json.loads(config.read_text())
    model = data["benchmark_params"]["llama-8b"]
    model["server_args"] = ["--context-length", "300"]  # 256-token prompts leave room for only a few outputs
    model["inference_tests"]["bench_serv_random"].update(num_prompts="24", input_length="256", output_length="128",
                                                         random_range_ratio="1", max_concurrency="8")
    config.write_text(json.dumps(data))
    out = pytester.runpytest_subprocess(str(REPO / "pytest_sglang_pd" / "suite" / "test_inference.py"),
                                        f"--cluster-config={config}", f"--results-dir={tmp_path / 'r'}",
                                        "--run-id=run", "-p", "no:cacheprovider", timeout=300)
    assert out.ret == 1, out.stdout.str()
    test = json.loads((tmp_path / "r" / "run" / "results.json").read_text())["tests"][0]
    output = next(v for v in test["verdicts"] if v["metric"] == "output_tokens")
    assert not output["passed"]
    assert output["message"].startswith("invalid measurement: output tokens the server reported: mean ")
    assert "vs asked 128" in output["message"] and "requests outside 128" in output["message"]
    assert "invalid measurement: output tokens" in test["message"]
