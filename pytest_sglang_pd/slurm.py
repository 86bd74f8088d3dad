"""Slurm as the engine that owns the nodes (transport slurm, docs/slurm.md).

The run's allocation is the one it is in (``$SLURM_JOB_ID``), the one the config names (``slurm.job_id``) or
one it makes with ``sbatch --wrap "sleep infinity"`` and releases with ``scancel`` at the end. Its nodes take
the roles the config names, else those of AMD's MAD scripts: the first node the router (and the benchmark),
the next xP the prefill workers, the next yD the decode workers. Every node is used by its address as Slurm
reports it (``scontrol show node``: NodeAddr), so URLs and the plan hold addresses; ``slurm.node_names``
maps them back to node names for srun. The Slurm client commands run on this machine.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import re
import shlex
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

from . import redact
from .config import ClusterConfig, slurm_nodes_needed
from .config.keys import Problem
from .hosts import CommandResult, LocalHost, srun_argv
from .plan import ContainerSpec, Deployment, ProcessSpec
from .stages import Say, quiet

JOB_NAME_PREFIX = "sglang-pd-"
POLL_S = 0.5
RELEASE_WAIT_S = 60
PLACEHOLDER_JOB = "<job id>"


class SlurmError(RuntimeError):
    """Slurm refused or failed: the command, what it said, the config key where one applies."""


# --------------------------------------------------------------------------------------- pure: the plan
def sbatch_argv(cfg: ClusterConfig, run_id: str) -> list[str]:
    """The allocation the suite makes: a batch job that holds the nodes (``sleep infinity``) until scancel."""
    s = cfg.slurm
    argv = ["sbatch", "--parsable", f"--job-name={JOB_NAME_PREFIX}{run_id}",
            f"--nodes={s.nodes or slurm_nodes_needed(cfg)}", "--ntasks-per-node=1", "--output=/dev/null"]
    argv += [f"--partition={s.partition}"] if s.partition else []
    argv += [f"--account={s.account}"] if s.account else []
    argv += [f"--time={s.time_limit}"] if s.time_limit else []
    return [*argv, *s.extra_args, "--wrap", "sleep infinity"]


def assign(cfg: ClusterConfig, names: Sequence[str]) -> dict[str, list[str]]:
    """role -> Slurm node names from the allocation's nodes in order: the nodes the config names where it names
    them, the others from the nodes left over, router first, then prefill, then decode (the MAD scripts' order).
    A named node outside the allocation, or too few nodes, is a SlurmError naming the config key."""
    s = cfg.slurm
    roles = {"router": [cfg.router_node] if cfg.router_node else [], "prefill": list(cfg.prefill_nodes),
             "decode": list(cfg.decode_nodes)}
    keys = {"router": "proxy_router_node", "prefill": "prefill_node_list", "decode": "decode_node_list"}
    problems = [Problem(f"$.config.{keys[role]}", f"node {n} is not in the allocation ({', '.join(names)})")
                for role, nodes in roles.items() for n in nodes if n not in names]
    if cfg.benchmark_node not in (None, cfg.router_node) and cfg.benchmark_node not in names:
        problems.append(Problem("$.config.benchmark_serv_node",
                                f"node {cfg.benchmark_node} is not in the allocation ({', '.join(names)})"))
    if problems:
        raise SlurmError("\n".join(map(str, problems)))
    free = [n for n in names if n not in {x for nodes in roles.values() for x in nodes}]
    wanted = {"router": 1, "prefill": s.prefill_nodes, "decode": s.decode_nodes}
    for role in ("router", "prefill", "decode"):
        if not roles[role]:
            if len(free) < wanted[role]:
                raise SlurmError(f"the allocation's {len(names)} node(s) ({', '.join(names)}) are too few: "
                                 f"{slurm_nodes_needed(cfg)} needed (1 router node + $.config.slurm.prefill_nodes "
                                 f"{s.prefill_nodes} + $.config.slurm.decode_nodes {s.decode_nodes}, unless the "
                                 "config names them)")
            roles[role], free = free[:wanted[role]], free[wanted[role]:]
    return roles


def placed(cfg: ClusterConfig, job_id: str, names: Sequence[str], addresses: Mapping[str, str], *,
           owned: bool) -> ClusterConfig:
    """The config with its roles on the allocation's nodes, by address; the logs under ``log_dir/<job id>/``."""
    roles = assign(cfg, names)
    addr = {n: addresses.get(n, n) for n in names}
    bench = cfg.benchmark_node if cfg.benchmark_node not in (None, cfg.router_node) else roles["router"][0]
    slurm = dataclasses.replace(cfg.slurm, job_id=str(job_id), owned=owned,
                                node_names={addr[n]: n for n in names})
    return dataclasses.replace(
        cfg, prefill_nodes=tuple(addr[n] for n in roles["prefill"]),
        decode_nodes=tuple(addr[n] for n in roles["decode"]), router_node=addr[roles["router"][0]],
        benchmark_node=addr[bench], slurm=slurm, log_dir=posixpath.join(cfg.log_dir, str(job_id)))


def planned(cfg: ClusterConfig) -> ClusterConfig:
    """The config as ``sglang-pd plan`` shows it before any allocation: the nodes the config names, else
    ``node1``, ``node2``, ... in the order the allocation's nodes would take the roles; the job the config
    names (or ``$SLURM_JOB_ID``), else ``<job id>``. No Slurm command runs."""
    if cfg.transport != "slurm":
        return cfg
    given = cfg.slurm.job_id or os.environ.get("SLURM_JOB_ID")
    named = [*filter(None, [cfg.router_node]), *cfg.prefill_nodes, *cfg.decode_nodes]
    extra = [f"node{i + 1}" for i in range(max(cfg.slurm.nodes or 0, slurm_nodes_needed(cfg)))]
    names = list(dict.fromkeys([*named, *(n for n in extra if n not in named)]))
    return placed(cfg, given or PLACEHOLDER_JOB, names, {}, owned=not given)


def _step(cfg: ClusterConfig, node: str, argv: Sequence[str], options: Sequence[str] = ()) -> list[str]:
    """argv as an srun step on a node of the plan (by address) of the config's allocation."""
    s = cfg.slurm
    return srun_argv(s.job_id or PLACEHOLDER_JOB, s.node_names.get(node, node), argv, options=options)


def launch_argv(cfg: ClusterConfig, spec: ProcessSpec) -> list[str]:
    """How a process of the plan is started on its node: its srun step (the node by its Slurm name)."""
    return _step(cfg, spec.node, spec.argv)


def pyxis_argv(cfg: ClusterConfig, container: ContainerSpec, spec: ProcessSpec) -> list[str]:
    """The process in its container through pyxis/enroot: ``srun --container-image`` (planned; not run here).
    The container is named per run and role (``--container-name``), the volumes become ``--container-mounts``,
    the container's and the process's env are set by ``env`` inside it (values may hold commas, which srun's
    ``--export`` cannot carry), except secrets: those are exported by name only (``--export=ALL,HF_TOKEN``), their
    values in srun's environment, never on a command line."""
    mounts = ",".join(f"{host}:{inside}" for host, inside in container.volumes.items())
    env = {**container.env, **spec.env}
    secrets = sorted(k for k in env if redact.is_secret_name(k))
    options = [f"--container-image={container.image}", f"--container-name={container.name}",
               *([f"--container-mounts={mounts}"] if mounts else []), "--no-container-mount-home",
               *(["--export=ALL," + ",".join(secrets)] if secrets else [])]
    plain = sorted((k, v) for k, v in env.items() if k not in secrets)
    argv = ["env", *(f"{k}={v}" for k, v in plain), *spec.argv] if plain else list(spec.argv)
    return _step(cfg, spec.node, argv, options)


def steps_text(cfg: ClusterConfig, dep: Deployment) -> str:
    """The srun steps of a plan, one line a container or process: ``sglang-pd plan`` with transport slurm."""
    s = cfg.slurm
    job = s.job_id or PLACEHOLDER_JOB
    how = f"the suite allocates, released by scancel {job} at the end: {shlex.join(sbatch_argv(cfg, dep.run_id))}" \
        if s.owned else f"allocation {job}, not released by the suite"
    nodes = ", ".join(name if addr == name else f"{name} ({addr})" for addr, name in s.node_names.items())
    lines = [f"slurm: {how}", f"  nodes: {nodes}", f"  logs on the nodes under {cfg.log_dir}"]
    containers = {c.key: c for c in dep.containers}
    pyxis = s.containers == "pyxis"
    for c in () if pyxis else dep.containers:
        argv = _step(cfg, c.node, ["docker", "run", "-d", f"--name={c.name}", "...", c.image])
        lines.append(f"  [container {c.key}] $ {shlex.join(argv)}")
    for p in (*dep.processes, *dep.bench):
        c = containers.get(p.container or "")
        if c is None:
            argv = launch_argv(cfg, p)
        elif pyxis:
            argv = pyxis_argv(cfg, c, p)
        else:
            argv = launch_argv(cfg, dataclasses.replace(p, argv=("docker", "exec", c.name, *p.argv)))
        lines.append(f"  [{p.key}] $ {shlex.join(redact.argv(argv))}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- live: the allocation
def _slurm(argv: Sequence[str], what: str, timeout: float = 60) -> str:
    """A Slurm client command on this machine; its stdout, or a SlurmError with what it said."""
    return _checked(LocalHost("slurm").run(list(argv), timeout=timeout), what)


def _checked(result: CommandResult, what: str) -> str:
    if result.exit_status != 0:
        said = result.stderr.strip() or result.stdout.strip() or f"exit status {result.exit_status}"
        raise SlurmError(f"{what}: `{shlex.join(result.argv)}` failed: {said}")
    return result.stdout


def job_state(job_id: str) -> tuple[str, str] | None:
    """(state, reason) of a job squeue still lists, else None."""
    argv = ["squeue", "-h", "-j", str(job_id), "-o", "%T|%R"]
    result = LocalHost("slurm").run(argv, timeout=60)
    if result.exit_status != 0 and "invalid job id" in result.stderr.lower():
        return None  # ended long enough ago that the controller has forgotten it
    line = _checked(result, f"job {job_id}").strip().splitlines()
    if not line:
        return None
    state, _, reason = line[0].partition("|")
    return state, reason.strip("()")  # a pending job's reason comes in parentheses


def job_nodes(job_id: str) -> list[str]:
    """The allocation's node names, in Slurm's order."""
    listed = _slurm(["squeue", "-h", "-j", str(job_id), "-o", "%N"], f"nodes of job {job_id}").strip()
    if not listed:
        raise SlurmError(f"job {job_id} holds no nodes (not running, or not a job of this cluster: squeue lists "
                         "none for it)")
    return _slurm(["scontrol", "show", "hostnames", listed], f"nodes of job {job_id}").split()


def node_addresses(names: Sequence[str]) -> dict[str, str]:
    """Node name -> NodeAddr as ``scontrol show node`` reports it."""
    out = _slurm(["scontrol", "-o", "show", "node", ",".join(names)], "node addresses")
    found = {m.group(1): m.group(2) for m in re.finditer(r"NodeName=(\S+).*?NodeAddr=(\S+)", out)}
    return {n: found.get(n, n) for n in names}


def wait_running(job_id: str, timeout_s: float, say: Say = quiet) -> None:
    """Until the job runs; a job that ends first or is still pending at the deadline is a SlurmError."""
    deadline = time.monotonic() + timeout_s
    told = None
    while True:
        state = job_state(job_id)
        if state is None or state[0] in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "BOOT_FAIL", "DEADLINE"):
            said = f"{state[0]}: {state[1]}" if state else "gone from squeue"
            raise SlurmError(f"allocation {job_id} ended before it ran ({said})")
        if state[0] == "RUNNING":
            return
        if state != told:
            say(f"  allocation {job_id}: {state[0].lower()} ({state[1]})", 1)
            told = state
        if time.monotonic() > deadline:
            raise SlurmError(f"allocation {job_id} still {state[0].lower()} ({state[1]}) after {timeout_s:g} s "
                             "($.config.slurm.queue_timeout_s)")
        time.sleep(POLL_S)


ENDING_STATES = ("CANCELLED", "COMPLETING", "COMPLETED")


def cancel(job_id: str) -> CommandResult:
    """scancel the job without waiting (its steps end, the run that holds it releases it): an interrupted run's stop.
    The scancel's result."""
    return LocalHost("slurm").run(["scancel", str(job_id)], timeout=60)


def release(job_id: str) -> None:
    """scancel the job and wait until squeue no longer lists it (its steps' processes killed by Slurm); a job already
    ending (cancelled by ``cancel``, or gone) is waited for."""
    result = cancel(job_id)
    if result.exit_status != 0:
        state = job_state(job_id)
        if state is not None and state[0] not in ENDING_STATES:
            _checked(result, f"release allocation {job_id}")
    deadline = time.monotonic() + RELEASE_WAIT_S
    while job_state(job_id) is not None:
        if time.monotonic() > deadline:
            raise SlurmError(f"allocation {job_id} still listed by squeue {RELEASE_WAIT_S} s after scancel")
        time.sleep(POLL_S)


def resolved(cfg: ClusterConfig, job_id: str, *, owned: bool) -> ClusterConfig:
    """The config placed on a running allocation's nodes (their addresses from scontrol)."""
    names = job_nodes(job_id)
    return placed(cfg, job_id, names, node_addresses(names), owned=owned)


@dataclass
class Allocation:
    """The run's allocation: the config placed on it; ``keep`` leaves an owned one to `sglang-pd down`."""

    cfg: ClusterConfig
    keep: bool = False


@contextmanager
def allocation(cfg: ClusterConfig, run_id: str, *, say: Say = quiet) -> Iterator[Allocation]:
    """The allocation of a run with transport slurm (any other config passes through unchanged). One the suite
    makes is released on leaving, whatever ends the run (errors, Ctrl-C, SIGTERM), unless ``keep`` was set; its
    release is armed as soon as sbatch names the job, before the wait for nodes."""
    if cfg.transport != "slurm":
        yield Allocation(cfg)
        return
    if cfg.slurm.containers == "pyxis":
        raise SlurmError("$.config.slurm.containers: pyxis is planned (sglang-pd plan shows its srun "
                         "--container-image steps) but this release does not start it; use \"docker\"")
    existing = cfg.slurm.job_id or os.environ.get("SLURM_JOB_ID")
    if existing:
        say(f"slurm: running in allocation {existing} (not released by the suite)", 0)
        yield Allocation(resolved(cfg, existing, owned=False))
        return
    argv = sbatch_argv(cfg, run_id)
    job_id = _slurm(argv, "allocate the run's nodes").strip().split(";")[0]  # --parsable: "<id>[;<cluster>]"
    say(f"slurm: allocation {job_id} submitted: {shlex.join(argv)}", 0)
    alloc = Allocation(dataclasses.replace(cfg, slurm=dataclasses.replace(cfg.slurm, job_id=job_id, owned=True)))
    try:
        wait_running(job_id, cfg.slurm.queue_timeout_s, say)
        alloc.cfg = resolved(cfg, job_id, owned=True)
        names = ", ".join(f"{n} ({a})" for a, n in alloc.cfg.slurm.node_names.items())
        say(f"slurm: allocation {job_id} running on {names}", 0)
        yield alloc
    finally:
        if not alloc.keep:
            say(f"slurm: releasing allocation {job_id} (scancel)", 0)
            release(job_id)


def state_of(cfg: ClusterConfig) -> dict | None:
    """What the cluster-state file keeps of the allocation, so that `sglang-pd down` reaches the nodes again."""
    if cfg.transport != "slurm":
        return None
    s = cfg.slurm
    return {"job_id": s.job_id, "owned": s.owned, "node_names": dict(s.node_names)}


def adopted(cfg: ClusterConfig, state: Mapping) -> ClusterConfig:
    """The config on the allocation a state file records (`sglang-pd down`, cleanup)."""
    names = dict(state["node_names"])  # address -> name, in the allocation's order
    return placed(cfg, state["job_id"], list(names.values()), {n: a for a, n in names.items()}, owned=state["owned"])


def leftover_jobs() -> list[tuple[str, str]]:
    """(job id, name) of this user's jobs that the suite submitted (named sglang-pd-<run id>)."""
    out = _slurm(["squeue", "-h", "--me", "-o", "%i|%j"], "list the suite's allocations")
    jobs = [tuple(line.split("|", 1)) for line in out.strip().splitlines()]
    return [(job, name) for job, name in jobs if name.startswith(JOB_NAME_PREFIX)]
