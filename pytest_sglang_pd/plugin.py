"""pytest hooks of the suite: options, the run's session object, parametrization, ordering."""

from __future__ import annotations

import os
import secrets
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from . import config as config_mod
from .config import ClusterConfig, InferenceTest, ModelConfig

NO_CONFIG_HINT = ("no cluster config given: pass --cluster-config=PATH (or set the ini option cluster_config). "
                  "To try the suite without GPUs, run it on the simulated cluster: "
                  "pytest --cluster-config=local-sim.json")


@dataclass(frozen=True)
class InferenceCase:
    """One test_inference item: a model, one of its inference tests, one concurrency."""

    model: ModelConfig
    test: InferenceTest
    concurrency: int

    @property
    def id(self) -> str:
        base = f"{self.model.id}-{self.test.name}"
        return f"{base}-c{self.concurrency}" if self.test.is_sweep else base


@dataclass(eq=False)
class SuiteRun:
    """Everything a run knows from its options: one object, kept in the stash and registered as a plugin."""

    cluster_config: ClusterConfig | None
    results_root: Path
    run_id: str
    keep_cluster: bool
    router_url: str | None
    perf_tolerance_pct: float | None
    baseline: Path | None
    clusters: list = field(default_factory=list)  # LiveClusters brought up in this run

    @property
    def run_dir(self) -> Path:
        return self.results_root / self.run_id

    def cases(self) -> list[InferenceCase]:
        cfg = self.cluster_config
        if cfg is None:
            return []
        return [InferenceCase(m, t, c) for m in cfg.models for t in m.tests for c in t.max_concurrency]

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

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.keep_cluster:
            return
        for cluster in self.clusters:
            terminalreporter.write_line(
                f"sglang-pd: cluster of {cluster.deployment.model.id} kept running, router {cluster.router_url}; "
                f"remove it with: sglang-pd down {cluster.run_dir}", yellow=True)

    def pytest_report_header(self) -> list[str]:
        cfg = self.cluster_config
        if cfg is None:
            return ["sglang-pd: no cluster config"]
        return [f"sglang-pd: {cfg.source} engine={cfg.engine} runtime={cfg.runtime} transport={cfg.transport} "
                f"kv={cfg.kv_transfer.backend} models={','.join(cfg.model_ids)} run={self.run_id}"]


def model_of(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    case = callspec.params.get("inference_case")
    if isinstance(case, InferenceCase):
        return case.model.id
    return callspec.params.get("model_under_test")


suite_run_key = pytest.StashKey[SuiteRun]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sglang-pd", "SGLang prefill/decode cluster validation")
    group.addoption("--cluster-config", metavar="PATH",
                    help="cluster config (JSON or YAML); a bare file name is also looked up in the shipped cluster_configs/")
    group.addoption("--keep-cluster", action="store_true", help="leave the cluster running after the run")
    group.addoption("--router-url", metavar="URL", help="run against an already running cluster's router; start nothing")
    group.addoption("--results-dir", metavar="DIR", help="where each run's folder goes (default: reports/)")
    group.addoption("--perf-tolerance", metavar="PCT", type=_percent_arg,
                    help="tolerance in percent applied to every threshold (default: per test, else 0)")
    group.addoption("--baseline", metavar="RESULTS_JSON", help="fail on a regression beyond tolerance against an earlier results.json")
    group.addoption("--run-id", metavar="ID", help="the run id (default: a timestamp and a random suffix)")
    parser.addini("cluster_config", "default cluster config when --cluster-config is not given")


def _config_path(config: pytest.Config) -> str | None:
    """--cluster-config as given, else the ini option relative to the rootdir (either may name a shipped config)."""
    given = config.getoption("cluster_config")
    if given:
        return given
    ini = config.getini("cluster_config")
    if not ini:
        return None
    beside = Path(config.rootpath, ini)
    return str(beside) if beside.exists() else ini


def _percent_arg(value: str) -> float:
    try:
        pct = float(value.strip().rstrip("%"))
    except ValueError:
        raise pytest.UsageError(f"--perf-tolerance expects a percentage such as 10 or 10%, got {value!r}") from None
    if pct < 0:
        raise pytest.UsageError(f"--perf-tolerance must not be negative, got {value!r}")
    return pct


@pytest.hookimpl(tryfirst=True)  # before pytest-html's, so the report's default path applies
def pytest_configure(config: pytest.Config) -> None:
    path = _config_path(config)
    cluster_config = None
    if path:
        try:
            cluster_config = config_mod.load(path)
        except config_mod.ConfigError as exc:
            raise pytest.UsageError(str(exc)) from None
    worker = getattr(config, "workerinput", None)
    run_id = config.getoption("run_id") or (worker or {}).get("sglang_pd_run_id") or default_run_id()
    results = config.getoption("results_dir") or os.environ.get("SGLANG_PD_RESULTS_DIR") or Path(config.rootpath, "reports")
    baseline = config.getoption("baseline")
    run = SuiteRun(cluster_config=cluster_config, results_root=Path(results), run_id=run_id,
                   keep_cluster=config.getoption("keep_cluster"), router_url=config.getoption("router_url"),
                   perf_tolerance_pct=config.getoption("perf_tolerance"), baseline=Path(baseline) if baseline else None)
    if cluster_config is not None and not run.router_url and getattr(config.option, "numprocesses", None) \
            and not config.option.collectonly:
        raise pytest.UsageError(
            "-n (pytest-xdist) would bring up one cluster per worker on the same nodes and ports: run without -n, "
            "or bring the cluster up once (sglang-pd up CONFIG) and run the workers against it with --router-url")
    if run.baseline is not None and not run.baseline.is_file():
        raise pytest.UsageError(f"--baseline {baseline}: no such file")
    config.stash[suite_run_key] = run
    config.pluginmanager.register(run, "sglang_pd_run")
    from . import report

    report.configure(config)
    _interrupt_on_sigterm(config)
    from . import fixtures

    config.pluginmanager.register(fixtures, "sglang_pd_fixtures")


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """xdist controller: every worker uses the controller's run id (one run folder)."""
    node.workerinput["sglang_pd_run_id"] = node.config.stash[suite_run_key].run_id


def default_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)


_previous_sigterm_key = pytest.StashKey[object]()


def _interrupt_on_sigterm(config: pytest.Config) -> None:
    """SIGTERM (a Jenkins abort) becomes KeyboardInterrupt, so the finalizers tear the cluster down."""
    if threading.current_thread() is not threading.main_thread():
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"received signal {signal.Signals(signum).name}")

    config.stash[_previous_sigterm_key] = signal.signal(signal.SIGTERM, interrupt)


def pytest_unconfigure(config: pytest.Config) -> None:
    previous = config.stash.get(_previous_sigterm_key, None)
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)
    run = config.stash.get(suite_run_key, None)
    if run is not None:
        config.pluginmanager.unregister(run)
