"""The real clusters' path: every node's Docker engine driven over a real OpenSSH server.

The nodes are loopback addresses of a throwaway sshd (key login only, a free non-default port); the
config is the shipped cluster_configs/docker-ssh.json on free ports. Each run is the validation suite
in a subprocess, as a user runs it; afterwards no container, process or SSH connection may be left.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from selftests.configs import REPO, sim_config
from selftests.live import killed_while_loading

pytestmark = [pytest.mark.integration, pytest.mark.docker, pytest.mark.ssh]

SUITE = str(REPO / "pytest_sglang_pd" / "suite")


def ssh_config(tmp_path: Path, sshd, image: str, *, ssh: dict, **overrides) -> Path:
    """docker-ssh.json on the sshd's nodes and free ports, with exactly these SSH settings."""
    path = sim_config(tmp_path, base="docker-ssh.json", prefill=(sshd.nodes[0],), decode=(sshd.nodes[1],),
                      router=sshd.nodes[0], container_image=image, container_name=f"sglang-pd-selftest-{tmp_path.name}",
                      **overrides)
    data = json.loads(path.read_text())
    data["config"]["ssh"] = ssh
    path.write_text(json.dumps(data))
    return path


def key_in_config(sshd, key_file: str | None = None) -> dict:
    return {"user": sshd.user, "key_file": key_file or sshd.key_file, "port": str(sshd.port), "connect_timeout": "5"}


def run(pytester: pytest.Pytester, config: Path, results: Path, *paths: str, timeout: float = 400):
    return pytester.runpytest_subprocess(*(paths or (SUITE,)), f"--cluster-config={config}", f"--results-dir={results}",
                                         "--run-id=run", "-p", "no:cacheprovider", timeout=timeout)


def assert_nothing_left(docker_engine, config: Path, sshd) -> None:
    name = json.loads(config.read_text())["config"]["container_name"]
    left = [c.name for c in docker_engine.containers.list(all=True) if c.name.startswith(name)]
    assert not left, f"containers left: {left}"
    deadline = time.monotonic() + 5  # sshd ends a session's process a moment after the client closed it
    while sshd.sessions() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sshd.sessions() == [], "SSH connections left open"


def test_docker_sim_suite_over_ssh_with_the_key_in_the_config(pytester, tmp_path, sshd, docker_engine, sim_image):
    config = ssh_config(tmp_path, sshd, sim_image, ssh=key_in_config(sshd))
    plan = subprocess.run(["sglang-pd", "plan", str(config)], capture_output=True, text=True, timeout=60)
    assert f"{sshd.nodes[1]}: ssh {sshd.user}@{sshd.nodes[1]}:{sshd.port}, key {sshd.key_file}" in plan.stdout
    result = run(pytester, config, tmp_path / "results")
    result.assert_outcomes(passed=7, skipped=1)
    assert_nothing_left(docker_engine, config, sshd)
    logs = tmp_path / "results" / "run" / "logs"
    assert "The server is fired up and ready to roll!" in (logs / sshd.nodes[1] / "decode-0.log").read_text()
    records = json.loads((tmp_path / "results" / "run" / "results.json").read_text())
    assert [t["outcome"] for t in records["tests"]] == ["passed"] * 3
    image_id = docker_engine.images.get(sim_image).id  # the provenance names the image by its digest
    assert records["provenance"]["image"] == f"{sim_image} ({image_id})", records["provenance"]


def test_key_only_in_ssh_config(pytester, tmp_path, sshd, docker_engine, sim_image):
    # pytester runs the suite with HOME = pytester.path: its ~/.ssh/config is the only place that names the key
    (pytester.path / ".ssh").mkdir()
    (pytester.path / ".ssh" / "config").write_text(
        f"Host {' '.join(sshd.nodes)}\n  User {sshd.user}\n  Port {sshd.port}\n  IdentityFile {sshd.key_file}\n")
    config = ssh_config(tmp_path, sshd, sim_image, ssh={})
    result = run(pytester, config, tmp_path / "results", str(REPO / "pytest_sglang_pd" / "suite" / "test_cluster.py"))
    result.assert_outcomes(passed=4, skipped=1)
    assert_nothing_left(docker_engine, config, sshd)


def test_wrong_key_fails_at_once_naming_node_user_port_and_key(pytester, tmp_path, sshd, docker_engine, sim_image):
    wrong = tmp_path / "not_authorized"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong)], check=True)
    config = ssh_config(tmp_path, sshd, sim_image, ssh=key_in_config(sshd, str(wrong)))
    started = time.monotonic()
    result = run(pytester, config, tmp_path / "results", str(REPO / "pytest_sglang_pd" / "suite" / "test_cluster.py"))
    elapsed = time.monotonic() - started
    out = result.stdout.str()
    assert result.ret == 1
    for node in sshd.nodes:
        assert f"{node}: cannot connect over ssh to {sshd.user}@{node}:{sshd.port} (key {wrong})" in out
    assert "Authentication failed" in out
    assert elapsed < 30, f"a refused key took {elapsed:.0f} s to report"
    assert_nothing_left(docker_engine, config, sshd)


def test_worker_killed_during_readiness_is_named_with_its_exit_code(tmp_path, sshd, docker_engine, sim_image):
    config = ssh_config(tmp_path, sshd, sim_image, ssh=key_in_config(sshd), sim={"startup_delay_s": "30"})

    def kill(record: dict, state: dict) -> None:  # the worker is the child of the recorded exit-status wrapper
        container = next(c["name"] for c in state["containers"] if c["key"] == record["key"])
        docker_engine.containers.get(container).exec_run(["pkill", "-KILL", "-P", str(record["pid"])])

    code, out, elapsed = killed_while_loading(config, tmp_path / "results", kill)
    assert code == 1, out
    assert f"decode decode_0 on node {sshd.nodes[1]} exited with code 137" in out
    assert "last 50 lines of" in out
    assert elapsed < 10, f"the run ended {elapsed:.1f} s after the decode worker was killed"
    assert_nothing_left(docker_engine, config, sshd)
