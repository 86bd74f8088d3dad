"""What a node gives its processes: the address they serve on, the python, the env and the RDMA NICs."""

from __future__ import annotations

import json
import re
import sys

from .. import nic
from ..config import DECODE_ALONE, DISAGGREGATED, SYSFS, ClusterConfig, ModelConfig
from .instances import Member


def _is_ip(node: str) -> bool:
    return bool(re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}", node)) or ":" in node


def bind_host(node: str) -> str:
    """Serve on the node's address when it is an IP literal (several "nodes" can share a machine),
    else on all interfaces (a host name may resolve to a loopback address on the node itself)."""
    return node if _is_ip(node) else "0.0.0.0"


def node_python(cfg: ClusterConfig) -> str:
    """The configured Python, else the running one for local processes, else the nodes' (containers') python3."""
    local = cfg.runtime == "process" and cfg.transport == "local"
    return cfg.python or (sys.executable if local else "python3")


def node_env(cfg: ClusterConfig) -> dict[str, str]:
    """env_dict plus the NCCL_* / GLOO_* variables the config names."""
    env = dict(cfg.container.env_dict)
    named = {
        "NCCL_IB_HCA": ",".join(cfg.nccl_ib_hca or cfg.nccl_ib_hca_list),
        "NCCL_SOCKET_IFNAME": cfg.nccl_socket_ifname,
        "GLOO_SOCKET_IFNAME": cfg.gloo_socket_ifname,
        "GLOO_TCP_IFNAME": cfg.gloo_tcp_ifname,
        "NCCL_IB_GID_INDEX": None if gid_index(cfg) is None else str(gid_index(cfg)),
        "NCCL_DEBUG": cfg.nccl_debug,
    }
    env.update({k: v for k, v in named.items() if v})
    return env


def gid_index(cfg: ClusterConfig) -> int | None:
    """The RoCE GID index: the config's, else the one its nic_type needs."""
    if cfg.nccl_ib_gid_index is not None:
        return cfg.nccl_ib_gid_index
    profile = nic.profile(cfg.nic_type)
    return profile.gid_index if profile else None


def nic_mounts(cfg: ClusterConfig) -> tuple[str, ...]:
    """The host files of the nic_type's verbs provider, mounted into worker containers (real engine only)."""
    profile = nic.profile(cfg.nic_type)
    return profile.mounts if profile and not cfg.simulated else ()


def kv_env(cfg: ClusterConfig) -> dict[str, str]:
    """What the transfer engine needs beyond the worker flags (docs/failure-modes.md rows 3 and 4): for Mooncake what
    SGLang's PD engine reads (MOONCAKE_PROTOCOL, MC_FORCE_TCP for tcp) and Mooncake itself (MC_GID_INDEX)."""
    kv = cfg.kv_transfer
    env: dict[str, str] = {}
    if kv.backend == "nixl" and kv.ib_devices:
        env["UCX_NET_DEVICES"] = ",".join(d if ":" in d else f"{d}:1" for d in kv.ib_devices)
    if kv.backend in ("mooncake", "mooncake_tcp"):
        mc = kv.mooncake
        gid = mc.gid_index if mc.gid_index is not None else gid_index(cfg)
        if gid is not None:
            env["MC_GID_INDEX"] = str(gid)
        if mc.protocol:
            env["MOONCAKE_PROTOCOL"] = mc.protocol
        if mc.protocol == "tcp":
            env["MC_FORCE_TCP"] = "1"
        env.update(mc.env)
    env.update(kv.env)
    return env


IB_DEVICE_BACKENDS = ("mooncake", "mori")  # the backends --disaggregation-ib-device is passed to


def nic_map_path(cfg: ClusterConfig, node: str) -> str:
    """Where a node's GPU -> NIC map from sysfs is written (the log folder: mounted into its containers)."""
    return f"{cfg.log_dir.rstrip('/')}/ib-devices-{node}.json"


def transfer_backend(cfg: ClusterConfig, model: ModelConfig) -> str:
    """The workers' --disaggregation-transfer-backend: the configured KV backend, or (decode alone) ``fake``."""
    return "fake" if model.mode == DECODE_ALONE else cfg.kv_transfer.backend


def member_nics(cfg: ClusterConfig, model: ModelConfig, member: Member) -> tuple[tuple[str, ...], str | None]:
    """(the NICs a member's GPUs use, its --disaggregation-ib-device value or None). With a device map: the map's
    entries of its own GPUs, as SGLang's per-GPU JSON form; else the shared list (every NIC for every GPU).
    Aggregated and decode-alone workers move no KV: none."""
    kv = cfg.kv_transfer
    if kv.backend not in IB_DEVICE_BACKENDS or model.mode != DISAGGREGATED:
        return (), None
    if kv.mooncake.device_map == SYSFS and kv.backend == "mooncake":
        return (), nic_map_path(cfg, member.node)
    if kv.mooncake.device_map and kv.backend == "mooncake":
        entries = {str(g): kv.mooncake.device_map.get(str(g), "") for g in member.gpus}
        nics = tuple(dict.fromkeys(n.strip() for v in entries.values() for n in v.split(",") if n.strip()))
        return nics, json.dumps(entries, separators=(",", ":"))
    return kv.ib_devices, (",".join(kv.ib_devices) if kv.ib_devices else None)
