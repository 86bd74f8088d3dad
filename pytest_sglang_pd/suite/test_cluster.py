"""The cluster under test came up as configured: nodes, workers, router, KV handoff, RDMA devices."""

from __future__ import annotations

import pytest
import requests

from pytest_sglang_pd import releases
from pytest_sglang_pd.plan import WORKER_ROLES
from pytest_sglang_pd.worker_http import handoffs


def test_nodes_reachable(request, suite_run, model_under_test):
    if suite_run.router_url:
        pytest.skip("--router-url: the suite connects to no node")
    cluster = request.getfixturevalue("cluster_nodes")
    for node, host in cluster.hosts.items():
        result = host.run(["true"], timeout=30)
        assert result.exit_status == 0, f"node {node} did not run `true`: {result.stderr}"


def test_workers_healthy(pd_cluster):
    urls = [(role, url) for role, found in pd_cluster.worker_urls.items() for url in found]
    assert urls, "no worker known"
    unhealthy = [f"{role} {url}: HTTP {_status(url + '/health')}" for role, url in urls if _status(url + "/health") != 200]
    assert not unhealthy, "workers not healthy:\n" + "\n".join(unhealthy)


def test_router_ready_with_every_worker(pd_cluster, cluster_config):
    if pd_cluster.deployment is not None and not pd_cluster.deployment.has_router:
        pytest.skip("decode alone: no router is deployed (requests go straight to the decode workers)")
    r = requests.get(f"{pd_cluster.router_url}/readiness", timeout=10)
    assert r.status_code == 200, f"router /readiness: HTTP {r.status_code} {r.text[:300]}"
    body = r.json()
    dep = pd_cluster.deployment
    if dep is not None:
        expected = sum(len(dep.servers(role)) for role in dep.worker_roles)
        assert body["healthy_workers"] == body["total_workers"] == expected, f"router /readiness: {body}"
    workers = requests.get(f"{pd_cluster.router_url}/workers", timeout=10).json()
    kinds = [w.get("worker_type") for w in workers.get("workers", [])]
    if dep is not None and dep.aggregated:  # the router's regular mode
        assert kinds and set(kinds) == {"regular"}, f"router /workers lists {kinds} (aggregated: regular workers)"
    else:
        assert "prefill" in kinds and "decode" in kinds, f"router /workers lists {kinds}"


def test_kv_handoff(pd_cluster):
    """A request through the router crosses prefill -> decode: the prefill counts one more KV transfer
    (sglang:kv_transfer_latency_ms, where the workers export SGLang's PD metrics). Aggregated: one worker serves it
    whole, no KV transfer counted. Decode alone: each decode worker serves a fake-prefill request with no prefill."""
    before = handoffs(pd_cluster.worker_urls)
    if pd_cluster.deployment is not None and pd_cluster.deployment.decode_alone:
        for url in pd_cluster.worker_urls["decode"]:
            r = requests.post(f"{url}/generate", timeout=120, json={
                "text": "Hello there", "sampling_params": {"max_new_tokens": 4}, **releases.FAKE_PREFILL})
            assert r.status_code == 200 and r.json()["meta_info"]["finish_reason"]["type"] != "abort", r.text[:500]
        assert not pd_cluster.worker_urls["prefill"], "decode alone planned prefill workers"
        return
    if pd_cluster.deployment is not None and pd_cluster.deployment.aggregated:
        r = requests.post(f"{pd_cluster.router_url}/generate", timeout=120,
                          json={"text": "Hello there", "sampling_params": {"max_new_tokens": 4}})
        assert r.status_code == 200 and r.json()["meta_info"]["finish_reason"]["type"] != "abort", r.text[:500]
        assert not handoffs(pd_cluster.worker_urls), "aggregated workers counted a KV transfer"
        return
    if before is None:
        r = requests.post(f"{pd_cluster.router_url}/generate", timeout=600,
                          json={"text": "Hello", "sampling_params": {"max_new_tokens": 4}})
        assert r.status_code == 200 and r.json()["meta_info"]["finish_reason"]["type"] != "abort", r.text[:500]
        return
    r = requests.post(f"{pd_cluster.router_url}/generate", timeout=120,
                      json={"text": "Hello there", "sampling_params": {"max_new_tokens": 4}})
    assert r.status_code == 200, r.text[:500]
    assert r.json()["meta_info"]["finish_reason"]["type"] != "abort", r.text[:500]
    assert handoffs(pd_cluster.worker_urls) - before == 1


def test_rdma_devices_present(request, cluster_config, suite_run, model_under_test):
    if cluster_config.simulated:
        pytest.skip("engine sim: the simulated workers use no RDMA device")
    if suite_run.router_url:
        pytest.skip("--router-url: the suite connects to no node")
    check = request.getfixturevalue("kv_transfer")
    workers = {p.node for p in request.getfixturevalue("deployment").processes if p.role in WORKER_ROLES}
    assert set(check.findings) == workers
    if cluster_config.kv_transfer.ib_devices:
        assert all("RDMA devices present" in f for f in check.findings.values()), check.findings


def _status(url: str) -> int | str:
    try:
        return requests.get(url, timeout=10).status_code
    except requests.RequestException as exc:
        return type(exc).__name__
