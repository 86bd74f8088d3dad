"""A model's ``hicache`` section: HiCache (SGLang's hierarchical KV cache) on the Mooncake Store.

With ``storage_backend: mooncake`` the workers get ``--enable-hierarchical-cache --hicache-storage-backend
mooncake`` and the environment sglang 0.5.23 reads the store's settings from when no extra config or config file
is given (``MooncakeStoreConfig.load_from_env`` in ``srt/mem_cache/storage/mooncake_store/mooncake_store.py``);
the suite runs the store's services (the master and the metadata service) on one node, before any worker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .keys import TEXT, Kind, Problem, choice, json_path, key, port

# SGLang's _parse_global_segment_size takes bytes or "<n>gb"
SEGMENT_SIZE = Kind("bytes or \"<n>gb\"", {"anyOf": [{"type": "integer", "minimum": 1},
                                                   {"type": "string", "pattern": r"^\s*[0-9]+\s*([gG][bB])?\s*$"}]},
                    lambda v: str(v).strip().lower(), 'a size SGLang parses: bytes (a number) or "<n>gb" such as "4gb"')
METADATA_KINDS = ("etcd", "http", "P2PHANDSHAKE")
# flags the suite plans with HiCache; the model's server_args must not give them again
HICACHE_FLAGS = ("--enable-hierarchical-cache", "--hicache-storage-backend")
_STORE = "the Mooncake Store's services (on hicache.node)"


@dataclass(frozen=True)
class HiCacheSettings:
    """A model's ``hicache`` section; HiCache is off unless ``storage_backend`` is set."""

    storage_backend: str | None = key("storage_backend", None, choice("mooncake"), "every worker's "
                                      "--enable-hierarchical-cache --hicache-storage-backend; the suite starts "
                                      f"{_STORE} before the workers and stops them after", default_doc="HiCache off")
    node: str | None = key("node", None, TEXT, "the node that runs the store's master and metadata service (each in "
                           "its own container with runtime docker)", default_doc="the first prefill node")
    metadata: str = key("metadata", "etcd", choice(*METADATA_KINDS), "the transfer engine's metadata service: "
                        "etcd or Mooncake's HTTP metadata server, started by the suite (MOONCAKE_TE_META_DATA_SERVER "
                        "etcd://node:port or http://node:port/metadata); P2PHANDSHAKE: none")
    master_port: int = port("master_port", 50051, "mooncake_master --rpc_port; the workers' MOONCAKE_MASTER")
    master_metrics_port: int = port("master_metrics_port", 9003, "mooncake_master --metrics_port (its /health, "
                                    "polled until ready); the workers' MOONCAKE_MASTER_METRICS_PORT")
    metadata_port: int = port("metadata_port", 2379, "etcd's client port or the HTTP metadata server's port")
    etcd_peer_port: int = port("etcd_peer_port", 2380, "etcd --listen-peer-urls (metadata etcd)")
    etcd: str = key("etcd", "etcd", TEXT,
                    "the etcd binary on the store's node (in its container with runtime docker: SGLang images ship "
                    "the Mooncake wheel, not etcd)")
    global_segment_size: str = key("global_segment_size", "4gb", SEGMENT_SIZE, "the workers' "
                                   "MOONCAKE_GLOBAL_SEGMENT_SIZE (memory each worker gives the store)")

    @property
    def enabled(self) -> bool:
        return self.storage_backend == "mooncake"


def hicache_problems(model: Any, mpath: str) -> list[Problem]:
    """HiCache flags given twice: by the ``hicache`` section and the model's server args."""
    if not model.hicache.enabled:
        return []
    out = []
    for name in ("server_args", "prefill_server_args", "decode_server_args"):
        for i, arg in enumerate(getattr(model, name)):
            if arg.split("=", 1)[0] in HICACHE_FLAGS:
                out.append(Problem(json_path(json_path(mpath, name), i), (
                    f"{arg} is planned from {mpath}.hicache (storage_backend mooncake): remove it here")))
    return out
