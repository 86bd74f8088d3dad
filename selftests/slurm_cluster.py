"""A real Slurm on this machine for the self-tests: one slurmctld and one slurmd per node, each node on its own
loopback address (n1 on 127.0.0.2, n2 on 127.0.0.3, ...), all in a temp folder, stopped at the end."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from selftests.configs import free_port, raw, write

DAEMONS = ("/usr/sbin/slurmctld", "/usr/sbin/slurmd")
CLIENTS = ("sinfo", "srun", "sbatch", "scontrol", "scancel", "squeue")
PARTITION = "pd"


@dataclass(frozen=True)
class SlurmCluster:
    conf: Path
    nodes: dict[str, str]  # node name -> NodeAddr
    workdir: Path

    @property
    def env(self) -> dict[str, str]:
        """The environment that points Slurm's client commands at this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *argv: str, check: bool = True) -> str:
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=30, check=check).stdout

    def jobs(self) -> list[str]:
        """`<job id> <state>` of every job the controller still knows as pending or running."""
        return self.run("squeue", "-h", "-o", "%i %T").split("\n")[:-1]

    def settled_jobs(self, timeout: float = 30) -> list[str]:
        """``jobs()`` once no job is still COMPLETING (its steps' processes being killed), or at the timeout."""
        deadline = time.monotonic() + timeout
        jobs = self.jobs()
        while any(line.endswith(" COMPLETING") for line in jobs) and time.monotonic() < deadline:
            time.sleep(0.3)
            jobs = self.jobs()
        return jobs

    def idle(self) -> list[str]:
        return self.run("sinfo", "-h", "-N", "-t", "idle", "-o", "%N").split()


def missing() -> str | None:
    """Why Slurm cannot run here, or None."""
    absent = [p for p in DAEMONS if not os.path.exists(p)] + [c for c in CLIENTS if not shutil.which(c)]
    if absent:
        return f"Slurm not installed ({', '.join(absent)} missing: apt-get install slurm-wlm, or scripts/setup --dev)"
    if os.geteuid() != 0:
        return "the throwaway Slurm runs its daemons as root (SlurmUser=root)"
    return None


def slurm_conf(workdir: Path, nodes: dict[str, str], ctld_port: int, node_ports: dict[str, int]) -> str:
    lines = [
        "ClusterName=sglangpd", "SlurmctldHost=localhost(127.0.0.1)", f"SlurmctldPort={ctld_port}",
        "AuthType=auth/none", "CredType=cred/none", "SlurmUser=root", "SlurmdUser=root",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core", "MpiDefault=none", "ReturnToService=2", "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none", "SchedulerType=sched/backfill", "KillWait=5",
        "SlurmdTimeout=30", "InactiveLimit=0", "MinJobAge=2",
        f"StateSaveLocation={workdir}/state", f"SlurmdSpoolDir={workdir}/spool/%n",
        f"SlurmctldPidFile={workdir}/slurmctld.pid", f"SlurmdPidFile={workdir}/slurmd-%n.pid",
        f"SlurmctldLogFile={workdir}/slurmctld.log", f"SlurmdLogFile={workdir}/slurmd-%n.log",
    ]
    lines += [f"NodeName={name} NodeHostname=localhost NodeAddr={addr} Port={node_ports[name]} CPUs=2 "
              f"RealMemory=1000 State=UNKNOWN" for name, addr in nodes.items()]
    lines.append(f"PartitionName={PARTITION} Nodes={','.join(nodes)} Default=YES MaxTime=INFINITE State=UP")
    return "\n".join(lines) + "\n"


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait(what: str, done, timeout: float, logs: list[Path]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if done():
            return
        time.sleep(0.3)
    tails = "\n".join(f"--- {p.name}\n" + p.read_text(errors="replace")[-1500:] for p in logs if p.exists())
    raise RuntimeError(f"throwaway Slurm: {what} after {timeout:g} s\n{tails}")


@contextmanager
def throwaway_slurm(workdir: Path, n_nodes: int = 3) -> Iterator[SlurmCluster]:
    """slurmctld + n slurmd on free ports, nodes n1..nK on 127.0.0.2..; every job cancelled and every daemon stopped
    on exit. Skips the calling test when Slurm is not installed."""
    why = missing()
    if why:
        pytest.skip(why)
    nodes = {f"n{i + 1}": f"127.0.0.{i + 2}" for i in range(n_nodes)}
    ctld_port = free_port("127.0.0.1")
    node_ports = {name: free_port(addr) for name, addr in nodes.items()}
    for sub in ("state", "spool"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    conf = workdir / "slurm.conf"
    conf.write_text(slurm_conf(workdir, nodes, ctld_port, node_ports))
    cluster = SlurmCluster(conf, nodes, workdir)
    logs = [workdir / "slurmctld.log", *(workdir / f"slurmd-{n}.log" for n in nodes)]
    with ExitStack() as stack:
        ctld = subprocess.Popen([DAEMONS[0], "-D", "-i", "-f", str(conf)], env=cluster.env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=open(workdir / "slurmctld.stderr", "w"))
        stack.callback(_stop, ctld)
        _wait("slurmctld not answering", lambda: subprocess.run(["scontrol", "ping"], env=cluster.env,
                                                                 capture_output=True).returncode == 0, 30, logs)
        for name in nodes:
            slurmd = subprocess.Popen([DAEMONS[1], "-D", "-f", str(conf), "-N", name], env=cluster.env,
                                      start_new_session=True, stdout=subprocess.DEVNULL,
                                      stderr=open(workdir / f"slurmd-{name}.stderr", "w"))
            stack.callback(_stop, slurmd)
        _wait(f"not all of {', '.join(nodes)} idle", lambda: len(cluster.idle()) == n_nodes, 60, logs)
        stack.callback(_cancel_all, cluster, logs)  # before the daemons stop: a job's steps die with it
        yield cluster


def _cancel_all(cluster: SlurmCluster, logs: list[Path]) -> None:
    """Every job cancelled and gone from squeue (its steps' processes killed by their slurmstepd)."""
    ids = [line.split()[0] for line in cluster.jobs()]
    if ids:
        cluster.run("scancel", *ids, check=False)
    _wait("jobs still listed", lambda: not cluster.jobs(), 60, logs)


def slurm_config(tmp_path: Path, cluster, **config_overrides) -> Path:
    """local-slurm.json on ports free on the throwaway Slurm's node addresses, logs in tmp_path."""
    data = raw("local-slurm.json")
    c = data["config"]
    addrs = list(cluster.nodes.values())
    ports = set()
    while len(ports) < 5:
        ports.add(free_port(*addrs))
    p = sorted(ports)
    c.update(prefill_serv_port=str(p[0]), decode_serv_port=str(p[1]), router_prometheus_port=str(p[2]),
             log_dir=str(tmp_path / "node-logs"))
    c["proxy_router_port"] = c["proxy_router_serv_port"] = str(p[3])
    c["kv_transfer"]["bootstrap_port"] = str(p[4])
    for k, v in config_overrides.items():
        c[k] = {**c[k], **v} if isinstance(v, dict) and isinstance(c.get(k), dict) else v
    return write(tmp_path, data)
