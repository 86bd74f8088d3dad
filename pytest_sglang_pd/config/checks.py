"""Checks of a typed config beyond its schema: the problems between fields (``cross_field_problems``; those that need
the plan are ``plan.plan_problems``) and the warnings it loads with (a limit no cluster can meet, a GID index its
NICs do not use, a key read but not honoured)."""

from __future__ import annotations

import os
import re
from typing import Mapping

from .. import nic
from . import keys as keys_mod
from .cluster import ClusterConfig, SlurmSettings
from .hicache import hicache_problems
from .keys import Problem, json_path
from .layout import AGGREGATED, layout_problems, role_nodes
from .model import InferenceTest, ModelConfig

_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def slurm_nodes_needed(cfg: ClusterConfig) -> int:
    """Nodes a Slurm run needs: those the config names, 1 router node when it names none, and slurm.prefill_nodes /
    slurm.decode_nodes where the node lists are omitted."""
    s = cfg.slurm
    named = {*cfg.prefill_nodes, *cfg.decode_nodes, *filter(None, [cfg.router_node])}
    return len(named) + (0 if cfg.router_node else 1) + (0 if cfg.prefill_nodes else s.prefill_nodes) + \
        (0 if cfg.decode_nodes else s.decode_nodes)


def _slurm_problems(cfg: ClusterConfig) -> list[Problem]:
    """A slurm section without transport slurm; an allocation too small for the nodes the roles need."""
    c = "$.config.slurm"
    if cfg.transport != "slurm":
        return [Problem(c, f"is read only with \"transport\": \"slurm\" (transport is {cfg.transport!r})")] \
            if cfg.slurm != SlurmSettings() else []
    s = cfg.slurm
    needed = slurm_nodes_needed(cfg)
    if s.containers == "pyxis" and cfg.runtime != "docker":
        return [Problem(f"{c}.containers", f"pyxis starts the containers of runtime docker; runtime is {cfg.runtime!r}")]
    if s.nodes is not None and s.nodes < needed:
        return [Problem(f"{c}.nodes", f"{s.nodes} is fewer than the {needed} nodes the roles need "
                                      "(1 router node + the prefill and decode nodes)")]
    return []


def _slurm_role_nodes(cfg: ClusterConfig, role: str) -> int:
    """How many nodes a Slurm allocation will give a role the config names no nodes for (0 off Slurm)."""
    if cfg.transport != "slurm":
        return 0
    return cfg.slurm.prefill_nodes + cfg.slurm.decode_nodes if role == AGGREGATED else getattr(cfg.slurm, f"{role}_nodes")


def cross_field_problems(cfg: ClusterConfig) -> list[Problem]:
    """Problems between fields; those that need the plan (two services on one port) are plan.plan_problems."""
    c = "$.config"
    problems: list[Problem] = []
    if cfg.transport != "slurm":
        for name, value in (("prefill_node_list", cfg.prefill_nodes), ("decode_node_list", cfg.decode_nodes),
                            ("proxy_router_node", cfg.router_node)):
            if not value:
                problems.append(Problem(f"{c}.{name}", "is required but missing (only with \"transport\": "
                                                       "\"slurm\" do the nodes come from the allocation)"))
    problems += _slurm_problems(cfg)
    if cfg.nnodes is not None and cfg.prefill_nodes and cfg.nnodes != len(cfg.prefill_nodes) + len(cfg.decode_nodes):
        problems.append(Problem(f"{c}.nnodes", f"{cfg.nnodes} does not match the node lists: "
                                               f"{len(cfg.prefill_nodes)} prefill + {len(cfg.decode_nodes)} decode = "
                                               f"{len(cfg.prefill_nodes) + len(cfg.decode_nodes)}"))
    if cfg.instance_layout == "multi_node":
        for role, nodes in (("prefill", cfg.prefill_nodes), ("decode", cfg.decode_nodes)):
            if len(set(nodes)) != len(nodes):
                problems.append(Problem(f"{c}.{role}_node_list", "multi_node layout: a node may appear only once"))
            if len(nodes) > 1 and not getattr(cfg, f"{role}_coordinator_addr"):
                problems.append(Problem(f"{c}.{role}_coordinator_addr",
                                        f"multi_node layout with {len(nodes)} {role} nodes needs a coordinator address"))
    problems += layout_problems(cfg)
    for m in cfg.models:
        problems += hicache_problems(m, json_path("$.benchmark_params", m.id))
    if cfg.transport == "ssh" and cfg.ssh.key_file and not os.path.isfile(cfg.ssh.key_file):
        problems.append(Problem(f"{c}.ssh.key_file", f"{cfg.ssh.key_file}: no such file on this machine "
                                "(the private key the suite logs in with)"))
    try:
        nic.profile(cfg.nic_type)
    except KeyError:
        problems.append(Problem(f"{c}.nic_type", f"unknown NIC type {cfg.nic_type!r}; known: {', '.join(nic.known_types())}"))
    if cfg.router_package == "smg" and "--mini-lb" in cfg.router_args:
        problems.append(Problem(f"{c}.router_args", "smg has no --mini-lb (sglang-router 0.3.2 had it)"))
    if cfg.runtime == "docker" and not cfg.container_image:
        problems.append(Problem(f"{c}.container_image", "runtime docker needs a container image"))
    if cfg.kv_transfer.backend == "tcp" and not cfg.simulated:
        problems.append(Problem(f"{c}.kv_transfer.backend", "'tcp' is the simulator's own socket transfer; "
                                                            "real sglang workers need mooncake, nixl, mooncake_tcp or mori"))
    if cfg.kv_transfer.backend == "mori" and cfg.simulated:
        problems.append(Problem(f"{c}.kv_transfer.backend", "the simulated worker supports mooncake, mooncake_tcp, nixl and tcp, not mori"))
    for m in cfg.models:
        mpath = json_path("$.benchmark_params", m.id)
        if not _ID_PATTERN.match(m.id):
            problems.append(Problem(mpath, f"model id {m.id!r} cannot be used in test ids: use letters, digits, '.', '_' or '-'"))
        for role in m.roles:
            count = len(role_nodes(cfg, role)) or _slurm_role_nodes(cfg, role)
            n = 1 if cfg.instance_layout == "multi_node" else count * m.layout(role).instances_per_node
            if getattr(m, f"{'decode' if role == 'decode' else 'prefill'}_policy") == "power_of_two" and n < 2:
                problems.append(Problem(f"{mpath}.{role}_policy",
                                        f"power_of_two needs at least 2 {role} instances, the config has {n}"))
        for t in m.tests:
            tpath = json_path(f"{mpath}.inference_tests", t.name)
            if not _ID_PATTERN.match(t.name):
                problems.append(Problem(tpath, f"test name {t.name!r} cannot be used in test ids"))
            if len(set(t.max_concurrency)) != len(t.max_concurrency):
                problems.append(Problem(f"{tpath}.max_concurrency", "lists a value twice"))
            if t.decode_alone and t.kind == "gsm8k":
                problems.append(Problem(f"{tpath}.mode", "decode_alone measures decode throughput with bench_serving "
                                                         "workloads; a gsm8k test needs its prefill (mode pd)"))
    return problems


def capacity_warnings(cfg: ClusterConfig) -> list[Problem]:
    """Limits that no cluster can meet at the test's concurrency (Little's law): an output throughput limit above
    concurrency x 1000 / the mean TPOT limit (each stream makes at most 1000 / TPOT tokens per second)."""
    warnings = []
    for m in cfg.models:
        for t in m.tests:
            limits = {th.canonical: th.value for th in t.thresholds}
            tput, tpot = limits.get("output_throughput"), limits.get("mean_tpot_ms")
            if not tput or not tpot:
                continue
            for conc in t.max_concurrency:
                ceiling = conc * 1000.0 / tpot
                if tput > ceiling:
                    path = json_path(json_path(json_path("$.benchmark_params", m.id), "inference_tests"), t.name)
                    warnings.append(Problem(f"{path}.expected_results", (
                        f"output throughput limit {tput:g} tok/s cannot be met at concurrency {conc}: with the mean "
                        f"TPOT limit {tpot:g} ms it needs about {tput * tpot / 1000:g} requests in flight, and "
                        f"{conc} streams make at most {ceiling:g} tok/s (Little's law)")))
    return warnings


def nic_warnings(cfg: ClusterConfig) -> list[Problem]:
    """A GID index that differs from the one the config's nic_type needs."""
    try:
        profile = nic.profile(cfg.nic_type)
    except KeyError:
        return []  # a problem of cross_field_problems
    if profile and profile.gid_index is not None and cfg.nccl_ib_gid_index not in (None, profile.gid_index):
        return [Problem("$.config.nccl_ib_gid_index",
                        f"{cfg.nccl_ib_gid_index} is kept, but {profile.vendor} NICs (nic_type {cfg.nic_type!r}) "
                        f"need GID index {profile.gid_index} (RoCE v2); unset it to use {profile.gid_index}")]
    return []


def ignored_keys(raw: Mapping) -> list[Problem]:
    """A warning for every key the config sets that the suite reads but cannot honour."""
    out = keys_mod.ignored_keys(ClusterConfig, raw.get("config"), "$.config")
    for model_id, m in (raw.get("benchmark_params") or {}).items():
        base = json_path("$.benchmark_params", model_id)
        out += keys_mod.ignored_keys(ModelConfig, m, base)
        for name, t in (m.get("inference_tests") or {}).items():
            out += keys_mod.ignored_keys(InferenceTest, t, json_path(json_path(base, "inference_tests"), name))
    return out
