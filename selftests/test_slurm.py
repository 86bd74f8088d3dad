"""Slurm as the engine that owns the nodes: the roles on an allocation's nodes, the srun steps (goldens), the config's
slurm keys, and bring-ups through a real Slurm (selftests/slurm_cluster.py: slurmctld + 3 slurmd on 127.0.0.2..4)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from pytest_sglang_pd import config, plan, slurm
from pytest_sglang_pd.hosts import SlurmHost, srun_argv
from selftests.configs import CONFIGS, REPO, assert_golden, free_port, raw, write
from selftests.live import CLUSTER_TESTS, alive, recorded, start_suite
from selftests.slurm_cluster import slurm_config

NAMES = ["n1", "n2", "n3", "n4", "n5"]
ADDRESSES = {n: f"127.0.0.{i + 2}" for i, n in enumerate(NAMES)}


def slurm_cfg(**over) -> config.ClusterConfig:
    data = raw("local-slurm.json")
    for k, v in over.items():
        data["config"][k] = v
    return config.from_dict(data, source=str(CONFIGS / "local-slurm.json"), user="sgl")




# ------------------------------------------------------------------------------------------ quick: roles and argv
def test_roles_follow_the_mad_scripts_router_then_xp_prefill_then_yd_decode():
    cfg = slurm_cfg(slurm={"prefill_nodes": "2", "decode_nodes": "2"})
    assert slurm.assign(cfg, NAMES) == {"router": ["n1"], "prefill": ["n2", "n3"], "decode": ["n4", "n5"]}
    placed = slurm.placed(cfg, "42", NAMES, ADDRESSES, owned=True)
    assert (placed.router_node, placed.prefill_nodes, placed.decode_nodes, placed.benchmark_node) == \
        ("127.0.0.2", ("127.0.0.3", "127.0.0.4"), ("127.0.0.5", "127.0.0.6"), "127.0.0.2")
    assert placed.slurm.node_names == {a: n for n, a in ADDRESSES.items()} and placed.slurm.job_id == "42"
    assert placed.log_dir == "/tmp/sglang-pd-sgl/logs/42"  # log_dir/<job id>/
    dep = plan.plan(placed, "llama-8b", run_id="r")
    assert dep.router_url == "http://127.0.0.2:8000"  # URLs from NodeAddr, not the node name
    assert "--prefill" in dep.router.argv and "http://127.0.0.3:30001" in dep.router.argv


def test_nodes_the_config_names_keep_their_roles_and_the_rest_fill_in_order():
    cfg = slurm_cfg(decode_node_list=["n2"], slurm={"prefill_nodes": "2"})
    assert slurm.assign(cfg, NAMES[:4]) == {"router": ["n1"], "prefill": ["n3", "n4"], "decode": ["n2"]}
    named = slurm_cfg(proxy_router_node="n3", prefill_node_list=["n1"], decode_node_list=["n2"])
    assert slurm.assign(named, ["n1", "n2", "n3"]) == {"router": ["n3"], "prefill": ["n1"], "decode": ["n2"]}


def test_a_node_outside_the_allocation_or_too_few_nodes_is_told_with_the_config_key():
    with pytest.raises(slurm.SlurmError) as info:
        slurm.assign(slurm_cfg(prefill_node_list=["n9"]), NAMES[:3])
    assert str(info.value) == "$.config.prefill_node_list: node n9 is not in the allocation (n1, n2, n3)"
    with pytest.raises(slurm.SlurmError) as info:
        slurm.assign(slurm_cfg(slurm={"decode_nodes": "3"}), NAMES[:3])
    assert "the allocation's 3 node(s) (n1, n2, n3) are too few: 5 needed" in str(info.value)
    assert "$.config.slurm.decode_nodes 3" in str(info.value)


def test_sbatch_argv_carries_the_slurm_section():
    cfg = slurm_cfg(slurm={"partition": "gpu", "account": "pd", "time_limit": "2:00:00", "nodes": "4",
                           "extra_args": ["--gres=gpu:8", "--exclusive"]})
    assert slurm.sbatch_argv(cfg, "run1") == [
        "sbatch", "--parsable", "--job-name=sglang-pd-run1", "--nodes=4", "--ntasks-per-node=1", "--output=/dev/null",
        "--partition=gpu", "--account=pd", "--time=2:00:00", "--gres=gpu:8", "--exclusive", "--wrap", "sleep infinity"]
    assert "--nodes=3" in slurm.sbatch_argv(slurm_cfg(), "r")  # default: 1 router + 1 prefill + 1 decode


def test_srun_step_argv_and_the_slurm_host_name_the_node_by_its_slurm_name():
    assert srun_argv("7", "n2", ["true"]) == ["srun", "--jobid", "7", "--nodelist", "n2", "--overlap", "-N1", "-n1",
                                              "--quiet", "true"]
    host = SlurmHost("127.0.0.3", job_id="7", slurm_node="n2")
    assert host.access == {"node": "127.0.0.3", "transport": "slurm", "job_id": "7", "slurm_node": "n2"}


def test_plan_of_the_shipped_slurm_config_shows_the_srun_steps(monkeypatch):
    """Golden: `sglang-pd plan` of local-slurm.json before any allocation (node1.. stand for its nodes)."""
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    cfg = slurm.planned(slurm_cfg())
    assert_golden("slurm-local-steps.txt", slurm.steps_text(cfg, plan.plan(cfg, "llama-8b", run_id="RUN")) + "\n")


def test_pyxis_steps_of_a_docker_config_are_planned_with_the_container_flags(monkeypatch):
    """Golden: runtime docker with slurm.containers pyxis: each process an `srun --container-image` step in an
    allocation named by slurm.job_id (planned only: pyxis/enroot cannot run here)."""
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    data = raw("docker-sim.json")
    c = data["config"]
    for k in ("prefill_node_list", "decode_node_list", "proxy_router_node", "benchmark_serv_node", "nnodes"):
        c.pop(k, None)
    c.update(transport="slurm", slurm={"job_id": "4242", "containers": "pyxis"})
    c["container_config"]["env_dict"] = {"HF_TOKEN": "hf_secret_value_123", "SGLANG_USE_AITER": "1"}
    cfg = slurm.planned(config.from_dict(data, source="docker-slurm.json", user="sgl"))
    text = slurm.steps_text(cfg, plan.plan(cfg, "llama-8b", run_id="RUN"))
    assert "--container-image=" in text and "not released by the suite" in text
    assert "hf_secret_value_123" not in text and text.count("--export=ALL,HF_TOKEN ") == 3
    assert_golden("slurm-pyxis-steps.txt", text + "\n")


def test_cli_validate_of_a_slurm_config_counts_the_nodes_of_the_allocation():
    r = subprocess.run([sys.executable, "-m", "pytest_sglang_pd.cli", "validate", str(CONFIGS / "local-slurm.json")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "OK (3 node(s) of a Slurm allocation; models: llama-8b;" in r.stdout, r.stderr


def test_cli_plan_of_a_slurm_config_prints_the_steps():
    r = subprocess.run([sys.executable, "-m", "pytest_sglang_pd.cli", "plan", str(CONFIGS / "local-slurm.json")],
                       capture_output=True, text=True, timeout=60, env={**os.environ, "SLURM_JOB_ID": ""})
    assert r.returncode == 0, r.stderr
    assert "node2: slurm node node2 of allocation <job id> (srun steps)" in r.stdout
    assert "slurm: the suite allocates, released by scancel <job id> at the end: sbatch " in r.stdout
    assert "[prefill_0] $ srun --jobid '<job id>' --nodelist node2 --overlap -N1 -n1 --quiet " in r.stdout
    r = subprocess.run([sys.executable, "-m", "pytest_sglang_pd.cli", "plan", "--format", "json",
                        str(CONFIGS / "local-slurm.json")], capture_output=True, text=True, timeout=60,
                       env={**os.environ, "SLURM_JOB_ID": "77"})
    planned = json.loads(r.stdout)
    assert planned["nodes"][0] == {"node": "node1", "transport": "slurm", "job_id": "77", "slurm_node": "node1"}
    assert planned["models"]["llama-8b"]["slurm"][0] == "slurm: allocation 77, not released by the suite"


@pytest.mark.parametrize("slurm_section, path, says", [
    ({"partiton": "gpu"}, "$.config.slurm.partiton", "unknown key 'partiton'; did you mean 'partition'?"),
    ({"time_limit": "soon"}, "$.config.slurm.time_limit", "expected a Slurm time limit"),
    ({"job_id": "abc"}, "$.config.slurm.job_id", "expected a Slurm job id"),
    ({"nodes": "2"}, "$.config.slurm.nodes", "2 is fewer than the 3 nodes the roles need"),
    ({"containers": "pyxis"}, "$.config.slurm.containers", "pyxis starts the containers of runtime docker"),
])
def test_bad_slurm_keys_are_named_by_their_json_path(tmp_path, slurm_section, path, says):
    data = raw("local-slurm.json")
    data["config"]["slurm"] = slurm_section
    with pytest.raises(config.ConfigError) as info:
        config.load(write(tmp_path, data))
    found = {p.path: p.message for p in info.value.problems}
    assert path in found and says in found[path], found


def test_a_slurm_section_without_transport_slurm_and_missing_nodes_without_slurm_are_errors(tmp_path):
    data = raw("local-sim.json")
    data["config"]["slurm"] = {"partition": "gpu"}
    del data["config"]["decode_node_list"]
    with pytest.raises(config.ConfigError) as info:
        config.load(write(tmp_path, data))
    found = {p.path: p.message for p in info.value.problems}
    assert found["$.config.slurm"] == "is read only with \"transport\": \"slurm\" (transport is 'local')"
    assert found["$.config.decode_node_list"].startswith("is required but missing")


def test_the_packaged_local_slurm_config_is_the_shipped_one():
    assert (REPO / "pytest_sglang_pd" / "cluster_configs" / "local-slurm.json").read_bytes() == \
        (CONFIGS / "local-slurm.json").read_bytes()


# ------------------------------------------------------------------------------------------ integration: real Slurm
@pytest.mark.slurm
def test_throwaway_slurm_runs_a_step_on_each_node_at_its_own_address(slurm):
    """The fixture's nodes are idle and each srun step can bind its node's NodeAddr (same port on every node)."""
    assert sorted(slurm.idle()) == ["n1", "n2", "n3"]
    port = free_port(*slurm.nodes.values())
    bind = f"import socket; s = socket.socket(); s.bind(('{{}}', {port})); print(s.getsockname()[0])"
    for name, addr in slurm.nodes.items():
        out = subprocess.run(["srun", "-N1", "-n1", "-w", name, "python3", "-c", bind.format(addr)],
                             env=slurm.env, capture_output=True, text=True, timeout=60)
        assert (out.returncode, out.stdout.strip()) == (0, addr), out.stderr
    assert slurm.settled_jobs() == []


def nothing_left(results: Path, cluster) -> None:
    """No job in squeue, no process the run recorded still alive, no port of the config still served."""
    assert cluster.jobs() == []
    state = json.loads((results / "run" / "cluster-state.json").read_text())
    assert state["processes"], "the run recorded no process"
    assert [p["key"] for p in state["processes"] if alive(p["pid"])] == []


@pytest.mark.slurm
def test_the_whole_suite_runs_through_a_real_allocation_and_leaves_no_job_or_process(tmp_path, slurm):
    config_path = slurm_config(tmp_path, slurm)
    results = tmp_path / "results"
    run = subprocess.run([sys.executable, "-m", "pytest", f"--cluster-config={config_path}",
                          f"--results-dir={results}", "--run-id=run", "-p", "no:cacheprovider"],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    running = re.search(r"slurm: allocation (\d+) running on n1 \(127.0.0.2\), n2 \(127.0.0.3\), n3 \(127.0.0.4\)",
                        run.stdout)
    assert running, run.stdout[-4000:]
    job = running.group(1)
    assert f"slurm: releasing allocation {job} (scancel)" in run.stdout
    nothing_left(results, slurm)
    state = json.loads((results / "run" / "cluster-state.json").read_text())
    assert state["slurm"] == {"job_id": job, "owned": True,
                              "node_names": {"127.0.0.2": "n1", "127.0.0.3": "n2", "127.0.0.4": "n3"}}
    placed = {(p["key"], p["node"]) for p in state["processes"]}
    assert placed >= {("prefill_0", "127.0.0.3"), ("decode_0", "127.0.0.4"), ("router", "127.0.0.2")}
    node_logs = tmp_path / "node-logs" / job / "run"  # log_dir/<job id>/ on the nodes
    assert {"prefill_0.log", "decode_0.log", "router.log"} <= {p.name for p in node_logs.iterdir()}
    data = json.loads((results / "run" / "results.json").read_text())
    assert data["summary"]["failed"] == 0 and data["summary"]["passed"] >= 3
    assert data["cluster"]["router_url"].startswith("http://127.0.0.2:")


@pytest.mark.slurm
def test_sigterm_during_bring_up_still_releases_the_allocation(tmp_path, slurm):
    results = tmp_path / "results"
    suite = start_suite(slurm_config(tmp_path, slurm, sim={"startup_delay_s": "30"}), results)
    try:
        recorded(results, "decode")
        assert [line.split()[1] for line in slurm.jobs()] == ["RUNNING"]
        suite.send_signal(signal.SIGTERM)
        out, _ = suite.communicate(timeout=90)
    finally:
        if suite.poll() is None:
            suite.kill()
    assert suite.returncode == 2, out
    assert "received signal SIGTERM" in out and "slurm: releasing allocation" in out
    nothing_left(results, slurm)


@pytest.mark.slurm
def test_a_run_inside_an_existing_allocation_leaves_it_running(tmp_path, slurm):
    job = slurm.run("sbatch", "--parsable", "-N", "3", "--output=/dev/null", "--wrap", "sleep infinity").strip()
    try:
        slurm.run("scontrol", "show", "job", job)
        results = tmp_path / "results"
        run = subprocess.run([sys.executable, "-m", "pytest", CLUSTER_TESTS, f"--results-dir={results}",
                              f"--cluster-config={slurm_config(tmp_path, slurm)}", "--run-id=run", "-p",
                              "no:cacheprovider"], capture_output=True, text=True, timeout=300, cwd=REPO,
                             env={**slurm.env, "SLURM_JOB_ID": job})
        assert run.returncode == 0, run.stdout[-4000:]
        assert f"slurm: running in allocation {job} (not released by the suite)" in run.stdout
        assert [line.split() for line in slurm.jobs()] == [[job, "RUNNING"]]  # the user's allocation stays
        state = json.loads((results / "run" / "cluster-state.json").read_text())
        assert state["slurm"]["owned"] is False and not [p for p in state["processes"] if alive(p["pid"])]
    finally:
        slurm.run("scancel", job, check=False)


def _sglang_pd(slurm, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest_sglang_pd.cli", *args], capture_output=True, text=True,
                          timeout=300, env=slurm.env, cwd=REPO)


@pytest.mark.slurm
@pytest.mark.parametrize("stop", ["down", "cleanup"])
def test_cli_up_keeps_the_allocation_until_down_or_cleanup_releases_it(tmp_path, slurm, stop):
    config_path = slurm_config(tmp_path, slurm)
    results = tmp_path / "results"
    up = _sglang_pd(slurm, "up", str(config_path), "--results-dir", str(results), "--run-id", "run")
    assert up.returncode == 0, up.stderr[-3000:]
    assert [line.split()[1] for line in slurm.jobs()] == ["RUNNING"]
    router = json.loads((results / "run" / "cluster-state.json").read_text())["router_url"]
    assert router.startswith("http://127.0.0.2:") and requests.get(router + "/readiness", timeout=5).ok
    args = ["down", str(results / "run")] if stop == "down" else ["cleanup", str(config_path), "--results-dir",
                                                                   str(results)]
    done = _sglang_pd(slurm, *args)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "slurm allocation" in done.stdout and "(scancel)" in done.stdout
    nothing_left(results, slurm)
    with pytest.raises(requests.ConnectionError):
        requests.get(router + "/readiness", timeout=5)


@pytest.mark.slurm
def test_sigterm_while_the_allocation_is_still_queued_cancels_it(tmp_path, slurm):
    """The release is armed as soon as sbatch names the job: an abort during the wait in the queue cancels it."""
    results = tmp_path / "results"
    suite = start_suite(slurm_config(tmp_path, slurm, slurm={"extra_args": ["--begin=now+3600"]}), results)
    try:
        deadline = time.monotonic() + 60
        while [line.split()[1] for line in slurm.jobs()] != ["PENDING"]:
            assert time.monotonic() < deadline and suite.poll() is None, "the suite's job never queued"
            time.sleep(0.2)
        suite.send_signal(signal.SIGTERM)
        out, _ = suite.communicate(timeout=90)
    finally:
        if suite.poll() is None:
            suite.kill()
    assert suite.returncode == 2 and "slurm: releasing allocation" in out, out
    assert slurm.jobs() == []


@pytest.mark.slurm
def test_an_allocation_that_stays_queued_past_its_timeout_fails_naming_the_key_and_is_cancelled(tmp_path, slurm):
    results = tmp_path / "results"
    config_path = slurm_config(tmp_path, slurm, slurm={"extra_args": ["--begin=now+3600"], "queue_timeout_s": "3"})
    run = subprocess.run([sys.executable, "-m", "pytest", CLUSTER_TESTS, f"--cluster-config={config_path}",
                          f"--results-dir={results}", "--run-id=run", "-p", "no:cacheprovider"],
                         capture_output=True, text=True, timeout=120, cwd=REPO)
    assert run.returncode == 1, run.stdout[-3000:]
    assert re.search(r"allocation \d+ still pending \(BeginTime\) after 3 s \(\$\.config\.slurm\.queue_timeout_s\)",
                     run.stdout), run.stdout[-3000:]
    assert slurm.jobs() == []


@pytest.mark.slurm
@pytest.mark.docker
def test_docker_containers_started_through_srun_are_removed_before_the_allocation_is_released(
        tmp_path, slurm, docker_engine, sim_image):
    """`srun docker run -d` leaves the container to the node's Docker daemon, outside the job: teardown removes it."""
    name = f"sglang-pd-slurm-selftest-{os.getpid()}"
    config_path = slurm_config(tmp_path, slurm, runtime="docker", container_image=sim_image, container_name=name,
                               shm_size="1G", container_config={"device_list": [], "volume_dict": {}, "env_dict": {}})
    results = tmp_path / "results"
    owner = f"slurm-selftest-{os.getpid()}"  # the containers' owner label: leftovers of other runs on this machine stay
    run = subprocess.run([sys.executable, "-m", "pytest", CLUSTER_TESTS, f"--cluster-config={config_path}",
                          f"--results-dir={results}", "--run-id=run", "-p", "no:cacheprovider"],
                         capture_output=True, text=True, timeout=600, cwd=REPO,
                         env={**os.environ, "LOGNAME": owner, "USER": owner})
    assert run.returncode == 0, run.stdout[-4000:]
    state = json.loads((results / "run" / "cluster-state.json").read_text())
    assert {c["node"] for c in state["containers"]} == {"127.0.0.2", "127.0.0.3", "127.0.0.4"}
    assert [c.name for c in docker_engine.containers.list(all=True) if c.name.startswith(name)] == []
    assert slurm.jobs() == []


@pytest.mark.slurm
def test_a_spawned_process_is_a_step_of_its_own_that_scancel_ends(tmp_path, slurm):
    """The process outlives the spawn call (its step lasts as long as it) and dies with the allocation."""
    job = slurm.run("sbatch", "--parsable", "-N", "1", "-w", "n3", "--output=/dev/null", "--wrap",
                    "sleep infinity").strip()
    try:
        deadline = time.monotonic() + 60
        while slurm.run("squeue", "-h", "-j", job, "-o", "%T").strip() != "RUNNING":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        host = SlurmHost("127.0.0.4", job_id=job, slurm_node="n3")
        pid = host.spawn(["sleep", "1000"], log_path=str(tmp_path / "sleep.log"))
        time.sleep(1)
        assert host.alive(pid) and alive(pid)
        steps = slurm.run("squeue", "-h", "-s", "-j", job, "-o", "%i %j")
        assert re.search(rf"^{job}\.\d+ sh$", steps, re.MULTILINE), steps  # the spawned step, beside the batch one
        slurm.run("scancel", job)
        deadline = time.monotonic() + 30
        while alive(pid):
            assert time.monotonic() < deadline, f"pid {pid} survived scancel {job}"
            time.sleep(0.2)
        host.close()
    finally:
        slurm.run("scancel", job, check=False)


@pytest.mark.slurm
def test_keep_cluster_keeps_the_allocation_until_sglang_pd_down(tmp_path, slurm):
    results = tmp_path / "results"
    config_path = slurm_config(tmp_path, slurm)
    run = subprocess.run([sys.executable, "-m", "pytest", CLUSTER_TESTS, f"--cluster-config={config_path}",
                          f"--results-dir={results}", "--run-id=run", "--keep-cluster", "-p", "no:cacheprovider"],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 0, run.stdout[-4000:]
    job = json.loads((results / "run" / "cluster-state.json").read_text())["slurm"]["job_id"]
    assert f"kept running in Slurm allocation {job}, router http://127.0.0.2:" in run.stdout
    assert f"remove it with: sglang-pd down {results / 'run'} (and release the allocation)" in run.stdout
    assert [line.split() for line in slurm.jobs()] == [[job, "RUNNING"]]
    done = _sglang_pd(slurm, "down", str(results / "run"))
    assert done.returncode == 0 and f"stopped slurm allocation {job} (scancel)" in done.stdout, done.stderr
    nothing_left(results, slurm)


@pytest.mark.slurm
def test_cleanup_releases_the_suites_orphaned_allocations_and_no_other_job(tmp_path, slurm):
    """A run killed before it recorded its job (SIGKILL during the queue wait): its sglang-pd-<run id> job is found."""
    submit = ("sbatch", "--parsable", "-N", "1", "--output=/dev/null", "--wrap", "sleep infinity")
    orphan = slurm.run(*submit[:2], "--job-name=sglang-pd-killed-run", *submit[2:]).strip()
    other = slurm.run(*submit[:2], "--job-name=someone-elses-training", *submit[2:]).strip()
    try:
        done = _sglang_pd(slurm, "cleanup", str(slurm_config(tmp_path, slurm)), "--results-dir", str(tmp_path))
        assert done.returncode == 0, done.stderr
        assert f"released slurm allocation {orphan} (sglang-pd-killed-run)" in done.stdout
        assert "cleanup: 1 allocation(s) of the suite released" in done.stdout
        assert [line.split()[0] for line in slurm.jobs()] == [other]
    finally:
        slurm.run("scancel", orphan, other, check=False)


def test_checks_that_count_instances_count_the_nodes_the_allocation_will_give(tmp_path):
    """power_of_two needs 2 instances: 2 prefill nodes from the allocation are 2, though the config names none."""
    data = raw("local-slurm.json")
    data["benchmark_params"]["llama-8b"]["prefill_policy"] = "power_of_two"
    with pytest.raises(config.ConfigError) as info:
        config.load(write(tmp_path, data))
    assert [p.path for p in info.value.problems] == ['$.benchmark_params["llama-8b"].prefill_policy']
    data["config"]["slurm"]["prefill_nodes"] = "2"
    assert config.load(write(tmp_path, data)).slurm.prefill_nodes == 2
