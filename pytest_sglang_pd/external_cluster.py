"""A cluster someone else started, known by its router URL (--router-url): the suite starts and stops nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import requests

from .cluster import ClusterError
from .plan import ProcessSpec


@dataclass
class ExternalCluster:
    """An already running cluster behind its router (--router-url): nothing started, nothing stopped."""

    router_url: str
    simulated: bool
    deployment: None = None
    worker_urls: dict = field(default_factory=lambda: {"prefill": [], "decode": []})
    log_files: dict = field(default_factory=dict)
    startup_seconds: dict = field(default_factory=dict)
    broken: str | None = None
    kv_pairs_gbps: dict = field(default_factory=dict)  # no pair check: the suite reaches no node
    image_ids: dict = field(default_factory=dict)
    procs: dict = field(default_factory=dict)  # nothing started

    @classmethod
    def behind(cls, router_url: str, simulated: bool) -> "ExternalCluster":
        """The cluster with its workers as the router lists them (GET /workers)."""
        cluster = cls(router_url=router_url.rstrip("/"), simulated=simulated)
        try:
            listed = requests.get(f"{cluster.router_url}/workers", timeout=10).json()
        except (requests.RequestException, ValueError) as exc:
            raise ClusterError(f"--router-url {router_url}: GET /workers failed: {exc}") from None
        for worker in listed.get("workers", []) if isinstance(listed, dict) else listed:
            cluster.worker_urls.setdefault(worker.get("worker_type", ""), []).append(worker["url"])
        return cluster

    def run_bench_command(self, spec: ProcessSpec, timeout_s: float) -> tuple[int, str]:
        raise ClusterError("with --router-url the suite starts nothing on the nodes: "
                           "use the builtin benchmark client (\"bench_client\": \"builtin\")")

    def fetch(self, remote_path: str, local: Path) -> None:
        raise ClusterError("with --router-url the suite reaches no node")

    put = fetch

    def tool_version(self, spec: ProcessSpec) -> str | None:
        return None

    router_version = None
    router_metrics_url = None
