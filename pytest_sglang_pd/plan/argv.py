"""The command lines of the SGLang workers and of the router."""

from __future__ import annotations

from .. import releases
from ..config import AGGREGATED, ClusterConfig, ModelConfig
from .instances import Instance, Member
from .nodes import bind_host, member_nics, transfer_backend


POLICY_TO_SCHEDULE = {"cache_aware": "lpm", "fcfs": "fcfs", "round_robin": "fcfs", "random": "random",
                      "power_of_two": "fcfs"}
POLICY_TO_ROUTER = {"cache_aware": "cache_aware", "fcfs": "round_robin", "round_robin": "round_robin",
                    "random": "random", "power_of_two": "power_of_two"}


SIM_WORKER_MODULE = "pytest_sglang_pd.sim.launch_server"
SGLANG_WORKER_MODULE = "sglang.launch_server"


def worker_argv(cfg: ClusterConfig, model: ModelConfig, inst: Instance, member: Member, python: str,
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


# the entry point of each router package: sglang-router (in images, module sglang_router) or its successor smg
ROUTER_ENTRY = {"sglang-router": ("-m", "sglang_router.launch_router"), "smg": ("-m", "smg", "launch")}
ROUTER_STARTUP_CHECK_S = 1  # how often the router retries a worker's registration (smg's default is 30 s)


def router_argv(cfg: ClusterConfig, model: ModelConfig, layout: dict[str, tuple[Instance, ...]],
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
