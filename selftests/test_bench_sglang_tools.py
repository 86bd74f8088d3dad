"""The real SGLang tools' outputs parsed: bench_serving's JSON line and few_shot_gsm8k's printed lines."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pytest_sglang_pd import config as config_mod
from pytest_sglang_pd import plan as plan_mod
from pytest_sglang_pd.bench import sglang_tools
from pytest_sglang_pd.bench.sglang_tools import BenchToolError
from pytest_sglang_pd.plan import ProcessSpec

# One line as sglang 0.5 bench_serving writes it with --output-details (3 prompts, one failed).
BENCH_SERVING_LINE = {
    "backend": "sglang", "dataset_name": "random-ids", "request_rate": "inf", "max_concurrency": 64,
    "sharegpt_output_len": None, "random_input_len": 1024, "random_output_len": 1024, "random_range_ratio": 0.0,
    "duration": 12.5, "completed": 2, "total_input": 2048, "total_output": 2048, "total_output_retokenized": 2040,
    "request_throughput": 0.16, "input_throughput": 163.84, "output_throughput": 163.84,
    "output_throughput_retokenized": 163.2, "total_throughput": 327.68, "total_throughput_retokenized": 327.0,
    "mean_ttft_ms": 250.0, "median_ttft_ms": 250.0, "std_ttft_ms": 50.0, "p99_ttft_ms": 299.0,
    "mean_tpot_ms": 11.9, "median_tpot_ms": 11.9, "std_tpot_ms": 0.1, "p99_tpot_ms": 12.0,
    "mean_itl_ms": 11.9, "median_itl_ms": 11.8, "std_itl_ms": 1.0, "p95_itl_ms": 13.0, "p99_itl_ms": 14.0,
    "max_itl_ms": 20.0, "mean_e2e_latency_ms": 12400.0, "median_e2e_latency_ms": 12400.0,
    "std_e2e_latency_ms": 10.0, "p99_e2e_latency_ms": 12410.0, "concurrency": 1.98, "accept_length": None,
    "details": {
        "input_lens": [1024, 1024, 1024], "output_lens": [1024, 1024, 0],
        "ttfts": [0.2, 0.3, 0.0], "itls": [[0.012] * 3, [0.011] * 3, []],
        "generated_texts": ["a", "b", ""], "errors": ["", "", "Bad Request: prefill 502"],
    },
}


def test_bench_serving_line_becomes_canonical_metrics_and_records() -> None:
    result = sglang_tools.parse_bench_serving_line(BENCH_SERVING_LINE, num_prompts=3)
    assert result.tool == "sglang.bench_serving"
    assert result.metrics["completed"] == 2 and result.metrics["failed"] == 1 and result.failed == 1
    assert result.metrics["output_throughput"] == 163.84
    assert result.metrics["p99_ttft_ms"] == 299.0 and result.metrics["p95_itl_ms"] == 13.0
    assert "max_itl_ms" not in result.metrics and "backend" not in result.metrics  # only canonical names
    assert result.totals["total_input_tokens"] == 2048 and result.totals["concurrency"] == 1.98
    assert [r.success for r in result.records] == [True, True, False]
    assert result.records[0].latency_s == pytest.approx(0.2 + 0.036)
    assert result.records[2].error == "Bad Request: prefill 502"
    assert result.errors == ["Bad Request: prefill 502"]


def test_older_flat_details_parse_the_same() -> None:
    flat = {k: v for k, v in BENCH_SERVING_LINE.items() if k != "details"} | BENCH_SERVING_LINE["details"]
    flat["total_input_tokens"] = flat.pop("total_input")
    result = sglang_tools.parse_bench_serving_line(flat, num_prompts=3)
    assert len(result.records) == 3 and result.totals["total_input_tokens"] == 2048


def test_the_last_line_of_an_appended_output_file_wins() -> None:
    text = json.dumps({"completed": 1}) + "\n" + json.dumps(BENCH_SERVING_LINE) + "\n\n"
    assert sglang_tools.last_json_line(text, "f.jsonl")["completed"] == 2
    with pytest.raises(BenchToolError, match="is empty"):
        sglang_tools.last_json_line("\n", "f.jsonl")
    with pytest.raises(BenchToolError, match="not JSON"):
        sglang_tools.last_json_line("Results saved to f.jsonl", "f.jsonl")


GSM8K_OUTPUT = """\
100%|##########| 200/200 [00:20<00:00,  9.71it/s]
Accuracy: 0.950
Invalid: 0.005
Latency: 20.603 s
Output throughput: 1234.567 token/s
"""


def test_gsm8k_printed_lines() -> None:
    assert sglang_tools.parse_gsm8k_output(GSM8K_OUTPUT, "cmd") == {
        "accuracy": 0.95, "invalid": 0.005, "latency": 20.603, "output_throughput": 1234.567}
    with pytest.raises(BenchToolError, match="printed no 'Accuracy:' line"):
        sglang_tools.parse_gsm8k_output("Traceback (most recent call last):\nConnectionError", "cmd")


# ------------------------------------------------------------------ the tools run through a BenchTarget
def _deployment() -> plan_mod.Deployment:
    raw = {
        "config": {"container_image": "rocm/sgl-dev:latest", "prefill_node_list": ["10.0.0.1"],
                   "decode_node_list": ["10.0.0.2"], "proxy_router_node": "10.0.0.3",
                   "prefill_serv_port": 30001, "decode_serv_port": 30002, "proxy_router_port": 8000},
        "benchmark_params": {"m": {"model": "org/model", "tensor_parallelism": 8, "inference_tests": {
            "gsm8k": {"num_questions": 20},
            "bench_serv_random": {"data_set_name": "random", "num_prompts": 3, "max_concurrency": [8, 64]}}}},
    }
    cfg = config_mod.from_dict(raw)
    return plan_mod.plan(cfg, "m", run_id="r1")


@dataclass
class RecordingTarget:
    """Stands in for the benchmark node: answers with a given exit code and serves prepared files."""

    deployment: plan_mod.Deployment
    files: dict[str, str]
    exit_code: int = 0
    tail: str = ""
    router_url: str = "http://10.0.0.3:8000"
    simulated: bool = False
    worker_urls: dict = field(default_factory=dict)
    log_files: dict = field(default_factory=dict)
    startup_seconds: dict = field(default_factory=dict)
    ran: list[ProcessSpec] = field(default_factory=list)

    def run_bench_command(self, spec: ProcessSpec, timeout_s: float) -> tuple[int, str]:
        self.ran.append(spec)
        return self.exit_code, self.tail

    def fetch(self, remote_path: str, local: Path) -> None:
        if remote_path not in self.files:
            raise FileNotFoundError(remote_path)
        local.write_text(self.files[remote_path])

    def put(self, local: Path, remote_path: str) -> None:
        self.files[remote_path] = local.read_text()

    def tool_version(self, spec: ProcessSpec) -> str:
        return "0.5.23"


def test_bench_serving_runs_the_planned_command_and_reads_its_output_file(tmp_path: Path) -> None:
    dep = _deployment()
    test = dep.model.tests[1]
    out = plan_mod.bench_output_path(dep, test, 64)
    target = RecordingTarget(dep, {out: json.dumps(BENCH_SERVING_LINE) + "\n"})
    result = sglang_tools.run(target, test, 64, timeout_s=60, artifacts_dir=tmp_path)
    assert target.ran[0].key == "bench_bench_serv_random_c64"
    assert "--max-concurrency 64" in result.command and "--output-file " + out in result.command
    assert result.tool == "sglang.benchmark.serving" and result.tool_version == "0.5.23"
    assert result.metrics["completed"] == 2
    assert Path(result.artifacts["output_file"]).read_text().strip() == json.dumps(BENCH_SERVING_LINE)


def test_gsm8k_reads_the_collected_log(tmp_path: Path) -> None:
    dep = _deployment()
    test = dep.model.tests[0]
    spec = next(s for s in dep.bench if s.key == "bench_gsm8k_c64")
    target = RecordingTarget(dep, {spec.log_path: "loading...\n" + GSM8K_OUTPUT})
    result = sglang_tools.run(target, test, 64, timeout_s=60, artifacts_dir=tmp_path)
    assert result.tool == "sglang.test.few_shot_gsm8k" and result.metrics["accuracy"] == 0.95
    assert result.num_requests == 20 and result.failed == 0


def test_a_failing_tool_says_what_ran_where_with_its_exit_code_and_tail(tmp_path: Path) -> None:
    dep = _deployment()
    target = RecordingTarget(dep, {}, exit_code=1, tail="ConnectionRefusedError: [Errno 111]")
    with pytest.raises(BenchToolError) as info:
        sglang_tools.run(target, dep.model.tests[1], 8, timeout_s=60, artifacts_dir=tmp_path)
    text = str(info.value)
    assert "python3 -m sglang.benchmark.serving" in text and "exited with code 1 on 10.0.0.3" in text
    assert "ConnectionRefusedError" in text


def test_no_deployment_means_no_benchmark_container(tmp_path: Path) -> None:
    target = RecordingTarget(None, {})  # type: ignore[arg-type]
    with pytest.raises(BenchToolError, match="bench_client.*builtin"):
        sglang_tools.run(target, _deployment().model.tests[1], 8, timeout_s=60, artifacts_dir=tmp_path)

