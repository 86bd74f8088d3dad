"""Aggregated mode on the simulated cluster, run as users run it: plain workers behind the real sglang-router in its
regular mode, a benchmark through it, its per-GPU, per-user and goodput figures in results.json, JUnit and the HTML."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import requests

from pytest_sglang_pd import plan, prom
from pytest_sglang_pd.cluster import LiveCluster
from pytest_sglang_pd.report import results
from selftests.configs import REPO, sim_config, smg_python

pytest_plugins = ["pytester"]
SUITE = str(REPO / "pytest_sglang_pd" / "suite")


@pytest.mark.integration
def test_the_aggregated_sim_cluster_serves_a_benchmark_and_records_its_figures(pytester: pytest.Pytester,
                                                                                tmp_path: Path) -> None:
    path = sim_config(tmp_path, base="local-sim-aggregated.json", tests=("bench_serv_random",), sim={"speedup": "10"})
    data = json.loads(path.read_text())
    test = data["benchmark_params"]["llama-8b"]["inference_tests"]["bench_serv_random"]
    test.update(num_prompts="32", input_length="256", output_length="32", max_concurrency="8")
    test["slo"] = {"ttft_ms": "60000", "tpot_ms": "60000"}  # every request meets it
    # limits any speed of this shared machine meets: what is checked is that the figures are recorded and gated
    test["expected_results"] = {"auto": {"total_throughput_per_gpu": "1", "user_output_throughput": "1",
                                         "slo_attainment": "0.9"}}
    path.write_text(json.dumps(data))
    run = pytester.runpytest_subprocess(SUITE, f"--cluster-config={path}", f"--results-dir={pytester.path / 'r'}",
                                        "--run-id=agg", "-p", "no:cacheprovider", "-rf", timeout=300)
    run.assert_outcomes(passed=5, skipped=1)  # the cluster checks (RDMA skipped: simulated) and the benchmark

    run_dir = pytester.path / "r" / "agg"
    data = json.loads((run_dir / "results.json").read_text())
    results.validate(data)
    (entry,) = data["tests"]
    assert entry["deployment"] == {"mode": "aggregated", "gpus": {"prefill": 0, "decode": 0, "aggregated": 4,
                                                                   "total": 4}}
    assert entry["router"].startswith("sglang-router ") and set(data["cluster"]["worker_versions"]) == {"aggregated"}
    assert {w["role"] for w in entry["workers"].values()} == {"aggregated"} and len(entry["workers"]) == 2
    m = entry["metrics"]
    assert "kv_handoffs" not in m  # no PD handoff to count
    assert m["output_throughput_per_decode_gpu"] == pytest.approx(m["output_throughput"] / 4)
    assert m["input_throughput_per_prefill_gpu"] == pytest.approx(m["input_throughput"] / 4)
    assert m["total_throughput_per_gpu"] == pytest.approx(m["total_throughput"] / 4)
    assert m["interactivity"] == pytest.approx(1000 / m["mean_tpot_ms"])
    assert 0 < m["user_output_throughput"] and m["slo_attainment"] == 1.0
    assert m["goodput"] == pytest.approx(m["request_throughput"])
    gated = {v["canonical"]: v["passed"] for v in entry["verdicts"]}
    assert gated["total_throughput_per_gpu"] and gated["user_output_throughput"] and gated["slo_attainment"]

    junit = ET.parse(run_dir / "junit.xml")
    props = {p.get("name"): p.get("value") for case in junit.iter("testcase") if "bench_serv_random" in case.get("name")
             for p in case.iter("property")}
    assert float(props["total_throughput_per_gpu"]) == pytest.approx(m["total_throughput_per_gpu"], rel=1e-4)
    html = (run_dir / "report.html").read_text()
    assert "aggregated, 4 GPUs (aggregated 4)" in html and "user_output_throughput" in html


@pytest.mark.integration
def test_smg_serves_the_aggregated_workers_in_its_regular_mode(tmp_path: Path) -> None:
    """The same plan behind smg (`python -m smg launch --worker-urls ...`): its smoke requests pass and every worker
    serves requests, none of them counting a KV transfer."""
    path = sim_config(tmp_path, base="local-sim-aggregated.json")
    data = json.loads(path.read_text())
    data["config"]["router"] = {"package": "smg", "python": smg_python()}
    data["benchmark_params"]["llama-8b"]["prefill_policy"] = "round_robin"
    path.write_text(json.dumps(data))
    cfg = plan.load_config(path)
    with LiveCluster(cfg, plan.plan(cfg, "llama-8b", run_id="agg-smg"), tmp_path / "run") as cluster:
        cluster.bring_up()
        assert cluster.deployment.router.argv[1:4] == ("-m", "smg", "launch")
        for i in range(4):
            body = {"text": f"question number {i}", "sampling_params": {"max_new_tokens": 2}}
            assert requests.post(cluster.router_url + "/generate", json=body, timeout=30).status_code == 200
        served = prom.worker_metrics(cluster.worker_urls)["aggregated"]
    assert len(served) == 2 and all(m.get("requests", 0) >= 2 for m in served.values()), served
    assert not any(m.get("kv_transfers") for m in served.values())
