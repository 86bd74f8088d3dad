"""pytest hooks of the suite: options, the run's session object (session.py) made and registered, signals.

The pytest face sits on top: this module, session.py and fixtures.py import the chain (config, plan,
live cluster, bench, gating, report) and nothing of the package imports them.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from . import config as config_mod
from . import plan as plan_mod
from .gating import BASELINE_TOLERANCE_PCT
from .interrupts import interrupt_on_sigterm
from .session import SuiteRun, suite_run_key

if TYPE_CHECKING:
    from .gating import Baseline

SUITE_DIR = Path(__file__).resolve().parent / "suite"  # the validation tests, shipped with the package
TUNE_TEST = "test_tune.py"  # the layout search, collected only with --tune


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("sglang-pd", "SGLang prefill/decode cluster validation")
    group.addoption("--cluster-config", metavar="PATH",
                    help="cluster config (JSON or YAML); a bare file name is also looked up in the shipped cluster_configs/")
    group.addoption("--keep-cluster", action="store_true", help="leave the cluster running after the run")
    group.addoption("--router-url", metavar="URL", help="run against an already running cluster's router; start nothing")
    group.addoption("--results-dir", metavar="DIR", help="where each run's folder goes (default: reports/)")
    group.addoption("--perf-tolerance", metavar="PCT", type=_percent("--perf-tolerance"),
                    help="tolerance in percent applied to every threshold (default: per test, else 0)")
    group.addoption("--baseline", metavar="RESULTS_JSON|auto",
                    help="fail on a regression beyond tolerance against an earlier results.json; auto: the last green "
                         "run of --history with this run's provenance key")
    group.addoption("--history", metavar="DIR",
                    help="earlier runs (results.json files below DIR, e.g. a Jenkins job's archived runs) for "
                         "--baseline auto and the report's trend (default with --baseline auto: the results dir)")
    group.addoption("--baseline-tolerance", metavar="PCT", type=_percent("--baseline-tolerance"),
                    help=f"how much worse than the baseline a metric may be, in percent "
                         f"(default {BASELINE_TOLERANCE_PCT:g}; --perf-tolerance is for the absolute limits)")
    group.addoption("--repeats", metavar="N", type=_at_least_one,
                    help="run every benchmark N times on the same deployment and gate each metric's mean (default: "
                         "each test's repeats, else 1)")
    group.addoption("--run-id", metavar="ID", help="the run id (default: a timestamp and a random suffix)")
    group.addoption("--tune", metavar="OPTIONS", help="run the layout search (suite/test_tune.py) instead of the suite, "
                    "with the options of `sglang-pd tune`, e.g. --tune='--isl 3000 --osl 150 --sla user_tok_s>=50' "
                    "(docs/tune.md)")
    parser.addini("cluster_config", "default cluster config when --cluster-config is not given")


def _at_least_one(text: str) -> int:
    """--repeats: a whole number of runs, at least 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise pytest.UsageError(f"--repeats expects a whole number of runs, at least 1, got {text!r}")
    return int(text)


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


def _percent(option: str):
    """An argparse type for ``option``: a non-negative percentage, ``10`` or ``10%``."""
    def parse(value: str) -> float:
        try:
            pct = config_mod.percent(value)
        except ValueError:
            raise pytest.UsageError(f"{option} expects a percentage such as 10 or 10%, got {value!r}") from None
        if pct < 0:
            raise pytest.UsageError(f"{option} must not be negative, got {value!r}")
        return pct

    return parse


@pytest.hookimpl(tryfirst=True)  # before pytest-html's, so the report's default path applies
def pytest_configure(config: pytest.Config) -> None:
    path = _config_path(config)
    cluster_config = None
    if path:
        try:
            cluster_config = plan_mod.load_config(path)
        except config_mod.ConfigError as exc:
            raise pytest.UsageError(str(exc)) from None
    worker = getattr(config, "workerinput", None)
    run_id = config.getoption("run_id") or (worker or {}).get("sglang_pd_run_id") or plan_mod.default_run_id()
    results = (config.getoption("results_dir") or os.environ.get("SGLANG_PD_RESULTS_DIR")
               or Path(config.invocation_params.dir, "reports"))
    _usable_folder(Path(results), "--results-dir", keep=not config.option.collectonly)
    router_url = config.getoption("router_url")
    if cluster_config is not None and not router_url and getattr(config.option, "numprocesses", None) \
            and not config.option.collectonly:
        raise pytest.UsageError(
            "-n (pytest-xdist) would bring up one cluster per worker on the same nodes and ports: run without -n, "
            "or bring the cluster up once (sglang-pd up CONFIG) and run the workers against it with --router-url")
    if cluster_config is not None:
        _collect_the_suite(config)
    auto = config.getoption("baseline") == "auto"
    history = config.getoption("history") or (results if auto else None)
    if history is not None and not Path(history).is_dir():
        raise pytest.UsageError(f"--history {history}: no such folder")
    run = SuiteRun(cluster_config=cluster_config, results_root=Path(results), run_id=run_id,
                   keep_cluster=config.getoption("keep_cluster"), router_url=router_url,
                   perf_tolerance_pct=config.getoption("perf_tolerance"), repeats=config.getoption("repeats"),
                   baseline=None if auto else _baseline(config.getoption("baseline")),
                   baseline_tolerance_pct=_or(config.getoption("baseline_tolerance"), BASELINE_TOLERANCE_PCT),
                   history_dir=Path(history) if history is not None else None, baseline_auto=auto)
    config.stash[suite_run_key] = run
    config.pluginmanager.register(run, "sglang_pd_run")
    from . import report

    report.configure(config, run)
    config.stash[_previous_sigterm_key] = interrupt_on_sigterm()  # the finalizers tear the cluster down
    from . import fixtures

    config.pluginmanager.register(fixtures, "sglang_pd_fixtures")


def _collect_the_suite(config: pytest.Config) -> None:
    """With a cluster config and no test paths named, collect the suite's own tests, wherever pytest runs.

    pytest settles its rootdir before this plugin's options exist: ``--cluster-config /dir/my.json`` (the
    space form) reads as a test path there, so the rootdir becomes /dir, the checkout's ``testpaths`` are
    not read, and the working folder would be collected instead. The paths pytest falls back to (the
    invocation folder, testpaths) are therefore replaced by the suite's folder; paths the user names stay.
    """
    if config.args_source != pytest.Config.ArgsSource.ARGS:
        config.args[:] = [str(SUITE_DIR / TUNE_TEST if config.getoption("tune") else SUITE_DIR)]


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """The layout search runs only when --tune asks for it."""
    if collection_path == SUITE_DIR / TUNE_TEST and not config.getoption("tune"):
        return True
    return None


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    """xdist controller: every worker uses the controller's run id (one run folder)."""
    node.workerinput["sglang_pd_run_id"] = node.config.stash[suite_run_key].run_id


def _usable_folder(path: Path, option: str, *, keep: bool) -> None:
    """A usage error naming the folder and the reason when it cannot be created or written; what this check
    created is removed again unless ``keep``."""
    first_missing = next((p for p in reversed((path, *path.parents)) if not p.exists()), None)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise pytest.UsageError(f"{option} {path}: cannot be created or written ({exc.strerror or exc})") from None
    if first_missing is not None and not keep:
        shutil.rmtree(first_missing, ignore_errors=True)
def _or(value, default):
    return default if value is None else value


def _baseline(path: str | None) -> Baseline | None:
    """--baseline: an earlier results.json of this suite, read once."""
    if not path:
        return None
    if not Path(path).is_file():
        raise pytest.UsageError(f"--baseline {path}: no such file")
    from .report import results

    try:
        return results.load_baseline(Path(path))
    except results.BaselineError as exc:
        raise pytest.UsageError(str(exc)) from None


_previous_sigterm_key = pytest.StashKey[object]()


def pytest_unconfigure(config: pytest.Config) -> None:
    previous = config.stash.get(_previous_sigterm_key, None)
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)
    run = config.stash.get(suite_run_key, None)
    if run is not None:
        config.pluginmanager.unregister(run)
