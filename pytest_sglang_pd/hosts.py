"""Hosts: run, copy and spawn commands on a cluster node: on this machine, over SSH (fabric) or as srun steps.

Every command is an argv list (quoted with shlex when it crosses a shell) with a timeout.
``run`` returns a CommandResult and never raises for a non-zero exit; ``CommandResult.check``
does. Connection failures and timeouts raise HostError subclasses naming the node.
"""

from __future__ import annotations

import io
import logging
import os
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import fabric
import invoke
import paramiko

log = logging.getLogger(__name__)

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Run by `sh -c` on the node: $1 log path, then argv. Reads `export K='v'` lines from stdin into
# a private (0600, mktemp) file that the launched shell sources and deletes, so env values never
# appear on a command line. setsid makes the process a session and process-group leader (its
# pid is its pgid); it is not a group leader when backgrounded here, so setsid does not fork
# and `$!` is the pid of the final program (the inner shell execs it).
_SPAWN_SCRIPT = r"""
log=$1; shift
mkdir -p -- "$(dirname -- "$log")" || exit 1
envfile=$(mktemp) || exit 1
cat >"$envfile" || { rm -f -- "$envfile"; exit 1; }
setsid sh -c '. "$1"; rc=$?; rm -f -- "$1"; [ "$rc" -eq 0 ] || exit 1; shift; exec "$@"' \
    sh "$envfile" "$@" >>"$log" 2>&1 </dev/null &
echo "$!"
"""


class HostError(RuntimeError):
    """A command could not be run on a node (not: it ran and failed)."""


class HostUnreachable(HostError):
    """The node cannot be reached (connection, authentication, DNS)."""


class HostCommandError(HostError):
    """A command ran on a node and exited non-zero (raised by ``CommandResult.check``)."""


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    exit_status: int
    stdout: str
    stderr: str
    host: str

    def check(self) -> CommandResult:
        if self.exit_status != 0:
            tail = "\n".join(self.stderr.strip().splitlines()[-20:])
            raise HostCommandError(
                f"{self.host}: `{shlex.join(self.argv)}` exited with status {self.exit_status}"
                + (f"; stderr:\n{tail}" if tail else "")
            )
        return self


def _exports(env: Mapping[str, str]) -> str:
    for name in env:
        if not _ENV_NAME.match(name):
            raise ValueError(f"invalid environment variable name {name!r}")
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())


class Host(ABC):
    """One node. Subclasses provide run/put/get/close; the rest is built on ``run``."""

    name: str

    @abstractmethod
    def run(
        self,
        argv: Sequence[str],
        *,
        timeout: float = 60,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
    ) -> CommandResult:
        """Run argv to completion. Non-zero exit is a result; timeout/connection loss raise HostError."""

    @abstractmethod
    def put(self, local: Path, remote: str) -> None:
        """Copy a local file to the node (parent dirs created)."""

    @abstractmethod
    def get(self, remote: str, local: Path) -> None:
        """Copy a file from the node to this machine (parent dirs created)."""

    def close(self) -> None:
        """Release the connection (no-op where there is none)."""

    def spawn(
        self,
        argv: Sequence[str],
        *,
        log_path: str,
        env: Mapping[str, str] | None = None,
        secret_env: Mapping[str, str] | None = None,
    ) -> int:
        """Start argv in the background as a new process group, output appended to log_path; return its pid."""
        exports = _exports({**(env or {}), **(secret_env or {})})
        log.debug("%s: spawn %s > %s (env %s)", self.name, shlex.join(argv), log_path, sorted(env or {}))
        result = self.run(["sh", "-c", _SPAWN_SCRIPT, "sh", log_path, *argv], stdin=exports, timeout=30)
        result.check()
        try:
            return int(result.stdout.split()[-1])
        except (IndexError, ValueError):
            raise HostError(f"{self.name}: spawn of `{shlex.join(argv)}` printed no pid: {result.stdout!r}") from None

    def alive(self, pid: int) -> bool:
        """Whether the process exists and is not a zombie."""
        result = self.run(["ps", "-o", "stat=", "-p", str(pid)], timeout=30)
        stat = result.stdout.strip()
        return result.exit_status == 0 and bool(stat) and not stat.startswith("Z")

    def group_alive(self, pgid: int) -> bool:
        """Whether any non-zombie process is left in the process group."""
        result = self.run(["ps", "-e", "-o", "pgid=,stat="], timeout=30).check()
        for line in result.stdout.splitlines():
            group, _, stat = line.strip().partition(" ")
            if group == str(pgid) and not stat.strip().startswith("Z"):
                return True
        return False

    def signal_group(self, pid: int, sig: int) -> None:
        """Send sig to the process group led by pid; a group that is already gone is not an error."""
        name = signal.Signals(sig).name.removeprefix("SIG")
        # the shell's builtin kill: procps' /bin/kill reads "-20" as a signal number, not a group
        result = self.run(["sh", "-c", 'kill -s "$1" -- "-$2"', "sh", name, str(pid)], timeout=30)
        if result.exit_status != 0 and "no such process" not in result.stderr.lower():
            result.check()

    def tail(self, path: str, lines: int = 50) -> str:
        """The last lines of a file on the node; a note instead when it cannot be read."""
        result = self.run(["tail", "-n", str(lines), "--", path], timeout=30)
        if result.exit_status != 0:
            return f"(cannot read {path} on {self.name}: {result.stderr.strip()})"
        return result.stdout

    def read_secret(self, path: str) -> str:
        """The stripped content of a file on the node. The value is never logged."""
        result = self.run(["cat", "--", path], timeout=30)
        if result.exit_status != 0:
            raise HostCommandError(f"{self.name}: cannot read secret file {path}: {result.stderr.strip()}")
        return result.stdout.strip()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class LocalHost(Host):
    """This machine, through subprocess."""

    def __init__(self, name: str = "localhost") -> None:
        self.name = name

    @property
    def access(self) -> dict:
        return {"node": self.name, "transport": "local"}

    def run(self, argv, *, timeout=60, env=None, stdin=None) -> CommandResult:
        argv = tuple(argv)
        log.debug("%s: run %s", self.name, shlex.join(argv))
        try:
            proc = subprocess.run(
                argv,
                input=stdin,
                stdin=subprocess.DEVNULL if stdin is None else None,
                capture_output=True,
                text=True,
                timeout=timeout,
                env={**os.environ, **env} if env else None,
            )
        except subprocess.TimeoutExpired:
            raise HostError(f"{self.name}: `{shlex.join(argv)}` timed out after {timeout:g} s") from None
        except FileNotFoundError as exc:
            return CommandResult(argv, 127, "", f"{exc.filename}: command not found", self.name)
        return CommandResult(argv, proc.returncode, proc.stdout, proc.stderr, self.name)

    def put(self, local: Path, remote: str) -> None:
        try:
            Path(remote).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local, remote)
        except OSError as exc:
            raise HostError(f"{self.name}: cannot copy {local} to {remote}: {exc}") from None

    def get(self, remote: str, local: Path) -> None:
        try:
            local.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(remote, local)
        except OSError as exc:
            raise HostError(f"{self.name}: cannot copy {remote} to {local}: {exc}") from None


KEEPALIVE_S = 30  # keeps an idle connection alive through NAT and firewalls during long benchmarks


def _before_command(exc: BaseException) -> bool:
    """Whether an SSH error came from opening the session, before the command was sent (nothing ran)."""
    if isinstance(exc, paramiko.ChannelException):
        return True
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name in ("open_session", "open_channel"):
            return True
        tb = tb.tb_next
    return False


class SSHHost(Host):
    """A node over SSH with fabric: one reused connection; ~/.ssh/config applies.

    ``user``/``port`` None mean: as ~/.ssh/config says (else the local user, port 22).
    """

    def __init__(
        self,
        node: str,
        *,
        user: str | None = None,
        key_file: str | None = None,
        port: int | None = None,
        connect_timeout: float = 10,
    ) -> None:
        self.name = node
        connect_kwargs = {"key_filename": [os.path.expanduser(key_file)]} if key_file else {}
        self._connection = fabric.Connection(
            node, user=user, port=port, connect_timeout=connect_timeout, connect_kwargs=connect_kwargs
        )
        self._connect_timeout = connect_timeout
        self._lock = threading.Lock()

    @property
    def access(self) -> dict:
        """How this node is reached, as the connection resolved it with ~/.ssh/config (never key material)."""
        c = self._connection
        keys = c.connect_kwargs.get("key_filename") or []
        return {"node": self.name, "transport": "ssh", "user": c.user, "port": c.port,
                "key_file": ", ".join([keys] if isinstance(keys, str) else keys) or None,
                "connect_timeout_s": self._connect_timeout}

    @property
    def _target(self) -> str:
        """user@node:port and the key file, as the connection uses them."""
        a = self.access
        return f"{a['user']}@{a['node']}:{a['port']} ({'key ' + a['key_file'] if a['key_file'] else 'default keys / agent'})"

    def _open(self):
        """The connected fabric Connection (opened once, re-opened when its transport has dropped)."""
        with self._lock:
            transport = self._connection.transport
            if transport is not None and not transport.is_active():
                log.warning("%s: ssh connection to %s dropped; re-opening it", self.name, self._target)
                self._connection.close()
            if not self._connection.is_connected:
                try:
                    self._connection.open()
                except (OSError, EOFError, paramiko.SSHException) as exc:
                    self._connection.close()
                    raise HostUnreachable(
                        f"{self.name}: cannot connect over ssh to {self._target}: {str(exc) or type(exc).__name__}"
                    ) from None
                self._connection.transport.set_keepalive(KEEPALIVE_S)
        return self._connection

    def run(self, argv, *, timeout=60, env=None, stdin=None) -> CommandResult:
        argv = tuple(argv)
        env_prefix = ["env", *(f"{k}={v}" for k, v in env.items())] if env else []
        command = shlex.join([*env_prefix, *argv])
        log.debug("%s: run %s", self.name, shlex.join(argv))
        for attempt in (1, 2):
            connection = self._open()
            started = time.monotonic()
            try:
                result = connection.run(
                    command,
                    hide=True,
                    warn=True,
                    timeout=timeout,
                    in_stream=io.StringIO(stdin) if stdin is not None else False,
                )
                break
            except invoke.CommandTimedOut:
                raise HostError(f"{self.name}: `{shlex.join(argv)}` timed out after {timeout:g} s") from None
            except (OSError, EOFError, paramiko.SSHException) as exc:
                self._connection.close()
                if attempt == 1 and _before_command(exc):  # no session was opened: nothing ran, try once more
                    log.warning("%s: ssh session to %s could not open (%s); re-opening the connection once",
                                self.name, self._target, exc)
                    continue
                raise HostUnreachable(
                    f"{self.name}: ssh connection to {self._target} lost during `{shlex.join(argv)[:200]}`: "
                    f"{str(exc) or type(exc).__name__}"
                ) from None
        if result.exited != 0 and time.monotonic() - started >= timeout:
            # invoke reports a timeout only once its timer thread has finished killing the command; a run that
            # returns while that thread still runs is the same timeout
            raise HostError(f"{self.name}: `{shlex.join(argv)}` timed out after {timeout:g} s")
        return CommandResult(argv, result.exited, result.stdout, result.stderr, self.name)

    def _sftp(self, timeout: float):
        sftp = self._open().sftp()
        sftp.get_channel().settimeout(timeout)
        return sftp

    def put(self, local: Path, remote: str) -> None:
        self.run(["mkdir", "-p", "--", os.path.dirname(remote) or "."]).check()
        try:
            self._sftp(timeout=120).put(str(local), remote)
        except (OSError, socket.timeout) as exc:
            raise HostError(f"{self.name}: cannot copy {local} to {remote}: {exc}") from None

    def get(self, remote: str, local: Path) -> None:
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._sftp(timeout=120).get(remote, str(local))
        except (OSError, socket.timeout) as exc:
            raise HostError(f"{self.name}: cannot copy {remote} from the node to {local}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            self._connection.close()


# The step of a spawned process, run by `sh -c` on the node: $1 log path, then argv; env exports on stdin as in
# _SPAWN_SCRIPT. The step lasts as long as the process (scancel ends both); `setsid -w` makes the process a
# session and group leader and waits for it; the leader prints its pid (its pgid) on the step's stdout first.
_STEP_SCRIPT = r"""
log=$1; shift
mkdir -p -- "$(dirname -- "$log")" || exit 1
envfile=$(mktemp) || exit 1
cat >"$envfile" || { rm -f -- "$envfile"; exit 1; }
exec setsid -w sh -c 'echo "$$"; log=$1; envfile=$2; shift 2; exec >>"$log" 2>&1 </dev/null
. "$envfile"; rc=$?; rm -f -- "$envfile"; [ "$rc" -eq 0 ] || exit 1; exec "$@"' sh "$log" "$envfile" "$@"
"""


_SRUN_TASK_STATUS = re.compile(r"^srun: error: \S+: task \d+: (Exited with exit code \d+|Killed|Terminated)\n",
                               re.MULTILINE)


def srun_argv(job_id: str, slurm_node: str, argv: Sequence[str], *, options: Sequence[str] = ()) -> list[str]:
    """argv as a one-task step of allocation job_id on one node, beside the allocation's other steps (--overlap)."""
    return ["srun", "--jobid", str(job_id), "--nodelist", slurm_node, "--overlap", "-N1", "-n1", "--quiet",
            *options, *argv]


class SlurmHost(LocalHost):
    """A node of a Slurm allocation: every command an srun step on it, run from this machine (the submit host).

    ``name`` is the node's address (what the plan and the URLs use), ``slurm_node`` its Slurm node name. A spawned
    process is a step of its own that lasts as long as the process, so cancelling the allocation ends it.
    """

    def __init__(self, name: str, *, job_id: str, slurm_node: str) -> None:
        super().__init__(name)
        self.job_id = job_id
        self.slurm_node = slurm_node
        self._steps: list[subprocess.Popen] = []

    @property
    def access(self) -> dict:
        return {"node": self.name, "transport": "slurm", "job_id": self.job_id, "slurm_node": self.slurm_node}

    def _srun(self, argv: Sequence[str]) -> list[str]:
        return srun_argv(self.job_id, self.slurm_node, argv)

    def run(self, argv, *, timeout=60, env=None, stdin=None) -> CommandResult:
        result = super().run(self._srun(argv), timeout=timeout, env=env, stdin=stdin)
        stderr = _SRUN_TASK_STATUS.sub("", result.stderr)  # the exit status, told again by srun
        return CommandResult(tuple(argv), result.exit_status, result.stdout, stderr, self.name)

    def spawn(self, argv, *, log_path, env=None, secret_env=None) -> int:
        exports = _exports({**(env or {}), **(secret_env or {})})
        log.debug("%s: srun step %s > %s (env %s)", self.name, shlex.join(argv), log_path, sorted(env or {}))
        said = tempfile.TemporaryFile()  # srun's own messages; a file, so srun outlives this process (sglang-pd up)
        step = subprocess.Popen(self._srun(["sh", "-c", _STEP_SCRIPT, "sh", log_path, *argv]), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=said, start_new_session=True)
        self._steps.append(step)
        step.stdin.write(exports.encode())
        step.stdin.close()
        ready, _, _ = select.select([step.stdout], [], [], 60)
        line = step.stdout.readline() if ready else b""
        step.stdout.close()
        if line.strip().isdigit():
            return int(line)
        if not ready:
            step.kill()
        step.wait()
        said.seek(0)
        tail = "\n".join(said.read().decode(errors="replace").strip().splitlines()[-10:])
        raise HostError(f"{self.name}: srun step `{shlex.join(argv)}` on {self.slurm_node} (job {self.job_id}) "
                        f"{'printed no pid within 60 s' if not ready else f'exited with status {step.returncode}'}"
                        + (f":\n{tail}" if tail else ""))

    def put(self, local: Path, remote: str) -> None:
        script = 'mkdir -p -- "$(dirname -- "$1")" && cat >"$1"'
        self._copy(self._srun(["sh", "-c", script, "sh", remote]), f"copy {local} to {remote}",
                   stdin=local.read_bytes())

    def get(self, remote: str, local: Path) -> None:
        data = self._copy(self._srun(["cat", "--", remote]), f"copy {remote} to {local}")
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)

    def _copy(self, argv: list[str], what: str, stdin: bytes | None = None) -> bytes:
        try:
            proc = subprocess.run(argv, input=stdin, capture_output=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise HostError(f"{self.name}: cannot {what}: {exc}") from None
        if proc.returncode != 0:
            raise HostError(f"{self.name}: cannot {what}: {proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout

    def close(self) -> None:
        """Reap the steps that have ended; those still running stay (their processes are the cluster)."""
        self._steps = [step for step in self._steps if step.poll() is None]


def host_for(node: str, *, transport: str, job_id: str | None = None, slurm_nodes: Mapping[str, str] | None = None,
             **ssh: Any) -> Host:
    """The Host for a node: transport "local" (this machine), "ssh" (``ssh``: SSHHost's keyword settings) or
    "slurm" (srun steps of allocation ``job_id``; ``slurm_nodes``: node address -> Slurm node name)."""
    if transport == "local":
        return LocalHost(node)
    if transport == "ssh":
        return SSHHost(node, **ssh)
    if transport == "slurm":
        return SlurmHost(node, job_id=str(job_id), slurm_node=(slurm_nodes or {}).get(node, node))
    raise ValueError(f"unknown transport {transport!r} (expected 'local', 'ssh' or 'slurm')")


def connect_all(nodes: Sequence[str], *, transport: str, **ssh: Any) -> dict[str, Host]:
    """Connect every node in parallel and run `true` on it (``ssh``: SSHHost's keyword settings).

    Any failure raises ONE HostUnreachable that lists every failing node with its error;
    the connections already opened are closed first.
    """
    connect_timeout = ssh.get("connect_timeout", 10)

    def connect(node: str) -> Host:
        host = host_for(node, transport=transport, **ssh)
        try:
            host.run(["true"], timeout=connect_timeout + 20).check()
        except BaseException:
            host.close()
            raise
        return host

    unique = list(dict.fromkeys(nodes))
    with ThreadPoolExecutor(max_workers=max(1, min(len(unique), 32))) as pool:
        futures = {node: pool.submit(connect, node) for node in unique}
    hosts: dict[str, Host] = {}
    failures: list[str] = []
    for node, future in futures.items():
        exc = future.exception()
        if exc is None:
            hosts[node] = future.result()
        else:
            failures.append(f"  {exc}" if isinstance(exc, HostError) else f"  {node}: {exc}")
    if failures:
        for host in hosts.values():
            host.close()
        raise HostUnreachable(
            f"{len(failures)} of {len(unique)} nodes unreachable over {transport}:\n" + "\n".join(failures)
        )
    return hosts
