"""Bring-up and teardown of a whole simulated PD cluster through the validation suite, as users run it.

Each test runs `pytest tests/test_cluster.py` in a subprocess against a config on free ports, then
checks by pid (from the run's cluster-state.json) that nothing it started is left.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from selftests.configs import REPO, free_port, raw, sim_config
from selftests.live import CLUSTER_TESTS, alive, killed_while_loading, recorded, start_suite

pytestmark = pytest.mark.integration  # simulated clusters brought up and torn down (processes, sshd, Docker)

def run_suite(pytester: pytest.Pytester, config: Path, results: Path, *args: str, timeout: float = 240):
    return pytester.runpytest_subprocess(CLUSTER_TESTS, f"--cluster-config={config}", f"--results-dir={results}",
                                         "--run-id=run", "-p", "no:cacheprovider", *args, timeout=timeout)


def state(results: Path) -> dict:
    return json.loads((results / "run" / "cluster-state.json").read_text())


def assert_nothing_left(results: Path) -> None:
    procs = state(results)["processes"]
    assert procs, "the run recorded no process"
    left = [f"{p['key']} (pid {p['pid']})" for p in procs if alive(p["pid"])]
    assert not left, f"left running: {left}"


def test_local_sim_up_and_down_leaves_no_process_and_keeps_logs(pytester, tmp_path):
    config = sim_config(tmp_path)
    result = run_suite(pytester, config, tmp_path / "results")
    result.assert_outcomes(passed=4, skipped=1)
    assert_nothing_left(tmp_path / "results")
    logs = tmp_path / "results" / "run" / "logs" / "127.0.0.1"
    assert {p.name for p in logs.iterdir()} == {"prefill-0.log", "decode-0.log", "router-0.log"}
    assert "The server is fired up and ready to roll!" in (logs / "decode-0.log").read_text()
    assert "\x1b[" not in (logs / "router-0.log").read_text()  # the router's colour codes are stripped
    junit = (tmp_path / "results" / "run" / "junit.xml").read_text()  # the Jenkins gate's default JUnit file
    assert junit.count("<testcase ") == 5 and 'name="test_kv_handoff[llama-8b]"' in junit


def test_two_prefill_two_decode_on_four_loopback_nodes(pytester, tmp_path):
    config = sim_config(tmp_path, prefill=("127.0.0.2", "127.0.0.3"), decode=("127.0.0.4", "127.0.0.5"))
    result = run_suite(pytester, config, tmp_path / "results")
    result.assert_outcomes(passed=4, skipped=1)
    assert_nothing_left(tmp_path / "results")
    logs = tmp_path / "results" / "run" / "logs"
    assert (logs / "127.0.0.3" / "prefill-1.log").exists() and (logs / "127.0.0.5" / "decode-1.log").exists()


def test_worker_crash_at_start_names_role_node_and_log_tail(pytester, tmp_path):
    config = sim_config(tmp_path, sim={"startup_delay_s": "3"})
    data = json.loads(config.read_text())
    data["benchmark_params"]["llama-8b"]["prefill_server_args"] = ["--sim-model-profile", "no-such-model"]
    config.write_text(json.dumps(data))
    result = run_suite(pytester, config, tmp_path / "results")
    out = result.stdout.str()
    assert result.ret == 1
    assert "prefill prefill_0 on node 127.0.0.1 exited with code" in out
    assert "last 50 lines of" in out and "no-such-model" in out
    assert "Traceback" not in out.split("short test summary")[0].split("ERRORS")[-1]
    assert "During handling of the above exception" not in out  # the message alone, once
    assert_nothing_left(tmp_path / "results")


_FAILING_TEARDOWN = """
from pytest_sglang_pd import cluster

_stop_role = cluster.LiveCluster._stop_role


def stop_role(self, role):
    _stop_role(self, role)
    if role == "decode":
        raise cluster.ClusterError("decode decode_0 on 127.0.0.1: injected teardown failure")


cluster.LiveCluster._stop_role = stop_role
"""


def test_teardown_error_after_a_failed_bring_up_is_told_after_the_first_error(pytester, tmp_path):
    config = sim_config(tmp_path, tests=("gsm8k",))
    data = json.loads(config.read_text())
    data["benchmark_params"]["llama-8b"]["prefill_server_args"] = ["--sim-model-profile", "no-such-model"]
    config.write_text(json.dumps(data))
    pytester.makepyfile(failing_teardown=_FAILING_TEARDOWN)  # a teardown that fails, on top of the real one
    results = tmp_path / "results"
    result = pytester.runpytest_subprocess(str(REPO / "pytest_sglang_pd" / "suite"), f"--cluster-config={config}",
                                           f"--results-dir={results}", "--run-id=run", "-p", "no:cacheprovider",
                                           "-p", "failing_teardown", timeout=240)
    out = result.stdout.str()
    first, then = "prefill prefill_0 on node 127.0.0.1 exited with code", "injected teardown failure"
    assert result.ret == 1
    assert first in out and then in out and out.index(first) < out.index("then, while tearing down:") < out.index(then)
    message = json.loads((results / "run" / "results.json").read_text())["tests"][0]["message"]
    assert message.index(first) < message.index(then)
    report = (results / "run" / "report.html").read_text()
    assert first in report and report.index(first) < report.index(then)
    assert_nothing_left(results)


def test_killing_decode_while_waiting_for_readiness_fails_within_5_seconds(tmp_path):
    results = tmp_path / "results"

    def kill(record: dict, _state: dict) -> None:
        worker = subprocess.run(["pgrep", "-P", str(record["pid"])], capture_output=True, text=True).stdout.split()[0]
        os.kill(int(worker), signal.SIGKILL)

    code, out, elapsed = killed_while_loading(sim_config(tmp_path, sim={"startup_delay_s": "30"}), results, kill)
    assert code == 1, out
    assert "decode decode_0 on node 127.0.0.1 exited with code 137" in out
    assert "last 50 lines of" in out and "decode_0.log" in out
    assert elapsed < 5, f"the run ended {elapsed:.1f} s after the decode worker was killed"
    assert_nothing_left(results)


@pytest.mark.parametrize("sig, shown", [(signal.SIGINT, "KeyboardInterrupt"),
                                        (signal.SIGTERM, "received signal SIGTERM")], ids=["ctrl-c", "jenkins-abort"])
def test_interrupt_during_bring_up_tears_everything_down(tmp_path, sig, shown):
    results = tmp_path / "results"
    suite = start_suite(sim_config(tmp_path, sim={"startup_delay_s": "30"}), results)
    try:
        recorded(results, "decode")
        suite.send_signal(sig)
        out, _ = suite.communicate(timeout=60)
    finally:
        if suite.poll() is None:
            suite.kill()
    assert suite.returncode == 2, out  # pytest's "interrupted"
    assert shown in out
    assert_nothing_left(results)
    assert state(results)["stopped"] is True


@pytest.mark.ssh
def test_ssh_transport_with_two_loopback_nodes(pytester, tmp_path, sshd):
    config = sim_config(tmp_path, prefill=(sshd.nodes[0],), decode=(sshd.nodes[1],), router=sshd.nodes[0],
                        transport="ssh", python=sys.executable,
                        ssh={"user": sshd.user, "key_file": sshd.key_file, "port": str(sshd.port)})
    result = run_suite(pytester, config, tmp_path / "results")
    result.assert_outcomes(passed=4, skipped=1)
    assert_nothing_left(tmp_path / "results")
    logs = tmp_path / "results" / "run" / "logs"
    assert (logs / sshd.nodes[0] / "prefill-0.log").exists() and (logs / sshd.nodes[1] / "decode-0.log").exists()


@pytest.mark.docker
def test_docker_sim_up_and_down_leaves_no_container(pytester, tmp_path, docker_engine, sim_image):
    name = f"sglang-pd-selftest-{os.getpid()}"
    config = sim_config(tmp_path, runtime="docker", container_image=sim_image, container_name=name, shm_size="1G",
                        container_config={"device_list": [], "volume_dict": {}, "env_dict": {}})
    result = run_suite(pytester, config, tmp_path / "results", timeout=300)
    result.assert_outcomes(passed=4, skipped=1)
    left = [c.name for c in docker_engine.containers.list(all=True) if c.name.startswith(name)]
    assert not left, f"containers left: {left}"
    logs = tmp_path / "results" / "run" / "logs" / "127.0.0.1"
    assert "The server is fired up and ready to roll!" in (logs / "prefill-0.log").read_text()
    assert (logs / "router-0.log").stat().st_size > 0


@pytest.mark.docker
def test_docker_missing_image_fails_before_anything_starts(pytester, tmp_path, docker_engine):
    name = f"sglang-pd-selftest-missing-{os.getpid()}"
    config = sim_config(tmp_path, runtime="docker", container_image="pytest-sglang-pd-no-such-image:never",
                        container_name=name, container_config={"device_list": [], "volume_dict": {}, "env_dict": {}})
    result = run_suite(pytester, config, tmp_path / "results")
    out = result.stdout.str()
    assert result.ret == 1
    assert "image pytest-sglang-pd-no-such-image:never on node 127.0.0.1" in out
    assert not [c for c in docker_engine.containers.list(all=True) if c.name.startswith(name)]
    assert state(tmp_path / "results")["processes"] == []


def test_keep_cluster_leaves_it_running_until_sglang_pd_down(pytester, tmp_path):
    results = tmp_path / "results"
    result = run_suite(pytester, sim_config(tmp_path), results, "--keep-cluster")
    result.assert_outcomes(passed=4, skipped=1)
    assert f"sglang-pd down {results / 'run'}" in result.stdout.str()
    procs = state(results)["processes"]
    assert all(alive(p["pid"]) for p in procs) and state(results)["stopped"] is False
    down = subprocess.run(["sglang-pd", "down", str(results / "run")], capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    assert down.stdout.count("stopped ") == 3
    assert_nothing_left(results)


def test_cli_up_then_tests_against_its_router_url_then_down(pytester, tmp_path):
    import requests

    results = tmp_path / "results"
    up = subprocess.run(["sglang-pd", "up", str(sim_config(tmp_path)), "--results-dir", str(results), "--run-id", "run"],
                        capture_output=True, text=True, timeout=180)
    try:
        assert up.returncode == 0, up.stderr
        assert "llama-8b bring-up: router /readiness: done, " in up.stderr  # the stages, live
        assert f"stop it: sglang-pd down {results / 'run'}" in up.stdout
        router = up.stdout.split("router ", 1)[1].split()[0]
        assert requests.get(f"{router}/readiness", timeout=5).status_code == 200
        external = run_suite(pytester, sim_config(tmp_path / "other"), tmp_path / "external", f"--router-url={router}")
        external.assert_outcomes(passed=3, skipped=2)
        assert not (tmp_path / "external" / "run" / "cluster-state.json").exists()  # it started nothing
        # pytest-xdist workers against the one cluster: the controller's closing table has what the workers measured
        workers = pytester.runpytest_subprocess(
            str(REPO / "pytest_sglang_pd" / "suite" / "test_inference.py"), f"--cluster-config={sim_config(tmp_path / 'other')}",
            f"--results-dir={tmp_path / 'xdist'}", "--run-id=run", f"--router-url={router}", "-n", "2",
            "-k", "gsm8k or random", "-p", "no:cacheprovider", timeout=240)
        workers.assert_outcomes(passed=2)
        table = workers.stdout.str().split("sglang-pd: measured against the limits", 1)[1]
        assert "gsm8k " in table and "bench_serv_random " in table and "accuracy" in table
    finally:
        down = subprocess.run(["sglang-pd", "down", str(results / "run")], capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    assert_nothing_left(results)


def test_real_engine_prechecks_name_the_node_and_config_key(tmp_path):
    """Missing GPU devices, NIC provider files and RDMA devices are found on the node before anything starts."""
    from pytest_sglang_pd import config, plan
    from pytest_sglang_pd.cluster import ClusterError, LiveCluster

    (tmp_path / "token").write_text("hf_not_a_real_token")
    data = raw("mi35x-example.json")
    c = data["config"]
    c.update({"transport": "local", "prefill_node_list": ["127.0.0.2"], "decode_node_list": ["127.0.0.3"],
              "proxy_router_node": "127.0.0.2", "benchmark_serv_node": "127.0.0.2", "nnodes": "2",
              "log_dir": str(tmp_path / "logs"), "hf_token_file": str(tmp_path / "token"),
              "container_config": {"device_list": ["/dev/null", "/dev/no-such-gpu"], "volume_dict": {}, "env_dict": {}},
              "kv_transfer": {"ib_devices": ["no_such_rdma0"]}})
    cfg = config.from_dict(data)
    with LiveCluster(cfg, plan.plan(cfg, "llama-70b", run_id="r"), tmp_path / "run") as cluster:
        cluster.connect()
        with pytest.raises(ClusterError) as info:
            cluster.precheck()
    text = str(info.value)
    assert text.startswith("GPU devices missing:")
    assert ("node 127.0.0.2 (prefill, router, bench): GPU device(s) do not exist "
            "($.config.container_config.device_list):\n    missing: /dev/no-such-gpu") in text
    assert "/dev/null" not in text
    no_gpus = {"device_list": [], "volume_dict": {}, "env_dict": {}}
    cfg = config.from_dict({**data, "config": {**c, "container_config": no_gpus}})  # nic_type ainic: no ionic here
    with LiveCluster(cfg, plan.plan(cfg, "llama-70b", run_id="r"), tmp_path / "run") as cluster:
        cluster.connect()
        with pytest.raises(ClusterError, match=r"NIC verbs provider missing:\n  node 127.0.0.2: the ionic verbs provider "
                                               r"files of nic_type 'ainic' are missing on the host \(\$.config.nic_type\):"
                                               r"\n    missing: /usr/lib/x86_64-linux-gnu/libionic.so.1 "):
            cluster.precheck()
    cfg = config.from_dict({**data, "config": {**c, "container_config": no_gpus, "nic_type": "mlx5"}})
    with LiveCluster(cfg, plan.plan(cfg, "llama-70b", run_id="r"), tmp_path / "run") as cluster:
        cluster.connect()
        with pytest.raises(ClusterError, match=r"node 127.0.0.3: RDMA device\(s\) not in /sys/class/infiniband "
                                               r"\(\$.config.kv_transfer.ib_devices.*\n    missing: /sys/class/infiniband/no_such_rdma0"):
            cluster.precheck()
    assert json.loads((tmp_path / "run" / "cluster-state.json").read_text())["stopped"] is True


def test_an_unwritable_log_dir_or_unreadable_token_file_is_named_before_anything_starts(tmp_path):
    from pytest_sglang_pd import config, plan
    from pytest_sglang_pd.cluster import ClusterError, LiveCluster

    (tmp_path / "a-file").write_text("")
    data = raw("local-sim.json")
    data["config"].update({"log_dir": str(tmp_path / "a-file" / "logs"), "hf_token_file": str(tmp_path / "no-token")})
    cfg = config.from_dict(data)
    with LiveCluster(cfg, plan.plan(cfg, cfg.model_ids[0], run_id="r"), tmp_path / "run") as cluster:
        cluster.connect()
        with pytest.raises(ClusterError) as info:
            cluster.precheck()
    text = str(info.value)
    assert text.startswith("Paths unusable:\n  node 127.0.0.1: the log folder ($.config.log_dir) cannot be written "
                           "or a secret file ($.config.hf_token_file) cannot be read")
    assert f"log folder {tmp_path}/a-file/logs/r: cannot be created or written" in text


def test_a_port_something_already_answers_on_is_named_before_anything_starts(tmp_path):
    """A server left by an earlier run on the router's port would answer the health checks in place of the new one:
    the precheck names node, port, the process that needs it and the config keys, and nothing is started."""
    import socket

    from pytest_sglang_pd import config, plan
    from pytest_sglang_pd.cluster import ClusterError, LiveCluster

    data = raw("local-sim.json")
    data["config"]["log_dir"] = str(tmp_path / "logs")
    cfg = config.from_dict(data)
    dep = plan.plan(cfg, cfg.model_ids[0], run_id="r")
    router = dep.router
    with socket.socket() as stale:
        stale.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        stale.bind((router.host, router.port))
        stale.listen()
        with LiveCluster(cfg, dep, tmp_path / "run") as cluster:
            cluster.connect()
            with pytest.raises(ClusterError) as info:
                cluster.precheck()
    text = str(info.value)
    assert text.startswith(f"Ports in use:\n  node {router.node}: something already answers on a port this "
                           "deployment serves on (a server left by an earlier run?")
    assert f"in use: {router.host}:{router.port} router (http)" in text and "$.config.proxy_router_port" in text
    assert not list((tmp_path / "logs").rglob("*.log"))  # nothing started
    with LiveCluster(cfg, dep, tmp_path / "run2") as cluster:  # the port free again: the precheck passes
        cluster.connect()
        cluster.precheck()


def test_a_failed_hugepages_precheck_stops_the_bring_up(tmp_path):
    """Every kind of precheck that fails ends the bring-up (huge pages and the sysfs NIC map were run and their
    failure not raised)."""
    from pytest_sglang_pd import config, plan
    from pytest_sglang_pd.cluster import ClusterError, LiveCluster

    data = raw("local-sim.json")
    data["config"]["log_dir"] = str(tmp_path / "logs")
    data["config"].setdefault("kv_transfer", {}).setdefault("mooncake", {})["hugepages"] = "1000000000"
    cfg = config.from_dict(data)
    with LiveCluster(cfg, plan.plan(cfg, cfg.model_ids[0], run_id="r"), tmp_path / "run") as cluster:
        cluster.connect()
        with pytest.raises(ClusterError) as info:
            cluster.precheck()
    assert str(info.value).startswith("Huge pages missing:\n  node 127.0.0.1: fewer huge pages than "
                                      "$.config.kv_transfer.mooncake.hugepages (1000000000)")
    assert "the config asks for at least 1000000000" in str(info.value)


def test_cleanup_stops_kept_runs_of_the_config(pytester, tmp_path):
    results = tmp_path / "results"
    config = sim_config(tmp_path)
    run_suite(pytester, config, results, "--keep-cluster").assert_outcomes(passed=4, skipped=1)
    cleanup = subprocess.run(["sglang-pd", "cleanup", str(config), "--results-dir", str(results)],
                             capture_output=True, text=True, timeout=60)
    assert cleanup.returncode == 0, cleanup.stderr
    assert "3 left-over process(es)/container(s) removed" in cleanup.stdout
    assert_nothing_left(results)


def test_kv_side_service_is_checked_from_every_worker_node(tmp_path):
    """A configured Mooncake master must answer from each worker node before anything starts."""
    import socket

    from pytest_sglang_pd import config, plan
    from pytest_sglang_pd.cluster import ClusterError, LiveCluster

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    closed = free_port()

    def precheck(env: dict) -> LiveCluster:
        path = sim_config(tmp_path, prefill=("127.0.0.2",), decode=("127.0.0.3",), kv_transfer={"env": env})
        cfg = config.load(path)
        with LiveCluster(cfg, plan.plan(cfg, "llama-8b", run_id="r"), tmp_path / "run") as cluster:
            cluster.connect()
            cluster.precheck()
        return cluster

    try:
        ok = precheck({"MOONCAKE_MASTER": f"127.0.0.1:{listener.getsockname()[1]}"})
        assert all("MOONCAKE_MASTER" in f and "reachable" in f for f in ok.kv_check.findings.values())
        with pytest.raises(ClusterError) as info:
            precheck({"MOONCAKE_TE_META_DATA_SERVER": f"etcd://127.0.0.1:{closed}"})
        text = str(info.value)
        for node in ("127.0.0.2", "127.0.0.3"):
            assert (f"node {node}: MOONCAKE_TE_META_DATA_SERVER service at 127.0.0.1:{closed} not reachable "
                    "($.config.kv_transfer.env.MOONCAKE_TE_META_DATA_SERVER)") in text
    finally:
        listener.close()


def test_failing_kv_transfer_is_caught_at_bring_up_and_explained(pytester, tmp_path):
    """/health is green but every PD request fails (docs/failure-modes.md rows 4, 9): the smoke request catches it."""
    config = sim_config(tmp_path, sim={"faults": {"prefill": ["kv_fail_fraction=1"]}})
    result = run_suite(pytester, config, tmp_path / "results")
    out = result.stdout.str()
    assert result.ret == 1
    assert re.search(r"smoke request \(stream=False\) through the router http://\S+ failed: HTTP", out)
    assert '"type": "abort"' in out and "mooncake transfer to 127.0.0.1:" in out
    assert "KV engine mooncake; bootstrap prefill_0 127.0.0.1:" in out
    assert re.search(r"prefill prefill_0 on node 127\.0\.0\.1 logged \(\S+prefill_0\.log\):\n", out)
    assert "    | " in out and "aborted: prefill: KV transfer of room" in out  # the worker's own abort lines
    assert_nothing_left(tmp_path / "results")


def test_hf_token_reaches_the_workers_and_nothing_else(pytester, tmp_path):
    """The token file's value is in the workers' environment, and in no argv, log, report or results file."""
    token = "hf_" + os.urandom(12).hex()
    token_file = tmp_path / "secret" / "hf_token"
    token_file.parent.mkdir()
    token_file.write_text(token + "\n")
    results = tmp_path / "results"
    config = sim_config(tmp_path, hf_token_file=str(token_file), tests=("gsm8k",))
    result = pytester.runpytest_subprocess(str(REPO / "pytest_sglang_pd" / "suite"), f"--cluster-config={config}", f"--results-dir={results}",
                                           "--run-id=run", "--keep-cluster", "-k", "kv_handoff or gsm8k", timeout=240)
    try:
        result.assert_outcomes(passed=2)
        workers = [p for p in state(results)["processes"] if p["role"] in ("prefill", "decode")]
        for p in workers:
            child = subprocess.run(["pgrep", "-P", str(p["pid"])], capture_output=True, text=True).stdout.split()[0]
            assert f"HF_TOKEN={token}".encode() in Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        assert token not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    finally:
        subprocess.run(["sglang-pd", "down", str(results / "run")], capture_output=True, timeout=60)
    assert_nothing_left(results)
    assert token not in result.stdout.str() + result.stderr.str()
    written = [f for d in (results, tmp_path / "node-logs") for f in d.rglob("*") if f.is_file()]
    assert any(f.name == "report.html" for f in written) and any(f.name == "results.json" for f in written)
    assert not [str(f) for f in written if token.encode() in f.read_bytes()]


@pytest.mark.ssh
def test_unreachable_node_fails_fast_naming_it(pytester, tmp_path, sshd):
    config = sim_config(tmp_path, prefill=(sshd.nodes[0],), decode=("127.0.0.9",), router=sshd.nodes[0],
                        transport="ssh", python=sys.executable,
                        ssh={"user": sshd.user, "key_file": sshd.key_file, "port": str(sshd.port), "connect_timeout": "3"})
    started = time.monotonic()
    result = run_suite(pytester, config, tmp_path / "results", "-x")
    out = result.stdout.str()
    assert result.ret == 1 and time.monotonic() - started < 30
    assert "1 of 2 nodes unreachable over ssh" in out and "127.0.0.9: cannot connect over ssh" in out
    recorded = state(tmp_path / "results")  # nothing was started, and the run says it is stopped
    assert recorded["processes"] == [] and recorded["stopped"] is True


def test_benchmark_reports_the_kv_transfer_from_the_workers_counters(pytester, tmp_path):
    results = tmp_path / "results"
    config = sim_config(tmp_path, tests=("bench_serv_random",))
    result = pytester.runpytest_subprocess(str(REPO / "pytest_sglang_pd" / "suite"), f"--cluster-config={config}", f"--results-dir={results}",
                                           "--run-id=run", "-k", "random", timeout=240)
    result.assert_outcomes(passed=1)
    test = json.loads((results / "run" / "results.json").read_text())["tests"][0]
    m = test["metrics"]
    assert m["kv_handoffs"] == 128 + 1  # num_prompts + the warmup request, each a KV transfer of the prefill
    assert m["kv_transfer_failures"] == 0 and m["kv_transfer_throughput"] > 0 and m["kv_queue_leaks"] == 0
    assert m["mean_kv_transfer_ms"] > 0 and m["mean_kv_bootstrap_ms"] >= 0 and m["mean_kv_alloc_ms"] >= 0
    assert m["router_errors"] == 0 and m["router_cb_open"] == 0
    assert {w["role"] for w in test["workers"].values()} == {"prefill", "decode"}
    assert all(w["requests"] == 129 and w["router_requests"] > 0 for w in test["workers"].values()), test["workers"]
    prefill = next(w for w in test["workers"].values() if w["role"] == "prefill")
    assert prefill["kv_transfers"] == 129 and prefill["mean_kv_transfer_ms"] > 0
    assert m["kv_transfer_failures_prefill"] == m["kv_transfer_failures_decode"] == 0  # gateable per role
    assert m["kv_transfer_bytes"] >= 129 * 256 * 64  # >= 256 prompt tokens x 64 payload bytes per token each
    assert any(v["metric"] == "kv_transfer_failures" and v["passed"] for v in test["verdicts"])


@pytest.mark.docker
def test_docker_sim_image_from_other_sources_is_refused_before_anything_starts(pytester, tmp_path, docker_engine,
                                                                             sim_image):
    stale = "pytest-sglang-pd-sim:selftest-stale"
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "Dockerfile").write_text(f"FROM {sim_image}\nLABEL pytest-sglang-pd.source=0000000000000000\n")
    docker_engine.images.build(path=str(tmp_path / "ctx"), tag=stale, rm=True)
    name = f"sglang-pd-selftest-stale-{os.getpid()}"
    try:
        config = sim_config(tmp_path, runtime="docker", container_image=stale, container_name=name,
                            container_config={"device_list": [], "volume_dict": {}, "env_dict": {}})
        result = run_suite(pytester, config, tmp_path / "results")
        out = result.stdout.str()
        assert result.ret == 1
        assert f"image {stale} on node 127.0.0.1: built from sources 0000000000000000" in out
        assert "rebuild it: scripts/build_sim_image.sh" in out
        assert not [c for c in docker_engine.containers.list(all=True) if c.name.startswith(name)]
    finally:
        docker_engine.images.remove(stale, force=True)


def test_rdma_error_counters_are_read_on_every_worker_node_and_their_growth_reported(tmp_path):
    """Real engine: each worker node's port error counters (sysfs layout) before and after a benchmark."""
    from pytest_sglang_pd import config, plan
    from pytest_sglang_pd.bench import nic_metrics
    from pytest_sglang_pd.cluster import LiveCluster

    counters = tmp_path / "infiniband" / "mlx5_0" / "ports" / "1" / "counters"
    counters.mkdir(parents=True)
    for name, value in {"symbol_error": 0, "port_rcv_errors": 3, "port_xmit_data": 123456}.items():
        (counters / name).write_text(f"{value}\n")
    data = raw("mi35x-example.json")
    data["config"].update({"transport": "local", "prefill_node_list": ["127.0.0.2"], "decode_node_list": ["127.0.0.3"],
                           "proxy_router_node": "127.0.0.2", "benchmark_serv_node": "127.0.0.2", "nnodes": "2",
                           "log_dir": str(tmp_path / "logs"), "kv_transfer": {"ib_devices": ["mlx5_0"]},
                           "container_config": {"device_list": [], "volume_dict": {}, "env_dict": {}}})
    cfg = config.from_dict(data)
    cluster = LiveCluster(cfg, plan.plan(cfg, "llama-70b", run_id="r"), tmp_path / "run")
    cluster.connect()
    try:
        before = cluster.nic_error_counters(root=str(tmp_path / "infiniband"))
        assert before == {f"{n}:mlx5_0/1/{c}": v for n in ("127.0.0.2", "127.0.0.3")
                          for c, v in (("symbol_error", 0), ("port_rcv_errors", 3))}  # data counters left out
        (counters / "port_rcv_errors").write_text("5\n")
        errors: list[str] = []
        assert nic_metrics(before, cluster.nic_error_counters(root=str(tmp_path / "infiniband")), errors) == {"nic_errors": 4.0}
        assert errors == ["RDMA error counter 127.0.0.2:mlx5_0/1/port_rcv_errors grew by 2",
                          "RDMA error counter 127.0.0.3:mlx5_0/1/port_rcv_errors grew by 2"]
    finally:
        cluster.disconnect()


@pytest.mark.parametrize("sig, shown", [(signal.SIGINT, "KeyboardInterrupt"),
                                        (signal.SIGTERM, "received signal SIGTERM")], ids=["ctrl-c", "jenkins-abort"])
def test_interrupt_during_a_benchmark_leaves_results_junit_and_report_that_say_what_was_interrupted(tmp_path, sig,
                                                                                                    shown):
    """Ctrl-C or a Jenkins abort mid-benchmark: the suite ends at once, the records of the run are written, the
    running test marked interrupted."""
    results = tmp_path / "results"
    config = sim_config(tmp_path, sim={"speedup": "0.2"})  # a slow simulated model: gsm8k takes a while
    suite = subprocess.Popen([sys.executable, "-m", "pytest", str(REPO / "pytest_sglang_pd" / "suite"),
                              f"--cluster-config={config}", f"--results-dir={results}", "--run-id=run",
                              "-k", "gsm8k or reachable", "-p", "no:cacheprovider"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        for line in suite.stdout:
            lines.append(line)
            if "llama-8b-gsm8k: " in line and " requests" in line:  # its live progress: requests are in flight
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert started.wait(120), "the gsm8k benchmark never started:\n" + "".join(lines)
        suite.send_signal(sig)
        try:
            suite.wait(timeout=90)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the suite was still running 90 s after {sig.name}; its output:\n" + "".join(lines[-60:]))
        reader.join(10)
    finally:
        if suite.poll() is None:
            suite.kill()
    out = "".join(lines)
    assert suite.returncode == 2, out
    data = json.loads((results / "run" / "results.json").read_text())
    interrupted = {t["id"]: t for t in data["tests"]}["llama-8b-gsm8k"]
    assert interrupted["outcome"] == "interrupted" and data["summary"]["interrupted"] == 1
    assert data["time_dilation"] == 5  # speedup 0.2: the figures, had there been any, are rescaled
    assert interrupted["message"].startswith("interrupted after ") and shown in interrupted["message"]
    assert 0 < interrupted["completed_requests"] < interrupted["num_requests"], interrupted  # what had been measured
    assert f"({interrupted['completed_requests']} of {interrupted['num_requests']} requests had completed)" in interrupted["message"]
    junit = (results / "run" / "junit.xml").read_text()
    assert 'name="test_inference[llama-8b-gsm8k]"' in junit and "interrupted after" in junit
    assert "llama-8b-gsm8k" in (results / "run" / "report.html").read_text()
    assert_nothing_left(results)
