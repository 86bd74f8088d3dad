"""Faults in the middle of a benchmark, on the simulated cluster, through the validation suite as users run it.

Each test runs the suite's inference tests in a subprocess, posts a fault (``POST /sim/fault``) to one worker once
the benchmark is under way, and asserts how soon the failing test ends, that its message starts with the cause
(role, node, what happened), that the next test of the model ends at once with the same cause, that the logs are
kept, nothing is left running and the HF token is in no artifact.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import requests

from pytest_sglang_pd import prom
from selftests.configs import REPO, sim_config, tools_python
from selftests.live import alive

pytestmark = pytest.mark.integration  # simulated clusters brought up and torn down

INFERENCE_TESTS = str(REPO / "pytest_sglang_pd" / "suite" / "test_inference.py")
STALL_S = 5.0
TOKEN = "hf_faultsSECRETtoken0123456789"


def _config(tmp_path: Path, tests: tuple[str, ...], second_model: bool, **overrides) -> tuple[Path, dict]:
    """The local-sim config with ``tests``, a small stall_s and an HF token file (``second_model``: the model's copy
    as a second model "again", deployed after the first; ``overrides``: sim_config's)."""
    token = tmp_path / "secret" / "hf_token"
    token.parent.mkdir()
    token.write_text(TOKEN)
    path = sim_config(tmp_path, tests=tests, hf_token_file=str(token),
                      timeouts={"benchmark_s": 300, "stall_s": STALL_S}, **overrides)
    data = json.loads(path.read_text())
    if second_model:
        again = dict(data["benchmark_params"]["llama-8b"])
        again["inference_tests"] = {tests[0]: again["inference_tests"][tests[0]]}
        data["benchmark_params"]["again"] = again
        path.write_text(json.dumps(data))
    return path, data["config"]


def _url(config: dict, role: str) -> str:
    return f"http://127.0.0.1:{config[f'{role}_serv_port']}"


def run_with_fault(tmp_path: Path, tests: tuple[str, ...], role: str, spec: str, *,
                   second_model: bool = False, **overrides) -> tuple[dict, float, str]:
    """The suite's inference tests with ``spec`` posted to the ``role`` worker once the decode has counted 12
    requests: (junit outcome and message by test name, seconds from the fault to the first test's end, output)."""
    config, cfg = _config(tmp_path, tests, second_model, **overrides)
    results = tmp_path / "results"
    suite = subprocess.Popen([sys.executable, "-m", "pytest", INFERENCE_TESTS, f"--cluster-config={config}",
                              f"--results-dir={results}", "--run-id=run", "-p", "no:cacheprovider", "-v"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: lines.extend((time.monotonic(), line) for line in suite.stdout))
    reader.start()
    try:
        posted = _post_when_busy(_url(cfg, "decode"), _url(cfg, role), spec)
        suite.wait(timeout=240)
    finally:
        if suite.poll() is None:
            suite.kill()
        reader.join()
    output = "".join(line for _, line in lines)
    first = f"test_inference[llama-8b-{tests[0]}]"
    ended = next((t for t, line in lines if first in line and ("FAILED" in line or "PASSED" in line)), None)
    assert ended is not None, output
    return _junit(results), ended - posted, output


def _post_when_busy(decode: str, target: str, spec: str, timeout: float = 120) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        samples = prom.fetch(f"{decode}/metrics") or []
        if (prom.total(samples, prom.WORKER_METRICS["requests"]) or 0) >= 12:
            requests.post(f"{target}/sim/fault", json={"spec": spec}, timeout=5).raise_for_status()
            return time.monotonic()
        time.sleep(0.1)
    raise AssertionError(f"the decode at {decode} never counted 12 requests")


def _junit(results: Path) -> dict[str, tuple[str, str]]:
    """test name -> (passed | failure | error, the message as the test or fixture wrote it)."""
    out = {}
    for case in ET.parse(results / "run" / "junit.xml").iter("testcase"):
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        out[case.get("name")] = ("passed", "") if bad is None else (bad.tag, bad.text or "")
    return out


def assert_kept_and_clean(tmp_path: Path, model: str = "") -> None:
    """Logs collected, no process left running, the token in no file the run wrote (``model``: its folder of a
    run with several models)."""
    run = tmp_path / "results" / "run" / model
    state = json.loads((run / "cluster-state.json").read_text())
    assert state["stopped"] and not [p["key"] for p in state["processes"] if p["pid"] and alive(p["pid"])]
    logs = run / "logs" / "127.0.0.1"
    assert {"prefill-0.log", "decode-0.log", "router-0.log"} <= {p.name for p in logs.iterdir()}
    leaked = [str(p) for folder in (tmp_path / "results", tmp_path / "node-logs") for p in folder.rglob("*")
              if p.is_file() and TOKEN.encode() in p.read_bytes()]
    assert not leaked, f"the HF token is in {leaked}"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0]


def test_prefill_crash_mid_gsm8k_names_role_node_and_exit_code_within_10_s(tmp_path):
    outcomes, took, output = run_with_fault(tmp_path, ("gsm8k", "bench_serv_random"), "prefill", "crash_after=0",
                                            second_model=True)
    kind, text = outcomes["test_inference[llama-8b-gsm8k]"]
    assert kind == "failure", output
    assert _first_line(text).startswith("prefill prefill_0 on node 127.0.0.1 exited with code 1 at "), text
    assert _first_line(text).endswith(" s into llama-8b-gsm8k"), text
    assert "sim fault crash_after=0" in text  # the prefill's log tail follows the cause
    assert "the workers' metrics (last read):" in text and "then, in the benchmark:" in text
    assert took < 10, f"the test ended {took:.1f} s after the crash"
    kind, text = outcomes["test_inference[llama-8b-bench_serv_random]"]
    assert kind == "error" and _first_line(text).startswith("prefill prefill_0 on node 127.0.0.1 exited with code 1")
    assert "broke in an earlier test" in text
    assert outcomes["test_inference[again-gsm8k]"] == ("passed", ""), output  # the next model's deployment is fresh
    assert_kept_and_clean(tmp_path, "llama-8b")
    assert_kept_and_clean(tmp_path, "again")


def test_decode_hang_mid_run_names_the_decode_within_stall_s_plus_10_s(tmp_path):
    outcomes, took, output = run_with_fault(tmp_path, ("bench_serv_random", "generated_shared_prefix"), "decode", "hang")
    kind, text = outcomes["test_inference[llama-8b-bench_serv_random]"]
    assert kind == "failure", output
    assert _first_line(text).startswith("decode decode_0 on node 127.0.0.1 stopped answering /health ("), text
    assert " s into llama-8b-bench_serv_random" in _first_line(text)
    assert took < STALL_S + 10, f"the test ended {took:.1f} s after the hang"
    kind, text = outcomes["test_inference[llama-8b-generated_shared_prefix]"]
    assert kind == "error" and "decode decode_0 on node 127.0.0.1 stopped answering /health" in _first_line(text)
    assert_kept_and_clean(tmp_path)


def test_kv_stall_with_health_green_names_the_decode_transfer_queue_within_stall_s_plus_10_s(tmp_path):
    outcomes, took, output = run_with_fault(tmp_path, ("bench_serv_random", "generated_shared_prefix"), "decode",
                                            "kv_stall")
    kind, text = outcomes["test_inference[llama-8b-bench_serv_random]"]
    assert kind == "failure", output
    first = _first_line(text)
    assert first.startswith("stall: decode decode_0 on node 127.0.0.1 holds "), text
    assert "in its transfer queue (waiting for KV) (sglang:num_decode_transfer_queue_reqs)" in first
    assert f"$.config.timeouts.stall_s = {STALL_S:g}" in first
    assert took < STALL_S + 10, f"the test ended {took:.1f} s after the KV stalled"
    kind, text = outcomes["test_inference[llama-8b-generated_shared_prefix]"]
    assert kind == "error" and _first_line(text) == first
    assert_kept_and_clean(tmp_path)


def _bench_serving_processes(router_port: str) -> list[int]:
    """The pids of SGLang bench_serving processes aimed at the router's port."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if proc.name.isdigit() and any(b"bench_serving" in a or b"benchmark.serving" in a for a in argv) \
                and router_port.encode() in b" ".join(argv):
            found.append(int(proc.name))
    return found


def test_prefill_crash_mid_real_bench_serving_stops_the_tool_within_10_s(tmp_path):
    """The real SGLang bench_serving (not the builtin client) is stopped once the watch finds the cluster broken."""
    python = tools_python()
    outcomes, took, output = run_with_fault(tmp_path, ("bench_serv_random",), "prefill", "crash_after=0",
                                            base="local-sim-sglang-tools.json", bench_python=python)
    kind, text = outcomes["test_inference[llama-8b-bench_serv_random]"]
    assert kind == "failure", output
    assert _first_line(text).startswith("prefill prefill_0 on node 127.0.0.1 exited with code 1 at "), text
    assert "then, in the benchmark:\nllama-8b-bench_serv_random: the benchmark produced no result:" in text
    assert took < 10, f"the test ended {took:.1f} s after the crash"
    results = json.loads((tmp_path / "results" / "run" / "results.json").read_text())
    assert _first_line(results["tests"][0]["message"]) == _first_line(text)  # the record starts with the cause too
    router_port = json.loads((tmp_path / "cluster.json").read_text())["config"]["proxy_router_port"]
    assert not _bench_serving_processes(router_port), "bench_serving still runs after the test ended"
    assert_kept_and_clean(tmp_path)
