"""Every port the plan's services listen on, and what no plan of a config can carry out."""

from __future__ import annotations

from collections import Counter

from .. import config as config_mod
from .. import releases
from ..config import AGGREGATED, DECODE_ALONE, SYSFS, ClusterConfig, ModelConfig, Problem
from .instances import Instance, instances_by_role
from .store import store_ports


# SGLang 0.5.23 with DP attention also listens on --port + 13 (the DP port handshake) and on 7 ports from
# --port + 233 (one node) or from the --dist-init-addr port (several nodes) (srt/server_args.py PortArgs.init_new,
# srt/managers/data_parallel_controller.py)
DP_HANDSHAKE_DELTA, DP_ZMQ_DELTA, DP_DERIVED_PORTS = 13, 233, 7


def _derived_ports(cfg: ClusterConfig, inst: Instance) -> list[tuple[str, int]]:
    """(node, port) SGLang derives from an instance's ports with DP attention."""
    if not (inst.layout.dp_attention and inst.layout.dp_size > 1):
        return []
    if cfg.instance_layout == "multi_node":
        coord = getattr(cfg, f"{inst.role}_coordinator_addr") or inst.head
        first = getattr(cfg, f"{inst.role}_coordinator_port")
        return [(coord, first + i) for i in (*range(1, DP_DERIVED_PORTS), DP_HANDSHAKE_DELTA)]
    return [(inst.head, inst.port + DP_HANDSHAKE_DELTA),
            *((inst.head, inst.port + DP_ZMQ_DELTA + i) for i in range(DP_DERIVED_PORTS))]


def service_ports(cfg: ClusterConfig, model: ModelConfig) -> list[tuple[str, int, str]]:
    """(node, port, service) for every listening service the plan of ``model`` places."""
    out = []
    for role, insts in instances_by_role(cfg, model).items():
        for inst in insts:
            out.append((inst.head, inst.port, f"{role}_{inst.index} (http)"))
            if inst.bootstrap_port is not None:
                out.append((inst.head, inst.bootstrap_port, f"{role}_{inst.index} (bootstrap)"))
            out += [(node, port, f"{role}_{inst.index} (DP attention, derived)")
                    for node, port in _derived_ports(cfg, inst)]
        coord = getattr(cfg, f"{role}_coordinator_addr", None)  # aggregated: per_node only
        if cfg.instance_layout == "multi_node" and coord:
            out.append((coord, getattr(cfg, f"{role}_coordinator_port"), f"{role} coordinator"))
    out += [(node, port, f"HiCache {key}") for node, port, key in store_ports(cfg, model)]
    if model.mode != DECODE_ALONE:
        out.append((cfg.router_node, cfg.router_port, "router (http)"))
        out.append((cfg.router_node, cfg.router_prometheus_port, "router (prometheus)"))
    return out


def plan_problems(cfg: ClusterConfig) -> list[Problem]:
    """What a config asks that no plan of it can carry out: two services on one port of a node (ports SGLang derives
    with DP attention included), a GPU without an entry in the device map."""
    problems = []
    for model in cfg.models:
        clashes: dict[tuple[str, tuple[str, ...]], list[int]] = {}
        ports = service_ports(cfg, model)
        for (node, port), n in Counter((node, port) for node, port, _ in ports).items():
            if n > 1:
                users = tuple(dict.fromkeys(what for nd, p, what in ports if (nd, p) == (node, port)))
                clashes.setdefault((node, users), []).append(port)
        for (node, users), taken in clashes.items():
            where = f"port {taken[0]}" if len(taken) == 1 else f"ports {', '.join(map(str, taken))}"
            problems.append(Problem("$.config", f"{where} on node {node} {'is' if len(taken) == 1 else 'are'} used by "
                                                f"{len(users)} services: {', '.join(users)}"))
        problems += _device_map_problems(cfg, model) + _release_problems(cfg, model)
    return list(dict.fromkeys(problems))


def _release_problems(cfg: ClusterConfig, model: ModelConfig) -> list[Problem]:
    """A load-balance method the config's release (else the default) does not have. A release probed later that
    lacks it refuses it in its own parser, told in the worker's log tail."""
    release = cfg.sglang_version or releases.DEFAULT
    methods = releases.load_balance_methods(release)
    out = []
    for role in model.roles:
        method = model.layout(role).load_balance_method
        if method and method not in methods:
            out.append(Problem(config_mod.key_path(config_mod.json_path("$.benchmark_params", model.id), role,
                                                   getattr(model, role), "load_balance_method"),
                               f"{method!r} is not a --load-balance-method of sglang {release} (it has "
                               f"{', '.join(methods)})"))
    return out


def _device_map_problems(cfg: ClusterConfig, model: ModelConfig) -> list[Problem]:
    device_map = cfg.kv_transfer.mooncake.device_map
    if not device_map or device_map == SYSFS or cfg.kv_transfer.backend != "mooncake" or model.mode == AGGREGATED:
        return []
    out = []
    for insts in instances_by_role(cfg, model).values():
        for inst in insts:
            for m in inst.members:
                missing = [g for g in m.gpus if str(g) not in device_map]
                if missing:
                    out.append(Problem("$.config.kv_transfer.mooncake.device_map", (
                        f"no entry for GPU {', '.join(map(str, missing))} of {inst.role}_{inst.index} on node "
                        f"{m.node} ({model.id}: GPUs {m.gpus[0]}-{m.gpus[-1]}); SGLang refuses a GPU the map lacks")))
    return out
