"""The PD path on the simulated cluster with the real router: a refused bootstrap named within the smoke deadline,
a slowed prefill -> decode pair below kv_transfer.min_gbps named before any benchmark, each pair's GB/s recorded,
streams cut short counted and named in the verdict (docs/failure-modes.md row 19); nothing left running."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import re
import shutil
import sys
import time
from pathlib import Path

import pytest

from pytest_sglang_pd import gating, kv_transfer, pd_path, plan
from pytest_sglang_pd.bench import builtin, sglang_tools
from pytest_sglang_pd.bench.result import TRUNCATED, truncated_count
from pytest_sglang_pd.cluster import ClusterError, LiveCluster
from pytest_sglang_pd.hosts import LocalHost
from pytest_sglang_pd.plan import ProcessSpec
from selftests.configs import REPO, sim_config, tools_python
from selftests.live import CLUSTER_TESTS, alive, sim_cluster
from selftests.test_lifecycle import assert_nothing_left
from selftests.test_bench_builtin import FAST, RANDOM



def _spec(key: str, role: str, node: str, *argv: str) -> ProcessSpec:
    return ProcessSpec(key, role, node, ("python", *argv), {}, 30000, "/log", host=node,
                       bootstrap_port=8998 if role == "prefill" else None)


def test_pairs_below_the_floor_or_without_a_payload_are_named_and_the_others_not():
    p, d0, d1 = (_spec("prefill_0", "prefill", "10.0.0.1"), _spec("decode_0", "decode", "10.0.0.2"),
                 _spec("decode_1", "decode", "10.0.0.3", "--sim-fault", "slow_kv=4", "--sim-fault", "hang"))
    assert pd_path.bootstrap_address(p) == "10.0.0.1:8998"
    assert pd_path._slow_factor(p, d1) == 4 and pd_path._slow_factor(p, d0) == 1
    pairs = [pd_path.PairResult(p, d0, 2.5), pd_path.PairResult(p, d1, 0.4),
             pd_path.PairResult(p, d0, None, "EngineUnavailable: no RDMA device")]
    assert pd_path.slow_pairs(pairs, "mooncake", 1.0) == [
        "prefill_0 on 10.0.0.1 -> decode_1 on 10.0.0.3: 0.4 GB/s through mooncake < 1 ($.config.kv_transfer.min_gbps)",
        "prefill_0 on 10.0.0.1 -> decode_0 on 10.0.0.2: no payload through mooncake: EngineUnavailable: no RDMA device"]
    assert len(pd_path.slow_pairs(pairs, "mooncake", None)) == 1  # without a floor only the pair that moved nothing


def test_the_explaining_log_lines_are_the_aborts_kvpoll_states_and_engine_errors():
    log = ("INFO The server is fired up and ready to roll!\nINFO Prefill batch. #new-seq: 1\n"
           "WARNING KVTransferError(bootstrap_room=7): Request 7 timed out after 300.0s in KVPoll.Bootstrapping\n"
           "INFO 127.0.0.1 - POST /generate 200\nERROR NIXL_ERR_BACKEND while posting the transfer\n")
    assert pd_path.explaining_lines(log) == [
        "WARNING KVTransferError(bootstrap_room=7): Request 7 timed out after 300.0s in KVPoll.Bootstrapping",
        "ERROR NIXL_ERR_BACKEND while posting the transfer"]


def _pair_plan(tmp_path: Path, prefill: str, decode: str) -> plan.Deployment:
    cfg = plan.load_config(sim_config(tmp_path, prefill=(prefill,), decode=(decode,), kv_transfer={"backend": "tcp"}))
    dep = plan.plan(cfg, "llama-8b", run_id="x")
    Path(dep.log_dir).mkdir(parents=True)
    shutil.copyfile(kv_transfer.__file__, pd_path.pair_script(dep))
    return dep


@pytest.mark.integration
def test_the_pair_check_moves_its_payload_from_the_prefill_node_to_the_decode_node(tmp_path):
    """As on a real cluster: the engine file copied to the nodes (it needs nothing of this suite: it runs with
    ``python -I -S``), a receiver on the decode's node (127.0.0.3 here), a sender on the prefill's (127.0.0.2)."""
    dep = _pair_plan(tmp_path, "127.0.0.2", "127.0.0.3")
    alone = subprocess.run([sys.executable, "-I", "-S", pd_path.pair_script(dep), "send", "--help"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert alone.returncode == 0 and "--descriptor" in alone.stdout, alone.stderr
    ran: list[tuple[str, str]] = []

    class Node(LocalHost):
        def run(self, argv, **kw):
            ran.append((self.name, argv[2] if len(argv) > 2 else argv[0]))
            return super().run(argv, **kw)

    pairs = pd_path.measure_pairs(dep, "tcp", lambda spec: Node(spec.node))
    assert [(p.name, p.error) for p in pairs] == [("prefill_0 on 127.0.0.2 -> decode_0 on 127.0.0.3", None)]
    assert pairs[0].gbps > 0
    assert ("127.0.0.3", "receive") in ran and ("127.0.0.2", "send") in ran
    assert not list(Path(dep.log_dir).glob("kv_pair-*.json"))  # the descriptor file is gone


@pytest.mark.integration
def test_a_pair_whose_sender_fails_ends_at_once_naming_the_side_and_why(tmp_path):
    """The sender cannot open its engine (its node's address is not on this machine): the receiver's wait ends
    when the sender's side is done, not after pd_path.PAIR_WAIT_S."""
    dep = _pair_plan(tmp_path, "127.0.0.2", "127.0.0.3")
    dep = dataclasses.replace(dep, processes=tuple(dataclasses.replace(p, node="10.255.255.1") if p.role == "prefill"
                                                   else p for p in dep.processes))
    t0 = time.monotonic()
    pairs = pd_path.measure_pairs(dep, "tcp", lambda spec: LocalHost(spec.node))
    assert time.monotonic() - t0 < 15
    assert pairs[0].gbps is None
    assert pairs[0].error.startswith("sending side: ") and "Cannot assign requested address" in pairs[0].error
    assert "receiving side: " in pairs[0].error and "the sender ended" in pairs[0].error


@pytest.mark.integration
def test_cut_streams_are_failed_requests_counted_and_named_in_the_verdict(tmp_path):
    with sim_cluster(tmp_path, 1, 1, backend="tcp", worker_args=FAST, decode_args=["--sim-fault", "cut_streams=0.5"]) as c:
        result = builtin.run(c.router_url, RANDOM, 8, timeout_s=60)
        pids = [rp.pid for rp in c.procs.values()]
    cut = truncated_count(result.records)
    assert 0 < cut == result.failed < result.num_requests  # the others complete; none counted as a short success
    assert all(r.output_tokens == 0 for r in result.records if not r.success)
    assert "before the end of the response: not enough data to satisfy transfer length header" in result.errors[0]
    verdict = gating.check_requests(result, 0)
    assert not verdict.passed
    assert verdict.message.startswith(f"failed requests {cut} of {RANDOM.num_prompts} > allowed 0 "
                                      f"({cut} of them {TRUNCATED}s: responses cut short mid-stream); first error: ")
    assert not [p for p in pids if alive(p)]



@pytest.mark.integration
def test_cut_streams_under_the_real_bench_serving_are_counted_and_named_too(tmp_path):
    """SGLang's own bench_serving (aiohttp) records a cut stream as a traceback: parsed into a truncated-stream
    error, so the verdict counts and names it as it does for the builtin client."""
    python = tools_python()
    out = tmp_path / "bench.jsonl"
    with sim_cluster(tmp_path, 1, 1, backend="tcp", worker_args=FAST, decode_args=["--sim-fault", "cut_streams=0.5"]) as c:
        port = c.router_url.rsplit(":", 1)[1]
        subprocess.run([python, "-m", "sglang.benchmark.serving", "--backend", "sglang", "--host", "127.0.0.1",
                        "--port", port, "--model", "m", "--tokenizer", str(REPO / "pytest_sglang_pd" / "textgen" / "tokenizer"),
                        "--dataset-name", "random-ids", "--num-prompts", "16", "--random-input-len", "64",
                        "--random-output-len", "16", "--max-concurrency", "8", "--output-file", str(out),
                        "--output-details"], check=True, capture_output=True, timeout=240,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    result = sglang_tools.parse_bench_serving_line(json.loads(out.read_text().splitlines()[-1]), num_prompts=16)
    cut = truncated_count(result.records)
    assert 0 < cut == result.failed < 16
    assert result.errors[0] == (f"{cut} x {TRUNCATED}: aiohttp.client_exceptions.ClientPayloadError: Response payload "
                                "is not completed: <TransferEncodingError: 400, message='Not enough data to satisfy "
                                "transfer length header.'>"), result.errors
    verdict = gating.check_requests(result, 0)
    assert f"({cut} of them {TRUNCATED}s: responses cut short mid-stream)" in verdict.message


SUITE = str(REPO / "pytest_sglang_pd" / "suite")


def run_whole_suite(pytester: pytest.Pytester, config: Path, results: Path):
    return pytester.runpytest_subprocess(SUITE, f"--cluster-config={config}", f"--results-dir={results}",
                                         "--run-id=run", "-p", "no:cacheprovider", timeout=240)


def benchmarks_run(results: Path) -> list[str]:
    """The tests that measured anything; the gsm8k benchmark must be recorded, as an error."""
    tests = json.loads((results / "run" / "results.json").read_text())["tests"]
    assert [t["outcome"] for t in tests if t["test"] == "gsm8k"] == ["error"], tests
    return [t["nodeid"] for t in tests if t["metrics"]]


@pytest.mark.integration
def test_refused_bootstrap_is_named_within_the_smoke_deadline(pytester, tmp_path):
    smoke_s = 20
    config = sim_config(tmp_path, tests=("gsm8k",), timeouts={"smoke_s": smoke_s},
                        sim={"faults": {"prefill": ["refuse_bootstrap"]}})
    address = f"127.0.0.1:{json.loads(config.read_text())['config']['kv_transfer']['bootstrap_port']}"
    t0 = time.monotonic()
    result = run_whole_suite(pytester, config, tmp_path / "results")
    took = time.monotonic() - t0
    out = result.stdout.str()
    assert result.ret == 1 and took < smoke_s + 10, (took, out[-3000:])
    assert (f"decode decode_0 on node 127.0.0.1 cannot connect to the bootstrap server {address} of prefill prefill_0 "
            "($.config.kv_transfer.bootstrap_port): ConnectionRefusedError") in out
    assert "PD handshake cannot start (KV engine mooncake)" in out and "Read timed out" not in out
    assert not benchmarks_run(tmp_path / "results")
    assert_nothing_left(tmp_path / "results")


@pytest.mark.integration
def test_a_slowed_pair_below_min_gbps_is_named_before_any_benchmark(pytester, tmp_path):
    config = sim_config(tmp_path, decode=("127.0.0.1", "127.0.0.2"), tests=("gsm8k",),
                        kv_transfer={"min_gbps": 0.02}, sim={"faults": {"decode_1": ["slow_kv=100"]}})
    result = run_whole_suite(pytester, config, tmp_path / "results")
    out = result.stdout.str()
    assert result.ret == 1, out[-3000:]
    assert "KV transfer check failed for 1 of 2 prefill -> decode pair(s) (16 MiB each):" in out
    assert re.search(r"prefill_0 on 127\.0\.0\.1 -> decode_1 on 127\.0\.0\.2: 0\.00\d+ GB/s through mooncake < 0\.02 "
                     r"\(\$\.config\.kv_transfer\.min_gbps\)", out), out[-3000:]
    assert "-> decode_0 on 127.0.0.1: " not in out.split("KV transfer check failed", 1)[1].split("\n\n", 1)[0]
    assert not benchmarks_run(tmp_path / "results")
    assert_nothing_left(tmp_path / "results")


@pytest.mark.integration
def test_each_pairs_gbps_is_recorded_in_results_json(pytester, tmp_path):
    config = sim_config(tmp_path, decode=("127.0.0.1", "127.0.0.2"), kv_transfer={"min_gbps": 0.001})
    result = pytester.runpytest_subprocess(CLUSTER_TESTS, f"--cluster-config={config}",
                                           f"--results-dir={tmp_path / 'results'}", "--run-id=run",
                                           "-p", "no:cacheprovider", timeout=240)
    result.assert_outcomes(passed=4, skipped=1)
    pairs = json.loads((tmp_path / "results" / "run" / "results.json").read_text())["cluster"]["kv_pairs_gbps"]
    assert set(pairs) == {"prefill_0 -> decode_0", "prefill_0 -> decode_1"} and all(v > 0.001 for v in pairs.values())
    assert_nothing_left(tmp_path / "results")


@pytest.mark.integration
def test_a_smoke_request_past_its_deadline_names_the_side_and_the_pd_path(tmp_path):
    """A prefill too slow to hand its KV over: the smoke request ends at timeouts.smoke_s, not the HTTP client's
    read timeout, and says which queue holds the request (the decode waits for KV)."""
    smoke_s = 3
    cfg = plan.load_config(sim_config(tmp_path, timeouts={"smoke_s": smoke_s}, sim={"faults": {"prefill": ["slow=20000"]}}))
    cluster = LiveCluster(cfg, plan.plan(cfg, "llama-8b", run_id="x"), tmp_path / "run")
    with pytest.raises(ClusterError) as info:
        with cluster:
            cluster.bring_up(smoke=False)
            t0 = time.monotonic()
            try:
                cluster.smoke()
            finally:
                took = time.monotonic() - t0
                pids = [rp.pid for rp in cluster.procs.values()]
    text = str(info.value)
    assert took < smoke_s + 10, took
    assert re.match(rf"smoke request \(stream=False\) through the router http://127\.0\.0\.1:\d+: no answer within "
                    rf"{smoke_s} s \(\$\.config\.timeouts\.smoke_s\)\n  KV engine mooncake; bootstrap prefill_0 "
                    rf"127\.0\.0\.1:{cfg.kv_transfer.bootstrap_port}\n", text), text
    assert "  decode decode_0 on node 127.0.0.1: sglang:num_decode_transfer_queue_reqs 1\n" in text
    assert "Read timed out" not in text and "decode decode_0 on node 127.0.0.1 logged (" in text
    assert not [p for p in pids if alive(p)]


@pytest.mark.integration
def test_a_stream_that_keeps_trickling_ends_at_the_deadline_not_per_read():
    """The smoke request's deadline bounds the whole stream (a real HTTP server sending an event every 0.2 s,
    chunked as the router streams)."""
    import http.server
    import threading
    import time

    import requests

    from pytest_sglang_pd.worker_http import body_within

    class Trickle(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for _ in range(50 if self.path == "/long" else 5):
                self.wfile.write(b"a\r\ndata: {}\n\n\r\n")
                self.wfile.flush()
                time.sleep(0.2)
            self.wfile.write(b"0\r\n\r\n")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        started = time.monotonic()
        with pytest.raises(requests.Timeout):
            body_within(requests.get(url + "long", stream=True, timeout=(5, 5)), started + 1.0)
        assert time.monotonic() - started < 2.0  # each read is quick; the whole stream is what ran out
        assert body_within(requests.get(url + "short", stream=True, timeout=(5, 5)),
                           time.monotonic() + 30).count("data:") == 5  # a stream that ends in time is read whole
    finally:
        server.shutdown()
