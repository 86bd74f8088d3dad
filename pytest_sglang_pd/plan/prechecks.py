"""What must hold on the nodes before anything starts, as commands run on them."""

from __future__ import annotations

import re
from typing import Mapping

from .. import nic
from ..config import SYSFS, ClusterConfig
from ..config.keys import json_path
from ..nic import IB_SYSFS
from .deployment import WORKER_ROLES, Deployment, Precheck
from .nodes import bind_host, kv_env, nic_map_path, nic_mounts
from .ports import service_ports


# Side services a transfer backend can be configured to use (Mooncake's master / metadata server, etcd).
SIDE_SERVICE_ENV = ("MOONCAKE_MASTER", "MOONCAKE_TE_META_DATA_SERVER", "MOONCAKE_METADATA_SERVER", "ETCD_ENDPOINTS")
_ADDRESS = re.compile(r"^(?:[a-z0-9+]+://)?([A-Za-z0-9.-]+):(\d{1,5})(?:/.*)?$")
# $@: paths; fails naming those that do not exist
_ALL_EXIST = 'm=""; for p; do [ -e "$p" ] || m="$m $p"; done; [ -z "$m" ] || { echo "missing:$m" >&2; exit 1; }'
_TCP_CONNECT = 'exec 3<>"/dev/tcp/$1/$2"'
# $1: the address to probe; then port=what pairs; fails naming those something already answers on
_PORTS_FREE = ('h=$1; shift; busy=""; for pw; do (exec 3<>"/dev/tcp/$h/${pw%%=*}") 2>/dev/null && '
               'busy="${busy:+$busy, }$h:${pw%%=*} ${pw#*=}"; done; [ -z "$busy" ] || { echo "in use: $busy" >&2; '
               'exit 1; }')
PORT_KEYS = ("$.config.prefill_serv_port", "$.config.decode_serv_port", "$.config.kv_transfer.bootstrap_port",
             "$.config.proxy_router_port", "$.config.router_prometheus_port")
# $1: the huge pages asked for; fails naming what the host has
_HUGEPAGES = ('have=$(awk \'/^HugePages_Total:/ {print $2}\' /proc/meminfo); [ "${have:-0}" -ge "$1" ] || '
              '{ echo "HugePages_Total is ${have:-0}, the config asks for at least $1" >&2; exit 1; }')
# $1: a folder to create and write; then files to read (never printed)
_PATHS_USABLE = ('d=$1; shift; mkdir -p -- "$d" 2>/dev/null && [ -w "$d" ] || { echo "log folder $d: cannot be '
                 'created or written" >&2; exit 1; }; for f; do [ -r "$f" ] || { echo "$f: not readable" >&2; '
                 'exit 1; }; done')


def side_services(env: Mapping[str, str]) -> list[tuple[str, str]]:
    """(env key, host:port) of every side service the transfer's env names (P2P handshake needs none)."""
    out = []
    for key in SIDE_SERVICE_ENV:
        for value in filter(None, (v.strip() for v in env.get(key, "").split(","))):
            m = _ADDRESS.match(value)
            if m:
                out.append((key, f"{m.group(1)}:{m.group(2)}"))
    return out


def served_ports(cfg: ClusterConfig, dep: Deployment, node: str) -> list[str]:
    """``port=service`` of every port the deployment's services listen on at ``node`` (the store's, and those SGLang
    derives with DP attention, included), each once."""
    found: dict[int, str] = {}
    for where, port, service in service_ports(cfg, dep.model):
        if where == node:
            found.setdefault(port, service)
    return [f"{port}={service}" for port, service in sorted(found.items())]


def _port_keys(ports: list[str], model_id: str) -> list[str]:
    """The config keys that move the ``served_ports`` listed."""
    keys = list(PORT_KEYS)
    if any("coordinator" in p or "derived" in p for p in ports):
        keys += ["$.config.prefill_coordinator_port", "$.config.decode_coordinator_port"]
    if any("HiCache" in p for p in ports):
        keys.append(json_path(json_path("$.benchmark_params", model_id), "hicache") + ".*_port")
    return keys


def worker_nodes(dep: Deployment) -> list[str]:
    """The nodes that run worker processes, sorted."""
    return sorted({p.node for p in dep.processes if p.role in WORKER_ROLES})


def prechecks(cfg: ClusterConfig, dep: Deployment) -> tuple[Precheck, ...]:
    """What must hold on the nodes before anything starts: the containers' GPU devices exist (real engine), the
    RDMA devices of the transfer exist (real engine) or the engine loads (simulated plain processes), and every
    side service the transfer's env names is reachable from each worker node; first of all, that each node can
    write its log folder and read the secret files its processes get."""
    out = []
    for node in dict.fromkeys(p.node for p in (*dep.processes, *dep.bench)):
        secrets = sorted({f for p in dep.processes if p.node == node for f in p.secret_env_files.values()})
        out.append(Precheck(node, "paths", ("sh", "-c", _PATHS_USABLE, "sh", dep.log_dir, *secrets),
                            "log folder writable" + (", secret files readable" if secrets else ""),
                            f"node {node}: the log folder ($.config.log_dir) cannot be written"
                            + (" or a secret file ($.config.hf_token_file) cannot be read" if secrets else "")))
    for node in dict.fromkeys(p.node for p in dep.processes):
        ports = served_ports(cfg, dep, node)
        if ports:
            host = bind_host(node)
            out.append(Precheck(node, "ports", ("timeout", "10", "bash", "-c", _PORTS_FREE, "bash",
                                                "127.0.0.1" if host == "0.0.0.0" else host, *ports),
                                f"{len(ports)} port(s) free",
                                f"node {node}: something already answers on a port this deployment serves on (a "
                                "server left by an earlier run? `sglang-pd cleanup CONFIG` stops what the suite left; "
                                f"else move the ports: {', '.join(_port_keys(ports, dep.model.id))})"))
    if not cfg.simulated:
        devices: dict[str, list[str]] = {}
        roles: dict[str, list[str]] = {}
        for c in dep.containers:
            devices[c.node] = list(dict.fromkeys([*devices.get(c.node, []), *c.devices]))
            roles[c.node] = list(dict.fromkeys([*roles.get(c.node, []), c.role]))
        for node, paths in devices.items():
            if paths:
                out.append(Precheck(node, "devices", ("sh", "-c", _ALL_EXIST, "sh", *paths),
                                    f"GPU devices present: {', '.join(paths)}",
                                    f"node {node} ({', '.join(roles[node])}): GPU device(s) do not exist "
                                    "($.config.container_config.device_list)"))
    kv = cfg.kv_transfer
    env = kv_env(cfg)
    for node in worker_nodes(dep) if dep.moves_kv else []:  # aggregated, decode alone: no KV transfer to check
        nics = [n for p in dep.processes if p.node == node for n in p.nics] or (
            list(kv.ib_devices) if kv.backend == "nixl" else [])
        nics = list(dict.fromkeys(nics))
        if not cfg.simulated and kv.backend in ("mooncake", "nixl", "mori") and nics:
            key = ("$.config.kv_transfer.mooncake.device_map" if kv.mooncake.device_map and kv.backend == "mooncake"
                   else "$.config.kv_transfer.ib_devices, default $.config.nccl_ib_hca")
            out.append(Precheck(node, "kv_transfer",
                                ("sh", "-c", _ALL_EXIST, "sh", *(f"{IB_SYSFS}/{d}" for d in nics)),
                                f"RDMA devices present: {', '.join(nics)}",
                                f"node {node}: RDMA device(s) not in {IB_SYSFS} ({key})"))
        if kv.mooncake.device_map == SYSFS and kv.backend == "mooncake":
            path = nic_map_path(cfg, node)
            out.append(Precheck(node, "nic_map", nic.sysfs_map_argv(path),
                                f"GPU -> NIC map from the PCIe topology written to {path}",
                                f"node {node}: no GPU -> NIC map from sysfs ($.config.kv_transfer.mooncake.device_map "
                                "\"sysfs\"); name the NICs of each GPU there instead"))
        if kv.mooncake.hugepages and kv.backend in ("mooncake", "mooncake_tcp"):
            want = kv.mooncake.hugepages
            out.append(Precheck(node, "hugepages", ("sh", "-c", _HUGEPAGES, "sh", str(want)),
                                f"HugePages_Total >= {want}",
                                f"node {node}: fewer huge pages than $.config.kv_transfer.mooncake.hugepages "
                                f"({want}) in /proc/meminfo HugePages_Total"))
        if nic_mounts(cfg):
            profile = nic.profile(cfg.nic_type)
            out.append(Precheck(node, "nic", ("sh", "-c", _ALL_EXIST, "sh", *nic_mounts(cfg)),
                                f"{profile.vendor} verbs provider ({profile.provider}) on the host",
                                f"node {node}: the {profile.provider} verbs provider files of nic_type "
                                f"{cfg.nic_type!r} are missing on the host ($.config.nic_type)"))
        if cfg.simulated and cfg.runtime == "process":
            out.append(Precheck(node, "kv_transfer",
                                (dep.python, "-m", "pytest_sglang_pd.kv_transfer", "probe", "--backend", kv.backend,
                                 "--hostname", bind_host(node)),
                                "engine loads", f"node {node}: the {kv.backend} transfer engine does not load "
                                "($.config.kv_transfer.backend)"))
        for key, address in side_services(env):
            out.append(Precheck(node, "kv_transfer", ("timeout", "5", "bash", "-c", _TCP_CONNECT, "bash",
                                                      *address.rsplit(":", 1)),
                                f"{key} {address} reachable",
                                f"node {node}: {key} service at {address} not reachable "
                                f"($.config.kv_transfer.env.{key})"))
    return tuple(out)
