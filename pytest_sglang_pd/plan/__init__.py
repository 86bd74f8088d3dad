"""The deployment plan: ClusterConfig x model -> Deployment (pure, no I/O).

This module plans one model (``plan``) and hands on the package's names; beside it stand what a plan is made of
(``deployment.py``), the instances (``instances.py``) and the ports they and the store listen on (``ports.py``), what a
node gives its processes (``nodes.py``), the workers' and the router's argv (``argv.py``), the HiCache store
(``store.py``), the benchmark commands (``bench.py``) and the prechecks (``prechecks.py``).
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from secrets import token_hex

from .. import config as config_mod
from .. import releases
from ..config import DECODE_ALONE, DISAGGREGATED, ClusterConfig, ModelConfig
from .argv import router_argv, worker_argv
from .bench import bench_output_path, bench_processes, bench_serving_argv, bench_tokenizer, gsm8k_data_path
from .deployment import WORKER_ROLES, ContainerSpec, Deployment, Precheck, ProcessSpec
from .instances import instances, instances_by_role
from .nodes import bind_host, gid_index, kv_env, member_nics, nic_mounts, node_env, node_python, transfer_backend
from .ports import plan_problems
from .prechecks import prechecks, worker_nodes
from .store import STORE_PROBE_KEY, STORE_ROLE, hicache_env, store_node, store_processes

__all__ = ["LABEL_PREFIX", "SIM_ROUTER_ENV", "STORE_PROBE_KEY", "STORE_ROLE", "WORKER_ROLES", "ContainerSpec",
           "Deployment", "Precheck", "ProcessSpec", "bench_output_path", "bench_serving_argv", "bind_host",
           "default_run_id", "gid_index", "gsm8k_data_path", "instances", "kv_env", "load_config", "nic_mounts", "plan",
           "plan_problems", "store_node", "store_processes", "worker_nodes"]


LABEL_PREFIX = "pytest-sglang-pd"
# The router looks the model's tokenizer up on the HuggingFace hub (only a warning when that fails).
# A simulated cluster serves no real model: send that lookup to a closed local port, not the internet.
SIM_ROUTER_ENV = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "1"}


def default_run_id() -> str:
    """A run id when none is given: the UTC time and a random suffix, e.g. ``20260101-120000-1a2b``."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + token_hex(2)


def load_config(name: str | Path, *, user: str | None = None) -> ClusterConfig:
    """A cluster config loaded, validated and checked against its plan: every problem in one ConfigError.

    What both faces load: the pytest plugin (a usage error, exit 4) and ``sglang-pd`` (exit 1).
    """
    return config_mod.load(name, user=user, checks=(plan_problems,))


def plan(cfg: ClusterConfig, model: ModelConfig | str, *, run_id: str, sglang_version: str | None = None) -> Deployment:
    """The deployment of one model: every container and process, with argv, env, port and log path, the
    benchmark commands and the prechecks, all with the python the nodes run (``node_python``), for the SGLang
    release ``sglang_version`` (else the config's ``sglang_version``, else ``releases.DEFAULT``)."""
    if isinstance(model, str):
        model = cfg.model(model)
    python = node_python(cfg)
    release = sglang_version or cfg.sglang_version or releases.DEFAULT
    docker = cfg.runtime == "docker"
    log_dir = f"{cfg.log_dir.rstrip('/')}/{run_id}"
    base_env = {**node_env(cfg), **(kv_env(cfg) if model.mode == DISAGGREGATED else {})}
    secrets = {"HF_TOKEN": cfg.hf_token_file} if cfg.hf_token_file else {}
    containers: list[ContainerSpec] = []
    processes: list[ProcessSpec] = []

    def container(key: str, role: str, node: str) -> str | None:
        if not docker:
            return None
        volumes = dict(cfg.container.volume_dict)
        if role in WORKER_ROLES:
            volumes.update({path: path for path in nic_mounts(cfg) if path not in volumes})
        if not any(log_dir == v or log_dir.startswith(v.rstrip("/") + "/") for v in volumes.values()):
            volumes[cfg.log_dir] = cfg.log_dir
        containers.append(ContainerSpec(
            key=key, role=role, node=node, name=f"{cfg.container_name}-{run_id}-{key}".replace("_", "-"),
            image=cfg.container_image, devices=cfg.container.device_list, volumes=volumes,
            env=node_env(cfg), shm_size=cfg.shm_size,
            labels={f"{LABEL_PREFIX}.run-id": run_id, f"{LABEL_PREFIX}.role": role,
                    f"{LABEL_PREFIX}.key": key, f"{LABEL_PREFIX}.model": model.id}))
        return key

    for spec in store_processes(cfg, model, python, log_dir):
        processes.append(replace(spec, container=container(spec.key, STORE_ROLE, spec.node)))
    layout = instances_by_role(cfg, model)
    for inst in (inst for role in model.roles for inst in layout[role]):
        for member in inst.members:
            key = f"{inst.role}_{inst.index}" + (f"_rank{member.rank}" if member.rank else "")
            processes.append(ProcessSpec(
                key=key, role=inst.role, node=member.node,
                argv=worker_argv(cfg, model, inst, member, python, release),
                env={**base_env, **hicache_env(cfg, model, member.node)}, port=inst.port,
                log_path=f"{log_dir}/{key}.log",
                container=container(key, inst.role, member.node), host=inst.head,
                instance=inst.index, node_rank=member.rank,
                bootstrap_port=inst.bootstrap_port, gpus=member.gpus, nics=member_nics(cfg, model, member)[0],
                secret_env_files=secrets))
    if model.mode != DECODE_ALONE:  # decode alone: requests go straight to the decode workers
        processes.append(ProcessSpec(
            key="router", role="router", node=cfg.router_node,
            argv=router_argv(cfg, model, layout, python),
            env={**cfg.container.env_dict, **(SIM_ROUTER_ENV if cfg.simulated else {})},
            port=cfg.router_port, log_path=f"{log_dir}/router.log",
            container=container("router", "router", cfg.router_node), host=cfg.router_node,
            health_path="/readiness"))
    entry = layout["decode"][0] if model.mode == DECODE_ALONE else None  # the bench target without a router
    router_url = f"http://{entry.head}:{entry.port}" if entry else f"http://{cfg.router_node}:{cfg.router_port}"
    if cfg.bench_client == "sglang" or any(t.bench_client == "sglang" for t in model.tests):
        container("bench", "bench", cfg.benchmark_node)
    dep = Deployment(run_id=run_id, model=model, engine=cfg.engine, runtime=cfg.runtime, log_dir=log_dir,
                     containers=tuple(containers), processes=tuple(processes), router_url=router_url,
                     kv_backend=transfer_backend(cfg, model), python=python,
                     bench_python=cfg.bench_python or python, sglang_version=release)
    return replace(dep, bench=bench_processes(dep, bench_tokenizer(cfg, model)), prechecks=prechecks(cfg, dep))
