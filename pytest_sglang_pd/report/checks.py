"""The checks of one test as rows (test, metric, value, limit, margin, verdict, vs baseline): what the terminal's
closing table and the report's summary both show."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from . import fmt

HEADER = ("test", "metric", "value", "limit", "margin", "verdict", "vs baseline")


def header(tests: Iterable[Mapping[str, Any]]) -> tuple[str, ...]:
    """The columns: without "vs baseline" when no test was compared with one."""
    return HEADER if any(t.get("baseline_changes") for t in tests) else HEADER[:-1]


def margin_pct(v: Mapping[str, Any]) -> float | None:
    """How far the value stands inside its limit, in percent of the limit (negative: beyond it)."""
    actual, limit = v["actual"], v["limit"]
    if actual is None or not limit:
        return None
    room = limit - actual if v["direction"] == "max" else actual - limit
    return room / abs(limit) * 100


def verdict_value(v: Mapping[str, Any], x: float | None) -> str:
    """A verdict's number: the metric's unit, or a percentage for a stability (CV) verdict."""
    return f"{x:.1f}%" if v["source"] == "stability" and x is not None else fmt.value(v["canonical"], x)


def _limit(v: Mapping[str, Any]) -> str:
    if v["source"] == "lengths":  # two-sided: the asked mean, within the allowance
        return f"~ {verdict_value(v, v['limit'])} ±{v['tolerance_pct']:.3g}%"
    return ("<= " if v["direction"] == "max" else ">= ") + verdict_value(v, v["limit"])


def label(v: Mapping[str, Any]) -> str:
    """How a verdict's metric is named in the tables."""
    return {"requests": "failed requests", "stability": f"{v['metric']} CV",
            "lengths": f"{v['metric']} (mean)"}.get(v["source"], v["metric"])


def rows(test: Mapping[str, Any]) -> list[tuple[tuple[str, ...], bool]]:
    """(cells, failed) per gated metric of one test; one row with the outcome and why when nothing was gated."""
    name = test["id"][len(test["model"]) + 1:] if test["id"].startswith(test["model"] + "-") else test["id"]
    changes = {c["metric"]: c for c in test.get("baseline_changes", [])}
    baseline = {v["canonical"]: v for v in test["verdicts"] if v["source"] == "baseline"}
    out = []
    for v in test["verdicts"]:
        if v["source"] == "baseline":
            continue
        against = baseline.get(v["canonical"]) if v["source"] == "threshold" else None
        failed = not v["passed"] or (against is not None and not against["passed"])
        noise = v.get("within_noise") or (against is not None and against.get("within_noise"))
        verdict = ("PASS (within noise)" if noise else "PASS") if not failed else \
            ("FAIL" if not v["passed"] else "FAIL vs baseline")
        change = changes.get(v["canonical"])
        out.append(((name, label(v), verdict_value(v, v["actual"]), _limit(v), fmt.pct(margin_pct(v)), verdict,
                     fmt.pct(change["change_pct"]) if change else ""), failed))
    if not out:
        why = (test.get("message") or "").strip().splitlines()
        out.append(((name, why[0][:80] if why else "-", "-", "-", "-", test["outcome"].upper(), ""),
                    test["outcome"] not in ("passed", "skipped")))
    return out
