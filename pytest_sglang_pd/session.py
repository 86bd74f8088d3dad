"""The run's session object: what a run knows from its options, kept in the stash and registered as a plugin.

Part of the pytest face: ``plugin.py`` makes it in ``pytest_configure``, ``fixtures.py`` reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from .config import ClusterConfig, InferenceCase, cases, role_nodes
from .report import model_of

if TYPE_CHECKING:
    from .cluster import LiveCluster
    from .gating import Baseline
    from .report import RunReport

NO_CONFIG_HINT = ("no cluster config given: pass --cluster-config=PATH (or set the ini option cluster_config). "
                  "To try the suite without GPUs, run it on the simulated cluster: "
                  "pytest --cluster-config=local-sim.json")


@dataclass(eq=False)
class SuiteRun:
    """Everything a run knows from its options: one object, kept in the stash and registered as a plugin."""

    cluster_config: ClusterConfig | None
    results_root: Path
    run_id: str
    keep_cluster: bool
    router_url: str | None
    perf_tolerance_pct: float | None
    repeats: int | None  # --repeats: overrides every test's own
    baseline: Baseline | None
    baseline_tolerance_pct: float
    history_dir: Path | None = None
    baseline_auto: bool = False  # --baseline auto: picked from history_dir once the first cluster is ready
    baseline_note: str | None = None  # which run --baseline auto picked, or why none
    clusters: list[LiveCluster] = field(default_factory=list)  # brought up in this run

    def repeats_of(self, test) -> int:
        """How many times the test's benchmark runs: --repeats, else the test's ``repeats``."""
        return self.repeats or test.repeats

    @property
    def run_dir(self) -> Path:
        return self.results_root / self.run_id

    def resolve_baseline(self, run_report: RunReport) -> str | None:
        """--baseline auto, once: the last green run of the history with this run's provenance key (known once a
        cluster is ready: the workers' versions are part of it). Returns what was picked, or why nothing."""
        if not self.baseline_auto or self.baseline_note is not None:
            return None
        from .report import history, results

        key = run_report.provenance()["key"]
        found = history.runs(self.history_dir, exclude=run_report.results_path)
        pick = history.last_green(found, key)
        if pick is None:
            self.baseline_note = (f"--baseline auto: no green run of provenance key {key} among the {len(found)} "
                                  f"finished run(s) below {self.history_dir}; this run has no baseline")
        else:
            self.baseline = results.load_baseline(pick.path)
            self.baseline_note = (f"--baseline auto: run {pick.run_id} ({pick.path}), the last green run of "
                                  f"provenance key {key}")
        return self.baseline_note

    def cases(self) -> list[InferenceCase]:
        return cases(self.cluster_config) if self.cluster_config is not None else []

    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        """Ids `<model>-<test>` (and `-c<N>` per concurrency of a sweep); one session param per model."""
        cfg = self.cluster_config
        if "inference_case" in metafunc.fixturenames:
            cases = self.cases()
            if cfg is None:
                metafunc.parametrize("inference_case", [None], ids=["no-cluster-config"])
                return
            metafunc.parametrize(["model_under_test", "inference_case"], [(c.model.id, c) for c in cases],
                                 ids=[c.id for c in cases], indirect=["model_under_test"], scope="session")
        elif "model_under_test" in metafunc.fixturenames:
            ids = list(cfg.model_ids) if cfg else ["no-cluster-config"]
            metafunc.parametrize("model_under_test", ids, indirect=True, scope="session")

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """Run every test of one model before the next model's deployment starts."""
        if self.cluster_config is None:
            return
        order = {m: i for i, m in enumerate(self.cluster_config.model_ids)}
        items.sort(key=lambda item: order.get(model_of(item), -1))

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        """A selection (-k, -m, a node id) that leaves no test: say what the config has, write no empty report."""
        if self.cluster_config is None or session.items or not session.config.option.keyword and not \
                session.config.option.markexpr and not session.config.args:
            return
        from . import report

        report.of(session.config).write_no_files()
        lines = [f"sglang-pd: the selection left no test of {self.cluster_config.source}; it has",
                 f"  models: {', '.join(self.cluster_config.model_ids)}",
                 "  inference test ids (-k ...): " + ", ".join(c.id for c in self.cases())]
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        for line in lines if reporter else ():
            reporter.write_line(line, yellow=True)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.baseline_note:
            terminalreporter.write_line(f"sglang-pd: {self.baseline_note}", yellow=self.baseline is None)
        if not self.keep_cluster:
            return
        for cluster in self.clusters:
            slurm = cluster.cfg.slurm if cluster.cfg.transport == "slurm" else None
            held = f" in Slurm allocation {slurm.job_id}" if slurm else ""
            released = " (and release the allocation)" if slurm and slurm.owned else ""
            terminalreporter.write_line(
                f"sglang-pd: cluster of {cluster.deployment.model.id} kept running{held}, router {cluster.router_url}; "
                f"remove it with: sglang-pd down {cluster.run_dir}{released}", yellow=True)

    def pytest_report_header(self) -> list[str]:
        cfg = self.cluster_config
        if cfg is None:
            return ["sglang-pd: no cluster config"]
        return [f"sglang-pd: {cfg.source} engine={cfg.engine} runtime={cfg.runtime} transport={cfg.transport} "
                f"kv={cfg.kv_transfer.backend} models={','.join(cfg.model_ids)} run={self.run_id}",
                *(f"sglang-pd: layout {m.id}: " + "; ".join(
                    f"{role} {m.layout(role).describe()} on {len(role_nodes(cfg, role))} node(s)"
                    for role in m.roles) for m in cfg.models),
                *(f"sglang-pd: warning: {w}" for w in cfg.warnings)]


suite_run_key = pytest.StashKey[SuiteRun]()
