"""HTML fragments for pytest-html: the run summary and per test a metrics table, charts and log links."""

from __future__ import annotations

import os
from html import escape
from pathlib import Path
from typing import Any, Iterable, Mapping

from .. import metrics as metrics_mod
from ..bench.result import BenchResult
from ..gating import GateResult
from . import charts

STYLE = """<style>
.sglang-pd table{border-collapse:collapse;margin:6px 0 10px 0;font-size:12px;color:#222}
.sglang-pd h3{color:#222;margin:12px 0 4px 0}
.sglang-pd th,.sglang-pd td{border:1px solid #ccc;padding:3px 8px;text-align:left}
.sglang-pd th{background:#f0f0f0}
.sglang-pd td.num{text-align:right;font-family:monospace}
.sglang-pd tr.pass td{background:#e6f4ea}.sglang-pd tr.fail td{background:#fde8e8}
.sglang-pd .verdict-pass{color:#137333;font-weight:bold}.sglang-pd .verdict-fail{color:#c5221f;font-weight:bold}
.sglang-pd .banner{background:#fff4ce;border:2px solid #e0a800;color:#5c4400;padding:8px 12px;margin:8px 0;
 font-weight:bold;font-size:14px}
.sglang-pd .charts{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
.sglang-pd pre{white-space:pre-wrap;background:#f7f7f7;padding:6px;font-size:11px}
</style>"""
SIMULATED_BANNER = ("SIMULATED: engine \"sim\" — every number below comes from the simulated worker's performance "
                    "model, not from GPUs. Do not compare with hardware results.")
KEY_METRICS = ("completed", "failed", "duration", "request_throughput", "input_throughput", "output_throughput",
               "total_throughput", "mean_ttft_ms", "median_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "median_tpot_ms",
               "p99_tpot_ms", "mean_itl_ms", "p99_itl_ms", "mean_e2e_latency_ms", "p99_e2e_latency_ms",
               "cache_hit_rate", "accuracy", "invalid", "latency")


def number(x: float | None) -> str:
    if x is None or x != x:
        return "-"
    if float(x).is_integer() and abs(x) < 1e6:
        return f"{int(x):,}"
    if abs(x) >= 1000:
        return f"{x:,.1f}"
    if abs(x) >= 10:
        return f"{x:.2f}"
    return f"{x:.4g}"


def _first_line(text: str | None) -> str:
    return (text or "").strip().split("\n", 1)[0]


def _table(header: Iterable[str] | None, rows: Iterable[tuple[str, Iterable[str]]]) -> str:
    """rows: (css class of the row, cells already escaped); no header row for a key/value table."""
    head = "<thead><tr>" + "".join(f"<th>{escape(h)}</th>" for h in header) + "</tr></thead>" if header else ""
    body = "".join(f'<tr class="{cls}">' + "".join(cells) + "</tr>" for cls, cells in rows)
    return f"<table>{head}<tbody>{body}</tbody></table>"


def _cell(text: str, num: bool = False) -> str:
    return f'<td class="num">{escape(text)}</td>' if num else f"<td>{escape(text)}</td>"


def verdict_table(gate: GateResult) -> str:
    rows = []
    for v in gate.verdicts:
        unit = metrics_mod.METRICS[v.canonical].unit if v.canonical in metrics_mod.METRICS else ""
        bound = "≤" if v.direction == "max" else "≥"
        verdict = '<td class="verdict-pass">PASS</td>' if v.passed else '<td class="verdict-fail">FAIL</td>'
        source = {"threshold": "expected", "baseline": "baseline", "requests": "allowed"}[v.source]
        rows.append(("pass" if v.passed else "fail", [
            _cell(v.metric if v.metric == v.canonical else f"{v.metric} ({v.canonical})"),
            _cell(number(v.actual), True), _cell(f"{bound} {number(v.limit)}", True),
            _cell(f"{source} {number(v.expected)}", True), _cell(f"{v.tolerance_pct:g}%", True),
            _cell(unit), verdict]))
    return _table(("metric", "measured", "limit", "reference", "tolerance", "unit", "verdict"), rows)


def metrics_table(result: BenchResult, gated: set[str]) -> str:
    shown = [m for m in KEY_METRICS if m in result.metrics and m not in gated]
    rows = [("", [_cell(m), _cell(number(result.metrics[m]), True), _cell(metrics_mod.METRICS[m].unit)]) for m in shown]
    rest = sorted(set(result.metrics) - set(shown) - gated)
    more = ""
    if rest:
        extra = [("", [_cell(m), _cell(number(result.metrics[m]), True),
                       _cell(metrics_mod.METRICS[m].unit if m in metrics_mod.METRICS else "")]) for m in rest]
        more = f"<details><summary>all {len(rest)} other metrics</summary>{_table(('metric', 'value', 'unit'), extra)}</details>"
    return _table(("other measured metric", "value", "unit"), rows) + more


def links(files: Mapping[str, str | Path], base_dir: Path) -> str:
    """Links relative to the report's folder (the run folder travels as one piece)."""
    items = []
    for name, path in sorted(files.items()):
        try:
            href = os.path.relpath(Path(path), base_dir)
        except ValueError:
            href = Path(path).as_uri()
        items.append(f'<a href="{escape(href)}">{escape(name)}</a>')
    return " · ".join(items)


def tool_line(result: BenchResult) -> str:
    """``sglang.benchmark.serving (sglang 0.5.23) through router smg 1.13.0``: what measured a test, and the router."""
    package = "pytest-sglang-pd" if result.tool == "builtin" else "sglang"
    through = f" through router {result.router}" if result.router else ""
    return f"{result.tool} ({package} {result.tool_version or 'version unknown'}){through}"


def case_html(result: BenchResult | None, gate: GateResult | None, *, message: str | None,
              log_files: Mapping[str, Path], base_dir: Path, simulated: bool) -> str:
    """A test's extra: verdicts, measured metrics, TTFT/TPOT histograms, the command, errors and links."""
    parts = ['<div class="sglang-pd">']
    if simulated:
        parts.append('<div class="banner" style="font-size:12px;padding:3px 8px">SIMULATED</div>')
    if message:
        parts.append(f"<pre>{escape(message)}</pre>")
    if gate is not None:
        parts.append(verdict_table(gate))
    if result is not None:
        row = [f"<div>{metrics_table(result, {v.canonical for v in gate.verdicts} if gate else set())}</div>"]
        ttft, tpot = result.distribution_ms("ttft"), result.distribution_ms("tpot")
        if ttft or tpot:
            row += [charts.histogram(ttft, "TTFT distribution"), charts.histogram(tpot, "TPOT distribution")]
        parts.append('<div class="charts">' + "".join(row) + "</div>")
        parts.append(f"<p><b>measured by</b> {escape(tool_line(result))}</p>")
        parts.append(f"<p><b>command</b></p><pre>{escape(result.command)}</pre>")
        if result.errors:
            parts.append(f"<p><b>errors</b></p><pre>{escape(chr(10).join(result.errors))}</pre>")
        if result.artifacts:
            parts.append(f"<p><b>artifacts</b>: {links(result.artifacts, base_dir)}</p>")
    if log_files:
        parts.append(f"<p><b>logs</b>: {links(log_files, base_dir)}</p>")
    parts.append("</div>")
    return "".join(parts)


def summary_html(run: Mapping[str, Any], tests: list[Mapping[str, Any]], *, log_files: Mapping[str, Path],
                 base_dir: Path, results_json: Path) -> str:
    """The run summary: SIMULATED banner, topology, versions, one row per test, sweep charts, links."""
    c = run["cluster"]
    parts = [STYLE, '<div class="sglang-pd">']
    if run["simulated"]:
        parts.append(f'<div class="banner">{escape(SIMULATED_BANNER)}</div>')
    topo = [
        ("config", c.get("config")), ("engine", c.get("engine")), ("runtime", c.get("runtime")),
        ("transport", c.get("transport")), ("image", c.get("image")), ("KV transfer", c.get("kv_transfer")),
        ("prefill nodes", ", ".join(c.get("prefill_nodes", []))), ("decode nodes", ", ".join(c.get("decode_nodes", []))),
        ("router", " ".join(filter(None, (c.get("router_url") or c.get("router_node"), c.get("router") and f"({c['router']})")))),
        ("benchmark node", c.get("benchmark_node")),
        ("startup", ", ".join(f"{k} {v:.1f} s" for k, v in c.get("startup_seconds", {}).items())),
        ("run id", run["run_id"]),
        ("tolerance", "per test" if run["tolerance_pct"] is None else f"{run['tolerance_pct']:g}% (--perf-tolerance)"),
        ("baseline", run["baseline"] or "none"),
    ]
    versions = {**run["versions"], **{f"worker {k}": v for k, v in c.get("worker_versions", {}).items()}}
    parts.append("<h3>Cluster</h3>" + _table(None, [("", [_cell(k), _cell(str(v or "-"))]) for k, v in topo]))
    parts.append("<h3>Versions</h3>" + _table(("component", "version"), [("", [_cell(k), _cell(v)]) for k, v in versions.items()]))
    rows = []
    for t in tests:
        m = t["metrics"]
        failing = [v["message"] for v in t["verdicts"] if not v["passed"]]
        ok = t["outcome"] == "passed"
        rows.append(("pass" if ok else "fail", [
            _cell(t["id"]), _cell(t["outcome"].upper()), _cell(number(m.get("output_throughput")), True),
            _cell(number(m.get("mean_ttft_ms")), True), _cell(number(m.get("mean_tpot_ms")), True),
            _cell(number(m.get("accuracy")), True), _cell(number(m.get("cache_hit_rate")), True),
            _cell("; ".join(failing) or _first_line(t.get("message")))]))
    parts.append("<h3>Inference tests</h3>" + _table(
        ("test", "outcome", "output tok/s", "mean TTFT ms", "mean TPOT ms", "accuracy", "cache hit rate", "why"), rows))
    sweeps = sweep_charts(tests)
    if sweeps:
        parts.append('<h3>Concurrency sweeps</h3><div class="charts">' + "".join(sweeps) + "</div>")
    files = {"results.json": results_json, **log_files}
    parts.append(f"<p><b>files</b>: {links(files, base_dir)}</p></div>")
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
