"""The deployment plan: ClusterConfig x model -> Deployment (pure, no I/O)."""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from secrets import token_hex
from typing import Mapping

from .. import config as config_mod
from .. import nic, releases
from ..nic import IB_SYSFS
from ..config import AGGREGATED, DECODE_ALONE, DISAGGREGATED, ROLES, SYSFS, ClusterConfig, InferenceTest, Layout, ModelConfig, Problem, role_nodes
from ..config.keys import json_path
from ..textgen.tokenizer import tokenizer_dir

@dataclass(frozen=True)
class ContainerSpec:
    """One container per logical node (``key`` e.g. ``prefill_0``), idle until processes are exec'd in."""

    key: str
    role: str
    node: str
    name: str
    image: str
    devices: tuple[str, ...] = ()
    volumes: Mapping[str, str] = field(default_factory=dict)  # host path -> container path
    env: Mapping[str, str] = field(default_factory=dict)
    shm_size: str | None = None
    network_mode: str = "host"
    ipc_mode: str = "host"
    cap_add: tuple[str, ...] = ("IPC_LOCK",)
    labels: Mapping[str, str] = field(default_factory=dict)
    command: tuple[str, ...] = ("sleep", "infinity")


@dataclass(frozen=True)
class ProcessSpec:
    """One process of the deployment: what runs where, with which argv, env, port and log file.

    ``secret_env_files`` maps an env variable to a file ON THE NODE whose content becomes its
    value at start (the HF token); the value is never part of the plan, argv or logs.
    """

    key: str  # stable identity, e.g. "prefill_0", "decode_1", "router", "prefill_0_rank1"
    role: str  # prefill | decode | router
    node: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    port: int | None
    log_path: str  # on the node
    container: str | None = None  # ContainerSpec.key when the runtime is docker
    host: str = "127.0.0.1"  # address the process serves on (the node address)
    instance: int = 0
    node_rank: int = 0
    bootstrap_port: int | None = None
    gpus: tuple[int, ...] = ()  # the GPU ids it uses on its node (--base-gpu-id onwards)
    nics: tuple[str, ...] = ()  # the RDMA NICs of those GPUs (--disaggregation-ib-device)
    health_path: str = "/health"
    secret_env_files: Mapping[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def serves_http(self) -> bool:
        """Only rank 0 of a multi-node instance serves HTTP."""
        return self.node_rank == 0


@dataclass(frozen=True)
class Precheck:
    """A command run on a node before anything starts; exit status 0 means the node passes.

    ``kind`` groups the checks ("devices": the GPUs the containers get; "nic": the nic_type's verbs
    provider on the host; "kv_transfer": RDMA devices, the engine loading, side services; "nic_map": the GPU -> NIC
    map written from sysfs; "hugepages": the host's huge pages); ``passed`` / ``failed`` say what either outcome
    means, the failure with the config key that set it up.
    """

    node: str
    kind: str
    argv: tuple[str, ...]
    passed: str
    failed: str


@dataclass(frozen=True)
class Deployment:
    """Everything that runs for one model: containers and processes, in start order."""

    run_id: str
    model: ModelConfig
    engine: str
    runtime: str
    log_dir: str  # on the nodes: <config log_dir>/<run_id>
    containers: tuple[ContainerSpec, ...]
    processes: tuple[ProcessSpec, ...]
    router_url: str
    kv_backend: str
    python: str = "python3"  # what every planned process of the suite runs with on its node
    bench_python: str = "python3"  # what runs SGLang's benchmark tools on the benchmark node
    sglang_version: str = releases.DEFAULT  # the SGLang release every command is planned for
    bench: tuple[ProcessSpec, ...] = ()  # the sglang benchmark tools, one per test and concurrency
    prechecks: tuple[Precheck, ...] = ()  # run on the nodes before anything starts

    @property
    def aggregated(self) -> bool:
        """Plain workers behind the router's regular mode: no PD handoff, no KV transfer."""
        return self.model.mode == AGGREGATED

    @property
    def decode_alone(self) -> bool:
        """Decode workers only, on the fake transfer backend: no prefill, no router, no KV transfer."""
        return self.model.mode == DECODE_ALONE

    @property
    def moves_kv(self) -> bool:
        """Prefill hands KV to decode (disaggregated mode): the KV env, NICs and transfer prechecks apply."""
        return self.model.mode == DISAGGREGATED

    @property
    def worker_roles(self) -> tuple[str, ...]:
        """The roles of the deployment's workers, in start order."""
        return self.model.roles

    def role(self, role: str) -> tuple[ProcessSpec, ...]:
        return tuple(p for p in self.processes if p.role == role)

    def servers(self, role: str) -> tuple[ProcessSpec, ...]:
        """The processes of a role that serve HTTP (rank 0 of each instance)."""
        return tuple(p for p in self.role(role) if p.serves_http)

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.node for p in self.processes))

    @property
    def has_router(self) -> bool:
        return bool(self.role("router"))

    @property
    def router(self) -> ProcessSpec:
        return self.role("router")[0]

    @property
    def entry(self) -> ProcessSpec:
        """Where requests enter: the router, or (decode alone) the first decode worker."""
        return self.router if self.has_router else self.servers("decode")[0]


@dataclass(frozen=True)
class _Member:
    node: str
    rank: int
    gpus: tuple[int, ...]


@dataclass(frozen=True)
class _Instance:
    role: str
    index: int
    members: tuple[_Member, ...]
    port: int
    bootstrap_port: int | None
    layout: Layout

    @property
    def head(self) -> str:
        return self.members[0].node


POLICY_TO_SCHEDULE = {"cache_aware": "lpm", "fcfs": "fcfs", "round_robin": "fcfs", "random": "random",
                      "power_of_two": "fcfs"}
POLICY_TO_ROUTER = {"cache_aware": "cache_aware", "fcfs": "round_robin", "round_robin": "round_robin",
                    "random": "random", "power_of_two": "power_of_two"}
LABEL_PREFIX = "pytest-sglang-pd"
SIM_WORKER_MODULE = "pytest_sglang_pd.sim.launch_server"
# The router looks the model's tokenizer up on the HuggingFace hub (only a warning when that fails).
# A simulated cluster serves no real model: send that lookup to a closed local port, not the internet.
SIM_ROUTER_ENV = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_OFFLINE": "1"}
SGLANG_WORKER_MODULE = "sglang.launch_server"
WORKER_ROLES = (*ROLES, AGGREGATED)  # the roles of serving workers, in either mode


def _is_ip(node: str) -> bool:
    return bool(re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}", node)) or ":" in node


def bind_host(node: str) -> str:
    """Serve on the node's address when it is an IP literal (several "nodes" can share a machine),
    else on all interfaces (a host name may resolve to a loopback address on the node itself)."""
    return node if _is_ip(node) else "0.0.0.0"


def default_run_id() -> str:
    """A run id when none is given: the UTC time and a random suffix, e.g. ``20260101-120000-1a2b``."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + token_hex(2)


def node_python(cfg: ClusterConfig) -> str:
    """The configured Python, else the running one for local processes, else the nodes' (containers') python3."""
    local = cfg.runtime == "process" and cfg.transport == "local"
    return cfg.python or (sys.executable if local else "python3")


def instances(cfg: ClusterConfig, model: ModelConfig, role: str) -> tuple[_Instance, ...]:
    """The serving instances of a role: ``instances_per_node`` on each of its nodes (per_node) or one spanning all
    its nodes (multi_node); each with its own GPUs (a node's GPUs are handed out in order, prefill first) and, on a
    shared node, ports ``port_step`` apart."""
    return _instances(cfg, model)[role]


def _instances(cfg: ClusterConfig, model: ModelConfig) -> dict[str, tuple[_Instance, ...]]:
    next_gpu: Counter = Counter()  # node -> its first GPU not handed out yet

    def member(node: str, rank: int, gpus: int) -> _Member:
        first = next_gpu[node]
        next_gpu[node] += gpus
        return _Member(node, rank, tuple(range(first, first + gpus)))

    out = {}
    for role in model.roles:
        layout = model.layout(role)
        nodes = role_nodes(cfg, role)
        base_port = cfg.decode_port if role == "decode" else cfg.prefill_port
        bootstrap = cfg.kv_transfer.bootstrap_port if role == "prefill" else None
        if cfg.instance_layout == "multi_node":
            members = tuple(member(n, r, layout.gpus) for r, n in enumerate(nodes))
            out[role] = (_Instance(role, 0, members, base_port, bootstrap, layout),)
            continue
        insts, seen = [], Counter()
        for node in nodes:
            for _ in range(layout.instances_per_node):
                shift = seen[node] * layout.port_step
                seen[node] += 1
                insts.append(_Instance(role, len(insts), (member(node, 0, layout.gpus),), base_port + shift,
                                       None if bootstrap is None else bootstrap + shift, layout))
        out[role] = tuple(insts)
    return out


# SGLang 0.5.23 with DP attention also listens on --port + 13 (the DP port handshake) and on 7 ports from
# --port + 233 (one node) or from the --dist-init-addr port (several nodes) (srt/server_args.py PortArgs.init_new,
# srt/managers/data_parallel_controller.py)
DP_HANDSHAKE_DELTA, DP_ZMQ_DELTA, DP_DERIVED_PORTS = 13, 233, 7


def _derived_ports(cfg: ClusterConfig, inst: _Instance) -> list[tuple[str, int]]:
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
    for role, insts in _instances(cfg, model).items():
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
    for insts in _instances(cfg, model).values():
        for inst in insts:
            for m in inst.members:
                missing = [g for g in m.gpus if str(g) not in device_map]
                if missing:
                    out.append(Problem("$.config.kv_transfer.mooncake.device_map", (
                        f"no entry for GPU {', '.join(map(str, missing))} of {inst.role}_{inst.index} on node "
                        f"{m.node} ({model.id}: GPUs {m.gpus[0]}-{m.gpus[-1]}); SGLang refuses a GPU the map lacks")))
    return out


def load_config(name: str | Path, *, user: str | None = None) -> ClusterConfig:
    """A cluster config loaded, validated and checked against its plan: every problem in one ConfigError.

    What both faces load: the pytest plugin (a usage error, exit 4) and ``sglang-pd`` (exit 1).
    """
    return config_mod.load(name, user=user, checks=(plan_problems,))


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


def member_nics(cfg: ClusterConfig, model: ModelConfig, member: _Member) -> tuple[tuple[str, ...], str | None]:
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


def _worker_argv(cfg: ClusterConfig, model: ModelConfig, inst: _Instance, member: _Member, python: str,
                 release: str) -> tuple[str, ...]:
    module = SIM_WORKER_MODULE if cfg.simulated else SGLANG_WORKER_MODULE
    policy = model.decode_policy if inst.role == "decode" else model.prefill_policy
    multi = cfg.instance_layout == "multi_node"
    layout = inst.layout
    argv = [python, "-m", module, "--model-path", model.model]
    if inst.role != AGGREGATED:
        argv += ["--disaggregation-mode", inst.role, "--disaggregation-transfer-backend", transfer_backend(cfg, model)]
    if inst.role == "prefill":
        argv += ["--disaggregation-bootstrap-port", str(inst.bootstrap_port)]
    ib_device = member_nics(cfg, model, member)[1]
    if ib_device:
        argv += ["--disaggregation-ib-device", ib_device]
    argv += ["--host", bind_host(member.node), "--port", str(inst.port),
             "--tp-size", str(layout.tensor_parallelism * len(inst.members)),
             "--base-gpu-id", str(member.gpus[0]),
             "--mem-fraction-static", str(model.memory_fraction),
             "--tokenizer-mode", model.tokenizer_mode,
             "--schedule-policy", POLICY_TO_SCHEDULE[policy],
             "--log-level", cfg.log_level,
             "--enable-metrics", "--trust-remote-code"]
    if layout.dp_size > 1:
        argv += (releases.dp_attention_args(release, layout.dp_size) if layout.dp_attention
                 else ["--dp-size", str(layout.dp_size)])
    if layout.load_balance_method:
        argv += ["--load-balance-method", layout.load_balance_method]
    if model.hicache.enabled:
        argv += ["--enable-hierarchical-cache", "--hicache-storage-backend", model.hicache.storage_backend]
    if model.quantization:
        argv += ["--quantization", model.quantization]
    if model.kv_cache_dtype:
        argv += ["--kv-cache-dtype", model.kv_cache_dtype]
    if multi:
        coord = getattr(cfg, f"{inst.role}_coordinator_addr") or inst.head
        argv += ["--nnodes", str(len(inst.members)), "--node-rank", str(member.rank),
                 "--dist-init-addr", f"{coord}:{getattr(cfg, f'{inst.role}_coordinator_port')}"]
    if cfg.simulated:
        s = cfg.sim
        argv += ["--sim-gpu", s.gpu, "--sim-speedup", str(s.speedup), "--sim-seed", str(s.seed),
                 "--sim-kv-payload-bytes-per-token", str(s.kv_payload_bytes_per_token),
                 "--sim-accuracy", str(s.accuracy), "--sim-startup-delay", str(s.startup_delay_s)]
        if model.sim_model_profile:
            argv += ["--sim-model-profile", model.sim_model_profile]
        if s.prefill_of_matmul is not None:
            argv += ["--sim-prefill-of-matmul", str(s.prefill_of_matmul)]
        key = f"{inst.role}_{inst.index}"
        for fault in (*s.faults.get(inst.role, ()), *s.faults.get(key, ())):
            argv += ["--sim-fault", fault]
    argv += [*model.server_args, *{"prefill": model.prefill_server_args,
                                   "decode": model.decode_server_args}.get(inst.role, ())]
    return tuple(argv)


# ------------------------------------------------------------- HiCache: the Mooncake Store's services
def store_node(cfg: ClusterConfig, model: ModelConfig) -> str:
    """Where the Mooncake Store's master and metadata service run: ``hicache.node``, else the first prefill node."""
    return model.hicache.node or cfg.prefill_nodes[0]


def metadata_server(cfg: ClusterConfig, model: ModelConfig) -> str:
    """MOONCAKE_TE_META_DATA_SERVER: the suite's etcd or HTTP metadata server, or P2PHANDSHAKE (none)."""
    hc, node = model.hicache, store_node(cfg, model)
    return {"etcd": f"etcd://{node}:{hc.metadata_port}",
            "http": f"http://{node}:{hc.metadata_port}/metadata"}.get(hc.metadata, hc.metadata)


def hicache_env(cfg: ClusterConfig, model: ModelConfig, node: str) -> dict[str, str]:
    """What SGLang's Mooncake Store reads from the env of a worker on ``node`` (MooncakeStoreConfig.load_from_env);
    the protocol is kv_transfer.mooncake's (else SGLang's rdma)."""
    hc = model.hicache
    if not hc.enabled:
        return {}
    env = {"MOONCAKE_MASTER": f"{store_node(cfg, model)}:{hc.master_port}",
           "MOONCAKE_MASTER_METRICS_PORT": str(hc.master_metrics_port),
           "MOONCAKE_TE_META_DATA_SERVER": metadata_server(cfg, model),
           "MOONCAKE_LOCAL_HOSTNAME": node,
           "MOONCAKE_GLOBAL_SEGMENT_SIZE": hc.global_segment_size}
    if cfg.kv_transfer.mooncake.protocol:
        env["MOONCAKE_PROTOCOL"] = cfg.kv_transfer.mooncake.protocol
    return env


def store_ports(cfg: ClusterConfig, model: ModelConfig) -> list[tuple[str, int, str]]:
    """(node, port, service) of every port the store's services listen on."""
    hc = model.hicache
    if not hc.enabled:
        return []
    node = store_node(cfg, model)
    out = [(node, hc.master_port, "store_master (rpc)"), (node, hc.master_metrics_port, "store_master (metrics)")]
    if hc.metadata == "etcd":
        out += [(node, hc.metadata_port, "store_etcd (client)"), (node, hc.etcd_peer_port, "store_etcd (peer)")]
    elif hc.metadata == "http":
        out.append((node, hc.metadata_port, "store_metadata (http)"))
    return out


def store_processes(cfg: ClusterConfig, model: ModelConfig, python: str, log_dir: str) -> list[ProcessSpec]:
    """The store's services in start order, each with the address it answers on when ready: the metadata service
    (etcd's /health; the HTTP metadata server's 404 for an unknown key), then the master (/health on its metrics
    port). The master is the Mooncake wheel's (``python -m mooncake.cli`` execs its ``mooncake_master``)."""
    hc = model.hicache
    if not hc.enabled:
        return []
    node = store_node(cfg, model)
    bind = bind_host(node)
    out = []

    def service(key: str, argv: list[str], port: int, health_path: str) -> None:
        out.append(ProcessSpec(key=key, role=STORE_ROLE, node=node, argv=tuple(argv), env=dict(cfg.container.env_dict),
                               port=port, log_path=f"{log_dir}/{key}.log", host=node, health_path=health_path))

    if hc.metadata == "etcd":
        peer = f"http://{node}:{hc.etcd_peer_port}"
        service("store_etcd", [hc.etcd, "--name", "store", "--logger", "zap",
                               "--data-dir", f"{log_dir}/store_etcd.data",
                               "--listen-client-urls", f"http://{bind}:{hc.metadata_port}",
                               "--advertise-client-urls", f"http://{node}:{hc.metadata_port}",
                               "--listen-peer-urls", f"http://{bind}:{hc.etcd_peer_port}",
                               "--initial-advertise-peer-urls", peer, "--initial-cluster", f"store={peer}"],
                hc.metadata_port, "/health")
    elif hc.metadata == "http":
        service("store_metadata", [python, "-m", "mooncake.http_metadata_server", "--host", bind,
                                   "--port", str(hc.metadata_port)],
                hc.metadata_port, f"/metadata?key={STORE_PROBE_KEY}")
    service("store_master", [python, "-m", "mooncake.cli", f"--rpc_address={bind}", f"--rpc_port={hc.master_port}",
                             f"--metrics_port={hc.master_metrics_port}"],
            hc.master_metrics_port, "/health")
    return out


STORE_ROLE = "store"  # the role of the store's services in the Deployment
STORE_PROBE_KEY = "sglang-pd-probe"  # a key no one writes: the HTTP metadata server answers 404 while it is up


# the entry point of each router package: sglang-router (in images, module sglang_router) or its successor smg
ROUTER_ENTRY = {"sglang-router": ("-m", "sglang_router.launch_router"), "smg": ("-m", "smg", "launch")}
ROUTER_STARTUP_CHECK_S = 1  # how often the router retries a worker's registration (smg's default is 30 s)


def _router_argv(cfg: ClusterConfig, model: ModelConfig, layout: dict[str, tuple[_Instance, ...]],
                 python: str) -> tuple[str, ...]:
    """PD mode (--pd-disaggregation, each prefill with its bootstrap port), or aggregated: the regular mode over
    --worker-urls with one --policy."""
    argv = [cfg.router_python or python, *ROUTER_ENTRY[cfg.router_package]]
    if model.mode == AGGREGATED:
        argv += ["--worker-urls", *(f"http://{inst.head}:{inst.port}" for inst in layout[AGGREGATED]),
                 "--policy", POLICY_TO_ROUTER[model.prefill_policy]]
    else:
        argv.append("--pd-disaggregation")
        for inst in layout["prefill"]:
            argv += ["--prefill", f"http://{inst.head}:{inst.port}", str(inst.bootstrap_port)]
        for inst in layout["decode"]:
            argv += ["--decode", f"http://{inst.head}:{inst.port}"]
        argv += ["--prefill-policy", POLICY_TO_ROUTER[model.prefill_policy],
                 "--decode-policy", POLICY_TO_ROUTER[model.decode_policy]]
    argv += ["--host", bind_host(cfg.router_node), "--port", str(cfg.router_port),
             "--prometheus-host", bind_host(cfg.router_node), "--prometheus-port", str(cfg.router_prometheus_port),
             "--worker-startup-timeout-secs", str(int(cfg.timeouts.server_start_s)),
             "--worker-startup-check-interval", str(ROUTER_STARTUP_CHECK_S),
             "--log-level", cfg.log_level if cfg.log_level != "critical" else "error",
             *cfg.router_args]
    return tuple(argv)


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
    layout = _instances(cfg, model)
    for inst in (inst for role in model.roles for inst in layout[role]):
        for member in inst.members:
            key = f"{inst.role}_{inst.index}" + (f"_rank{member.rank}" if member.rank else "")
            processes.append(ProcessSpec(
                key=key, role=inst.role, node=member.node,
                argv=_worker_argv(cfg, model, inst, member, python, release),
                env={**base_env, **hicache_env(cfg, model, member.node)}, port=inst.port,
                log_path=f"{log_dir}/{key}.log",
                container=container(key, inst.role, member.node), host=inst.head,
                instance=inst.index, node_rank=member.rank,
                bootstrap_port=inst.bootstrap_port, gpus=member.gpus, nics=member_nics(cfg, model, member)[0],
                secret_env_files=secrets))
    if model.mode != DECODE_ALONE:  # decode alone: requests go straight to the decode workers
        processes.append(ProcessSpec(
            key="router", role="router", node=cfg.router_node,
            argv=_router_argv(cfg, model, layout, python),
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
    return replace(dep, bench=_bench_processes(dep, _bench_tokenizer(cfg, model)), prechecks=prechecks(cfg, dep))


def bench_output_path(dep: Deployment, test: InferenceTest, concurrency: int) -> str:
    return f"{dep.log_dir}/bench/{dep.model.id}-{test.name}-c{concurrency}.jsonl"


def gsm8k_data_path(dep: Deployment, test: InferenceTest) -> str | None:
    """few_shot_gsm8k's --data-path: the test's, else (simulated) the simulator's questions the suite writes there."""
    if test.data_path or dep.engine != "sim":
        return test.data_path
    return f"{dep.log_dir}/bench/{dep.model.id}-{test.name}-questions.jsonl"


def _bench_tokenizer(cfg: ClusterConfig, model: ModelConfig) -> str:
    """bench_serving's --tokenizer: the model's, else the simulated model's (plain processes share this package),
    else the model path the workers load."""
    if model.tokenizer:
        return model.tokenizer
    if cfg.simulated and cfg.runtime == "process":
        return str(tokenizer_dir())
    return model.model


def bench_serving_argv(dep: Deployment, test: InferenceTest, concurrency: int, tokenizer: str) -> tuple[str, ...]:
    """bench_serving (the planned release's module) against the router (a decode-alone test: the first decode
    worker, --fake-prefill); its JSON line goes to bench_output_path(). A test without its own max_concurrency runs
    without --max-concurrency: every prompt at once."""
    router = dep.servers("decode")[0] if test.decode_alone else dep.router
    dataset = test.dataset
    if dataset == "random" and not test.dataset_path:
        dataset = "random-ids"  # random needs the ShareGPT download; random-ids runs offline
    argv = [dep.bench_python, "-m", releases.bench_serving_module(dep.sglang_version), "--backend", test.backend,
            "--host", router.host, "--port", str(router.port), "--model", dep.model.model, "--tokenizer", tokenizer,
            "--dataset-name", dataset, "--num-prompts", str(test.num_prompts)]
    if not test.unbounded:
        argv += ["--max-concurrency", str(concurrency)]
    argv += ["--request-rate", str(test.request_rate),
             "--seed", str(test.seed), "--warmup-requests", str(test.warmup_requests),
             "--output-file", bench_output_path(dep, test, concurrency), "--output-details"]
    if dataset == "generated-shared-prefix":
        argv += ["--gsp-num-groups", str(test.gsp_num_groups),
                 "--gsp-prompts-per-group", str(test.gsp_prompts_per_group),
                 "--gsp-system-prompt-len", str(test.gsp_system_prompt_len),
                 "--gsp-question-len", str(test.gsp_question_len),
                 "--gsp-output-len", str(test.gsp_output_len)]
    else:
        argv += ["--random-input-len", str(test.input_length), "--random-output-len", str(test.output_length),
                 "--random-range-ratio", str(test.random_range_ratio)]
    if test.dataset_path:
        argv += ["--dataset-path", test.dataset_path]
    if test.decode_alone:
        argv += releases.fake_prefill_args(dep.sglang_version)
    return tuple(argv)


def gsm8k_argv(dep: Deployment, test: InferenceTest, concurrency: int) -> tuple[str, ...]:
    """`sglang.test.few_shot_gsm8k` against the router (it prints Accuracy / Invalid / Latency / Output throughput),
    with the --host form of the planned release."""
    router = dep.router
    argv = [dep.bench_python, "-m", "sglang.test.few_shot_gsm8k", "--num-questions", str(test.num_questions),
            "--num-shots", str(test.num_shots), "--parallel", str(concurrency),
            "--host", releases.gsm8k_host(dep.sglang_version, router.host), "--port", str(router.port)]
    data_path = gsm8k_data_path(dep, test)
    if data_path:
        argv += ["--data-path", data_path]
    return tuple(argv)


def _bench_processes(dep: Deployment, tokenizer: str) -> tuple[ProcessSpec, ...]:
    """The benchmark commands the sglang bench client runs on the benchmark node, one per test and concurrency.
    HF_HUB_OFFLINE=1 only where the tokenizer is a local directory (a hub id may need a download)."""
    out = []
    bench = next((c for c in dep.containers if c.key == "bench"), None)
    node = bench.node if bench else dep.entry.node
    env = {"HF_HUB_OFFLINE": "1"} if tokenizer.startswith("/") else {}
    for test in dep.model.tests:
        if test.bench_client != "sglang":
            continue
        for conc in test.max_concurrency:
            argv = gsm8k_argv(dep, test, conc) if test.kind == "gsm8k" else bench_serving_argv(dep, test, conc, tokenizer)
            key = f"bench_{test.name}_c{conc}"
            out.append(ProcessSpec(key=key, role="bench", node=node, argv=argv,
                                   env=env, port=None, log_path=f"{dep.log_dir}/bench/{key}.log",  # the wrapper creates bench/ for --output-file
                                   container=bench.key if bench else None, host=node))
    return tuple(out)


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
