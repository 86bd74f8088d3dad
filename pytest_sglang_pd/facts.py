"""What the live layer found out about one cluster, handed to the report as plain data (``cluster_facts.facts_of``).

The report renders these and asks nothing of the cluster itself: it imports this module, never the live
layer (cluster.py, runtime.py, hosts.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping


@dataclass(frozen=True)
class InstanceFacts:
    """One planned worker process: where an instance (or one node's share of a multi-node instance) runs."""

    key: str  # e.g. "decode_0_rank1"
    role: str
    instance: int
    node: str
    node_rank: int  # 0: the process that serves HTTP
    nnodes: int  # nodes the instance spans
    tp_size: int  # the instance's tensor parallelism over all its nodes (--tp-size)
    dp_size: int
    dp_attention: bool
    gpus: tuple[int, ...]  # on its node, --base-gpu-id onwards
    nics: tuple[str, ...]
    port: int | None
    bootstrap_port: int | None  # prefill only

    @property
    def base_gpu_id(self) -> int | None:
        return self.gpus[0] if self.gpus else None


@dataclass(frozen=True)
class ClusterFacts:
    """One model's cluster as the run saw it once it was ready (or as far as it came up)."""

    router_url: str
    model: str | None = None  # None: a cluster behind --router-url, not deployed by this run
    router: str | None = None  # "<package> <version>" of the router this run started (None behind --router-url)
    startup_seconds: Mapping[str, float] = field(default_factory=dict)  # step -> seconds it took
    worker_versions: Mapping[str, str] = field(default_factory=dict)  # role -> version its workers report
    kv_pairs_gbps: Mapping[str, float | None] = field(default_factory=dict)  # "prefill_0 -> decode_0" -> GB/s
    image_ids: Mapping[str, str] = field(default_factory=dict)  # node -> id (sha256) of the image its containers run
    log_files: Mapping[str, Path] = field(default_factory=dict)  # process key -> its log in the run folder
    started: tuple[str, ...] = ()  # keys of the processes running now: teardown collects their logs
    layout: tuple[InstanceFacts, ...] = ()  # the workers as planned (none behind --router-url)
