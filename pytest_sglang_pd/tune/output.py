"""The search's outcome: the best of each mode and their ratio, the table, the HTML report with its Pareto chart,
and the winner as a ready-to-use cluster config."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import AGGREGATED, DISAGGREGATED
from .candidates import Plan
from .derived_configs import winner_config
from .layouts import Layout


WINNER_FILE = "winner.json"
REPORT_FILE = "tune.html"


def brief(figures: dict[str, float]) -> str:
    names = (("output_throughput_per_gpu", "tok/s/GPU"), ("user_output_throughput", "tok/s/user"),
             ("mean_ttft_ms", "ms TTFT"), ("mean_itl_ms", "ms ITL"))
    return ", ".join(f"{figures[n]:.1f} {u}" for n, u in names if n in figures)


def best_of(data: dict, mode: str) -> tuple[str, dict] | None:
    """The measured candidate of ``mode`` with the highest output tok/s per GPU under the SLA."""
    found = [(cid, r) for cid, r in data["candidates"].items()
             if r.get("mode") == mode and r.get("figures", {}).get("output_throughput_per_gpu")]
    return max(found, key=lambda kv: kv[1]["figures"]["output_throughput_per_gpu"], default=None)


def ratio(data: dict) -> float | None:
    """Best disaggregated over best aggregated output tok/s per GPU (both under the SLA)."""
    dis, agg = best_of(data, DISAGGREGATED), best_of(data, AGGREGATED)
    if not dis or not agg:
        return None
    return dis[1]["figures"]["output_throughput_per_gpu"] / agg[1]["figures"]["output_throughput_per_gpu"]


def summary(data: dict) -> str:
    """The best of each mode and their ratio, in one paragraph."""
    lines = []
    for mode in (DISAGGREGATED, AGGREGATED):
        best = best_of(data, mode)
        lines.append(f"best {mode}: " + (f"{best[0]} at concurrency {best[1]['concurrency']}: "
                                         f"{brief(best[1]['figures'])}" if best else "none met the SLA"))
    r = ratio(data)
    if r is not None:
        lines.append(f"disaggregated / aggregated, output tok/s per GPU under the SLA: {r:.2f}x")
    return "\n".join(lines)


def table_rows(data: dict) -> list[list[str]]:
    """Per candidate: mode, GPUs, predicted and measured concurrency, tok/s/GPU, tok/s/user, TTFT, ITL."""
    def num(figs: dict, name: str) -> str:
        return f"{figs[name]:.1f}" if name in figs else "-"

    rows = []
    for e in data.get("predictions", []):
        m = data["candidates"].get(e["id"], {})
        p, f = e.get("predicted", {}), m.get("figures", {})
        rows.append([e["id"], e["mode"], str(e["gpus"]), str(e.get("concurrency") or "-"),
                     num(p, "output_throughput_per_gpu"), num(p, "user_output_throughput"),
                     str(m.get("concurrency") or "-") if m else "not deployed",
                     num(f, "output_throughput_per_gpu"), num(f, "user_output_throughput"), num(f, "mean_ttft_ms"),
                     num(f, "mean_itl_ms"), m.get("error") or e.get("why", "")])
    return rows


TABLE_HEADER = ["layout", "mode", "GPUs", "predicted c", "predicted tok/s/GPU", "predicted tok/s/user", "measured c",
                "tok/s/GPU", "tok/s/user", "TTFT ms", "ITL ms", "note"]


def report_html(plan: Plan, data: dict, simulated: bool) -> str:
    """The search as one HTML page: the summary, the Pareto chart of every measured point, the table, exclusions."""
    from html import escape

    from ..report import charts

    series = {cid: [(p["figures"]["user_output_throughput"], p["figures"]["output_throughput_per_gpu"])
                    for p in r["points"].values() if "user_output_throughput" in p["figures"]]
              for cid, r in data["candidates"].items() if r.get("points")}
    floor = max((c.limit for c in plan.sla if c.metric == "user_output_throughput" and c.op == ">="), default=None)
    chart = charts.pareto(series, "output tok/s per GPU against tok/s per user", "tok/s/user (output tokens / "
                          "request latency)", "output tok/s/GPU", x_floor=floor)
    head = "".join(f"<th>{escape(h)}</th>" for h in TABLE_HEADER)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in table_rows(data))
    excluded = "".join(f"<li>{escape(e.what)}: {escape(e.why)}</li>" for e in plan.excluded)
    banner = "<p><b>SIMULATED: every figure comes from the simulator's performance model.</b></p>" if simulated else ""
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>sglang-pd tune {escape(plan.model)}</title>"
            "<style>table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:3px 8px}"
            "th{background:#f0f0f0}</style></head><body>"
            f"<h2>sglang-pd tune: {escape(plan.model)}, ISL {plan.work.isl}, OSL {plan.work.osl}, SLA "
            f"{escape(', '.join(map(str, plan.sla)))}</h2>{banner}<pre>{escape(summary(data))}</pre>{chart}"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            f"<h3>Excluded layouts</h3><ul>{excluded}</ul></body></html>")


def finish(plan: Plan, data: dict, raw: dict, results_dir: Path, *, prompts_per_user: int, simulated: bool) -> Path | None:
    """The report, and the winner (the best measured under the SLA, any mode) as a cluster config; its path."""
    (results_dir / REPORT_FILE).write_text(report_html(plan, data, simulated))
    winners = [b for b in (best_of(data, DISAGGREGATED), best_of(data, AGGREGATED)) if b]
    if not winners:
        return None
    _, best = max(winners, key=lambda kv: kv[1]["figures"]["output_throughput_per_gpu"])
    c = best["concurrency"]
    path = results_dir / WINNER_FILE
    path.write_text(json.dumps(winner_config(raw, plan.model, Layout.from_dict(best["layout"]), plan.work, plan.sla,
                                             c, max(8, prompts_per_user * c)), indent=2) + "\n")
    return path
