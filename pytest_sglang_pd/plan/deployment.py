"""What a plan is made of: the containers, processes and prechecks of one model's Deployment."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from .. import releases
from ..config import AGGREGATED, DECODE_ALONE, DISAGGREGATED, ROLES, ModelConfig


WORKER_ROLES = (*ROLES, AGGREGATED)  # the roles of serving workers, in either mode


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
