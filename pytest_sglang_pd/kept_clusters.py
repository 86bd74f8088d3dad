"""A kept cluster (`sglang-pd up`, --keep-cluster) stopped later from the state its bring-up recorded in
cluster-state.json (`sglang-pd down`, `sglang-pd cleanup`): its processes and containers, then its Slurm allocation."""

from __future__ import annotations

import json
from pathlib import Path

from . import config as config_mod
from . import plan as plan_mod
from . import services, slurm
from .cluster import ClusterError, connect_nodes, runtime_of
from .config import ClusterConfig
from .parallel import all_of
from .runtime import RunningProcess


def down(state_path: Path) -> list[str]:
    """Stop what a kept run left running, from its cluster-state.json; returns what was stopped."""
    state = json.loads(state_path.read_text())
    cfg = config_mod.load(state["config"])
    stopped = []
    if state.get("slurm"):
        cfg = slurm.adopted(cfg, state["slurm"])
        if slurm.job_state(cfg.slurm.job_id) is None:  # the job has ended, and its steps' processes with it
            state["processes"] = []
            if state["containers"]:  # docker's containers live outside the job, and no step reaches them now
                raise ClusterError(
                    f"allocation {cfg.slurm.job_id} has ended, but its containers may still run outside it: "
                    + ", ".join(f"{c['name']} on {c['node']}" for c in state["containers"])
                    + "; remove them on their nodes (docker rm -f), or run sglang-pd cleanup inside an allocation "
                    "of those nodes")
    if state["processes"] or state["containers"]:
        stopped += _stop_recorded(cfg, state)
    if state.get("slurm") and state["slurm"]["owned"] and slurm.job_state(cfg.slurm.job_id) is not None:
        slurm.release(cfg.slurm.job_id)
        stopped.append(f"slurm allocation {cfg.slurm.job_id} (scancel)")
    state["stopped"] = True
    state_path.write_text(json.dumps(state, indent=2))
    return stopped


def _stop_recorded(cfg: ClusterConfig, state: dict) -> list[str]:
    """Stop the processes and containers a state file records; what was stopped."""
    hosts = connect_nodes(cfg, [*(p["node"] for p in state["processes"]), *(c["node"] for c in state["containers"])])
    runtime = runtime_of(cfg, hosts)
    stopped = []
    try:
        if state["runtime"] == "docker":
            for c in state["containers"]:
                engine = runtime.engine(c["node"])
                for found in engine.containers(name=c["name"]):
                    engine.remove(found.id)
                    stopped.append(f"container {found.name} on {c['node']}")
        else:
            dep = plan_mod.plan(cfg, state["model"], run_id=state["run_id"])
            specs = {s.key: s for s in (*dep.processes, *dep.bench)}
            running = [RunningProcess(specs[p["key"]], hosts[p["node"]], p["pid"], None, None, 0.0)
                       for p in state["processes"] if p["pid"]]
            running = [rp for rp, alive in zip(running, all_of(lambda rp: rp.host.group_alive(rp.pid), running)) if alive]
            for last in (False, True):  # the side services after everything that uses them
                wave = [rp for rp in running if (rp.spec.role == services.ROLE) == last]
                errors = runtime.stop_all(wave) if wave else []
                if errors:
                    raise ClusterError("could not stop:\n" + "\n".join(f"  {e}" for e in errors))
                stopped += [f"{rp.spec.role} {rp.spec.key} on {rp.spec.node} (pid {rp.pid})" for rp in wave]
    finally:
        runtime.teardown()
        for h in hosts.values():
            h.close()
    return stopped
