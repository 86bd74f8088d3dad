"""The cluster's keys (``$.config`` and its sections: ssh, slurm, kv_transfer, timeouts, sim, container_config,
router): ``ClusterConfig``, which holds the typed models."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Mapping

from .keys import (ARGS, CSV, INT, LIST_MAP, NODES, NUMBER, RELEASE, STRING, STRING_MAP, TEXT, Kind, Problem, choice,
                   count, key, port)
from .layout import MooncakeSettings
from .model import WORKER_ARGV, ModelConfig


@dataclass(frozen=True)
class SSHSettings:
    user: str | None = key("user", None, STRING, "the SSH login", default_doc="~/.ssh/config, else your user")
    key_file: str | None = key("key_file", None, STRING, "the private key (~ expanded); must exist",
                               default_doc="~/.ssh/config, the agent, the default keys")
    port: int | None = port("port", None, "the SSH port", default_doc="~/.ssh/config, else 22")
    connect_timeout: float = key("connect_timeout", 10.0, NUMBER, "seconds to open a connection",
                                 minimum=0, exclusive_minimum=True)


SLURM_DEFAULT = "required; with transport slurm: from the allocation (docs/slurm.md)"
_SLURM_TIME = Kind("Slurm time", {"type": "string", "pattern": r"^([0-9]+-)?[0-9]+(:[0-9]+){0,2}$"}, str,
                   'a Slurm time limit: minutes, "MM:SS", "HH:MM:SS" or "D-HH[:MM[:SS]]" (sbatch --time)')
_JOB_ID = Kind("job id", {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "string", "pattern": r"^[0-9]+$"}]},
               lambda v: str(v).strip(), "a Slurm job id such as 4242")


@dataclass(frozen=True)
class SlurmSettings:
    """How the run gets its nodes from Slurm (transport slurm): an allocation it is in, is given, or makes."""

    partition: str | None = key("partition", None, TEXT, "sbatch --partition of the allocation the suite makes",
                                default_doc="the cluster's default partition")
    account: str | None = key("account", None, TEXT, "sbatch --account of the allocation the suite makes")
    time_limit: str | None = key("time_limit", None, _SLURM_TIME, "sbatch --time of the allocation the suite makes",
                                 default_doc="the partition's default")
    nodes: int | None = count("nodes", None, "sbatch --nodes of the allocation the suite makes (at least the "
                              "nodes the roles need)", default_doc="1 router node + the prefill and decode nodes")
    prefill_nodes: int = count("prefill_nodes", 1, "prefill nodes taken from the allocation when "
                               "prefill_node_list is omitted (xP: nodes 2..xP+1)")
    decode_nodes: int = count("decode_nodes", 1, "decode nodes taken from the allocation when decode_node_list "
                              "is omitted (yD: the nodes after the prefill nodes)")
    job_id: str | None = key("job_id", None, _JOB_ID, "an existing allocation to run in (the suite never "
                             "cancels it)", default_doc="$SLURM_JOB_ID inside an allocation, else the suite allocates")
    extra_args: tuple[str, ...] = key("extra_args", (), ARGS, "more sbatch arguments of the allocation the suite "
                                      "makes (--gres=gpu:8, --exclusive, --reservation=R, ...)")
    queue_timeout_s: float = key("queue_timeout_s", 3600.0, NUMBER, "how long the allocation the suite makes may "
                                 "wait in the queue before the run fails (and cancels it)", minimum=0,
                                 exclusive_minimum=True)
    containers: str = key("containers", "docker", choice("docker", "pyxis"), "how runtime docker's containers start: "
                          "docker run through an srun step, or pyxis/enroot (srun --container-image; planned and "
                          "shown by sglang-pd plan, not started by this release)")
    # filled in when the nodes are known (slurm.allocation), never read from the file
    node_names: Mapping[str, str] = dataclasses.field(default_factory=dict)  # node address -> Slurm node name
    owned: bool = False  # the suite made the allocation: it releases it


@dataclass(frozen=True)
class KVTransferSettings:
    backend: str = key("backend", "mooncake", choice("mooncake", "nixl", "mooncake_tcp", "mori", "tcp"),
                       f"{WORKER_ARGV} --disaggregation-transfer-backend (tcp: the simulator's own sockets)")
    ib_devices: tuple[str, ...] = key("ib_devices", (), CSV, f"{WORKER_ARGV} --disaggregation-ib-device; "
                                      "NIXL's UCX_NET_DEVICES; the device precheck",
                                      default_doc="nccl_ib_hca, else nccl_ib_hca_list")
    bootstrap_port: int = port("bootstrap_port", 8998, f"prefill {WORKER_ARGV} --disaggregation-bootstrap-port "
                                                       "(+1 per further prefill instance on one node)")
    env: Mapping[str, str] = key("env", {}, STRING_MAP, "extra environment of every worker (MC_*, UCX_*, ...)")
    min_gbps: float | None = key("min_gbps", None, NUMBER, "floor of the GB/s each prefill -> decode pair moves a "
                                 "payload at through the engine before the benchmarks (recorded always; "
                                 "unset: not gated)", minimum=0, exclusive_minimum=True)
    mooncake: MooncakeSettings = key("mooncake", section=MooncakeSettings)


@dataclass(frozen=True)
class Timeouts:
    server_start_s: float = key("server_start_s", 1800.0, NUMBER, "each worker's readiness deadline; router "
                                "--worker-startup-timeout-secs", minimum=0, exclusive_minimum=True)
    services_s: float = key("services_s", 60.0, NUMBER, "the side services' readiness deadline (HiCache's Mooncake "
                            "Store: master and metadata service, before any worker)", minimum=0, exclusive_minimum=True)
    router_ready_s: float = key("router_ready_s", 600.0, NUMBER, "the router's readiness deadline",
                                minimum=0, exclusive_minimum=True)
    smoke_s: float = key("smoke_s", 60.0, NUMBER, "the smoke requests' deadline (bring-up's proof of prefill -> "
                         "decode)", minimum=0, exclusive_minimum=True)
    benchmark_s: float = key("benchmark_s", 7200.0, NUMBER, "each benchmark's deadline",
                             minimum=0, exclusive_minimum=True)
    stall_s: float = key("stall_s", 60.0, NUMBER, "a benchmark ends as a stall when nothing is generated and no "
                         "request completes for this long (the cluster watch; independent of benchmark_s)",
                         minimum=0, exclusive_minimum=True)
    health_s: float = key("health_s", 5.0, NUMBER, "the cluster watch's deadline for each worker's /health answer "
                          "during a benchmark", minimum=0, exclusive_minimum=True)
    health_misses: int = count("health_misses", 2, "unanswered /health probes in a row that end a benchmark (the "
                               "cluster watch)")


@dataclass(frozen=True)
class SimSettings:
    gpu: str = key("gpu", "MI355X", STRING, "simulator --sim-gpu (MI300X, MI325X, MI355X, H100, H200, B200)")
    speedup: float = key("speedup", 1.0, NUMBER, "simulator --sim-speedup (simulated time runs this much faster); "
                         "< 1 is time dilation for a machine that cannot keep up: figures rescaled to modelled time",
                         minimum=0, exclusive_minimum=True)
    startup_delay_s: float = key("startup_delay_s", 0.0, NUMBER, "simulator --sim-startup-delay (model loading)",
                                 minimum=0)
    kv_payload_bytes_per_token: int = count("kv_payload_bytes_per_token", 64,
                                            "simulator --sim-kv-payload-bytes-per-token (bytes moved per token)")
    seed: int = key("seed", 0, INT, "simulator --sim-seed", minimum=0)
    accuracy: float = key("accuracy", 1.0, NUMBER, "simulator --sim-accuracy (fraction of right gsm8k answers)",
                          minimum=0, maximum=1)
    prefill_of_matmul: float | None = key("prefill_of_matmul", None, NUMBER, "simulator --sim-prefill-of-matmul: the "
                                          "share of the GPU's measured matmul rate a prefill forward reaches, to "
                                          "calibrate the model's TTFT to a measured stack (docs/simulator.md)",
                                          minimum=0, exclusive_minimum=True, maximum=1,
                                          default_doc="0.659, from NVIDIA NIM's H100 TTFT")
    faults: Mapping[str, tuple[str, ...]] = key("faults", {}, LIST_MAP, "simulator --sim-fault per role "
                                                "(prefill, decode) or process (prefill_0): see docs/simulator.md")


@dataclass(frozen=True)
class ContainerConfig:
    device_list: tuple[str, ...] = key("device_list", (), ARGS, "docker run --device of every container")
    volume_dict: Mapping[str, str] = key("volume_dict", {}, STRING_MAP, "docker run -v host:container")
    env_dict: Mapping[str, str] = key("env_dict", {}, STRING_MAP, "environment of every container and process")


@dataclass(frozen=True)
class RouterSettings:
    package: str = key("package", "sglang-router", choice("sglang-router", "smg"),
                       "sglang-router (what images ship: python -m sglang_router.launch_router) or its successor "
                       "smg (python -m smg launch)")
    python: str | None = key("python", None, TEXT, "the python that has the router package",
                             default_doc="the nodes' python")
    args: tuple[str, ...] = key("args", (), ARGS, "extra router flags (after router_args)")


@dataclass(frozen=True)
class ClusterConfig:
    EXTRA_KEYS = (port("proxy_router_serv_port", None, "must equal proxy_router_port (the seed format names "
                                                       "the one router port twice)").metadata["key"],)
    prefill_port: int = port("prefill_serv_port", dataclasses.MISSING, f"prefill {WORKER_ARGV} --port", required=True)
    decode_port: int = port("decode_serv_port", dataclasses.MISSING, f"decode {WORKER_ARGV} --port", required=True)
    router_port: int = port("proxy_router_port", dataclasses.MISSING, "router --port", required=True)
    prefill_nodes: tuple[str, ...] = key("prefill_node_list", (), NODES, "one prefill instance per node "
                                         "(per_node) or one over all (multi_node)", default_doc=SLURM_DEFAULT)
    decode_nodes: tuple[str, ...] = key("decode_node_list", (), NODES, "the decode instances, likewise",
                                        default_doc=SLURM_DEFAULT)
    router_node: str = key("proxy_router_node", None, TEXT, "where the router runs", default_doc=SLURM_DEFAULT)
    source: str = "<config>"
    models: tuple[ModelConfig, ...] = ()
    warnings: tuple[Problem, ...] = ()  # keys read but not honoured
    container_image: str = key("container_image", "", TEXT, "the image of every container (runtime docker)")
    container_name: str = key("container_name", "sglang_container", TEXT,
                              "the containers' name prefix (<name>-<run id>-<role>-<i>)")
    benchmark_node: str = key("benchmark_serv_node", None, TEXT, "where the benchmark clients run",
                              default_doc="proxy_router_node")
    nnodes: int | None = count("nnodes", None, "checked against the node lists")
    hf_token_file: str | None = key("hf_token_file", None, STRING, "HF_TOKEN of the workers, read on each node "
                                    "(never on a command line)")
    shm_size: str | None = key("shm_size", None, STRING, "docker run --shm-size")
    log_dir: str = key("log_dir", "/tmp/sglang-pd-logs", TEXT, "each process's log folder on its node")
    log_level: str = key("log_level", "info", choice("debug", "info", "warning", "error", "critical"),
                         "--log-level of workers and router")
    nic_type: str | None = key("nic_type", None, STRING, "the NIC's verbs provider: its library mounts, GID "
                               "index and device check (ainic, bnxt, mlx5; docs/nic-types.md)")
    nccl_ib_hca_list: tuple[str, ...] = key("nccl_ib_hca_list", (), CSV, "NCCL_IB_HCA where nccl_ib_hca is unset")
    nccl_ib_hca: tuple[str, ...] = key("nccl_ib_hca", (), CSV, "NCCL_IB_HCA of every container; "
                                       "kv_transfer.ib_devices' default")
    nccl_socket_ifname: str | None = key("nccl_socket_ifname", None, STRING, "NCCL_SOCKET_IFNAME")
    gloo_socket_ifname: str | None = key("gloo_socket_ifname", None, STRING, "GLOO_SOCKET_IFNAME")
    gloo_tcp_ifname: str | None = key("gloo_tcp_ifname", None, STRING, "GLOO_TCP_IFNAME")
    nccl_ib_gid_index: int | None = key("nccl_ib_gid_index", None, INT, "NCCL_IB_GID_INDEX; Mooncake's MC_GID_INDEX",
                                        minimum=0, default_doc="the nic_type's, else unset")
    nccl_debug: str | None = key("nccl_debug", None, choice("VERSION", "WARN", "INFO", "TRACE", "ERROR", "version",
                                                            "warn", "info", "trace", "error"), "NCCL_DEBUG")
    prefill_coordinator_addr: str | None = key("prefill_coordinator_addr", None, STRING,
                                               f"prefill {WORKER_ARGV} --dist-init-addr (multi_node)")
    decode_coordinator_addr: str | None = key("decode_coordinator_addr", None, STRING,
                                              f"decode {WORKER_ARGV} --dist-init-addr (multi_node)")
    prefill_coordinator_port: int = port("prefill_coordinator_port", 40001, "the prefill --dist-init-addr port")
    decode_coordinator_port: int = port("decode_coordinator_port", 40002, "the decode --dist-init-addr port")
    container: ContainerConfig = key("container_config", section=ContainerConfig)
    engine: str = key("engine", "sglang", choice("sglang", "sim"), "sim: the simulated worker instead of "
                      "sglang.launch_server")
    runtime: str = key("runtime", "docker", choice("docker", "process"), "process: plain processes instead of "
                       "one container per logical node")
    transport: str = key("transport", "ssh", choice("ssh", "local", "slurm"), "local: every node is this machine; "
                         "slurm: every command runs as an srun step of the run's allocation (docs/slurm.md)")
    bench_client: str = key("bench_client", "sglang", choice("sglang", "builtin"), "the tests' default bench_client",
                            default_doc="builtin with engine sim, else sglang")
    python: str | None = key("python", None, STRING, "the python of every planned process",
                             default_doc="python3 (this interpreter on local clusters)")
    bench_python: str | None = key("bench_python", None, TEXT, "the python that runs SGLang's bench_serving / "
                                   "few_shot_gsm8k on the benchmark node", default_doc="the nodes' python")
    sglang_version: str | None = key("sglang_version", None, RELEASE, "the SGLang release every command is planned "
                                     "for (bench_serving's module, few_shot_gsm8k's --host form, the DP-attention "
                                     "flags); a probed release that differs is an error",
                                     default_doc="probed from the nodes' python or image before the workers start")
    ssh: SSHSettings = key("ssh", section=SSHSettings)
    slurm: SlurmSettings = key("slurm", section=SlurmSettings)
    kv_transfer: KVTransferSettings = key("kv_transfer", section=KVTransferSettings)
    instance_layout: str = key("instance_layout", "per_node", choice("per_node", "multi_node"),
                               "per_node: each node an instance of TP = tensor_parallelism; multi_node: each "
                               "group one instance over its nodes")
    gpus_per_node: int = count("gpus_per_node", 8, "tensor_parallelism must fit")
    router_prometheus_port: int = port("router_prometheus_port", 29000, "router --prometheus-port")
    router_args: tuple[str, ...] = key("router_args", (), ARGS, "appended to the router argv (then router.args)")
    router: RouterSettings = key("router", section=RouterSettings)
    timeouts: Timeouts = key("timeouts", section=Timeouts)
    sim: SimSettings = key("sim", section=SimSettings)

    def model(self, model_id: str) -> ModelConfig:
        for m in self.models:
            if m.id == model_id:
                return m
        raise KeyError(f"no model {model_id!r} in {self.source} (have: {', '.join(self.model_ids)})")

    @property
    def model_ids(self) -> tuple[str, ...]:
        return tuple(m.id for m in self.models)

    @property
    def simulated(self) -> bool:
        return self.engine == "sim"

    @property
    def time_dilation(self) -> float:
        """How many times slower than modelled time the simulator's clock runs (``sim.speedup`` < 1), else 1; every
        time figure the suite reports is rescaled by it (``bench.result.undilate``). A speedup > 1 fast-forwards a
        quick run: its figures stay wall-clock."""
        return 1 / self.sim.speedup if self.simulated and self.sim.speedup < 1 else 1.0

    @property
    def router_package(self) -> str:
        return self.router.package

    @property
    def router_python(self) -> str | None:
        return self.router.python
