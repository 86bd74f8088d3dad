"""HTML fragments for pytest-html: the run summary (verdict first) and per test its checks, charts and log links."""

from __future__ import annotations

import os
from dataclasses import asdict
from html import escape
from pathlib import Path
from typing import Any, Iterable, Mapping

from ..bench.result import BenchResult
from ..gating import GateResult
from ..stats import Summary
from . import charts, fmt
from .checks import header, rows, verdict_value

STYLE = """<style>
body{display:flex;flex-direction:column}
#environment-header,#environment{order:1}
.sglang-pd table{border-collapse:collapse;margin:6px 0 10px 0;font-size:12px;color:#222}
.sglang-pd h3{color:#222;margin:12px 0 4px 0}
.sglang-pd th,.sglang-pd td{border:1px solid #ccc;padding:3px 8px;text-align:left}
.sglang-pd th{background:#f0f0f0}
.sglang-pd td.num{text-align:right;font-family:monospace}
.sglang-pd tr.pass td{background:#e6f4ea}.sglang-pd tr.fail td{background:#fde8e8}
.sglang-pd .verdict-pass{color:#137333;font-weight:bold}.sglang-pd .verdict-fail{color:#c5221f;font-weight:bold}
.sglang-pd .banner{background:#fff4ce;border:2px solid #e0a800;color:#5c4400;padding:6px 12px;margin:6px 0;
 font-weight:bold;font-size:13px}
.sglang-pd .overall{padding:10px 14px;margin:4px 0 8px 0;font-size:18px;font-weight:bold;color:#fff}
.sglang-pd .overall.pass{background:#137333}.sglang-pd .overall.fail{background:#c5221f}
.sglang-pd .overall .counts{font-size:14px;font-weight:normal;margin-left:12px}
.sglang-pd ul.failing{margin:4px 0 10px 0;padding-left:20px;font-size:13px;color:#c5221f}
.sglang-pd ul.failing code{color:#222}
.sglang-pd ul.warnings{margin:4px 0 10px 0;padding-left:20px;font-size:13px;color:#8a5a00}
.sglang-pd details.warnings>summary{font-size:13px;color:#8a5a00;cursor:pointer;margin:4px 0}
.sglang-pd .charts{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
.sglang-pd pre{white-space:pre-wrap;background:#f7f7f7;padding:6px;font-size:11px}
.sglang-pd .bar{display:inline-block;height:9px;background:#4c78a8;vertical-align:middle;margin-right:6px}
</style>"""
SIMULATED_BANNER = ("SIMULATED: engine \"sim\" — every number below comes from the simulated worker's performance "
                    "model, not from GPUs. Do not compare with hardware results.")
WARNINGS_SHOWN = 5
KEY_METRICS = ("completed", "failed", "duration", "request_throughput", "input_throughput", "output_throughput",
               "total_throughput", "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "median_tpot_ms",
               "p99_tpot_ms", "mean_itl_ms", "p99_itl_ms", "mean_e2e_latency_ms", "p99_e2e_latency_ms",
               "cache_hit_rate", "accuracy", "invalid", "latency", "output_throughput_per_decode_gpu",
               "input_throughput_per_prefill_gpu", "total_throughput_per_gpu", "interactivity",
               "user_output_throughput", "goodput", "goodput_output_throughput", "slo_attainment")


def _first_line(text: str | None) -> str:
    return (text or "").strip().split("\n", 1)[0]


def _table(header: Iterable[str] | None, rows_: Iterable[tuple[str, Iterable[str]]], cls: str = "") -> str:
    """rows: (css class of the row, cells already escaped); no header row for a key/value table."""
    head = "<thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr></thead>" if header else ""
    body = "".join(f'<tr class="{c}">' + "".join(cells) + "</tr>" for c, cells in rows_)
    return f'<table class="{cls}">{head}<tbody>{body}</tbody></table>'


def _cell(text: str, num: bool = False) -> str:
    return f'<td class="num">{escape(text)}</td>' if num else f"<td>{escape(text)}</td>"


def _verdict(passed: bool, text: str | None = None) -> str:
    return (f'<td class="verdict-pass">{escape(text or "PASS")}</td>' if passed
            else f'<td class="verdict-fail">{escape(text or "FAIL")}</td>')


def verdict_table(gate: GateResult, spread: Mapping[str, Summary] | None = None) -> str:
    """Every verdict; with repeats, a gated mean with its 95% confidence interval."""
    rows_ = []
    spread = spread or {}
    for v in gate.verdicts:
        bound = "≤" if v.direction == "max" else "≥"
        source = {"threshold": "expected", "baseline": "baseline", "requests": "allowed", "pd": "PD path",
                  "stability": "max_cv_pct", "lengths": "asked"}[v.source]
        shown = asdict(v)
        measured = verdict_value(shown, v.actual)
        if v.source == "threshold" and v.canonical in spread:
            s = spread[v.canonical]
            measured += f" (95% CI {verdict_value(shown, s.ci_low)}..{verdict_value(shown, s.ci_high)}, n={s.n})"
        rows_.append(("pass" if v.passed else "fail", [
            _cell(v.metric if v.metric == v.canonical else f"{v.metric} ({v.canonical})"),
            _cell(measured, True), _cell(f"{bound} {verdict_value(shown, v.limit)}", True),
            _cell(f"{source} {verdict_value(shown, v.expected)}", True), _cell(f"{v.tolerance_pct:g}%", True),
            _verdict(v.passed, "PASS (within noise)" if v.passed and v.within_noise else None)]))
    return _table(("metric", "measured", "limit", "reference", "tolerance", "verdict"), rows_, "checks")


def metrics_table(result: BenchResult, gated: set[str]) -> str:
    shown = [m for m in KEY_METRICS if m in result.metrics and m not in gated]
    body = [("", [_cell(m), _cell(fmt.value(m, result.metrics[m]), True)]) for m in shown]
    rest = sorted(set(result.metrics) - set(shown) - gated)
    more = ""
    if rest:
        extra = [("", [_cell(m), _cell(fmt.value(m, result.metrics[m]), True)]) for m in rest]
        more = f"<details><summary>all {len(rest)} other metrics</summary>{_table(('metric', 'value'), extra)}</details>"
    return _table(("other measured metric", "value"), body) + more


def href(path: str | Path, base_dir: Path) -> str:
    """A link relative to the report's folder (the run folder travels as one piece)."""
    try:
        return os.path.relpath(Path(path), base_dir)
    except ValueError:
        return Path(path).as_uri()


def links(files: Mapping[str, str | Path], base_dir: Path) -> str:
    """Links to the files of ``files`` that exist, by name."""
    return " · ".join(f'<a href="{escape(href(path, base_dir))}">{escape(name)}</a>'
                      for name, path in sorted(files.items()) if Path(path).is_file())


def tool_line(result: BenchResult) -> str:
    """``sglang.benchmark.serving (sglang 0.5.23) through router smg 1.13.0``: what measured a test, and the router."""
    package = "pytest-sglang-pd" if result.tool == "builtin" else "sglang"
    through = f" through router {result.router}" if result.router else ""
    return f"{result.tool} ({package} {result.tool_version or 'version unknown'}){through}"


def deployment_line(deployment: Mapping[str, Any]) -> str:
    """E.g. ``aggregated, 4 GPUs (aggregated 4)`` or ``disaggregated, 16 GPUs (prefill 8, decode 8)``."""
    gpus = dict(deployment.get("gpus", {}))
    total = gpus.pop("total", 0)
    return (f"{deployment.get('mode')}, {total} GPUs ("
            + ", ".join(f"{role} {n}" for role, n in gpus.items() if n) + ")")


def case_html(result: BenchResult | None, gate: GateResult | None, *, message: str | None,
              log_files: Mapping[str, Path], base_dir: Path, simulated: bool) -> str:
    """A test's extra: verdicts, measured metrics, TTFT/TPOT histograms, the command, errors and links."""
    parts = ['<div class="sglang-pd">']
    if simulated:
        parts.append('<div class="banner" style="font-size:12px;padding:3px 8px">SIMULATED</div>')
    if message:
        parts.append(f"<pre>{escape(message)}</pre>")
    logs = links(log_files, base_dir)
    if logs:
        parts.append(f"<p><b>logs</b>: {logs}</p>")
    if gate is not None:
        parts.append(verdict_table(gate, result.spread if result else None))
    if result is not None:
        row = [f"<div>{metrics_table(result, {v.canonical for v in gate.verdicts} if gate else set())}</div>"]
        ttft, tpot = result.distribution_ms("ttft"), result.distribution_ms("tpot")
        if ttft or tpot:
            row += [charts.histogram(ttft, "TTFT distribution"), charts.histogram(tpot, "TPOT distribution")]
        parts.append('<div class="charts">' + "".join(row) + "</div>")
        parts += [dp_load_html(url, w) for url, w in sorted(result.workers.items()) if "dp" in w]
        parts.append(f"<p><b>measured by</b> {escape(tool_line(result))}</p>")
        if result.deployment:
            parts.append(f"<p><b>deployment</b> {escape(deployment_line(result.deployment))}</p>")
        parts.append(f"<p><b>command</b></p><pre>{escape(result.command)}</pre>")
        if result.errors:
            parts.append(f"<p><b>errors</b></p><pre>{escape(chr(10).join(result.errors))}</pre>")
        artifacts = links(result.artifacts, base_dir)
        if artifacts:
            parts.append(f"<p><b>artifacts</b>: {artifacts}</p>")
    parts.append("</div>")
    return "".join(parts)


def _gpus(gpus: list[int]) -> str:
    return "-" if not gpus else f"{gpus[0]}-{gpus[-1]}" if len(gpus) > 1 else str(gpus[0])


def layout_html(layout: Mapping[str, list[Mapping[str, Any]]]) -> str:
    """Per model deployment, its worker processes: role, instance, node, TP, DP, GPUs, NICs, ports."""
    parts = []
    head = ("role", "instance", "node", "TP", "DP", "base GPU", "GPUs", "NICs", "port", "bootstrap port")
    for model, procs in layout.items():
        body = []
        for p in procs:
            dp = f"attention DP {p['dp_size']}" if p["dp_attention"] else f"{p['dp_size']} replicas" if p["dp_size"] > 1 else "-"
            nodes = f" (node {p['node_rank'] + 1} of {p['nnodes']})" if p["nnodes"] > 1 else ""
            body.append(("", [_cell(p["role"]), _cell(f"{p['role']}_{p['instance']}"), _cell(p["node"] + nodes),
                              _cell(str(p["tp_size"]), True), _cell(dp), _cell(str(p["base_gpu_id"]), True),
                              _cell(_gpus(p["gpus"])), _cell(", ".join(p["nics"]) or "-"),
                              _cell(str(p["port"] or "-"), True), _cell(str(p["bootstrap_port"] or "-"), True)]))
        parts.append(f"<p><b>{escape(str(model))}</b></p>" + _table(head, body, "layout"))
    return "".join(parts)


def dp_load_html(url: str, worker: Mapping[str, Any]) -> str:
    """One DP worker's load per rank over the benchmark: tokens scheduled with their share as a bar, idle steps,
    sync wait; above it the worker's imbalance."""
    dp = worker["dp"]
    top = max(r["share"] for r in dp["ranks"]) or 1.0
    body = [("", [_cell(str(r["rank"]), True), _cell(fmt.plain(r["tokens"]), True),
                  f'<td><span class="bar" style="width:{r["share"] / top * 120:.0f}px"></span>{r["share"] * 100:.1f}%</td>',
                  _cell(f"{r['idle_step_fraction'] * 100:.1f}%", True), _cell(f"{r['sync_wait_s'] * 1000:.2f}", True)])
            for r in dp["ranks"]]
    step = dp.get("step_imbalance_ratio")
    title = (f"DP load of {worker.get('role', 'worker')} {url}: {len(dp['ranks'])} ranks, imbalance "
             f"{dp['imbalance_ratio']:.2f} (busiest rank / mean)" + (f", per step {step:.2f}" if step else "")
             + f", idle steps {dp['idle_step_fraction'] * 100:.1f}%, mean sync wait per step {dp['mean_sync_wait_ms']:.3g} ms")
    return (f"<p><b>{escape(title)}</b></p>"
            + _table(("DP rank", "tokens scheduled", "share", "idle steps", "sync wait, total (ms)"), body, "dp-load"))


def overall_html(counts: Mapping[str, int], problems: list[tuple[str, list[str], str]], warnings: list[str],
                 run_id: str, changed: tuple[str, list[tuple[str, Any, Any]]] | None = None) -> str:
    """The verdict first: PASS or FAIL with the counts, then every failing check (test, messages, log links), what
    changed since the baseline run when a check regressed against it, and the baseline warnings."""
    failed = bool(problems) or any(counts.get(k, 0) for k in ("failed", "error", "interrupted"))
    shown = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    parts = [f'<div class="overall {"fail" if failed else "pass"}" id="sglang-pd-verdict">{"FAIL" if failed else "PASS"}'
             f'<span class="counts">{escape(shown or "no tests ran")} · run {escape(run_id)}</span></div>']
    if problems:
        items = []
        for test_id, messages, logs in problems:
            lines = "<br>".join(f"<code>{escape(m)}</code>" for m in messages)
            items.append(f"<li><b>{escape(test_id)}</b>: {lines}" + (f"<br>logs: {logs}" if logs else "") + "</li>")
        parts.append('<ul class="failing" id="sglang-pd-failing">' + "".join(items) + "</ul>")
    if changed is not None:
        run, fields = changed
        rows_ = [("", [_cell(f), _cell(_shown(a)), _cell(_shown(b))]) for f, a, b in fields]
        parts.append(f'<div id="sglang-pd-provenance"><b>changed since the baseline run {escape(run)}</b>: '
                     + (_table(("provenance", "baseline run", "this run"), rows_) if rows_ else
                        "nothing in the provenance (same config, image, versions, nodes and selection)") + "</div>")
    if warnings:  # a few shown, more one click away: they must not push the checks off the first screen
        items = "".join(f"<li>warning: {escape(w)}</li>" for w in warnings)
        shown_ = "open" if len(warnings) <= WARNINGS_SHOWN else ""
        parts.append(f'<details class="warnings" {shown_}><summary>{len(warnings)} warning(s): ungated metrics worse '
                     f'than the baseline beyond its tolerance</summary><ul class="warnings">{items}</ul></details>')
    return "".join(parts)


def _shown(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={v}" for k, v in value.items() if v not in (None, [], ""))
    return "-" if value is None else str(value)


def trend_html(trend: Mapping[tuple[str, str], list[tuple[str, float]]]) -> str:
    """Each gated metric over the earlier runs of the same provenance key, oldest first, then this run."""
    body = []
    for (test_id, metric), points in trend.items():
        if not points:
            continue
        values = " → ".join(fmt.value(metric, v, unit=False) for _, v in points[-8:])
        body.append(("", [_cell(test_id), _cell(metric), f"<td>{charts.sparkline([v for _, v in points])}</td>",
                          _cell(values, True), _cell(str(len(points)), True)]))
    return _table(("test", "metric", "trend", "last values (oldest first, this run last)", "runs"), body, "trend")


def checks_html(tests: list[Mapping[str, Any]]) -> str:
    """Every check of every inference test with its limit, margin and baseline change (nothing to expand)."""
    head = header(tests)
    body = []
    for t in tests:
        for (_, metric, value, limit, margin, verdict, change), failed in rows(t):
            cells = [_cell(t["id"]), _cell(metric), _cell(value, True), _cell(limit, True), _cell(margin, True),
                     _verdict(not failed, verdict), _cell(change, True)]
            body.append(("fail" if failed else "pass", cells[:len(head)]))
    return _table(head, body, "checks")


def summary_html(run: Mapping[str, Any], tests: list[Mapping[str, Any]], *, overall: str, log_files: Mapping[str, Path],
                 base_dir: Path, results_json: Path,
                 trend: Mapping[tuple[str, str], list[tuple[str, float]]] | None = None) -> str:
    """The run summary: verdict, SIMULATED banner, every check, sweeps, topology, versions, files."""
    c = run["cluster"]
    parts = [STYLE, '<div class="sglang-pd">', overall]
    if run["simulated"]:
        parts.append(f'<div class="banner">{escape(SIMULATED_BANNER)}</div>')
    if tests:
        parts.append("<h3>Checks</h3>" + checks_html(tests))
    if trend:
        parts.append(f"<h3>Trend (runs of provenance key {escape(run['provenance']['key'])})</h3>" + trend_html(trend))
    sweeps = sweep_charts(tests)
    if sweeps:
        parts.append('<h3>Concurrency sweeps</h3><div class="charts">' + "".join(sweeps) + "</div>")
    files = links({"results.json": results_json, **log_files}, base_dir)
    if files:
        parts.append(f"<p><b>files</b>: {files}</p>")
    tolerance = "per test" if run["tolerance_pct"] is None else f"{run['tolerance_pct']:g}% (--perf-tolerance)"
    baseline = run["baseline"] or "none"
    if run.get("baseline_tolerance_pct") is not None:
        baseline += f" (tolerance {run['baseline_tolerance_pct']:g}%)"
    topo = [
        ("config", c.get("config")), ("engine", c.get("engine")), ("runtime", c.get("runtime")),
        ("transport", c.get("transport")), ("image", c.get("image")), ("KV transfer", c.get("kv_transfer")),
        ("prefill nodes", ", ".join(c.get("prefill_nodes", []))), ("decode nodes", ", ".join(c.get("decode_nodes", []))),
        ("router", " ".join(filter(None, (c.get("router_url") or c.get("router_node"), c.get("router") and f"({c['router']})")))),
        ("benchmark node", c.get("benchmark_node")),
        ("startup", ", ".join(f"{k} {v:.1f} s" for k, v in c.get("startup_seconds", {}).items())),
        ("KV transfer GB/s", ", ".join(f"{k} {'-' if v is None else f'{v:g}'}" for k, v in c.get("kv_pairs_gbps", {}).items())),
        ("run id", run["run_id"]), ("tolerance", tolerance), ("baseline", baseline),
    ]
    if c.get("runtime") != "docker":
        topo = [(k, v) for k, v in topo if k != "image"]  # plain processes run no image
    versions = {**run["versions"], **{f"worker {k}": v for k, v in c.get("worker_versions", {}).items()}}
    parts.append("<h3>Cluster</h3>" + _table(None, [("", [_cell(k), _cell(str(v or "-"))]) for k, v in topo]))
    if c.get("layout"):
        parts.append("<h3>Layout</h3>" + layout_html(c["layout"]))
    parts.append("<h3>Versions</h3>" + _table(("component", "version"), [("", [_cell(k), _cell(v)]) for k, v in versions.items()]))
    parts.append("</div>")
    return "".join(parts)


def sweep_charts(tests: list[Mapping[str, Any]]) -> list[str]:
    """One throughput-vs-latency chart per (model, test) measured at two or more concurrencies."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for t in tests:
        if t["metrics"]:
            groups.setdefault((t["model"], t["test"]), []).append(t)
    out = []
    for (model, test), cases in groups.items():
        if len({c["concurrency"] for c in cases}) < 2:
            continue
        for latency, label in (("mean_tpot_ms", "mean TPOT (ms)"), ("mean_ttft_ms", "mean TTFT (ms)")):
            points = [(c["concurrency"], c["metrics"].get(latency), c["metrics"].get("output_throughput"))
                      for c in cases]
            points = [(k, float(x), float(y)) for k, x, y in points if x is not None and y is not None]
            out.append(charts.sweep(points, f"{model}-{test}: throughput vs {label.split(' (')[0]}",
                                    label, "output tok/s"))
    return out
