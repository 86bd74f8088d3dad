"""HiCache: the Mooncake Store's services (master, metadata server) and the env its workers read."""

from __future__ import annotations

from ..config import ClusterConfig, ModelConfig
from .deployment import ProcessSpec
from .nodes import bind_host


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
