"""Shared selftest fixtures: a throwaway OpenSSH server on two loopback "nodes", a throwaway Slurm and the Docker
engine."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from selftests.configs import free_port
from selftests.slurm_cluster import SlurmCluster, throwaway_slurm

REPO = Path(__file__).resolve().parent.parent
SSHD = "/usr/sbin/sshd"
SSH_NODES = ("127.0.0.2", "127.0.0.3")
SIM_BASE_IMAGE = "pytest-sglang-pd-base:bookworm"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Needing Docker, sshd or Slurm makes a test integration, marked so or not: the quick tier starts none."""
    for item in items:
        if any(item.get_closest_marker(m) for m in ("docker", "ssh", "slurm")):
            item.add_marker(pytest.mark.integration)


@dataclass(frozen=True)
class SSHServer:
    port: int
    key_file: str
    user: str
    nodes: tuple[str, ...]
    log_path: Path
    pid: int

    def sessions(self) -> list[int]:
        """The pids of the per-connection sshd processes: one per open SSH connection."""
        out = subprocess.run(["pgrep", "-P", str(self.pid)], capture_output=True, text=True).stdout
        return [int(pid) for pid in out.split()]


def _wait_listening(proc: subprocess.Popen, address: str, port: int, log_path: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode}:\n{log_path.read_text()[-2000:]}")
        try:
            with socket.create_connection((address, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"sshd not listening on {address}:{port} after {timeout} s:\n{log_path.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SSHServer]:
    """A private sshd on a free port of 127.0.0.2 and 127.0.0.3, accepting a temp key for the current user."""
    with throwaway_sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@contextmanager
def throwaway_sshd(workdir: Path) -> Iterator[SSHServer]:
    """sshd on a free port of SSH_NODES with a temporary host key; key login only; stopped on exit."""
    if not os.path.exists(SSHD):
        pytest.skip(f"{SSHD} not installed (apt-get install openssh-server)")
    if not shutil.which("ssh-keygen"):
        pytest.skip("ssh-keygen not installed (apt-get install openssh-client)")
    for key in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(workdir / key)], check=True)
    (workdir / "authorized_keys").write_text((workdir / "client_key.pub").read_text())
    port = free_port(*SSH_NODES)
    config = workdir / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                *(f"ListenAddress {node}" for node in SSH_NODES),
                f"HostKey {workdir / 'host_key'}",
                f"AuthorizedKeysFile {workdir / 'authorized_keys'}",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin prohibit-password",
                "StrictModes no",
                "UsePAM no",
                "PidFile none",
                "Subsystem sftp internal-sftp",
                "",
            ]
        )
    )
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    log_path = workdir / "sshd.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
    try:
        for node in SSH_NODES:
            _wait_listening(proc, node, port, log_path)
        yield SSHServer(port, str(workdir / "client_key"), getpass.getuser(), SSH_NODES, log_path, proc.pid)
    finally:
        _stop_sshd(proc)


def _stop_sshd(proc: subprocess.Popen) -> None:
    """SIGTERM the listener and its per-connection children (each has its own session), then SIGKILL."""
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    for pid in [proc.pid, *map(int, children)]:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    """A real Slurm of 3 nodes (n1..n3 on 127.0.0.2..4), its conf in SLURM_CONF for the suite's own srun/sbatch."""
    with throwaway_slurm(tmp_path_factory.mktemp("slurm")) as cluster, pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(cluster.conf))
        yield cluster


@pytest.fixture(scope="module")
def slurm_job(slurm: SlurmCluster) -> Iterator[str]:
    """A running allocation of all the throwaway Slurm's nodes (what `salloc -N 3` gives a user); cancelled at the end
    of the module that asked for it (tests of other modules expect an empty queue after their own jobs)."""
    job = slurm.run("sbatch", "--parsable", f"--nodes={len(slurm.nodes)}", "--output=/dev/null", "--wrap",
                    "sleep infinity").strip()
    try:
        deadline = time.monotonic() + 60
        while [line.split()[1] for line in slurm.jobs() if line.split()[0] == job] != ["RUNNING"]:
            assert time.monotonic() < deadline, f"job {job} not running after 60 s: {slurm.jobs()}"
            time.sleep(0.2)
        yield job
    finally:
        slurm.run("scancel", job, check=False)


@pytest.fixture(scope="session")
def docker_engine():
    """A docker SDK client for the local engine; skips when the engine does not answer."""
    docker = pytest.importorskip("docker", reason="the docker SDK is not installed (pip install docker)")
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.skip(f"docker engine not answering ({os.environ.get('DOCKER_HOST', 'unix:///var/run/docker.sock')}): {exc}")
    yield client
    client.close()


@pytest.fixture(scope="session")
def sim_base_image(docker_engine) -> str:
    """The debootstrap base image, built once with scripts/build_sim_image.sh --base-only when missing."""
    import docker

    try:
        docker_engine.images.get(SIM_BASE_IMAGE)
    except docker.errors.ImageNotFound:
        build = subprocess.run(
            ["bash", str(REPO / "scripts" / "build_sim_image.sh"), "--base-only"],
            capture_output=True, text=True, timeout=1200,
        )
        if build.returncode != 0:
            pytest.fail(f"building {SIM_BASE_IMAGE} failed:\n{build.stdout[-2000:]}\n{build.stderr[-2000:]}")
    return SIM_BASE_IMAGE


@pytest.fixture(scope="session")
def sim_image(docker_engine) -> str:
    """The docker-sim image, (re)built by the project's script (layer cache makes a rebuild quick)."""
    tag = "pytest-sglang-pd-sim:selftest"
    build = subprocess.run(["bash", str(REPO / "scripts" / "build_sim_image.sh"), tag],
                           capture_output=True, text=True, timeout=1500)
    if build.returncode != 0:
        pytest.fail(f"scripts/build_sim_image.sh failed:\n{build.stdout[-3000:]}\n{build.stderr[-3000:]}")
    return tag
