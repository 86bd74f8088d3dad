"""The run's reports: results.json, pytest-html summary and per-test extras, JUnit properties.

The report records and renders what it is handed and decides nothing: the plugin's ``pytest_configure``
calls ``configure(config, run)`` once; the fixtures hand it each cluster's facts (``add_cluster``, from the
live layer's ``cluster_facts.facts_of``); ``suite/test_inference.py`` hands it each case's benchmark result and
the verdicts gating gave (``of(config).record(...)``). Everything else happens in hooks.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import time
from html import escape
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol

import pytest

from .. import __version__, gating, redact
from ..bench.result import BenchResult
from ..config import ClusterConfig, InferenceCase
from ..facts import ClusterFacts
from ..failures import first_error_first
from . import history, html, results, terminal

REDACT_PATTERNS = (rf"(?i).*({redact.SECRET_NAME_PATTERN}).*",)
VERSION_PACKAGES = ("pytest", "pytest-html", "sglang-router", "aiohttp", "mooncake-transfer-engine-non-cuda")


@dataclass
class Measured:
    """What the test stored on its item for the makereport hook."""

    result: BenchResult | None
    gate: gating.GateResult | None


measured_key = pytest.StashKey[Measured]()
report_key = pytest.StashKey["RunReport"]()


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


class RunInfo(Protocol):
    """What the report needs to know of the run (the plugin's SuiteRun has it)."""

    cluster_config: ClusterConfig | None
    run_id: str
    run_dir: Path
    router_url: str | None
    perf_tolerance_pct: float | None
    baseline: gating.Baseline | None
    baseline_tolerance_pct: float
    history_dir: Path | None  # earlier runs: --baseline auto picks from them, the report draws their trend


def case_of(item: pytest.Item) -> InferenceCase | None:
    """The inference case a suite test item runs (None for the cluster tests)."""
    callspec = getattr(item, "callspec", None)
    case = callspec.params.get("inference_case") if callspec else None
    return case if isinstance(case, InferenceCase) else None


def model_of(item: pytest.Item) -> str | None:
    """The model a suite test item is about: its inference case's, or the cluster test's model_under_test."""
    case = case_of(item)
    callspec = getattr(item, "callspec", None)
    return case.model.id if case else (callspec.params.get("model_under_test") if callspec else None)


def _why(report: pytest.TestReport) -> str:
    """The one line that says why a test did not pass (a skip's reason, a failure's message)."""
    if isinstance(report.longrepr, tuple):
        return str(report.longrepr[2])
    crash = getattr(report.longrepr, "reprcrash", None)
    text = crash.message if crash is not None else report.longreprtext
    return (text or "").strip().split("\n", 1)[0].removeprefix("Failed: ")


class RunReport:
    """The session's report object: collects one entry per inference test and writes results.json after each."""

    def __init__(self, config: pytest.Config, run: RunInfo):
        self.config = config
        self.run = run
        self.started_at = time.time()
        self.finished_at: float | None = None
        self.entries: dict[str, dict[str, Any]] = {}  # nodeid -> results.json test entry
        self.clusters: dict[str | None, ClusterFacts] = {}  # model id (None: behind --router-url) -> facts
        self.outcomes: dict[str, tuple[str, str]] = {}  # nodeid of every test -> (outcome, why not passed)
        self.completed: dict[str, tuple[int, int]] = {}  # nodeid -> (requests completed, requests) so far
        self.defaulted: list[str] = []  # the report files configure() chose ("junit", "html"), not the user
        self.items: list[pytest.Item] = []  # the collected tests
        self.running: tuple[str, tuple, float] | None = None  # (nodeid, location, monotonic start) of the test running

    # ------------------------------------------------------------------ paths
    @property
    def results_path(self) -> Path:
        """results.json (results.<worker>.json on a pytest-xdist worker)."""
        worker = getattr(self.config, "workerinput", {}).get("workerid")
        return self.run.run_dir / (f"results.{worker}.json" if worker else "results.json")

    @property
    def html_dir(self) -> Path:
        path = getattr(self.config.option, "htmlpath", None)
        return Path(path).resolve().parent if path else self.run.run_dir.resolve()

    @property
    def html_enabled(self) -> bool:
        return bool(getattr(self.config.option, "htmlpath", None)) and self.config.pluginmanager.hasplugin("html")

    # ------------------------------------------------------------------ what the fixtures and the test hand it
    def add_cluster(self, facts: ClusterFacts) -> None:
        """The facts of one model's cluster (newer facts of the same model replace older ones)."""
        self.clusters[facts.model] = facts

    def record(self, item: pytest.Item, result: BenchResult | None, gate: gating.GateResult | None) -> None:
        """Keep a case's measurement and verdicts for the report hooks; each metric and verdict becomes a JUnit property."""
        item.stash[measured_key] = Measured(result, gate)
        if result is not None:
            item.user_properties.append(("tool", html.tool_line(result)))
            for name, value in sorted(result.metrics.items()):
                item.user_properties.append((name, f"{value:.6g}"))
            for name, summary in sorted(result.spread.items()):
                item.user_properties.append((f"spread.{name}", f"mean {summary.mean:.6g} sd {summary.sd:.4g} cv "
                                             f"{summary.cv_pct if summary.cv_pct is None else round(summary.cv_pct, 2)}% "
                                             f"ci95 {summary.ci_low:.6g}..{summary.ci_high:.6g} n {summary.n}"))
        for url, worker in sorted(result.workers.items()) if result is not None else ():
            item.user_properties += dp_properties(url, worker["dp"]) if "dp" in worker else []
        for v in gate.verdicts if gate else ():
            item.user_properties.append((f"verdict.{v.source}.{v.metric}", "pass" if v.passed else f"fail: {v.message}"))
        for c in gate.warnings if gate else ():
            item.user_properties.append((f"warning.baseline.{c.metric}", f"{c.message}, worse than the baseline by "
                                                                         f"more than {self.run.baseline_tolerance_pct:g}%"))

    # ------------------------------------------------------------------ hooks
    def progress(self, item: pytest.Item, done: int, total: int) -> None:
        """The running benchmark's requests completed so far (what an interrupted test's record says)."""
        self.completed[item.nodeid] = (done, total)

    def pytest_runtest_logstart(self, nodeid: str, location: tuple) -> None:
        self.running = (nodeid, location, time.monotonic())

    def pytest_runtest_logfinish(self, nodeid: str, location: tuple) -> None:
        self.running = None

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo) -> None:
        """Ctrl-C or SIGTERM: the test that was running is recorded as interrupted (results.json, and, through a
        report of its call, junit.xml and report.html) before the session finishes and tears the cluster down."""
        if self.running is None or self.running[0] in self.entries:
            return
        nodeid, location, started = self.running
        elapsed = time.monotonic() - started
        why = f"interrupted after {elapsed:.1f} s: {excinfo.typename}: {excinfo.value}".rstrip(": ")
        done, total = self.completed.get(nodeid, (None, None))
        if done is not None:
            why += f" ({done} of {total} requests had completed)"
        report = pytest.TestReport(nodeid, location, {}, "failed", why, "call", duration=elapsed)
        self.config.hook.pytest_runtest_logreport(report=report)
        self.outcomes[nodeid] = ("interrupted", why)
        item = next((i for i in self.items if i.nodeid == nodeid), None)
        case = case_of(item) if item is not None else None
        if case is not None:
            self.entries[nodeid] = results.case_entry(
                case_id=case.id, nodeid=nodeid, model=case.model.id, test=case.test.name, kind=case.test.kind,
                dataset=case.test.dataset, concurrency=case.concurrency, bench_client=case.test.bench_client,
                result=None, gate=None, outcome="interrupted", duration_s=elapsed, message=why)
            self.entries[nodeid].update(num_requests=total, completed_requests=done)
        self.write()

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        self.items = items

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Every test's outcome for the report's verdict (setup and teardown failures are errors)."""
        before = self.outcomes.get(report.nodeid)
        if report.when == "call" or (report.when == "setup" and not report.passed):
            outcome = "error" if report.when == "setup" and report.failed else report.outcome
            self.outcomes[report.nodeid] = (outcome, "" if report.passed else _why(report))
        elif report.when == "teardown" and report.failed and (before is None or before[0] != "failed"):
            self.outcomes[report.nodeid] = ("error", before[1] if before and before[1] else _why(report))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: pytest.CallInfo):
        report = yield
        if self.html_enabled and (report.when == "call" or (report.when == "setup" and not report.passed)):
            self._attach_log_links(report, model_of(item))
        case = case_of(item)
        if case is None:
            return report
        measured = item.stash.get(measured_key, None)
        if report.when == "call" or (report.when == "setup" and not report.passed):
            outcome = report.outcome if report.when == "call" else ("skipped" if report.skipped else "error")
            message = None if report.passed else (report.longreprtext.strip() or None)
            entry = results.case_entry(
                case_id=case.id, nodeid=item.nodeid, model=case.model.id, test=case.test.name, kind=case.test.kind,
                dataset=case.test.dataset, concurrency=case.concurrency, bench_client=case.test.bench_client,
                result=measured.result if measured else None, gate=measured.gate if measured else None,
                outcome=outcome, duration_s=report.duration, message=message)
            self.entries[item.nodeid] = entry
            self.write()
            if self.html_enabled:
                self._attach_html(report, case, measured, message)
        elif report.when == "teardown" and report.failed and item.nodeid in self.entries:
            entry = self.entries[item.nodeid]
            entry["outcome"] = "error"
            entry["message"] = first_error_first(entry.get("message"), report.longreprtext.strip())
            self.write()
        return report

    def _attach_log_links(self, report: pytest.TestReport, model: str | None) -> None:
        """Each role's log in the test's Links column: those collected, and those teardown will collect."""
        from pytest_html import extras

        found = [extras.url(html.href(path, self.html_dir), name=Path(path).name.removesuffix(".log"))
                 for _, path in sorted(self.log_files(model, running=True).items())]
        report.extras = [*getattr(report, "extras", []), *found]

    def _attach_html(self, report: pytest.TestReport, case: InferenceCase, measured: Measured | None,
                     message: str | None) -> None:
        from pytest_html import extras

        content = html.case_html(measured.result if measured else None, measured.gate if measured else None,
                                 message=message if report.when == "setup" else None,
                                 log_files=self.log_files(case.model.id), base_dir=self.html_dir,
                                 simulated=self.simulated)
        report.extras = [*getattr(report, "extras", []), extras.html(content)]

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.finished_at = time.time()
        if self.entries or self.clusters:  # a run of the cluster tests alone has its record too
            self.write()

    def pytest_terminal_summary(self, terminalreporter) -> None:
        """The closing table: every gated metric of every test against its limit, warnings, the run's files."""
        tests = self.tests()
        if not tests or self.config.option.verbose < -1:
            return
        tw = terminalreporter
        tw.write_sep("=", "sglang-pd: measured against the limits")
        for line, failed in terminal.table(tests):
            tw.write_line(line, red=failed, bold=failed)
        tol = self.run.baseline_tolerance_pct
        for line in terminal.warnings(tests, tol):
            tw.write_line(f"WARNING {line}", yellow=True)
        for line in terminal.failing(tests):
            tw.write_line(f"not passed: {line}", red=True)
        if self.run.baseline:
            tw.write_line(f"baseline: run {self.run.baseline.run_id} ({self.run.baseline.source}), tolerance {tol:g}%")
        tw.write_line(f"run folder: {_shown(self.run.run_dir)}")
        for path in (Path(self.config.option.htmlpath) if self.html_enabled else None, self.results_path,
                     Path(self.config.option.xmlpath) if self.config.option.xmlpath else None):
            if path is not None and path.is_file():
                tw.write_line(f"  {path.name}: {_shown(path)}")

    def write_no_files(self) -> None:
        """Nothing was selected: no empty junit.xml or report.html where configure() put them by default."""
        from _pytest.junitxml import xml_key

        xml = self.config.stash.get(xml_key, None)
        if "junit" in self.defaulted and xml is not None:
            self.config.pluginmanager.unregister(xml)
            del self.config.stash[xml_key]
        if "html" in self.defaulted:
            from pytest_html.basereport import BaseReport

            for plugin in self.config.pluginmanager.get_plugins():
                if isinstance(plugin, BaseReport):
                    self.config.pluginmanager.unregister(plugin)
        run_dir = self.run.run_dir
        if run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()

    # ------------------------------------------------------------------ data
    @property
    def simulated(self) -> bool:
        cfg = self.run.cluster_config
        return bool(cfg and cfg.simulated)

    @property
    def time_dilation(self) -> float:
        """How many times slower the simulator's clock ran (1: real time); the figures are rescaled by it."""
        cfg = self.run.cluster_config
        return cfg.time_dilation if cfg else 1.0

    def log_files(self, model_id: str | None = None, *, running: bool = False) -> dict[str, Path]:
        """The logs collected so far of the run's clusters (of one model when given), as ``<model>/<key>`` -> path;
        ``running``: also those of the processes running now, which teardown collects."""
        out = {}
        many = len(self.clusters) > 1
        for model, facts in self.clusters.items():
            if model_id is not None and model != model_id:
                continue
            for key, path in facts.log_files.items():
                if Path(path).is_file() or (running and key in facts.started):
                    out[f"{model}/{key}" if many else key] = Path(path)
        return out

    def tests(self) -> list[dict[str, Any]]:
        """Every inference test's entry; on a pytest-xdist controller, those the workers wrote (results.gw*.json)."""
        if self.entries or not self.config.pluginmanager.hasplugin("dsession"):
            return list(self.entries.values())
        found = []
        for path in sorted(self.run.run_dir.glob("results.gw*.json")):
            try:
                found += json.loads(path.read_text())["tests"]
            except (OSError, ValueError, KeyError):
                continue
        return found

    def problems(self) -> list[tuple[str, list[str], str]]:
        """(tests, what failed, log links) per distinct failure: the failing checks of an inference test, else the
        message; tests that failed alike (every test of a failed bring-up) share one entry."""
        by_case = {e["nodeid"]: e for e in self.tests()}
        merged: dict[tuple[str, ...], tuple[list[str], str]] = {}
        for nodeid, (outcome, why) in self.outcomes.items():
            if outcome not in ("failed", "error", "interrupted"):
                continue
            entry = by_case.get(nodeid)
            checks = [v["message"] for v in entry["verdicts"] if not v["passed"]] if entry else []
            messages = tuple(checks or [f"{outcome}: {why}"])
            model = entry["model"] if entry else None
            logs = html.links(self.log_files(model), self.html_dir) if outcome in ("error", "interrupted") else ""
            name = entry["id"] if entry else nodeid.rsplit("/", 1)[-1]
            names, _ = merged.setdefault(messages, ([], logs))
            names.append(name)
        return [(", ".join(names), list(messages), logs) for messages, (names, logs) in merged.items()]

    def changed_since_baseline(self, provenance: Mapping[str, Any],
                               tests: list[Mapping[str, Any]]) -> tuple[str, list[tuple[str, Any, Any]]] | None:
        """Beside a regression: the baseline run's id and what differs between its provenance and this run's."""
        regressed = any(v["source"] == "baseline" and not v["passed"] for t in tests for v in t["verdicts"])
        baseline = self.run.baseline
        if not regressed or baseline is None:
            return None
        try:
            before = json.loads(Path(baseline.source).read_text()).get("provenance") or {}
        except (OSError, ValueError):
            before = {}
        return baseline.run_id, history.diff(before, provenance)

    def counts(self) -> dict[str, int]:
        found = [outcome for outcome, _ in self.outcomes.values()]
        return {k: found.count(k) for k in ("passed", "failed", "error", "skipped", "interrupted")}

    def provenance(self) -> dict[str, Any]:
        """Where this run's numbers come from; ``key`` (a hash of history.KEY_FIELDS) says which runs compare."""
        cfg = self.run.cluster_config
        found = versions()
        worker_versions: dict[str, str] = {}
        for facts in self.clusters.values():
            worker_versions.update(facts.worker_versions)
        opt = self.config.option
        image_ids = sorted({i for facts in self.clusters.values() for i in facts.image_ids.values()})
        prov = {
            "config_sha256": history.config_sha256(cfg) if cfg else None,
            "image": (f"{cfg.container_image} ({', '.join(image_ids) or 'id not known'})"
                      if cfg and cfg.runtime == "docker" else None),
            "sglang": ", ".join(f"{k} {v}" for k, v in sorted(worker_versions.items())) or None,
            "router": found.get("sglang-router"), "mooncake": found.get("mooncake-transfer-engine-non-cuda"),
            "suite": found["pytest-sglang-pd"],
            "nodes": sorted({*cfg.prefill_nodes, *cfg.decode_nodes, cfg.router_node, cfg.benchmark_node} - {None})
            if cfg else [],  # (a Slurm run whose allocation never came has no nodes)
            "selection": {"args": [Path(a).name for a in self.config.args], "keyword": opt.keyword or None,
                          "markexpr": opt.markexpr or None, "router_url": self.run.router_url,
                          "perf_tolerance_pct": self.run.perf_tolerance_pct},
            "python": found["python"], "config": cfg.source if cfg else None,
        }
        return {**prov, "key": history.key(prov)}

    def data(self) -> dict[str, Any]:
        """The results.json document."""
        cfg = self.run.cluster_config
        startup: dict[str, float] = {}
        worker_versions: dict[str, str] = {}
        kv_pairs: dict[str, float | None] = {}
        many = len(self.clusters) > 1
        for model, facts in self.clusters.items():
            for key, seconds in facts.startup_seconds.items():
                startup[f"{model} {key}" if many else key] = float(seconds)
            for pair, gbps in facts.kv_pairs_gbps.items():
                kv_pairs[f"{model} {pair}" if many else pair] = gbps
            worker_versions = {**facts.worker_versions, **worker_versions}
        router_url = self.run.router_url or next((c.router_url for c in self.clusters.values()), None)
        tests = list(self.entries.values())
        summary = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped", "interrupted")}
        return {
            "schema_version": results.SCHEMA_VERSION,
            "run_id": self.run.run_id,
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at) if self.finished_at else None,
            "simulated": self.simulated,
            "time_dilation": self.time_dilation,
            "cluster": {
                "config": cfg.source if cfg else None,
                "engine": cfg.engine if cfg else None,
                "runtime": cfg.runtime if cfg else None,
                "transport": cfg.transport if cfg else None,
                "image": cfg.container_image if cfg and cfg.runtime == "docker" else None,  # none for processes
                "kv_transfer": cfg.kv_transfer.backend if cfg else None,
                "prefill_nodes": list(cfg.prefill_nodes) if cfg else [],
                "decode_nodes": list(cfg.decode_nodes) if cfg else [],
                "router_node": cfg.router_node if cfg else None,
                "benchmark_node": cfg.benchmark_node if cfg else None,
                "router_url": router_url,
                "router": next((c.router for c in self.clusters.values() if c.router), None),
                "startup_seconds": startup,
                "worker_versions": worker_versions,
                "kv_pairs_gbps": kv_pairs,
                "layout": {str(model): [{**asdict(p), "base_gpu_id": p.base_gpu_id} for p in facts.layout]
                           for model, facts in self.clusters.items() if facts.layout},
            },
            "versions": versions(),
            "tolerance_pct": self.run.perf_tolerance_pct,
            "baseline": self.run.baseline.source if self.run.baseline else None,
            "baseline_tolerance_pct": self.run.baseline_tolerance_pct if self.run.baseline else None,
            "provenance": self.provenance(),
            "summary": summary,
            "tests": tests,
        }

    def write(self) -> None:
        results.write_atomic(self.results_path, self.data())


def dp_properties(url: str, dp: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A DP worker's load over the benchmark as JUnit properties: the worker's figures, then one per rank."""
    step = dp.get("step_imbalance_ratio")
    out = [(f"dp.{url}", f"ranks {len(dp['ranks'])} imbalance_ratio {dp['imbalance_ratio']:.4g} step_imbalance_ratio "
                         f"{'-' if step is None else f'{step:.4g}'} idle_step_fraction {dp['idle_step_fraction']:.4g} "
                         f"mean_sync_wait_ms {dp['mean_sync_wait_ms']:.4g}")]
    out += [(f"dp.{url}.rank{r['rank']}", f"tokens {r['tokens']:.6g} share {r['share']:.4g} idle_step_fraction "
                                          f"{r['idle_step_fraction']:.4g} sync_wait_s {r['sync_wait_s']:.4g}")
            for r in dp["ranks"]]
    return out


def _shown(path: Path) -> str:
    """A path relative to the working directory when it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def versions() -> dict[str, str]:
    out = {"pytest-sglang-pd": __version__, "python": platform.python_version()}
    for name in VERSION_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


class HtmlSummary:
    """pytest-html hooks; registered only when pytest-html is active."""

    def __init__(self, report: RunReport):
        self.report = report

    def pytest_html_results_summary(self, prefix: list, summary: list, postfix: list, session: pytest.Session) -> None:
        r = self.report
        tests = r.tests()
        data = r.data()
        overall = html.overall_html(r.counts(), r.problems(), terminal.warnings(tests, r.run.baseline_tolerance_pct),
                                    r.run.run_id, changed=r.changed_since_baseline(data["provenance"], tests))
        trend = history.trend(history.runs(r.run.history_dir, exclude=r.results_path), data["provenance"]["key"],
                              tests) if r.run.history_dir else {}
        prefix.append(html.summary_html(data, tests, overall=overall, log_files=r.log_files(), base_dir=r.html_dir,
                                        results_json=r.results_path, trend=trend))

    def pytest_html_results_table_html(self, report: pytest.TestReport, data: list) -> None:
        """A skipped test's log says why in words (pytest-html shows its raw (path, line, reason) tuple)."""
        if report.skipped and isinstance(report.longrepr, tuple) and data:
            path, line, reason = report.longrepr
            data[0] = escape(f"{reason}\n  at {path}:{line}\n")

    def pytest_html_report_title(self, report) -> None:
        title = f"SGLang PD validation — {self.report.run.run_id}"
        dilation = self.report.time_dilation
        title = f"{title} (time dilation {dilation:g}x, figures rescaled)" if dilation != 1 else title
        report.title = f"[SIMULATED] {title}" if self.report.simulated else title


def configure(config: pytest.Config, run: RunInfo) -> RunReport:
    """Register the run's report (call from pytest_configure).

    When a cluster config is given (and not --collect-only), the JUnit XML defaults to
    ``<run_dir>/junit.xml`` and, with pytest-html installed, the report to ``<run_dir>/report.html``,
    self-contained. This must run before the junitxml and pytest-html plugins' own pytest_configure
    (``@pytest.hookimpl(tryfirst=True)`` on the caller).
    """
    report = RunReport(config, run)
    config.stash[report_key] = report
    config.pluginmanager.register(report, "sglang_pd_report")
    writes_reports = run.cluster_config is not None and not config.option.collectonly
    if writes_reports and not config.option.xmlpath and not hasattr(config, "workerinput"):
        config.option.xmlpath = str(run.run_dir / "junit.xml")
        report.defaulted.append("junit")
    if config.pluginmanager.hasplugin("html"):
        if writes_reports and not config.option.htmlpath:
            config.option.htmlpath = str(run.run_dir / "report.html")
            config.option.self_contained_html = True
            report.defaulted.append("html")
        for pattern in REDACT_PATTERNS:
            config.addinivalue_line("environment_table_redact_list", pattern)
        config.pluginmanager.register(HtmlSummary(report), "sglang_pd_html")
    return report


def of(config: pytest.Config) -> RunReport:
    """The run's report (configure() must have run)."""
    return config.stash[report_key]
