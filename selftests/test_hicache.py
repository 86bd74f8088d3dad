"""HiCache on the Mooncake Store: the config, the plan (workers' flags and env, the store's services), and the
services started for real (the Mooncake wheel's master, Debian's etcd, Mooncake's HTTP metadata server) before any
worker and stopped after every worker."""

from __future__ import annotations

import json
import re
import signal
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from pytest_sglang_pd import config, plan
from pytest_sglang_pd.cli import deployment_text
from pytest_sglang_pd.cluster import ClusterError, LiveCluster
from pytest_sglang_pd.sim import launch_server
from pytest_sglang_pd.watch import ClusterWatch
from selftests.configs import REPO, assert_plan_golden, free_port, raw, sim_config, tools_python, write
from selftests.live import alive
from selftests.test_release_commands import parse_with_real_sglang

MODEL = "llama-8b"
NODE = "127.0.0.61"  # a loopback address of its own: the store's default ports stay clear of other runs


def hicache_data(**hicache) -> dict:
    data = raw("local-sim-hicache.json")
    data["config"]["python"] = "python3"  # not this machine's interpreter
    data["benchmark_params"][MODEL]["hicache"].update(hicache)
    return data


def problems_of(tmp_path: Path, data: dict) -> list[config.Problem]:
    with pytest.raises(config.ConfigError) as info:
        plan.load_config(write(tmp_path, data))
    return info.value.problems


# ------------------------------------------------------------------ the plan (quick)
GOLDEN_VARIANTS = {
    "local-sim-etcd": lambda: hicache_data(),
    "mi35x-docker-http": lambda: _mi35x_http(),
}


def _mi35x_http() -> dict:
    data = raw("mi35x-example.json")
    data["config"]["kv_transfer"] = {"backend": "mooncake", "mooncake": {"protocol": "tcp"}}
    for model in data["benchmark_params"].values():
        model["hicache"] = {"storage_backend": "mooncake", "metadata": "http", "node": "node-store",
                            "metadata_port": "8080"}
    return data


@pytest.mark.parametrize("variant", GOLDEN_VARIANTS)
def test_the_hicache_plans_match_their_goldens(variant):
    cfg = config.from_dict(GOLDEN_VARIANTS[variant](), user="sgl")
    assert_plan_golden(cfg, f"hicache-{variant}.json")


def test_workers_get_the_hicache_flags_and_the_store_env_of_their_own_node():
    data = hicache_data(metadata="http", metadata_port="8080", node="127.0.0.9")
    data["config"].update(prefill_node_list=["127.0.0.2"], decode_node_list=["127.0.0.3"], nnodes="2")
    data["config"]["kv_transfer"]["mooncake"] = {"protocol": "tcp"}
    dep = plan.plan(config.from_dict(data), MODEL, run_id="r")
    prefill, decode = dep.role("prefill")[0], dep.role("decode")[0]
    for worker, node in ((prefill, "127.0.0.2"), (decode, "127.0.0.3")):
        assert worker.argv[worker.argv.index("--hicache-storage-backend") + 1] == "mooncake"
        assert "--enable-hierarchical-cache" in worker.argv
        assert {k: v for k, v in worker.env.items() if k.startswith("MOONCAKE_")} == {
            "MOONCAKE_MASTER": "127.0.0.9:50051", "MOONCAKE_MASTER_METRICS_PORT": "9003",
            "MOONCAKE_TE_META_DATA_SERVER": "http://127.0.0.9:8080/metadata", "MOONCAKE_LOCAL_HOSTNAME": node,
            "MOONCAKE_GLOBAL_SEGMENT_SIZE": "4gb", "MOONCAKE_PROTOCOL": "tcp"}
    store = dep.role("store")
    assert [(s.key, s.node, s.port, s.health_path) for s in store] == [
        ("store_metadata", "127.0.0.9", 8080, f"/metadata?key={plan.STORE_PROBE_KEY}"),
        ("store_master", "127.0.0.9", 9003, "/health")]
    assert [p.role for p in dep.processes][:2] == ["store", "store"]  # started first, so stopped last
    assert "127.0.0.9" in dep.nodes and any(c.node == "127.0.0.9" for c in dep.prechecks)
    shown = deployment_text(dep)  # sglang-pd plan
    assert "[store_metadata] role=store node=127.0.0.9 port=8080" in shown
    assert "$ python3 -m mooncake.cli --rpc_address=127.0.0.9 --rpc_port=50051 --metrics_port=9003" in shown


def test_the_store_defaults_to_the_first_prefill_node_and_p2p_handshake_runs_the_master_alone():
    data = hicache_data(metadata="P2PHANDSHAKE")
    data["config"].update(prefill_node_list=["127.0.0.4", "127.0.0.5"], nnodes="3")
    dep = plan.plan(config.from_dict(data), MODEL, run_id="r")
    assert [(s.key, s.node) for s in dep.role("store")] == [("store_master", "127.0.0.4")]
    assert dep.role("decode")[0].env["MOONCAKE_TE_META_DATA_SERVER"] == "P2PHANDSHAKE"


def test_without_hicache_nothing_of_it_is_planned():
    dep = plan.plan(config.from_dict(raw("local-sim.json")), MODEL, run_id="r")
    assert not dep.role("store")
    assert not any("hicache" in a for p in dep.processes for a in p.argv)
    assert not any(k.startswith("MOONCAKE_MASTER") for p in dep.processes for k in p.env)


def test_hicache_config_errors_at_their_json_paths(tmp_path):
    data = hicache_data(metadata="zookeeper", global_segment_size="4tb", master_port="70000")
    data["benchmark_params"][MODEL]["decode_server_args"] = ["--hicache-storage-backend=file"]
    got = {p.path: p.message for p in problems_of(tmp_path, data)}
    base = '$.benchmark_params["llama-8b"]'
    assert set(got) == {f"{base}.hicache.metadata", f"{base}.hicache.global_segment_size",
                        f"{base}.hicache.master_port", f"{base}.decode_server_args[0]"}
    assert "etcd" in got[f"{base}.hicache.metadata"] and "<n>gb" in got[f"{base}.hicache.global_segment_size"]
    assert "remove it here" in got[f"{base}.decode_server_args[0]"]


def test_a_store_port_taken_by_another_service_of_the_node_is_a_config_error(tmp_path):
    data = hicache_data(metadata_port="30002")  # etcd's client port = decode_serv_port on the one node
    (problem,) = problems_of(tmp_path, data)
    assert problem.path == "$.config"
    assert problem.message == ("port 30002 on node 127.0.0.1 is used by 2 services: decode_0 (http), "
                               "HiCache store_etcd (client)")


def test_the_sim_worker_refuses_to_start_without_a_reachable_master(monkeypatch):
    args = launch_server.parse_args(["--model-path", "m", "--enable-hierarchical-cache",
                                     "--hicache-storage-backend", "mooncake"])
    monkeypatch.delenv("MOONCAKE_MASTER", raising=False)
    with pytest.raises(ValueError, match="'MOONCAKE_MASTER' or 'MOONCAKE_CLIENT' is not set"):
        launch_server.check_mooncake_store(args)
    port = free_port()  # nothing listens there
    monkeypatch.setenv("MOONCAKE_MASTER", f"127.0.0.1:{port}")
    with pytest.raises(ValueError, match=f"Failed to setup Mooncake store: master 127.0.0.1:{port} unreachable"):
        launch_server.check_mooncake_store(args)
    args.hicache_storage_backend_extra_config = json.dumps({"master_server_address": f"127.0.0.1:{port + 1}"})
    with pytest.raises(ValueError, match=f"master 127.0.0.1:{port + 1} unreachable"):  # the extra config wins
        launch_server.check_mooncake_store(args)


# ------------------------------------------------------------------ what the real sglang 0.5.23 makes of it
_LOAD_FROM_ENV = ("import dataclasses, json\n"
                  "from sglang.srt.mem_cache.storage.mooncake_store.mooncake_store import MooncakeStoreConfig\n"
                  "print(json.dumps(dataclasses.asdict(MooncakeStoreConfig.load_from_env())))")


@pytest.mark.integration
def test_the_real_sglang_accepts_the_hicache_flags_and_reads_the_store_from_the_planned_env():
    data = _mi35x_http()
    cfg = config.from_dict(data, user="sgl")
    dep = plan.plan(cfg, cfg.model_ids[0], run_id="r")
    decode = dep.role("decode")[0]
    assert [g["error"] for g in parse_with_real_sglang([decode.argv])] == [None]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MOONCAKE_", "SGLANG_HICACHE"))}
    done = subprocess.run([tools_python(), "-c", _LOAD_FROM_ENV], env={**env, **decode.env}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    store = json.loads(done.stdout.strip().splitlines()[-1])
    assert (store["master_server_address"], store["metadata_server"], store["local_hostname"], store["protocol"],
            store["global_segment_size"], store["master_metrics_port"]) == (
        "node-store:50051", "http://node-store:8080/metadata", decode.node, "tcp", 4 * 1024 ** 3, 9003)


# ------------------------------------------------------------------ the services for real (integration)
def live_config(tmp_path: Path, **hicache) -> Path:
    """The shipped HiCache config on free ports of NODE (the store's too), with one small benchmark."""
    path = sim_config(tmp_path, base="local-sim-hicache.json", prefill=(NODE,), decode=(NODE,), router=NODE,
                      tests=("bench_serv_random",))
    data = json.loads(path.read_text())
    c = data["config"]
    taken = {int(v) for k, v in c.items() if k.endswith("_port")} | {int(c["kv_transfer"]["bootstrap_port"])}
    ports = iter(p for p in (free_port(NODE) for _ in range(20)) if p not in taken)
    store = {"master_port": next(ports), "master_metrics_port": next(ports), "metadata_port": next(ports),
             "etcd_peer_port": next(ports), **hicache}
    model = data["benchmark_params"][MODEL]
    model["hicache"].update({k: str(v) for k, v in store.items()})
    model["inference_tests"]["bench_serv_random"].update(num_prompts="16", max_concurrency="8", expected_results={})
    path.write_text(json.dumps(data, indent=2))
    return path


def pids_left(results: Path) -> list[str]:
    state = json.loads((results / "run" / "cluster-state.json").read_text())
    assert {p["key"] for p in state["processes"]} >= {"store_etcd", "store_master", "prefill_0", "decode_0"}
    return [f"{p['key']} (pid {p['pid']})" for p in state["processes"] if alive(p["pid"])]


@pytest.mark.integration
def test_hicache_on_etcd_comes_up_store_first_serves_a_benchmark_and_stops_the_store_last(pytester, tmp_path):
    config_path = live_config(tmp_path)
    results = tmp_path / "results"
    result = pytester.runpytest_subprocess(str(REPO / "pytest_sglang_pd" / "suite"), f"--cluster-config={config_path}",
                                           f"--results-dir={results}", "--run-id=run", "-p", "no:cacheprovider",
                                           timeout=300)
    out = result.stdout.str()
    assert result.ret == 0, out[-4000:]
    run = json.loads((results / "run" / "results.json").read_text())
    (bench,) = [t for t in run["tests"] if t["test"] == "bench_serv_random"]
    assert bench["outcome"] == "passed" and bench["completed_requests"] == 16
    # the store answered before any worker was started, and was stopped after every worker
    assert out.index("2 store service(s) answering: done") < out.index("start 1 prefill process(es)")
    assert out.index("stop 1 prefill process(es)") < out.index("stop 2 store process(es)")
    assert out.index("stop 1 decode process(es)") < out.index("stop 2 store process(es)")
    assert pids_left(results) == []
    logs = results / "run" / "logs" / NODE
    assert "serving client traffic" in (logs / "store_etcd.log").read_text()
    assert "Mooncake store master" in (logs / "prefill-0.log").read_text()  # the sim worker reached the master


@pytest.mark.integration
def test_hicache_on_the_http_metadata_server_comes_up_the_watch_names_its_exit_and_nothing_is_left(tmp_path):
    cfg = plan.load_config(live_config(tmp_path, metadata="http"))
    dep = plan.plan(cfg, MODEL, run_id="r")
    with LiveCluster(cfg, dep, tmp_path / "run") as cluster:
        cluster.bring_up(smoke=True)
        metadata, master = dep.role("store")
        assert requests.get(f"{metadata.url}/metadata?key=nothing", timeout=5).status_code == 404
        assert requests.get(f"{master.url}/health", timeout=5).json()["service_ready"] is True
        assert cluster.procs["decode_0"].spec.env["MOONCAKE_TE_META_DATA_SERVER"] == f"{metadata.url}/metadata"
        pids = {k: rp.pid for k, rp in cluster.procs.items()}
        os.kill(pids["store_master"], signal.SIGKILL)  # the store going away during a benchmark: the watch names it
        with ClusterWatch(cluster, "llama-8b-bench_serv_random", stall_s=60) as watch:
            deadline = time.monotonic() + 10
            while watch.look() is None and time.monotonic() < deadline:
                time.sleep(0.1)
        assert (watch.cause or "").startswith(f"store store_master on node {NODE} exited with code"), watch.cause
    assert [k for k, pid in pids.items() if alive(pid)] == []
    assert (tmp_path / "run" / "logs" / NODE / "store_metadata.log").exists()


@pytest.mark.integration
def test_a_store_service_that_cannot_bind_fails_the_bring_up_and_no_worker_starts(tmp_path):
    """A server already listening on the store's port is named by the prechecks, before anything starts; a port
    bound but not listening (as one taken after the prechecks looks to them) fails the store's own start."""
    cfg = plan.load_config(live_config(tmp_path))
    dep = plan.plan(cfg, MODEL, run_id="r")
    port = cfg.model(MODEL).hicache.metadata_port
    with socket.socket() as squatter:
        squatter.bind((NODE, port))
        squatter.listen()
        with LiveCluster(cfg, dep, tmp_path / "precheck") as cluster:
            with pytest.raises(ClusterError) as info:
                cluster.bring_up()
            assert not cluster.procs
    assert f"Ports in use:\n  node {NODE}: something already answers" in str(info.value)
    assert f"in use: {NODE}:{port} HiCache store_etcd (client)" in str(info.value)
    with socket.socket() as squatter:
        squatter.bind((NODE, port))
        with LiveCluster(cfg, dep, tmp_path / "run") as cluster:
            with pytest.raises(ClusterError) as info:
                cluster.bring_up()
            pids = {k: rp.pid for k, rp in cluster.procs.items()}
    message = str(info.value)
    assert f"not started: store_etcd on node {NODE}, port {port} (" in message
    assert "no worker was started" in message
    assert "last 50 lines of" in message and "address already in use" in message
    assert set(pids) == {"store_etcd", "store_master"}  # nothing after the store was started
    assert [k for k, pid in pids.items() if alive(pid)] == []


@pytest.mark.integration
def test_up_lists_the_store_and_down_stops_it_after_the_workers(tmp_path):
    config_path, results = live_config(tmp_path), tmp_path / "results"
    up = subprocess.run(["sglang-pd", "up", str(config_path), "--results-dir", str(results), "--run-id", "run"],
                        capture_output=True, text=True, timeout=180)
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        assert re.search(rf"store +http://{re.escape(NODE)}:\d+ +ready after", up.stdout), up.stdout
    finally:
        down = subprocess.run(["sglang-pd", "down", str(results / "run")], capture_output=True, text=True, timeout=60)
    stopped = [line.split()[2] for line in down.stdout.splitlines() if line.startswith("stopped ")]
    assert sorted(stopped[-2:]) == ["store_etcd", "store_master"] and len(stopped) == 5, down.stdout
    assert pids_left(results) == []
