"""Run history: each run's provenance and its key, the last green run of the same key (``--baseline auto``), the
trend of each gated metric over those runs, and what changed between two runs' provenance."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

# What makes two runs comparable: the same config, image, software and nodes, selected the same way.
KEY_FIELDS = ("config_sha256", "image", "sglang", "router", "mooncake", "suite", "nodes", "selection")


def config_sha256(cfg: Any) -> str:
    """The typed config's hash: the same for the same settings however the file is written or where it lies."""
    data = {k: v for k, v in asdict(cfg).items() if k != "source"}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def key(provenance: Mapping[str, Any]) -> str:
    picked = {k: provenance.get(k) for k in KEY_FIELDS}
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Run:
    """One earlier run of the history folder."""

    path: Path
    run_id: str
    finished_at: str
    key: str | None
    green: bool  # finished, something passed, nothing failed or errored
    data: Mapping[str, Any]


def runs(folder: Path, *, exclude: Path | None = None) -> list[Run]:
    """Every finished results.json below ``folder`` (a Jenkins job's archived runs, a results folder), oldest first;
    files that are not this suite's results are passed over."""
    out = []
    for path in sorted(folder.rglob("results.json")):
        if exclude is not None and path.resolve() == exclude.resolve():
            continue
        try:
            data = json.loads(path.read_text())
            summary, finished = data["summary"], data["finished_at"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not finished:
            continue
        prov = data.get("provenance") or {}
        green = not any(summary.get(k, 0) for k in ("failed", "error", "interrupted")) and summary.get("passed", 0) > 0
        out.append(Run(path, data.get("run_id", path.parent.name), finished, prov.get("key"), green, data))
    return sorted(out, key=lambda r: r.finished_at)


def last_green(found: list[Run], run_key: str) -> Run | None:
    return next((r for r in reversed(found) if r.green and r.key == run_key), None)


def trend(found: list[Run], run_key: str, tests: list[Mapping[str, Any]]) -> dict[tuple[str, str], list[tuple[str, float]]]:
    """(test id, gated metric) -> (run id, value) over the earlier runs of the same key, then this run."""
    gated = {(t["id"], v["canonical"]) for t in tests for v in t["verdicts"] if v["source"] == "threshold"}
    series: dict[tuple[str, str], list[tuple[str, float]]] = {k: [] for k in sorted(gated)}
    for run in [r for r in found if r.key == run_key]:
        for t in run.data.get("tests", []):
            for metric, value in t.get("metrics", {}).items():
                if (t["id"], metric) in series and value is not None:
                    series[(t["id"], metric)].append((run.run_id, float(value)))
    for t in tests:
        for metric, value in t["metrics"].items():
            if (t["id"], metric) in series and value is not None:
                series[(t["id"], metric)].append(("this run", float(value)))
    return series


def diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """(field, before, after) of every provenance field that differs (the key itself left out)."""
    fields = [f for f in dict.fromkeys([*before, *after]) if f != "key"]
    return [(f, before.get(f), after.get(f)) for f in fields if before.get(f) != after.get(f)]
