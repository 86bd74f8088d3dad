"""Sim PD clusters behind the REAL sglang router: the APIs, the KV handoff through the real engines,
the counters, the Done-when load (200 streamed requests at concurrency 32) and the PD faults."""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from pytest_sglang_pd import prom
from pytest_sglang_pd.bench import run_benchmark
from pytest_sglang_pd.cluster import LiveCluster
from pytest_sglang_pd.config import InferenceCase, InferenceTest
from pytest_sglang_pd.sim import catalog
from pytest_sglang_pd.sim.metrics import RanBatch, batch_counters, modelled_tpot_s
from pytest_sglang_pd.sim.perf_model import PerfModel
from pytest_sglang_pd.sim.pd import HEADER
from pytest_sglang_pd.textgen import tokenizer
from selftests.live import log_tail, sim_cluster

pytestmark = pytest.mark.integration  # sim worker processes behind the real router, KV through the real engines

PAYLOAD = 64  # --sim-kv-payload-bytes-per-token of these clusters
FAST = ["--sim-speedup", "20", "--sim-kv-payload-bytes-per-token", str(PAYLOAD)]


MB = 1024 * 1024


def metric(url: str, name: str) -> float:
    """Sum of all samples of ``sglang:<name>`` at ``url``/metrics (read with prometheus_client's parser), 0 if none."""
    return prom.total(prom.fetch(url + "/metrics"), f"sglang:{name}") or 0.0


def total(urls: list[str], name: str) -> float:
    return sum(metric(url, name) for url in urls)


def sse_events(response: requests.Response) -> list[dict]:
    assert response.status_code == 200, response.text
    events = [line[len("data: "):] for line in response.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def prompt_of(n: int, seed: int) -> str:
    import random
    return tokenizer.random_text(n, random.Random(seed))


def exercise_apis(cluster: LiveCluster) -> int:
    """/generate, /v1/completions, /v1/chat/completions, streamed and not; returns prompt tokens sent."""
    url, sent_tokens = cluster.router_url, 0
    for stream in (False, True):
        prompt = prompt_of(40, seed=int(stream))
        body = {"text": prompt, "sampling_params": {"max_new_tokens": 6, "ignore_eos": True}, "stream": stream}
        response = requests.post(url + "/generate", json=body, timeout=30, stream=stream)
        out = sse_events(response)[-1] if stream else response.json()
        assert out["meta_info"]["completion_tokens"] == 6 and out["meta_info"]["prompt_tokens"] == 40
        assert out["meta_info"]["finish_reason"] == {"type": "length", "length": 6}
        assert len(tokenizer.encode(out["text"])) == 6
        sent_tokens += 40

        body = {"model": "m", "prompt": prompt_of(25, seed=10 + stream), "max_tokens": 5, "stream": stream,
                "stream_options": {"include_usage": True}}
        response = requests.post(url + "/v1/completions", json=body, timeout=30, stream=stream)
        if stream:
            events = sse_events(response)
            assert "".join(e["choices"][0]["text"] for e in events if e["choices"])
            assert events[-1]["usage"]["completion_tokens"] == 5
        else:
            assert response.json()["usage"] == {"prompt_tokens": 25, "completion_tokens": 5, "total_tokens": 30,
                                                "prompt_tokens_details": {"cached_tokens": 0}}
        sent_tokens += 25

        messages = [{"role": "user", "content": "Question: Tom has 5 apples. Then Tom buys 3 more. "
                                                "How many apples does Tom have now?\nAnswer:"}]
        body = {"model": "m", "messages": messages, "max_tokens": 64, "stop": ["Question"], "stream": stream}
        response = requests.post(url + "/v1/chat/completions", json=body, timeout=30, stream=stream)
        if stream:
            events = sse_events(response)
            content = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
            assert events[-1]["choices"][0]["finish_reason"] == "stop"
        else:
            content = response.json()["choices"][0]["message"]["content"]
            assert response.json()["choices"][0]["finish_reason"] == "stop"
        assert content.strip().endswith("The answer is 8.")
        sent_tokens += len(tokenizer.encode(tokenizer.apply_chat_template(messages)))
    return sent_tokens


@pytest.mark.parametrize("backend", ["mooncake", "nixl", "tcp"])
def test_1p1d_apis_and_verified_handoffs(backend, tmp_path):
    with sim_cluster(tmp_path, 1, 1, backend=backend, worker_args=FAST) as cluster:
        ready = requests.get(cluster.router_url + "/readiness", timeout=5).json()
        assert ready["status"] == "ready"
        prompt_tokens = exercise_apis(cluster)
        requests_sent = 6
        prefill, decode = cluster.worker_urls["prefill"], cluster.worker_urls["decode"]
        # SGLang's names: the KV transfer histograms on the prefill side only
        assert total(prefill, "kv_transfer_latency_ms_count") == requests_sent
        assert total(prefill, "kv_transfer_total_mb_sum") * MB == pytest.approx(
            requests_sent * HEADER.size + prompt_tokens * PAYLOAD)
        assert total(decode, "kv_transfer_latency_ms_count") == 0
        assert total(decode, "num_requests_total") == requests_sent
        assert total(prefill + decode, "num_transfer_failed_reqs_total") == 0
        info = requests.get(cluster.worker_urls["decode"][0] + "/server_info", timeout=5).json()
        assert info["disaggregation_mode"] == "decode" and info["disaggregation_transfer_backend"] == backend
        assert info["sim"]["engine"] == backend and info["sim"]["simulated"] is True
        latency = [s for s in prom.fetch(prefill[0] + "/metrics") if s.name == "sglang:kv_transfer_latency_ms_count"]
        assert [(s.labels["engine_type"], s.labels["tp_rank"]) for s in latency] == [("prefill", "0")]


def test_2p2d_spreads_requests_and_counts_every_handoff(tmp_path):
    with sim_cluster(tmp_path, 2, 2, backend="mooncake", worker_args=FAST,
                     router_args=["--policy", "round_robin"]) as cluster:
        body = {"text": prompt_of(30, 1), "sampling_params": {"max_new_tokens": 4}}
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: requests.post(cluster.router_url + "/generate", json=body,
                                                          timeout=30).status_code, range(16)))
        assert codes == [200] * 16
        assert total(cluster.worker_urls["prefill"], "kv_transfer_latency_ms_count") == 16
        assert total(cluster.worker_urls["decode"], "num_requests_total") == 16
        assert total(cluster.worker_urls["prefill"], "kv_transfer_total_mb_sum") * MB == pytest.approx(
            16 * (HEADER.size + 30 * PAYLOAD))
        assert all(metric(url, "kv_transfer_latency_ms_count") > 0 for url in cluster.worker_urls["prefill"])
        assert all(metric(url, "num_requests_total") > 0 for url in cluster.worker_urls["decode"])


def test_200_streamed_requests_at_concurrency_32_all_verified_through_mooncake(tmp_path):
    with sim_cluster(tmp_path, 1, 1, backend="mooncake", worker_args=FAST) as cluster:
        def one(index: int) -> int:
            body = {"text": prompt_of(64, index), "sampling_params": {"max_new_tokens": 16, "ignore_eos": True},
                    "stream": True}
            events = sse_events(requests.post(cluster.router_url + "/generate", json=body, timeout=60, stream=True))
            return events[-1]["meta_info"]["completion_tokens"]

        with ThreadPoolExecutor(32) as pool:
            completions = list(pool.map(one, range(200)))
        assert completions == [16] * 200
        decode, prefill = cluster.worker_urls["decode"][0], cluster.worker_urls["prefill"][0]
        assert metric(prefill, "kv_transfer_latency_ms_count") == 200
        assert metric(decode, "num_transfer_failed_reqs_total") == metric(prefill, "num_transfer_failed_reqs_total") == 0
        assert metric(prefill, "kv_transfer_total_mb_sum") * MB == pytest.approx(200 * (HEADER.size + 64 * PAYLOAD))
        assert metric(decode, "num_decode_transfer_queue_reqs") == metric(decode, "num_decode_prealloc_queue_reqs") == 0


def test_failed_transfer_names_engine_and_peer(tmp_path):
    with sim_cluster(tmp_path, 1, 1, backend="mooncake", worker_args=FAST,
                     prefill_args=["--sim-fault", "kv_fail_fraction=1"]) as cluster:
        response = requests.post(cluster.router_url + "/generate", timeout=30,
                                 json={"text": "hello there", "sampling_params": {"max_new_tokens": 4}})
        assert response.status_code >= 500
        session = requests.get(cluster.worker_urls["decode"][0] + "/server_info", timeout=5).json()["sim"]["engine_session"]
        decode_log = log_tail(cluster, "decode_0", 50)
        assert re.search(rf"mooncake transfer to {re.escape(session)} failed", decode_log), decode_log
        assert f"mooncake transfer to {session} failed" in response.text, response.text
        failures = metric(cluster.worker_urls["prefill"][0], "num_transfer_failed_reqs_total")
        assert failures >= 1  # the router retries a failed request (5 times by default)
        assert metric(cluster.worker_urls["decode"][0], "num_transfer_failed_reqs_total") == failures
        assert metric(cluster.worker_urls["prefill"][0], "kv_transfer_latency_ms_count") == 0


def test_refused_bootstrap_aborts_with_connection_refused(tmp_path):
    with sim_cluster(tmp_path, 1, 1, backend="tcp", worker_args=FAST, prefill_args=["--sim-fault", "refuse_bootstrap"],
                     router_args=["--disable-retries"],
                     env={"SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT": "1"}) as cluster:
        body = {"text": "hello there", "sampling_params": {"max_new_tokens": 4}}
        response = requests.post(cluster.router_url + "/generate", json=body, timeout=30)
        assert response.status_code >= 500, response.text
        decode_log = log_tail(cluster, "decode_0", 30)
        bootstrap = cluster.deployment.servers("prefill")[0].bootstrap_port
        assert f"bootstrap server 127.0.0.1:{bootstrap} of the prefill refused" in decode_log
        assert "Connect call failed" in decode_log
        # the prefill never hears from the decode and gives the room up after the bootstrap timeout
        assert "KVPoll.Bootstrapping" in log_tail(cluster, "prefill_0", 30) + response.text


def test_decode_without_prefill_request_times_out_in_waiting_for_input(tmp_path):
    env = {"SGLANG_DISAGGREGATION_WAITING_TIMEOUT": "1"}
    with sim_cluster(tmp_path, 1, 1, backend="tcp", worker_args=FAST, env=env) as cluster:
        body = {"text": "hello there", "sampling_params": {"max_new_tokens": 4}, "bootstrap_host": "127.0.0.1",
                "bootstrap_port": cluster.deployment.servers("prefill")[0].bootstrap_port, "bootstrap_room": 12345}
        started = time.monotonic()
        response = requests.post(cluster.worker_urls["decode"][0] + "/generate", json=body, timeout=30)
        assert time.monotonic() - started < 10
        assert response.status_code == 500
        finish = response.json()["meta_info"]["finish_reason"]
        assert finish["type"] == "abort" and "KVPoll.WaitingForInput" in finish["message"]


def test_a_dilated_run_rescaled_matches_the_model_at_the_decode_batch_it_ran(tmp_path):
    """sim.speedup 0.5: the simulator's clock runs 2x slower than modelled time; run_benchmark rescales the builtin
    client's figures to modelled time, and the rescaled mean TPOT is within 5% of the perf model at the decode batch
    the decode worker says it ran over the benchmark (its sim_forward_* counters)."""
    test = InferenceTest("bench_serv_random", "bench_serving", "random", bench_client="builtin", num_prompts=48,
                         input_length=256, output_length=64, random_range_ratio=1.0)
    model = PerfModel(catalog.GPUS["MI355X"], catalog.MODELS["Llama-3.3-70B"], 8)
    with sim_cluster(tmp_path, 1, 1, worker_args=["--sim-model-profile", "Llama-3.3-70B", "--tp", "8"],
                     sim={"speedup": "0.5"}) as cluster:
        decode = cluster.worker_urls["decode"][0]
        before = batch_counters(prom.fetch(decode + "/metrics"))
        result = run_benchmark(cluster, InferenceCase(cluster.deployment.model, test, 16), timeout_s=300,
                               artifacts_dir=tmp_path / "bench", time_dilation=2.0)
        ran = RanBatch.between(before, batch_counters(prom.fetch(decode + "/metrics")))
    assert result.completed == 48 and result.time_dilation == 2.0
    # every token after a request's first came from a decode step (plus the warmup request's)
    assert 0 <= ran.tokens - 48 * 63 < 64 and 8 <= ran.mean_batch <= 16
    modelled_ms = modelled_tpot_s(model, [ran]) * 1e3
    assert result.metrics["mean_tpot_ms"] == pytest.approx(modelled_ms, rel=0.05), (result.metrics["mean_tpot_ms"], ran)
