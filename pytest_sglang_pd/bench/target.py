"""What a benchmark needs of a running cluster: the BenchTarget protocol (the pd_cluster fixture's value has it)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..plan import Deployment, ProcessSpec


class BenchTarget(Protocol):
    """The router to load, the workers to read counters from, and the benchmark node to run a tool on."""

    router_url: str
    deployment: Deployment | None  # None when --router-url points at an existing cluster
    simulated: bool
    worker_urls: dict[str, list[str]]
    router_version: str | None  # "<package> <version>" (None: not known, e.g. behind --router-url)
    router_metrics_url: str | None  # the router's Prometheus /metrics (None: not known)
    broken: str | None  # set by the cluster watch: a running benchmark stops at once

    def run_bench_command(self, spec: ProcessSpec, timeout_s: float) -> tuple[int, str]: ...

    def fetch(self, remote_path: str, local: Path) -> None: ...

    def put(self, local: Path, remote_path: str) -> None: ...

    def tool_version(self, spec: ProcessSpec) -> str | None:
        """The sglang package version of the python ``spec`` runs on the benchmark node (None: not installed)."""
