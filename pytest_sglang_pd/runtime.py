"""Runtimes: start, poll, stop and log the deployment's processes as plain processes or in containers.

ProcessRuntime spawns each ProcessSpec on its node through the node's Host. DockerRuntime keeps one
idle container per ContainerSpec (docker SDK, one client per node) and starts each process inside
it with a short exec that spawns it in its own process group. Either way a process is wrapped by a
small shell that records its exit status next to its log (``<log_path>.exit``), so the exit code
is known although the process is not a child of this test run. Statuses follow the shell
convention: 128+N when killed by signal N.
"""

from __future__ import annotations

import getpass
import io
import logging
import posixpath
import secrets
import shlex
import signal
import tarfile
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import docker

from .hosts import CommandResult, Host, HostError, HostUnreachable
from .plan import LABEL_PREFIX, ContainerSpec, ProcessSpec

log = logging.getLogger(__name__)

LABEL_RUN_ID = f"{LABEL_PREFIX}.run-id"
LABEL_ROLE = f"{LABEL_PREFIX}.role"
LABEL_KEY = f"{LABEL_PREFIX}.key"
LABEL_OWNER = f"{LABEL_PREFIX}.owner"
LABEL_MANAGED = f"{LABEL_PREFIX}.managed"

# $1: where to write the exit status; then argv. The trap makes the shell outlive a SIGTERM/SIGINT
# sent to the group (the program gets it too, and handlers reset on exec) so the status is written.
_RECORD_EXIT = 'f=$1; shift; rm -f -- "$f"; trap : TERM INT HUP; "$@"; s=$?; echo "$s" >"$f"; exit "$s"'
_KILLED_WITHOUT_STATUS = 128 + signal.SIGKILL


class RuntimeFailure(RuntimeError):
    """A runtime could not carry out part of the plan."""


class ImageMissing(RuntimeFailure):
    """A container image is not present on a node (raised before anything starts)."""


class RuntimeStartError(RuntimeFailure):
    """A process or container could not be started."""


class RuntimeStopError(RuntimeFailure):
    """A process survived SIGKILL, or teardown could not remove everything."""


@dataclass
class RunningProcess:
    spec: ProcessSpec
    host: Host  # the Host the process runs on: the node, or a ContainerHost for docker
    pid: int | None
    container_id: str | None
    exec_id: str | None
    started_at: float


def _exit_path(log_path: str) -> str:
    return f"{log_path}.exit"


class Runtime(ABC):
    """Carries out a Deployment's containers and processes on connected Hosts."""

    def __init__(self, hosts: Mapping[str, Host]) -> None:
        self.hosts = dict(hosts)
        self._started: list[RunningProcess] = []

    def prepare(self, containers: Sequence[ContainerSpec]) -> None:
        """Make the nodes ready for ``start`` (nothing to do for plain processes)."""

    @abstractmethod
    def _spawn(self, proc: ProcessSpec, argv: Sequence[str], secret_env: Mapping[str, str]) -> RunningProcess:
        """Spawn the wrapped argv for proc (log to proc.log_path) and describe it."""

    def _node(self, proc: ProcessSpec) -> Host:
        try:
            return self.hosts[proc.node]
        except KeyError:
            raise RuntimeStartError(f"{proc.role} {proc.key}: node {proc.node} is not connected") from None

    def start(self, proc: ProcessSpec) -> RunningProcess:
        """Start proc on its node; secrets are read on the node and passed without argv exposure."""
        node = self._node(proc)
        try:
            secret_env = {name: node.read_secret(path) for name, path in proc.secret_env_files.items()}
            rp = self._spawn(proc, ["sh", "-c", _RECORD_EXIT, "sh"], secret_env)
        except HostError as exc:
            raise RuntimeStartError(
                f"{proc.role} {proc.key} on {proc.node}: cannot start `{shlex.join(proc.argv)}`: {exc}\n"
                f"last lines of {proc.log_path}:\n{node.tail(proc.log_path)}"
            ) from None
        self._started.append(rp)
        log.info("started %s on %s (pid %s): %s", proc.key, proc.node, rp.pid, shlex.join(proc.argv))
        return rp

    def exit_code(self, rp: RunningProcess) -> int | None:
        """None while the process runs; else its exit status (128+N when killed by signal N)."""
        running = rp.host.alive(rp.pid)
        status = self._node(rp.spec).run(["cat", "--", _exit_path(rp.spec.log_path)], timeout=30)
        if status.exit_status == 0 and status.stdout.strip().isdigit():
            return int(status.stdout)
        return None if running else _KILLED_WITHOUT_STATUS

    def stop(self, rp: RunningProcess, grace_s: float = 10) -> None:
        """SIGTERM the process group, wait up to grace_s, then SIGKILL. Idempotent."""
        if not self._group_alive(rp):
            return
        rp.host.signal_group(rp.pid, signal.SIGTERM)
        if self._wait_gone(rp, grace_s):
            return
        log.warning("%s on %s ignored SIGTERM for %g s; sending SIGKILL", rp.spec.key, rp.spec.node, grace_s)
        rp.host.signal_group(rp.pid, signal.SIGKILL)
        if not self._wait_gone(rp, 10):
            raise RuntimeStopError(
                f"{rp.spec.role} {rp.spec.key} on {rp.spec.node}: process group {rp.pid} survived SIGKILL"
            )

    def _group_alive(self, rp: RunningProcess) -> bool:
        return rp.host.group_alive(rp.pid)

    def _wait_gone(self, rp: RunningProcess, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._group_alive(rp):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.2)
        return True

    def log_tail(self, rp: RunningProcess, lines: int = 50) -> str:
        return self._node(rp.spec).tail(rp.spec.log_path, lines)

    def collect_log(self, rp: RunningProcess, dest: Path) -> None:
        """Copy the process's log from its node to dest on this machine."""
        self._node(rp.spec).get(rp.spec.log_path, dest)

    def teardown(self) -> None:
        """Stop every process this runtime started that still runs; errors reported after all are tried."""
        errors = []
        for rp in reversed(self._started):
            try:
                self.stop(rp, grace_s=5)
            except (HostError, RuntimeFailure) as exc:
                errors.append(f"  {rp.spec.key} on {rp.spec.node}: {exc}")
        if errors:
            raise RuntimeStopError("teardown left processes behind:\n" + "\n".join(errors))


class ProcessRuntime(Runtime):
    """Each process is spawned directly on its node."""

    def _spawn(self, proc, argv, secret_env) -> RunningProcess:
        node = self._node(proc)
        pid = node.spawn(
            [*argv, _exit_path(proc.log_path), *proc.argv],
            log_path=proc.log_path, env=proc.env, secret_env=secret_env,
        )
        return RunningProcess(proc, node, pid, None, None, time.time())


class ContainerHost(Host):
    """A running container seen as a Host: commands are docker execs (root, in the container)."""

    def __init__(self, container: Any, node: str) -> None:
        self.container = container
        self.name = f"{node}/{container.name}"

    def run(self, argv, *, timeout=60, env=None, stdin=None) -> CommandResult:
        argv = tuple(argv)
        command = list(argv)
        if stdin is not None:  # exec has no stdin here: hand it over as a private file
            path = f"/tmp/.pytest-sglang-pd-stdin-{secrets.token_hex(8)}"
            self._write(path, stdin.encode())
            command = ["sh", "-c", 'f=$1; shift; "$@" <"$f"; s=$?; rm -f -- "$f"; exit "$s"', "sh", path, *command]
        command = ["timeout", "-k", "5", f"{timeout:g}", *command]
        api = self.container.client.api
        try:
            exec_id = api.exec_create(self.container.id, command, environment=dict(env or {}))["Id"]
            stdout, stderr = api.exec_start(exec_id, demux=True)
            status = api.exec_inspect(exec_id)["ExitCode"]
        except docker.errors.DockerException as exc:
            raise HostError(f"{self.name}: cannot exec `{shlex.join(argv)}`: {exc}") from None
        if status == 124:
            raise HostError(f"{self.name}: `{shlex.join(argv)}` timed out after {timeout:g} s")
        return CommandResult(argv, status, (stdout or b"").decode(errors="replace"),
                             (stderr or b"").decode(errors="replace"), self.name)

    def _write(self, path: str, data: bytes, mode: int = 0o600) -> None:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as tar:
            info = tarfile.TarInfo(posixpath.basename(path))
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
        if not self.container.put_archive(posixpath.dirname(path), buffer.getvalue()):
            raise HostError(f"{self.name}: cannot write {path}")

    def put(self, local: Path, remote: str) -> None:
        self.run(["mkdir", "-p", "--", posixpath.dirname(remote)]).check()
        self._write(remote, local.read_bytes(), mode=0o644)

    def get(self, remote: str, local: Path) -> None:
        try:
            chunks, _ = self.container.get_archive(remote)
            with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
                member = tar.extractfile(tar.getmembers()[0])
                data = member.read() if member else b""
        except docker.errors.DockerException as exc:
            raise HostError(f"{self.name}: cannot copy {remote}: {exc}") from None
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)


def find_leftover_containers(client: Any, owner: str, *, keep_run_id: str | None = None) -> list:
    """Containers this suite created for owner (by label), except those of run keep_run_id."""
    containers = client.containers.list(
        all=True, filters={"label": [f"{LABEL_MANAGED}=true", f"{LABEL_OWNER}={owner}"]}
    )
    return [c for c in containers if keep_run_id is None or c.labels.get(LABEL_RUN_ID) != keep_run_id]


def container_path(spec: ContainerSpec, node_path: str) -> str:
    """Where a node path inside one of spec's bind mounts appears in the container."""
    for host_dir, container_dir in spec.volumes.items():
        host_dir = host_dir.rstrip("/") or "/"
        rel = posixpath.relpath(posixpath.normpath(node_path), host_dir)
        if not rel.startswith(".."):
            return posixpath.normpath(posixpath.join(container_dir, rel))
    raise RuntimeStartError(
        f"container {spec.name} ({spec.key}) on {spec.node}: {node_path} is not inside any of its bind "
        f"mounts ({', '.join(spec.volumes) or 'none'}); mount the log directory so logs stay on the node"
    )


class DockerRuntime(Runtime):
    """One idle container per ContainerSpec; processes are exec'd into it."""

    def __init__(
        self,
        hosts: Mapping[str, Host],
        *,
        transport: str,
        ssh_user: str | None = None,
        ssh_port: int = 22,
        owner: str | None = None,
    ) -> None:
        super().__init__(hosts)
        self.transport = transport
        self.ssh_user = ssh_user
        self.ssh_port = ssh_port
        self.owner = owner or getpass.getuser()
        self._clients: dict[str, Any] = {}
        self._specs: dict[str, ContainerSpec] = {}
        self._containers: dict[str, Any] = {}  # ContainerSpec.key -> Container, every one created

    def client(self, node: str) -> Any:
        """The docker client for node (created once)."""
        if node not in self._clients:
            try:
                if self.transport == "local":
                    self._clients[node] = docker.from_env(timeout=120)
                else:
                    user = f"{self.ssh_user}@" if self.ssh_user else ""
                    self._clients[node] = docker.DockerClient(
                        base_url=f"ssh://{user}{node}:{self.ssh_port}", use_ssh_client=True, timeout=120
                    )
                self._clients[node].ping()
            except docker.errors.DockerException as exc:
                self._clients.pop(node, None)
                raise HostUnreachable(f"{node}: docker engine not reachable over {self.transport}: {exc}") from None
        return self._clients[node]

    def prepare(self, containers: Sequence[ContainerSpec]) -> None:
        """Check images, remove this suite's leftovers, then create and start the containers in parallel."""
        missing = []
        for node, image in sorted({(c.node, c.image) for c in containers}):
            try:
                self.client(node).images.get(image)
            except docker.errors.ImageNotFound:
                missing.append(f"  image {image} on node {node}")
        if missing:
            raise ImageMissing(
                "container images missing (build with scripts/build_sim_image.sh or docker pull):\n"
                + "\n".join(missing)
            )
        run_id = containers[0].labels.get(LABEL_RUN_ID) if containers else None
        for node in sorted({c.node for c in containers}):
            for old in find_leftover_containers(self.client(node), self.owner, keep_run_id=run_id):
                log.warning("removing leftover container %s on %s (run %s)", old.name, node, old.labels.get(LABEL_RUN_ID))
                old.remove(force=True)
        with ThreadPoolExecutor(max_workers=max(1, min(len(containers), 16))) as pool:
            results = list(pool.map(self._create, containers))
        errors = [str(exc) for exc in results if exc is not None]
        if errors:
            raise RuntimeStartError("containers failed to start:\n" + "\n".join(errors))

    def _create(self, spec: ContainerSpec) -> Exception | None:
        self._specs[spec.key] = spec
        try:
            container = self.client(spec.node).containers.create(
                spec.image,
                list(spec.command),
                name=spec.name,
                labels={**spec.labels, LABEL_KEY: spec.key, LABEL_ROLE: spec.role,
                        LABEL_OWNER: self.owner, LABEL_MANAGED: "true"},
                environment=dict(spec.env),
                volumes={host: {"bind": inside, "mode": "rw"} for host, inside in spec.volumes.items()},
                devices=list(spec.devices),
                network_mode=spec.network_mode,
                ipc_mode=spec.ipc_mode,
                cap_add=list(spec.cap_add),
                shm_size=spec.shm_size,
                init=True,  # reaps the processes started by exec
            )
            self._containers[spec.key] = container
            container.start()
        except docker.errors.DockerException as exc:
            return RuntimeStartError(f"  {spec.role} container {spec.name} ({spec.image}) on {spec.node}: {exc}")
        return None

    def container_host(self, key: str) -> ContainerHost:
        """The prepared container of ContainerSpec ``key`` as a Host (commands run inside it)."""
        if key not in self._containers:
            raise RuntimeStartError(f"no container {key!r} prepared (prepared: {', '.join(self._containers) or 'none'})")
        return ContainerHost(self._containers[key], self._specs[key].node)

    def _spawn(self, proc, argv, secret_env) -> RunningProcess:
        shell = self.container_host(proc.container)
        inside_log = container_path(self._specs[proc.container], proc.log_path)
        pid = shell.spawn(
            [*argv, _exit_path(inside_log), *proc.argv], log_path=inside_log, env=proc.env, secret_env=secret_env,
        )
        return RunningProcess(proc, shell, pid, shell.container.id, None, time.time())

    @staticmethod
    def _container_running(rp: RunningProcess) -> bool:
        try:
            rp.host.container.reload()
        except docker.errors.NotFound:
            return False
        return rp.host.container.status == "running"

    def _group_alive(self, rp: RunningProcess) -> bool:
        return self._container_running(rp) and rp.host.group_alive(rp.pid)

    def exit_code(self, rp: RunningProcess) -> int | None:
        if not self._container_running(rp):  # container gone: read what the wrapper recorded
            status = self._node(rp.spec).run(["cat", "--", _exit_path(rp.spec.log_path)], timeout=30)
            return int(status.stdout) if status.stdout.strip().isdigit() else _KILLED_WITHOUT_STATUS
        return super().exit_code(rp)

    def teardown(self) -> None:
        """Remove every container this runtime created; errors reported after all are tried."""
        errors = []
        for key, container in list(self._containers.items()):
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.DockerException as exc:
                errors.append(f"  {container.name} on {self._specs[key].node}: {exc}")
                continue
            del self._containers[key]
        for client in self._clients.values():
            client.close()
        self._clients.clear()
        if errors:
            raise RuntimeStopError("teardown could not remove containers:\n" + "\n".join(errors))


def runtime_for(kind: str, hosts: Mapping[str, Host], **kwargs: Any) -> Runtime:
    """The Runtime for a config's runtime kind: "process" or "docker"."""
    if kind == "process":
        return ProcessRuntime(hosts, **kwargs)
    if kind == "docker":
        return DockerRuntime(hosts, **kwargs)
    raise ValueError(f"unknown runtime {kind!r} (expected 'process' or 'docker')")
