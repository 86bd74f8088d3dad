"""Benchmark tools -> BenchResult: the one entry point ``run_benchmark`` and the target it runs against."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from . import builtin, sglang_tools
from .builtin import Progress
from .result import BenchResult, RequestRecord
from .sglang_tools import BenchToolError

if TYPE_CHECKING:
    from ..plan import Deployment, ProcessSpec
    from ..plugin import InferenceCase

__all__ = ["BenchResult", "BenchTarget", "BenchToolError", "Progress", "RequestRecord", "run_benchmark"]


class BenchTarget(Protocol):
    """What a benchmark needs from a running cluster (the pd_cluster fixture provides it)."""

    router_url: str
    deployment: Deployment | None  # None when --router-url points at an existing cluster
    simulated: bool
    worker_urls: dict[str, list[str]]
    log_files: dict[str, Path]
    startup_seconds: dict[str, float]

    def run_bench_command(self, spec: ProcessSpec, timeout_s: float) -> tuple[int, str]: ...

    def fetch(self, remote_path: str, local: Path) -> None: ...


def run_benchmark(target: BenchTarget, case: InferenceCase, *, timeout_s: float, artifacts_dir: Path,
                  progress: Progress | None = None) -> BenchResult:
    """Run ``case`` against ``target`` with the tool its test names (bench_client builtin | sglang)."""
    test = case.test
    if test.bench_client == "builtin":
        return builtin.run(target.router_url, test, case.concurrency, timeout_s=timeout_s, progress=progress)
    return sglang_tools.run(target, test, case.concurrency, timeout_s=timeout_s, artifacts_dir=artifacts_dir)
