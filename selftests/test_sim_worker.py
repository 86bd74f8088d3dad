"""One sim worker over real HTTP: timing effects of the performance model, KV queueing, faults, signals,
multi-node ranks."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from pytest_sglang_pd.textgen import tokenizer
from selftests.configs import free_port
from selftests.one_worker import sim_worker

pytestmark = pytest.mark.integration  # sim worker processes over real HTTP

LLAMA_70B_TP8 = ["--sim-model-profile", "Llama-3.3-70B", "--tp", "8", "--sim-gpu", "MI300X"]


def stream(url: str, prompt: str, max_new_tokens: int) -> tuple[float, list[float], dict]:
    """(TTFT, arrival time of every chunk, last event) of one streamed /generate."""
    started = time.monotonic()
    body = {"text": prompt, "sampling_params": {"max_new_tokens": max_new_tokens, "ignore_eos": True}, "stream": True}
    times, last = [], {}
    with requests.post(url + "/generate", json=body, stream=True, timeout=60) as response:
        assert response.status_code == 200, response.text
        for line in response.iter_lines(decode_unicode=True):
            if line.startswith("data: {"):
                times.append(time.monotonic())
                last = json.loads(line[len("data: "):])
    return times[0] - started, times, last


def text(n: int, seed: int) -> str:
    return tokenizer.random_text(n, random.Random(seed))


def tpot(times: list[float], tokens: int) -> float:
    return (times[-1] - times[0]) / (tokens - 1)


def test_ttft_grows_with_prompt_length_and_shared_prefix_lowers_it():
    with sim_worker(LLAMA_70B_TP8) as (url, _):
        short, _, _ = stream(url, text(100, 1), 2)
        long, _, _ = stream(url, text(4000, 2), 2)
        assert long > short + 0.05, (short, long)
        prefix = text(4000, 3)
        first, _, _ = stream(url, prefix + " apples", 2)
        second, _, last = stream(url, prefix + " oranges", 2)
        assert last["meta_info"]["cached_tokens"] >= 4000
        assert second < first - 0.05, (first, second)


def test_tpot_grows_with_batch_size():
    args = ["--sim-model-profile", "DeepSeek-R1", "--tp", "8", "--sim-gpu", "MI355X"]
    with sim_worker(args) as (url, _):
        _, alone, _ = stream(url, text(20, 0), 30)
        with ThreadPoolExecutor(32) as pool:
            runs = list(pool.map(lambda i: stream(url, text(20, i + 1), 30), range(32)))
        batched = sorted(tpot(times, 30) for _, times, _ in runs)[16]
        assert batched > 1.5 * tpot(alone, 30), (tpot(alone, 30), batched)


def test_full_kv_cache_queues_requests_instead_of_failing():
    with sim_worker(["--max-total-tokens", "250", "--sim-speedup", "2"]) as (url, _):
        body = {"text": text(50, 0), "sampling_params": {"max_new_tokens": 100, "ignore_eos": True}}
        too_big = requests.post(url + "/generate", json={**body, "sampling_params": {"max_new_tokens": 240}},
                                timeout=10)
        assert too_big.status_code == 400 and "KV pool" in too_big.text
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(requests.post, url + "/generate", json=body, timeout=60) for _ in range(3)]
            waiting = 0
            while not all(f.done() for f in futures):
                waiting = max(waiting, requests.get(url + "/get_load", timeout=5).json()[0]["num_waiting_reqs"])
                time.sleep(0.02)
        assert [f.result().status_code for f in futures] == [200] * 3
        assert waiting >= 1


def test_crash_after_n_requests_exits_and_refuses_connections():
    with sim_worker(["--sim-fault", "crash_after=1", "--sim-speedup", "10"]) as (url, proc):
        assert requests.post(url + "/generate", json={"text": "hi"}, timeout=10).status_code == 200
        with pytest.raises(requests.ConnectionError):
            requests.post(url + "/generate", json={"text": "hi"}, timeout=10)
        assert proc.popen.wait(timeout=5) == 1
        assert "crash_after=1" in proc.tail()
        with pytest.raises(requests.ConnectionError):
            requests.get(url + "/health", timeout=2)


def test_hang_makes_health_time_out_until_cleared():
    with sim_worker(["--sim-fault", "hang"]) as (url, proc):
        with pytest.raises(requests.Timeout):
            requests.get(url + "/health", timeout=1)
        assert proc.popen.poll() is None
        assert requests.post(url + "/sim/fault", json={"spec": "clear"}, timeout=5).json()["hang"] is False
        assert requests.get(url + "/health", timeout=5).status_code == 200
        assert requests.post(url + "/generate", json={"text": "hi"}, timeout=10).status_code == 200


def test_slow_fault_multiplies_modelled_time():
    with sim_worker(LLAMA_70B_TP8) as (url, _):
        normal, _, _ = stream(url, text(4000, 10), 2)
        assert requests.post(url + "/sim/fault", json={"spec": "slow=4"}, timeout=5).json()["slow"] == 4
        slowed, _, _ = stream(url, text(4000, 11), 2)
        assert slowed > 2.5 * normal, (normal, slowed)
        bad = requests.post(url + "/sim/fault", json={"spec": "slow=0"}, timeout=5)
        assert bad.status_code == 400 and "valid:" in bad.json()["error"]


def test_sigterm_stops_a_decode_worker_with_its_engine_within_2s():
    args = ["--disaggregation-mode", "decode", "--disaggregation-transfer-backend", "mooncake"]
    with sim_worker(args) as (url, proc):
        info = requests.get(url + "/server_info", timeout=5).json()
        assert info["sim"]["engine_protocol"] == "tcp" and info["tp_size"] == 1 and info["version"]
        started = time.monotonic()
        proc.popen.terminate()
        assert proc.popen.wait(timeout=5) == 0
        assert time.monotonic() - started < 2.0


def test_weights_that_do_not_fit_fail_at_start_with_the_numbers():
    result = subprocess.run(
        [sys.executable, "-m", "pytest_sglang_pd.sim.launch_server", "--model-path", "meta-llama/Llama-3.3-70B",
         "--sim-gpu", "H100", "--port", str(free_port())], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "not enough memory" in result.stdout and "H100" in result.stdout


def test_rank_1_holds_until_rank_0_goes_away():
    init = f"127.0.0.1:{free_port()}"
    multi = ["--nnodes", "2", "--dist-init-addr", init]
    rank1 = subprocess.Popen([sys.executable, "-m", "pytest_sglang_pd.sim.launch_server", "--model-path",
                              "meta-llama/Llama-3.1-8B", *multi, "--node-rank", "1"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with sim_worker(multi) as (url, proc):
            assert requests.get(url + "/health", timeout=5).status_code == 200
            assert rank1.poll() is None
        assert rank1.wait(timeout=10) == 0
        assert "rank 0 went away" in rank1.stdout.read()
    finally:
        if rank1.poll() is None:
            rank1.kill()
            rank1.wait()


def _median_tpot_of_a_batch(url: str, streams: int, tokens: int) -> float:
    with ThreadPoolExecutor(streams) as pool:
        runs = list(pool.map(lambda i: stream(url, text(20, i), tokens), range(streams)))
    return sorted(tpot(times, tokens) for _, times, _ in runs)[streams // 2]


def test_an_fp8_worker_says_so_in_server_info_and_decodes_faster_than_bf16_at_the_same_batch():
    llama_h100 = ["--sim-model-profile", "Llama-3.3-70B", "--tp", "8", "--sim-gpu", "H100"]
    tpots = {}
    for flags in ([], ["--quantization", "fp8", "--kv-cache-dtype", "fp8_e4m3"]):
        with sim_worker([*llama_h100, *flags]) as (url, _):
            info = requests.get(url + "/server_info", timeout=5).json()
            dtype = info["sim"]["weight_dtype"]
            tpots[dtype] = _median_tpot_of_a_batch(url, 16, 40)
            capacity = info["max_total_num_tokens"]
            if flags:
                assert (info["quantization"], info["kv_cache_dtype"]) == ("fp8", "fp8_e4m3")
                assert info["sim"]["kv_dtype"] == "fp8"
                assert capacity > 2 * bf16_capacity  # half the KV bytes a token, and half the weights' memory
            else:
                assert (info["quantization"], info["kv_cache_dtype"], dtype) == (None, "auto", "bf16")
                bf16_capacity = capacity
    # modelled: 14.3 ms bf16 and 9.9 ms fp8 a step at batch 16 (the weights read per step halve)
    assert tpots["fp8"] < 0.85 * tpots["bf16"], tpots
