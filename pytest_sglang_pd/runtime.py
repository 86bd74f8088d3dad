"""Runtimes: start, poll, stop and log the deployment's processes as plain processes or in containers.

ProcessRuntime spawns each ProcessSpec on its node through the node's Host. DockerRuntime keeps one
idle container per ContainerSpec (the node's docker CLI, through the node's own connection) and
starts each process inside it with a short exec that spawns it in its own process group. Either way a process is wrapped by a
small shell that records its exit status next to its log (``<log_path>.exit``), so the exit code
is known although the process is not a child of this test run. Statuses follow the shell
convention: 128+N when killed by signal N.
"""

from __future__ import annotations

import getpass
import logging
import posixpath
import secrets
import shlex
import signal
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from .docker_node import ContainerInfo, DockerNode
from .hosts import CommandResult, Host, HostError
from .parallel import all_of, on_each
from .plan import LABEL_PREFIX, ContainerSpec, ProcessSpec

log = logging.getLogger(__name__)

LABEL_RUN_ID = f"{LABEL_PREFIX}.run-id"
LABEL_ROLE = f"{LABEL_PREFIX}.role"
LABEL_KEY = f"{LABEL_PREFIX}.key"
LABEL_OWNER = f"{LABEL_PREFIX}.owner"
LABEL_MANAGED = f"{LABEL_PREFIX}.managed"

# $1: where to write the exit status; then argv. The trap makes the shell outlive a SIGTERM/SIGINT
# sent to the group (the program gets it too, and handlers reset on exec) so the status is written.
_RECORD_EXIT = 'f=$1; shift; trap : TERM INT HUP; "$@"; s=$?; echo "$s" >"$f"; exit "$s"'
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
    node_pid: int | None = None  # a container's process as its node sees it (docker), when found


def _exit_path(log_path: str) -> str:
    return f"{log_path}.exit"


class Runtime(ABC):
    """Carries out a Deployment's containers and processes on connected Hosts."""

    def __init__(self, hosts: Mapping[str, Host]) -> None:
        self.hosts = dict(hosts)
        self._started: list[RunningProcess] = []
        self.image_ids: dict[str, str] = {}  # node -> id (sha256) of the image its containers run (docker)

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
            # an earlier process of the same log path (a reused run id, or the previous model's deployment) left
            # its exit status there: gone before this one starts, or the first look at this one would read it
            node.run(["rm", "-f", "--", _exit_path(proc.log_path)], timeout=30).check()
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
        return self._exit_codes_on([rp])[0]

    def exit_codes(self, rps: Sequence[RunningProcess]) -> list[int | None]:
        """``exit_code`` of each process, all nodes at once (one command per node, or per container)."""
        groups: dict[int, list[int]] = {}
        for index, rp in enumerate(rps):
            groups.setdefault(id(self._status_source(rp)[0]), []).append(index)
        codes: list[int | None] = [None] * len(rps)
        found = all_of(lambda indices: self._exit_codes_on([rps[i] for i in indices]), list(groups.values()))
        for indices, group_codes in zip(groups.values(), found):
            for i, code in zip(indices, group_codes):
                codes[i] = code
        return codes

    def _exit_codes_on(self, rps: Sequence[RunningProcess]) -> list[int | None]:
        """The exit codes of processes that share one Host, in one command where they run: the status the wrapper
        wrote beside the log (containers bind-mount the log folder), else whether the process is still there."""
        sources = [self._status_source(rp) for rp in rps]
        found = _read_exit_codes(sources[0][0], [(path, pid) for _, path, pid in sources])
        return self._exit_codes_unread(rps, found) if isinstance(found, CommandResult) else found

    def _status_source(self, rp: RunningProcess) -> tuple[Host, str, int | None]:
        """Where one command reads a process's status: the host, the status file its wrapper writes as that host
        sees it, and the process's pid there."""
        return rp.host, _exit_path(rp.spec.log_path), rp.pid

    def _exit_codes_unread(self, rps: Sequence[RunningProcess], result: CommandResult) -> list[int | None]:
        """When the one command could not tell: an error naming the host and what it printed."""
        raise HostError(f"{rps[0].host.name}: exit status check (exit {result.exit_status}) printed "
                        f"{result.stdout!r} {result.stderr.strip()[-300:]!r} for {len(rps)} processes")


    def stop(self, rp: RunningProcess, grace_s: float = 10) -> None:
        """SIGTERM the process group, wait up to grace_s, then SIGKILL. Idempotent."""
        errors = self.stop_all([rp], grace_s)
        if errors:
            raise RuntimeStopError(errors[0])

    def stop_all(self, rps: Sequence[RunningProcess], grace_s: float = 10) -> list[str]:
        """Stop many processes together: SIGTERM to every group at once, one shared grace period, then SIGKILL
        to what is left. Returns one line per process that could not be stopped (none: all gone)."""
        errors: list[str] = []

        def failed(rp: RunningProcess, exc: Exception) -> None:
            errors.append(f"{rp.spec.role} {rp.spec.key} on {rp.spec.node}: {exc}")

        def still_alive(group: Sequence[RunningProcess]) -> list[RunningProcess]:
            alive = []
            for rp, running, exc in on_each(self._group_alive, group):
                if exc is not None:
                    failed(rp, exc)
                elif running:
                    alive.append(rp)
            return alive

        def signal_all(group: Sequence[RunningProcess], sig: int) -> list[RunningProcess]:
            sent = []
            for rp, _, exc in on_each(lambda rp: rp.host.signal_group(rp.pid, sig), group):
                if exc is not None:
                    failed(rp, exc)
                else:
                    sent.append(rp)
            return sent

        def wait_gone(group: list[RunningProcess], timeout: float) -> list[RunningProcess]:
            deadline = time.monotonic() + timeout
            while group and time.monotonic() < deadline:
                time.sleep(0.2)
                group = still_alive(group)
            return group

        left = wait_gone(signal_all(still_alive(rps), signal.SIGTERM), grace_s)
        for rp in left:
            log.warning("%s on %s ignored SIGTERM for %g s; sending SIGKILL", rp.spec.key, rp.spec.node, grace_s)
        for rp in wait_gone(signal_all(left, signal.SIGKILL), 10):
            errors.append(f"{rp.spec.role} {rp.spec.key} on {rp.spec.node}: process group {rp.pid} survived SIGKILL")
        return errors

    def _group_alive(self, rp: RunningProcess) -> bool:
        return rp.host.group_alive(rp.pid)

    def log_tail(self, rp: RunningProcess, lines: int = 50) -> str:
        return self._node(rp.spec).tail(rp.spec.log_path, lines)

    def collect_log(self, rp: RunningProcess, dest: Path) -> None:
        """Copy the process's log from its node to dest on this machine."""
        self._node(rp.spec).get(rp.spec.log_path, dest)

    def teardown(self) -> None:
        """Stop every process this runtime started that still runs, all together; errors after all are tried."""
        errors = self.stop_all(self._started, grace_s=5)
        if errors:
            raise RuntimeStopError("teardown left processes behind:\n" + "\n".join(f"  {e}" for e in errors))


# $@: pairs of exit-status file and pid; prints per pair the recorded status, "running" or "gone" (shell
# builtins only: one command per node per poll, however many processes it runs)
_EXIT_CODES = r"""
alive() { [ -r "/proc/$1/status" ] || return 1
  while read -r k v rest; do [ "$k" = "State:" ] && { [ "$v" != Z ]; return; }; done < "/proc/$1/status"; return 1; }
while [ $# -ge 2 ]; do f=$1; p=$2; shift 2
  if [ -s "$f" ]; then read -r s < "$f"; echo "$s"
  elif alive "$p"; then echo running
  elif [ -s "$f" ]; then read -r s < "$f"; echo "$s"
  else echo gone; fi
done
"""

# $1: container id, $2: a pid inside it; prints that process's pid on the node: the one process in the container's
# cgroup whose innermost namespace pid is $2 (/proc/*/cgroup and status are readable without root)
_NODE_PID = r"""
for f in $(grep -l -- "$1" /proc/[0-9]*/cgroup 2>/dev/null); do d=${f%/cgroup}
  awk -v want="$2" -v pid="${d#/proc/}" '$1 == "NSpid:" && $NF == want && NF > 2 { print pid }' "$d/status" 2>/dev/null
done
"""


def _read_exit_codes(host: Host, files_and_pids: Sequence[tuple[str, int | None]]) -> list[int | None] | CommandResult:
    """Per (status file, pid) on ``host``: the recorded status, None while the pid runs, else killed without one; the
    command's result when it could not tell."""
    pairs = [arg for path, pid in files_and_pids for arg in (path, str(pid or 0))]
    result = host.run(["sh", "-c", _EXIT_CODES, "sh", *pairs], timeout=30)
    lines = result.stdout.split()
    if result.exit_status != 0 or len(lines) != len(files_and_pids):
        return result
    return [None if line == "running" else int(line) if line.isdigit() else _KILLED_WITHOUT_STATUS for line in lines]


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
    """A running container seen as a Host: commands are ``docker exec`` on its node (root, in the container)."""

    def __init__(self, engine: DockerNode, container_id: str, container_name: str) -> None:
        self.engine = engine
        self.container_id = container_id
        self.name = f"{engine.name}/{container_name}"

    def run(self, argv, *, timeout=60, env=None, stdin=None) -> CommandResult:
        argv = tuple(argv)
        result = self.engine.exec(self.container_id, argv, timeout=timeout, env=env, stdin=stdin)
        if result.exit_status == 124:
            raise HostError(f"{self.name}: `{shlex.join(argv)}` timed out after {timeout:g} s")
        if result.stderr.startswith("OCI runtime exec failed"):  # the engine could not start it at all
            raise HostError(f"{self.name}: cannot exec `{shlex.join(argv)}`: {result.stderr.strip()}")
        return CommandResult(argv, result.exit_status, result.stdout, result.stderr, self.name)

    def _node_tmp(self) -> str:
        return f"/tmp/.pytest-sglang-pd-copy-{secrets.token_hex(8)}"

    def put(self, local: Path, remote: str) -> None:
        self.run(["mkdir", "-p", "--", posixpath.dirname(remote)]).check()
        self.engine.copy_in(self.container_id, local, remote, self._node_tmp())

    def get(self, remote: str, local: Path) -> None:
        self.engine.copy_out(self.container_id, remote, local, self._node_tmp())


def find_leftover_containers(engine: DockerNode, owner: str, *, keep_run_id: str | None = None) -> list[ContainerInfo]:
    """Containers this suite created for owner (by label), except those of run keep_run_id."""
    containers = engine.containers(labels={LABEL_MANAGED: "true", LABEL_OWNER: owner})
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
    """One idle container per ContainerSpec; processes are exec'd into it. Each node's engine is driven by
    the docker CLI on the node, through the node's own Host (docker_node.py)."""

    def __init__(self, hosts: Mapping[str, Host], *, owner: str | None = None) -> None:
        super().__init__(hosts)
        self.owner = owner or getpass.getuser()
        self._engines: dict[str, DockerNode] = {}
        self._specs: dict[str, ContainerSpec] = {}
        self._containers: dict[str, ContainerHost] = {}  # ContainerSpec.key -> its container, every one created

    def engine(self, node: str) -> DockerNode:
        """The Docker engine of a connected node (checked to answer on first use)."""
        if node not in self._engines:
            engine = DockerNode(self._node_host(node))
            engine.server_version()
            self._engines[node] = engine
        return self._engines[node]

    def _node_host(self, node: str) -> Host:
        try:
            return self.hosts[node]
        except KeyError:
            raise RuntimeStartError(f"node {node} is not connected") from None

    def prepare(self, containers: Sequence[ContainerSpec]) -> None:
        """Check images, remove this suite's leftovers, then create and start the containers in parallel."""
        nodes = sorted({c.node for c in containers})
        all_of(self.engine, nodes)
        images = sorted({(c.node, c.image) for c in containers})
        found_images = all_of(lambda pair: self.engine(pair[0]).image(pair[1]), images)
        missing = [f"  image {image} on node {node}" for (node, image), found in zip(images, found_images) if found is None]
        if missing:
            raise ImageMissing(
                "container images missing (build with scripts/build_sim_image.sh or docker pull):\n"
                + "\n".join(missing)
            )
        self.image_ids = {node: found[0] for (node, _), found in zip(images, found_images)}
        run_id = containers[0].labels.get(LABEL_RUN_ID) if containers else None
        all_of(lambda node: self._remove_leftovers(node, run_id), nodes)
        errors = [str(exc) for exc in all_of(self._create, containers) if exc is not None]
        if errors:
            raise RuntimeStartError("containers failed to start:\n" + "\n".join(errors))

    def _remove_leftovers(self, node: str, run_id: str | None) -> None:
        for old in find_leftover_containers(self.engine(node), self.owner, keep_run_id=run_id):
            log.warning("removing leftover container %s on %s (run %s)", old.name, node, old.labels.get(LABEL_RUN_ID))
            self.engine(node).remove(old.id)

    def _create(self, spec: ContainerSpec) -> Exception | None:
        self._specs[spec.key] = spec
        labels = {**spec.labels, LABEL_KEY: spec.key, LABEL_ROLE: spec.role, LABEL_OWNER: self.owner,
                  LABEL_MANAGED: "true"}
        engine = self.engine(spec.node)
        try:
            container_id = engine.run_detached(spec, labels)
        except HostError as exc:
            # a container created but not started still holds its name: find it by name to remove it at teardown
            for found in _quietly(lambda: engine.containers(name=spec.name)):
                self._containers[spec.key] = ContainerHost(engine, found.id, found.name)
            return RuntimeStartError(f"  {spec.role} container {spec.name} ({spec.image}) on {spec.node}: {exc}")
        self._containers[spec.key] = ContainerHost(engine, container_id, spec.name)
        return None

    def container_host(self, key: str) -> ContainerHost:
        """The prepared container of ContainerSpec ``key`` as a Host (commands run inside it)."""
        if key not in self._containers:
            raise RuntimeStartError(f"no container {key!r} prepared (prepared: {', '.join(self._containers) or 'none'})")
        return self._containers[key]

    def _spawn(self, proc, argv, secret_env) -> RunningProcess:
        shell = self.container_host(proc.container)
        inside_log = container_path(self._specs[proc.container], proc.log_path)
        pid = shell.spawn(
            [*argv, _exit_path(inside_log), *proc.argv], log_path=inside_log, env=proc.env, secret_env=secret_env,
        )
        found = self._node(proc).run(["sh", "-c", _NODE_PID, "sh", shell.container_id, str(pid)], timeout=30)
        node_pid = int(found.stdout.split()[0]) if found.exit_status == 0 and found.stdout.strip().isdigit() else None
        return RunningProcess(proc, shell, pid, shell.container_id, None, time.time(), node_pid)

    def _status_source(self, rp: RunningProcess) -> tuple[Host, str, int | None]:
        """The node itself where the process's node pid is known (no ``docker exec`` per poll), else the container."""
        if rp.node_pid is not None:
            return self._node(rp.spec), _exit_path(rp.spec.log_path), rp.node_pid
        return rp.host, _exit_path(container_path(self._specs[rp.spec.container], rp.spec.log_path)), rp.pid

    def _exit_codes_unread(self, rps: Sequence[RunningProcess], result: CommandResult) -> list[int | None]:
        """The container is gone (docker exec failed): what its processes recorded on the node, else killed."""
        found = _read_exit_codes(self._node(rps[0].spec), [(_exit_path(rp.spec.log_path), None) for rp in rps])
        return super()._exit_codes_unread(rps, found) if isinstance(found, CommandResult) else found

    @staticmethod
    def _container_running(rp: RunningProcess) -> bool:
        return rp.host.engine.status(rp.container_id) == "running"

    def _group_alive(self, rp: RunningProcess) -> bool:
        return self._container_running(rp) and rp.host.group_alive(rp.pid)

    def teardown(self) -> None:
        """Remove every container this runtime created, all at once; errors reported after all are tried."""
        removed = on_each(lambda item: item[1].engine.remove(item[1].container_id), list(self._containers.items()))
        errors = [f"  {container.name}: {exc}" for (_, container), _, exc in removed if exc is not None]
        for (key, _), _, exc in removed:
            if exc is None:
                del self._containers[key]
        if errors:
            raise RuntimeStopError("teardown could not remove containers:\n" + "\n".join(errors))


def _quietly(listing) -> list:
    try:
        return listing()
    except HostError:
        return []


def runtime_for(kind: str, hosts: Mapping[str, Host], **kwargs: Any) -> Runtime:
    """The Runtime for a config's runtime kind: "process" or "docker"."""
    if kind == "process":
        return ProcessRuntime(hosts, **kwargs)
    if kind == "docker":
        return DockerRuntime(hosts, **kwargs)
    raise ValueError(f"unknown runtime {kind!r} (expected 'process' or 'docker')")
