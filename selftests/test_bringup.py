"""One bring-up: the plan printed is the plan that runs, and a failure at any step leaves nothing behind.

The cluster runs on two loopback "nodes" reached through a throwaway sshd, so a connection left open
would show as a live sshd session.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from pytest_sglang_pd import plan
from pytest_sglang_pd.cluster import LiveCluster
from pytest_sglang_pd.hosts import HostError
from pytest_sglang_pd.runtime import RuntimeFailure
from selftests.configs import free_port, sim_config
from selftests.live import alive

pytestmark = pytest.mark.integration


def _proc_view(pid: int) -> tuple[list[str], dict[str, str]]:
    """argv and environment of a running process, as the kernel has them."""
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]
    env = dict(item.split("=", 1) for item in Path(f"/proc/{pid}/environ").read_bytes().decode().split("\0") if "=" in item)
    return [a.decode() for a in argv], env


def test_the_plan_printed_is_the_argv_and_env_that_run(tmp_path):
    config = sim_config(tmp_path)
    printed = subprocess.run(["sglang-pd", "plan", "--format", "json", "--run-id", "run", str(config)],
                             capture_output=True, text=True, timeout=60, check=True)
    planned = {p["key"]: p for p in json.loads(printed.stdout)["models"]["llama-8b"]["processes"]}
    results = tmp_path / "results"
    up = subprocess.run(["sglang-pd", "up", str(config), "--results-dir", str(results), "--run-id", "run"],
                        capture_output=True, text=True, timeout=180)
    try:
        assert up.returncode == 0, up.stderr
        state = json.loads((results / "run" / "cluster-state.json").read_text())
        assert {p["key"] for p in state["processes"]} == {"prefill_0", "decode_0", "router"}
        for started in state["processes"]:
            # the recorded pid is the exit-status wrapper `sh -c SCRIPT sh EXIT_FILE ARGV...`, started with the
            # planned environment; it runs ARGV as its child (the router then rewrites its own cmdline and environ
            # into the process title "sglang::router", so the wrapper is where both are seen as spawned)
            wrapper, env = _proc_view(started["pid"])
            want = planned[started["key"]]
            assert wrapper[:2] == ["sh", "-c"] and wrapper[5:] == want["argv"], started["key"]
            assert {k: env.get(k) for k in want["env"]} == want["env"], started["key"]
    finally:
        subprocess.run(["sglang-pd", "down", str(results / "run")], capture_output=True, timeout=60)


def _two_node_config(tmp_path: Path, sshd, **overrides) -> Path:
    return sim_config(tmp_path, prefill=(sshd.nodes[0],), decode=(sshd.nodes[1],), router=sshd.nodes[0],
                      transport="ssh", ssh={"user": sshd.user, "key_file": sshd.key_file, "port": str(sshd.port),
                                            "connect_timeout": "3"}, **overrides)


def _edit_model(path: Path, **model_keys) -> Path:
    data = json.loads(path.read_text())
    data["benchmark_params"]["llama-8b"].update(model_keys)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def closed_port() -> int:
    return free_port()


FAILURES = {
    # step -> (config edits, what the error says)
    "connect": (lambda tmp, sshd, port: sim_config(tmp, prefill=(sshd.nodes[0],), decode=("127.0.0.9",),
                                                  router=sshd.nodes[0], transport="ssh",
                                                  ssh={"user": sshd.user, "key_file": sshd.key_file,
                                                       "port": str(sshd.port), "connect_timeout": "3"}),
                "127.0.0.9: cannot connect over ssh"),
    "precheck": (lambda tmp, sshd, port: _two_node_config(
        tmp, sshd, kv_transfer={"env": {"MOONCAKE_MASTER": f"127.0.0.1:{port}"}}),
        "MOONCAKE_MASTER service at 127.0.0.1:"),
    "prefill start": (lambda tmp, sshd, port: _edit_model(
        _two_node_config(tmp, sshd), prefill_server_args=["--sim-model-profile", "no-such-model"]),
        "prefill prefill_0 on node 127.0.0.2 exited with code"),
    "router start": (lambda tmp, sshd, port: _two_node_config(tmp, sshd, router_args=["--no-such-router-flag"]),
                     "router router on node 127.0.0.2 exited with code"),
}


@pytest.mark.ssh
@pytest.mark.parametrize("step", FAILURES)
def test_a_failure_at_each_step_leaves_nothing_behind_and_the_run_stopped(step, tmp_path, sshd, closed_port):
    make, said = FAILURES[step]
    cfg = plan.load_config(make(tmp_path, sshd, closed_port))
    run_dir = tmp_path / "run"
    with pytest.raises((RuntimeError, HostError, RuntimeFailure)) as info:
        with LiveCluster(cfg, plan.plan(cfg, "llama-8b", run_id="run"), run_dir) as cluster:
            cluster.bring_up()
    assert said in str(info.value)
    state = json.loads((run_dir / "cluster-state.json").read_text())
    assert state["stopped"] is True
    left = [p for p in state["processes"] if alive(p["pid"])]
    assert left == [], f"left running after a failure at {step}: {left}"
    deadline = time.monotonic() + 5
    while sshd.sessions() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sshd.sessions() == [], f"SSH connections left open after a failure at {step}"
    if step in ("prefill start", "router start"):  # the logs of what had started were collected first
        assert (run_dir / "logs" / sshd.nodes[0] / "prefill-0.log").exists()
    assert cluster.hosts == {}
