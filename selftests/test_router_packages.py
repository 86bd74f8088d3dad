"""The embedded cluster behind either router package: the whole local-sim suite through smg 1.13.0 from its own venv
(`scripts/setup --dev` builds it; sglang-router 0.3.2, the suite's own, runs in test_report.py), and the router's
smg_* metrics and the workers' own counters read after real requests."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests

from pytest_sglang_pd import plan, prom
from pytest_sglang_pd.bench import pd_metrics
from pytest_sglang_pd.bench.result import BenchResult
from pytest_sglang_pd.cluster import LiveCluster
from pytest_sglang_pd.report import results
from selftests.configs import REPO, sim_config, smg_python

pytestmark = pytest.mark.integration


def _with_router(path: Path, **router: str) -> Path:
    data = json.loads(path.read_text())
    data["config"]["router"] = router
    path.write_text(json.dumps(data))
    return path


def test_the_local_sim_suite_passes_through_smg(pytester: pytest.Pytester, tmp_path: Path) -> None:
    config = _with_router(sim_config(tmp_path, sim={"speedup": "20"}), package="smg", python=smg_python())
    run = pytester.runpytest_subprocess(str(REPO / "pytest_sglang_pd" / "suite"), f"--cluster-config={config}",
                                        f"--results-dir={pytester.path / 'reports'}", "--run-id=smg",
                                        "-p", "no:cacheprovider", "-rfE", timeout=300)
    run.assert_outcomes(passed=7, skipped=1)  # the RDMA check skips on the simulator
    data = json.loads((pytester.path / "reports" / "smg" / "results.json").read_text())
    results.validate(data)
    assert data["cluster"]["router"] == "smg 1.13.0"
    for t in data["tests"]:
        assert t["router"] == "smg 1.13.0" and t["metrics"]["router_errors"] == 0 and t["metrics"]["router_cb_open"] == 0
        routed = {url: w.get("router_requests") for url, w in t["workers"].items()}
        assert all(n and n > 0 for n in routed.values()), routed  # smg's own per-worker counts
    assert "smg launch" not in run.stdout.str()  # python -m smg launch, no console script
    router_log = (pytester.path / "reports" / "smg" / "logs" / "127.0.0.1" / "router-0.log").read_text()
    assert "--mini-lb" not in router_log


def _drop_from_router(router_url: str, worker_url: str) -> None:
    """Take a worker out of the router (DELETE /workers/{id}, both packages), as a router does with one it gave up on."""
    listed = requests.get(f"{router_url}/workers", timeout=10).json()["workers"]
    worker_id = next(w["id"] for w in listed if w["url"] == worker_url)
    assert requests.delete(f"{router_url}/workers/{worker_id}", timeout=10).status_code in (200, 202)
    deadline = time.monotonic() + 10
    while any(w["url"] == worker_url for w in requests.get(f"{router_url}/workers", timeout=10).json()["workers"]):
        assert time.monotonic() < deadline, f"the router still lists {worker_url}"
        time.sleep(0.2)


def test_an_idle_decode_is_named_from_the_workers_counters_behind_either_router(tmp_path: Path) -> None:
    """A decode the router no longer routes to, though it is up: the workers' own counters name it."""
    for package, python in (("sglang-router", None), ("smg", smg_python())):
        path = sim_config(tmp_path / package, prefill=("127.0.0.1",), decode=("127.0.0.1", "127.0.0.2"))
        cfg = plan.load_config(_with_router(path, package=package, **({"python": python} if python else {})))
        with LiveCluster(cfg, plan.plan(cfg, "llama-8b", run_id="idle"), tmp_path / package / "run") as cluster:
            cluster.bring_up(smoke=False)
            idle = cluster.worker_urls["decode"][1]
            _drop_from_router(cluster.router_url, idle)
            before = prom.worker_metrics(cluster.worker_urls)
            router_before = prom.router_metrics(cluster.router_metrics_url)
            for i in range(8):
                body = {"text": f"question number {i}", "sampling_params": {"max_new_tokens": 2}}
                assert requests.post(cluster.router_url + "/generate", json=body, timeout=30).status_code == 200
            after = prom.worker_metrics(cluster.worker_urls)
            result = BenchResult("builtin", {}, 8)
            router_after = prom.router_metrics(cluster.router_metrics_url)
            assert pd_metrics.router_metrics(router_before, router_after, result)["router_errors"] == 0
            errors: list[str] = []
            assert pd_metrics.idle_workers(before, after, router_after["requests"], errors) == {"idle_workers": 1.0}
            assert errors[0].startswith(f"decode worker {idle} received no requests while its 1 peer(s) served 8 "
                                        "(its own sglang:num_requests_total)"), (package, errors)


def test_smg_counts_a_prefill_whose_bootstrap_port_refuses_as_a_rendezvous_failure(tmp_path: Path) -> None:
    path = sim_config(tmp_path)
    data = json.loads(path.read_text())
    data["config"]["sim"]["faults"] = {"prefill": ["refuse_bootstrap"]}
    path.write_text(json.dumps(data))
    cfg = plan.load_config(_with_router(path, package="smg", python=smg_python()))
    with LiveCluster(cfg, plan.plan(cfg, "llama-8b", run_id="rdv"), tmp_path / "run") as cluster:
        cluster.bring_up(smoke=False)  # smg probes the bootstrap port at registration, warns, and still uses it
        got = pd_metrics.router_metrics(None, prom.router_metrics(cluster.router_metrics_url), BenchResult("builtin", {}, 0))
    assert got["router_rendezvous_failures"] >= 1
