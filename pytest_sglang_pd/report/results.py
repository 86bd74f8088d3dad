"""results.json: the machine-readable record of a run (written atomically), its schema, and baselines read back."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

import jsonschema

from ..bench.result import BenchResult
from ..gating import Baseline, GateResult

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "results.schema.json"


def case_entry(*, case_id: str, nodeid: str, model: str, test: str, kind: str, dataset: str | None,
               concurrency: int, bench_client: str, result: BenchResult | None, gate: GateResult | None,
               outcome: str, duration_s: float, message: str | None) -> dict[str, Any]:
    """One test's entry; ``result`` and ``gate`` are None when the benchmark never ran (e.g. bring-up failed)."""
    entry: dict[str, Any] = {
        "id": case_id, "nodeid": nodeid, "model": model, "test": test, "kind": kind, "dataset": dataset,
        "concurrency": concurrency, "bench_client": bench_client, "outcome": outcome,
        "duration_s": round(duration_s, 3), "message": message,
        "tool": None, "tool_version": None, "router": None, "command": None, "num_requests": None,
        "completed_requests": None, "failed_requests": None, "repeats": None, "runs": [], "spread": {},
        "metrics": {}, "totals": {}, "workers": {}, "deployment": {}, "verdicts": [], "baseline_changes": [], "errors": [], "artifacts": {},
    }
    if result is not None:
        entry.update(tool=result.tool, tool_version=result.tool_version, router=result.router, command=result.command,
                     num_requests=result.num_requests, completed_requests=result.completed,
                     failed_requests=result.failed, metrics=_finite(result.metrics), totals=_finite(result.totals),
                     workers={url: dict(w) for url, w in result.workers.items()}, deployment=dict(result.deployment),
                     repeats=max(len(result.runs), 1), runs=[_finite(run) for run in result.runs],
                     spread={name: _finite(summary.as_dict(), keep=("ci95",)) for name, summary in result.spread.items()},
                     errors=list(result.errors), artifacts=dict(result.artifacts))
    if gate is not None:
        entry["verdicts"] = [asdict(v) for v in gate.verdicts]
        entry["baseline_changes"] = [asdict(c) for c in gate.changes]
    return entry


def _finite(values: Mapping[str, Any], keep: tuple[str, ...] = ()) -> dict[str, Any]:
    """JSON has no NaN/inf: such values become null (``keep``: keys whose values pass as they are)."""
    return {k: v if k in keep or v is None or (v == v and abs(v) != float("inf")) else None for k, v in values.items()}


def write_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON to a temp file next to ``path``, then rename it over ``path``; readable as the run's other files
    are (mkstemp's 0600 widened to what the umask allows)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def validate(data: Mapping[str, Any]) -> None:
    """Raise jsonschema.ValidationError when ``data`` does not follow schemas/results.schema.json."""
    jsonschema.validate(data, json.loads(SCHEMA_PATH.read_text()), cls=jsonschema.Draft202012Validator)


class BaselineError(ValueError):
    pass


def load_baseline(path: Path) -> Baseline:
    """The run id and every test's metrics (by test id) of an earlier results.json."""
    try:
        data = json.loads(path.read_text())
        validate(data)
    except (OSError, json.JSONDecodeError, jsonschema.ValidationError) as exc:
        detail = exc.message if isinstance(exc, jsonschema.ValidationError) else str(exc)
        raise BaselineError(f"--baseline {path}: not a results.json of this suite ({detail})") from None
    cases = {t["id"]: {k: v for k, v in t["metrics"].items() if v is not None} for t in data["tests"]}
    runs = {t["id"]: t.get("runs", []) for t in data["tests"]}
    return Baseline(source=str(path), run_id=data["run_id"], metrics=cases, runs=runs)
