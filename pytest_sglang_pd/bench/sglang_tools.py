"""The real SGLang benchmark tools (bench_serving, few_shot_gsm8k) run on the benchmark node, parsed into BenchResults."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import metrics as metrics_mod
from .. import plan as plan_mod
from .. import redact
from ..config import InferenceTest
from ..textgen import arithmetic
from .result import BenchResult, RequestRecord, first_errors, tool_error

if TYPE_CHECKING:
    from .target import BenchTarget

# few_shot_gsm8k's printed lines -> canonical metric
GSM8K_LINES = {"Accuracy": "accuracy", "Invalid": "invalid", "Latency": "latency", "Output throughput": "output_throughput"}


class BenchToolError(RuntimeError):
    """The tool did not produce a result: says which command, its exit code and its last output lines."""


def bench_spec(target: BenchTarget, test: InferenceTest, concurrency: int) -> plan_mod.ProcessSpec:
    dep = target.deployment
    if dep is None:
        raise BenchToolError(f"test {test.name!r} uses bench_client \"sglang\", which runs in the deployment's benchmark "
                             "container; with --router-url there is none. Set \"bench_client\": \"builtin\" for it.")
    key = f"bench_{test.name}_c{concurrency}"
    for spec in dep.bench:
        if spec.key == key:
            return spec
    raise BenchToolError(f"the plan has no benchmark process {key!r} (is bench_client \"sglang\" set for {test.name!r}?)")


def run(target: BenchTarget, test: InferenceTest, concurrency: int, *, timeout_s: float, artifacts_dir: Path) -> BenchResult:
    """Run the tool of ``test`` on the benchmark node and parse what it wrote."""
    spec = bench_spec(target, test, concurrency)
    command = shlex.join(redact.argv(spec.argv))
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    artifacts = _write_gsm8k_data(target, test, artifacts_dir)
    tool, version = spec.argv[2], target.tool_version(spec)
    code, tail = target.run_bench_command(spec, timeout_s)
    log = artifacts_dir / Path(spec.log_path).name
    try:
        target.fetch(spec.log_path, log)
        artifacts["log"] = str(log)
        output = log.read_text(errors="replace")
    except (OSError, RuntimeError):  # the tail returned above still tells what happened
        output = tail
    if code != 0:
        raise BenchToolError(f"{command}\nexited with code {code} on {spec.node}; last lines:\n{tail}")
    if test.kind == "gsm8k":
        metrics = parse_gsm8k_output(output, command)
        metrics["completed"] = float(test.num_questions)  # it counts no failures: they abort it or score as invalid
        return BenchResult(tool=tool, metrics=metrics, num_requests=test.num_questions,
                           artifacts=artifacts, command=command, tool_version=version)
    remote = plan_mod.bench_output_path(target.deployment, test, concurrency)
    local = artifacts_dir / Path(remote).name
    try:
        target.fetch(remote, local)
    except (OSError, RuntimeError) as exc:
        raise BenchToolError(f"{command}\nfinished but its --output-file {remote} could not be copied from {spec.node}: {exc}") from None
    artifacts["output_file"] = str(local)
    result = parse_bench_serving_line(last_json_line(local.read_text(), remote), num_prompts=test.num_prompts, tool=tool)
    result.artifacts.update(artifacts)
    result.command, result.tool_version = command, version
    return result


def _write_gsm8k_data(target: BenchTarget, test: InferenceTest, artifacts_dir: Path) -> dict[str, str]:
    """The simulator's questions as the GSM8K file the planned --data-path names, on the benchmark node."""
    remote = plan_mod.gsm8k_data_path(target.deployment, test) if test.kind == "gsm8k" else None
    if not remote or remote == test.data_path:
        return {}
    local = artifacts_dir / Path(remote).name
    local.write_text(arithmetic.gsm8k_jsonl(max(test.num_questions, test.num_shots), test.seed))
    try:
        target.put(local, remote)
    except (OSError, RuntimeError) as exc:
        raise BenchToolError(f"the gsm8k questions could not be written to {remote} on the benchmark node: {exc}") from None
    return {"gsm8k_data": str(local)}


def last_json_line(text: str, source: str) -> dict[str, Any]:
    """The last run's record of a bench_serving --output-file (it appends one JSON line per run)."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise BenchToolError(f"{source} is empty: bench_serving wrote no result line")
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        raise BenchToolError(f"the last line of {source} is not JSON ({exc.msg}): {lines[-1][:200]}") from None


def parse_bench_serving_line(line: dict[str, Any], *, num_prompts: int, tool: str = "sglang.bench_serving") -> BenchResult:
    """A BenchResult from bench_serving's JSON line: the tool's own aggregates, plus per-request records
    from --output-details (flat or under "details"; a record's latency is ttft + the sum of its ITLs,
    the details carry no latency)."""
    metrics = {k: float(v) for k, v in line.items()
               if k in metrics_mod.METRICS and isinstance(v, (int, float)) and not isinstance(v, bool)}
    metrics["failed"] = float(max(num_prompts - int(line.get("completed", 0)), 0))
    totals = {
        "total_input_tokens": float(line.get("total_input_tokens", line.get("total_input", 0))),
        "total_output_tokens": float(line.get("total_output_tokens", line.get("total_output", 0))),
    }
    if "concurrency" in line:
        totals["concurrency"] = float(line["concurrency"])
    details = line.get("details", line)
    records = _records(details)
    errors = first_errors(records) if records else [tool_error(e) for e in details.get("errors") or [] if e][:20]
    return BenchResult(tool=tool, metrics=metrics, num_requests=max(num_prompts, len(records)),
                       records=records, totals=totals, errors=errors)


def _records(details: dict[str, Any]) -> list[RequestRecord]:
    ttfts = details.get("ttfts")
    if not isinstance(ttfts, list):
        return []
    n = len(ttfts)
    inputs = details.get("input_lens") or [0] * n
    outputs = details.get("output_lens") or [0] * n
    itls = details.get("itls") or [[]] * n
    errors = details.get("errors") or [""] * n
    records = []
    for ttft, n_in, n_out, itl, err in zip(ttfts, inputs, outputs, itls, errors):
        itl = [float(x) for x in itl or []]
        records.append(RequestRecord(success=not err, prompt_tokens=int(n_in or 0), output_tokens=int(n_out or 0),
                                     ttft_s=float(ttft or 0.0), latency_s=float(ttft or 0.0) + sum(itl),
                                     itl_s=itl, error=tool_error(err) if err else ""))
    return records


def parse_gsm8k_output(output: str, command: str) -> dict[str, float]:
    """few_shot_gsm8k's printed ``Accuracy: 0.950``, ``Invalid: 0.000``, ``Latency: 12.3 s``,
    ``Output throughput: 456.7 token/s`` lines (the last of each)."""
    found: dict[str, float] = {}
    for line in output.splitlines():
        label, sep, rest = line.partition(":")
        if sep and label.strip() in GSM8K_LINES and rest.split():
            try:
                found[GSM8K_LINES[label.strip()]] = float(rest.split()[0])
            except ValueError:
                continue
    if "accuracy" not in found:
        last = "\n".join(output.splitlines()[-20:])
        raise BenchToolError(f"{command}\nprinted no 'Accuracy:' line; last lines:\n{last}")
    return found
