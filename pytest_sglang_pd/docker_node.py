"""One node's Docker engine, driven by the ``docker`` CLI on that node through the node's Host.

Every call is one command on the node's own connection (local, or the suite's SSH connection with
the config's user, key, port and timeout), so the engine is reached exactly as the node is, for any
number of calls; see docs/docker-over-ssh.md for why this and not the docker SDK's ssh:// transport.
Values of the environment go to ``docker run`` through stdin (``--env-file /dev/stdin``), never argv.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from .hosts import CommandResult, Host, HostError
from .plan import ContainerSpec

DOCKER_TIMEOUT_S = 120


class DockerError(HostError):
    """A docker command on a node failed: the command, the node, the exit status and docker's own words."""


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    name: str
    status: str  # created | running | exited | ...
    labels: Mapping[str, str]


class DockerNode:
    """The Docker engine of ``host``: images, containers and execs as CLI calls on the node."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.name = host.name

    def docker(self, *args: str, timeout: float = DOCKER_TIMEOUT_S, stdin: str | None = None) -> CommandResult:
        """`docker ARGS` on the node; a missing CLI or engine becomes one DockerError naming the node."""
        result = self.host.run(["docker", *args], timeout=timeout, stdin=stdin)
        if result.exit_status == 127:
            raise DockerError(f"{self.name}: the docker CLI is not installed on the node (`docker` not found)")
        if "Cannot connect to the Docker daemon" in result.stderr or "permission denied while trying to connect" in result.stderr:
            raise DockerError(f"{self.name}: docker engine not reachable: {result.stderr.strip().splitlines()[-1]}")
        return result

    def _checked(self, *args: str, timeout: float = DOCKER_TIMEOUT_S, stdin: str | None = None) -> CommandResult:
        result = self.docker(*args, timeout=timeout, stdin=stdin)
        if result.exit_status != 0:
            self._fail(args, result)
        return result

    def _fail(self, args: Sequence[str], result: CommandResult) -> None:
        tail = "\n".join(result.stderr.strip().splitlines()[-10:])
        raise DockerError(f"{self.name}: `docker {shlex.join(args)}` exited with status {result.exit_status}: {tail}")

    def server_version(self) -> str:
        """The engine's version; raises DockerError when the CLI or the engine is not there."""
        return self._checked("version", "--format", "{{.Server.Version}}", timeout=30).stdout.strip()

    def image(self, image: str) -> tuple[str, dict[str, str]] | None:
        """(id, labels) of a local image, its id the sha256 digest of its config; None when the node lacks it."""
        args = ("image", "inspect", "--format", "{{.Id}} {{json .Config.Labels}}", image)
        result = self.docker(*args, timeout=30)
        if result.exit_status != 0:
            if "no such image" in result.stderr.lower():
                return None
            self._fail(args, result)
        image_id, _, labels = result.stdout.strip().partition(" ")
        return image_id, json.loads(labels or "null") or {}

    def containers(self, *, labels: Mapping[str, str] | None = None, name: str | None = None) -> list[ContainerInfo]:
        """Containers (any state) carrying all the labels / of exactly that name."""
        filters = [f"--filter=label={k}={v}" for k, v in (labels or {}).items()]
        if name:
            filters.append(f"--filter=name=^/{name}$")
        ids = self._checked("ps", "-aq", "--no-trunc", *filters, timeout=30).stdout.split()
        return self.inspect(ids) if ids else []

    def inspect(self, ids: Sequence[str]) -> list[ContainerInfo]:
        """What the engine says of these containers now (containers gone are left out)."""
        result = self.docker("container", "inspect", *ids, timeout=30)
        found = json.loads(result.stdout or "[]")
        return [ContainerInfo(c["Id"], c["Name"].lstrip("/"), c["State"]["Status"], c["Config"].get("Labels") or {})
                for c in found]

    def status(self, container_id: str) -> str | None:
        """running / exited / ...; None when the container no longer exists."""
        found = self.inspect([container_id])
        return found[0].status if found else None

    def run_detached(self, spec: ContainerSpec, labels: Mapping[str, str]) -> str:
        """Create and start the container of spec; its id."""
        args = ["run", "-d", "--init", f"--name={spec.name}", f"--network={spec.network_mode}",
                f"--ipc={spec.ipc_mode}", "--env-file=/dev/stdin"]
        args += [f"--label={k}={v}" for k, v in labels.items()]
        args += [f"--volume={host}:{inside}:rw" for host, inside in spec.volumes.items()]
        args += [f"--device={d}" for d in spec.devices]
        args += [f"--cap-add={c}" for c in spec.cap_add]
        if spec.shm_size:
            args.append(f"--shm-size={spec.shm_size}")
        return self._checked(*args, spec.image, *spec.command, stdin=_env_file(spec.env)).stdout.strip()

    def remove(self, container_id: str) -> bool:
        """Force-remove a container; False when it was already gone (or going: logical nodes that share one Docker
        daemon, as Slurm nodes on one machine do, may remove the same leftover at once)."""
        args = ("rm", "-f", container_id)
        result = self.docker(*args, timeout=60)
        if result.exit_status != 0:
            if "no such container" in result.stderr.lower() or "is already in progress" in result.stderr.lower():
                return False
            self._fail(args, result)
        return True

    def exec(self, container_id: str, argv: Sequence[str], *, timeout: float, env: Mapping[str, str] | None = None,
             stdin: str | None = None) -> CommandResult:
        """argv inside the container (as root), bounded by ``timeout`` seconds inside and out."""
        args = ["exec", *(["-i"] if stdin is not None else []), *(f"--env={k}={v}" for k, v in (env or {}).items()),
                container_id, "timeout", "-k", "5", f"{timeout:g}", *argv]
        return self.docker(*args, timeout=timeout + 30, stdin=stdin)

    def copy_in(self, container_id: str, local: Path, inside: str, node_tmp: str) -> None:
        """A file of this machine into the container (through ``node_tmp`` on the node)."""
        self.host.put(local, node_tmp)
        try:
            self._checked("cp", node_tmp, f"{container_id}:{inside}")
        finally:
            self.host.run(["rm", "-f", "--", node_tmp], timeout=30)

    def copy_out(self, container_id: str, inside: str, local: Path, node_tmp: str) -> None:
        """A file of the container to this machine (through ``node_tmp`` on the node)."""
        try:
            self._checked("cp", f"{container_id}:{inside}", node_tmp)
            self.host.get(node_tmp, local)
        finally:
            self.host.run(["rm", "-f", "--", node_tmp], timeout=30)


def _env_file(env: Mapping[str, str]) -> str:
    for name, value in env.items():
        if "\n" in value or "=" in name or not name:
            raise ValueError(f"container environment {name!r}: names must not contain '=', values no newline")
    return "".join(f"{name}={value}\n" for name, value in env.items())
