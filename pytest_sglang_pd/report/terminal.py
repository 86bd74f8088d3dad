"""The closing table in the terminal: per model and test, each gated metric against its limit, then the run's files."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from . import fmt
from .checks import header, rows


def table(tests: Iterable[Mapping[str, Any]]) -> list[tuple[str, bool]]:
    """(line, failed) of the table, a heading line per model; columns as wide as their widest cell."""
    tests = list(tests)
    head = header(tests)
    by_model: dict[str, list[tuple[tuple[str, ...], bool]]] = {}
    for t in tests:
        by_model.setdefault(t["model"], []).extend((cells[:len(head)], failed) for cells, failed in rows(t))
    every = [head, *(cells for found in by_model.values() for cells, _ in found)]
    widths = [max(len(r[i]) for r in every) for i in range(len(head))]

    def line(cells: tuple[str, ...]) -> str:
        return "  " + "  ".join(c.rjust(w) if i in (2, 3, 4, 6) else c.ljust(w)
                                for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = [(line(head), False)]
    for model, found in by_model.items():
        out.append((model, False))
        out += [(line(cells), failed) for cells, failed in found]
    return out


def warnings(tests: Iterable[Mapping[str, Any]], tol_pct: float) -> list[str]:
    """One line per ungated metric that got worse than the baseline by more than its tolerance."""
    return [f"{t['id']}: {c['metric']} {fmt.value(c['metric'], c['before'])} -> {fmt.value(c['metric'], c['after'])} "
            f"({fmt.pct(c['change_pct'])}), worse than the baseline by more than {tol_pct:g}%"
            for t in tests for c in t.get("baseline_changes", []) if c["warned"]]


def failing(tests: Iterable[Mapping[str, Any]]) -> list[str]:
    """One line per failed or errored test naming its failing checks (the short summary may be cut to the width)."""
    out = []
    for t in tests:
        if t["outcome"] in ("passed", "skipped"):
            continue
        names = [v["metric"] + (" vs baseline" if v["source"] == "baseline" else "") for v in t["verdicts"]
                 if not v["passed"]]
        first = (t.get("message") or "").strip().splitlines()
        out.append(f"{t['id']} {t['outcome'].upper()}: " + (", ".join(names) or (first[0] if first else "")))
    return out
