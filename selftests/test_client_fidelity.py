"""The builtin client measures what the real bench_serving (sglang 0.5.23) measures: the same figure definitions
(its ``calculate_metrics`` on the same records), the same stream timing rules (first token, token intervals,
latency), the same prompts for the same seed (its ``random-ids`` dataset on the simulator's tokenizer). How close
the two come on a live cluster, and the client's CPU, is measured by ``benchmarks/client_fidelity.py``."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess

import pytest

from pytest_sglang_pd import plan
from pytest_sglang_pd.bench import builtin, sglang_tools, workloads
from pytest_sglang_pd.bench.http_stream import HTTPStatusError, StreamCut, _Chunked, _Response
from pytest_sglang_pd.bench.result import RequestRecord, aggregate
from pytest_sglang_pd.config import InferenceTest
from pytest_sglang_pd.textgen import tokenizer
from selftests.configs import tools_python
from selftests.live import sim_cluster

RANDOM = InferenceTest(name="random", kind="bench_serving", dataset="random", num_prompts=40, input_length=300,
                       output_length=24, random_range_ratio=0.5, seed=7, max_concurrency=(8,), warmup_requests=1)
# what bench_serving's calculate_metrics reads of a request: (ttft, itl, latency, output_len, prompt_len, success)
RECORDS = [
    (0.120, [0.010, 0.012, 0.011], 0.153, 4, 300, True),
    (0.095, [0.020] * 9, 0.275, 10, 151, True),
    (0.300, [], 0.300, 1, 260, True),  # one output token: no TPOT, no ITL
    (0.210, [0.004, 0.004, 0.030, 0.030, 0.030], 0.308, 7, 299, True),  # chunks of 2 and 3 tokens
    (0.0, [], 0.0, 0, 200, False),
    (0.051, [0.008] * 19, 0.203, 20, 180, True),
]
DURATION_S = 1.25


def _event(text: str, tokens: int) -> bytes:
    return json.dumps({"text": text, "output_ids": [], "meta_info": {"id": "r", "prompt_tokens": 5,
                                                                      "completion_tokens": tokens}}).encode()


def test_stream_timing_follows_bench_servings_rules() -> None:
    """TTFT at the first event with text; an event with n new tokens adds n intervals of its gap / n; an event
    without text, or without new tokens, adds nothing and does not restart the gap; latency ends at [DONE]."""
    record = RequestRecord(success=False, start_s=10.0)
    stream = builtin._Stream(record)
    arrivals = [(10.05, _event("", 0)), (10.10, _event("a", 1)), (10.12, _event("a b", 2)),
                (10.13, _event("a b", 2)), (10.14, _event("", 3)), (10.18, _event("a b c d e", 5)),
                (10.20, b"[DONE]")]
    for when, event in arrivals:
        assert stream.take([event], when)
    stream.finish("http://router")
    assert record.success and record.error == ""
    assert record.ttft_s == pytest.approx(0.10)
    assert record.itl_s == pytest.approx([0.02, 0.02, 0.02, 0.02])  # 10.10 -> 10.12 (1 token), -> 10.18 (3 tokens)
    assert record.latency_s == pytest.approx(0.20)
    assert (record.prompt_tokens, record.output_tokens, record.text) == (5, 5, "a b c d e")
    assert record.tpot_s == pytest.approx((0.20 - 0.10) / 4)


def test_a_stream_error_event_and_an_abort_fail_the_request() -> None:
    record = RequestRecord(success=False, start_s=0.0)
    assert not builtin._Stream(record).take([b'{"error": {"message": "decode failed"}}'], 1.0)
    assert record.error == 'error in the stream: {"message": "decode failed"}'
    aborted = RequestRecord(success=False, start_s=0.0)
    stream = builtin._Stream(aborted)
    abort = {"text": "x", "meta_info": {"completion_tokens": 1, "finish_reason": {"type": "abort", "message": "KV"}}}
    stream.take([json.dumps(abort).encode(), b"[DONE]"], 1.0)
    stream.finish("http://router")
    assert not aborted.success and aborted.error == "aborted by the server: KV"


def test_chunked_bodies_decode_whatever_the_bytes_boundaries() -> None:
    body = b"".join(b'data: {"n": %d}\n\n' % i for i in range(30))
    encoded = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 37]), body[i:i + 37]) for i in range(0, len(body), 37))
    encoded += b"0\r\n\r\n"
    for step in (1, 2, 5, 38, len(encoded)):
        decoder, out, ended = _Chunked(), b"", False
        for at in range(0, len(encoded), step):
            piece, ended = decoder.feed(encoded[at:at + step])
            out += piece
            if ended:  # what follows the last chunk (trailers) is not read
                break
        assert (out, ended) == (body, True), step


def test_a_response_cut_short_or_refused_says_so() -> None:
    loop = asyncio.new_event_loop()
    try:
        got: list[bytes] = []
        cut = _Response(b"", lambda data, now: got.append(data) or True, loop.create_future())
        cut.data_received(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\ndata: \r\n20\r\n{\"te")
        cut.connection_lost(None)
        assert got == [b'data: {"te'] and isinstance(cut.done.exception(), StreamCut)
        assert str(cut.done.exception()) == ("the server closed the connection before the end of the response: not "
                                             "enough data to satisfy transfer length header")
        refused = _Response(b"", lambda data, now: True, loop.create_future())
        refused.data_received(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 9\r\n\r\nno worker")
        error = refused.done.exception()
        assert isinstance(error, HTTPStatusError) and (error.status, error.body) == (503, b"no worker")
    finally:
        loop.close()


def test_random_prompts_are_bench_servings_random_ids_draws() -> None:
    """numpy seeded with the test's seed: input lengths, output lengths, then one offset per prompt; prompt i is
    the run of vocabulary ids from offset_i + i, decoded (so it encodes back to exactly its length)."""
    import numpy as np

    prompts = workloads.random_prompts(RANDOM)
    rng = np.random.RandomState(RANDOM.seed)
    inputs, outputs = rng.randint(150, 301, size=40), rng.randint(12, 25, size=40)
    offsets = rng.randint(0, tokenizer.vocab_size(), size=40)
    for i, prompt in enumerate(prompts):
        ids = tokenizer.encode(prompt.text)
        assert len(ids) == inputs[i] and prompt.max_new_tokens == outputs[i]
        assert ids[0] == (offsets[i] + i) % tokenizer.vocab_size() and ids == [
            (ids[0] + j) % tokenizer.vocab_size() for j in range(len(ids))]


CALCULATE_METRICS = """
import json, sys, numpy as np, random
from transformers import AutoTokenizer
from sglang.benchmark.serving import RequestFuncOutput, calculate_metrics
from sglang.benchmark.datasets.common import DatasetRow
from sglang.benchmark.datasets.random import sample_random_requests
given = json.load(sys.stdin)
tok = AutoTokenizer.from_pretrained(given["tokenizer"])
outputs = [RequestFuncOutput(generated_text="a " * n, success=ok, latency=lat, ttft=ttft, itl=itl, output_len=n,
                             start_time=i * 0.1) for i, (ttft, itl, lat, n, _, ok) in enumerate(given["records"])]
rows = [DatasetRow(prompt="", prompt_len=p, output_len=n) for (_, _, _, n, p, _) in given["records"]]
metrics, _ = calculate_metrics(rows, outputs, given["duration"], tok, "sglang")
random.seed(given["seed"]); np.random.seed(given["seed"])
t = given["test"]
prompts = sample_random_requests(t["input"], t["output"], t["n"], t["ratio"], tok, "", random_sample=False)
print(json.dumps({"metrics": {k: float(v) for k, v in vars(metrics).items()},
                  "prompts": [[r.prompt, r.output_len] for r in prompts]}))
"""


@pytest.mark.integration
def test_figures_and_prompts_are_those_of_the_real_bench_serving() -> None:
    given = {"records": RECORDS, "duration": DURATION_S, "tokenizer": str(tokenizer.tokenizer_dir()),
             "seed": RANDOM.seed,
             "test": {"input": RANDOM.input_length, "output": RANDOM.output_length, "n": RANDOM.num_prompts,
                      "ratio": RANDOM.random_range_ratio}}
    done = subprocess.run([tools_python(), "-c", CALCULATE_METRICS], input=json.dumps(given), capture_output=True,
                          text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = json.loads(done.stdout.strip().splitlines()[-1])
    records = [RequestRecord(success=ok, prompt_tokens=p, output_tokens=n, ttft_s=ttft, latency_s=lat, itl_s=itl)
               for ttft, itl, lat, n, p, ok in RECORDS]
    ours, totals = aggregate(records, DURATION_S)
    expected = theirs["metrics"]
    compared = [k for k in ours if k in expected]
    assert len(compared) >= 28  # completed, 4 throughputs, 6 statistics of ttft, tpot, itl and e2e latency
    for key in compared:
        assert ours[key] == pytest.approx(expected[key], rel=1e-9, abs=1e-9), key
    assert totals["total_input_tokens"] == expected["total_input"]
    assert totals["total_output_tokens"] == expected["total_output"]
    assert totals["concurrency"] == pytest.approx(expected["concurrency"])
    assert [[p.text, p.max_new_tokens] for p in workloads.random_prompts(RANDOM)] == theirs["prompts"]


@pytest.mark.integration
def test_same_seed_same_lengths_from_both_clients_on_the_simulator(tmp_path) -> None:
    """The builtin client and bench_serving (the command the suite plans) send the same prompt and output lengths,
    request by request, as the server counts them."""
    fast = ["--sim-speedup", "20", "--sim-kv-payload-bytes-per-token", "64"]
    with sim_cluster(tmp_path, 1, 1, worker_args=fast) as cluster:
        ours = builtin.run(cluster.router_url, RANDOM, 8, timeout_s=120)
        argv = list(plan.bench_serving_argv(cluster.deployment, RANDOM, 8, str(tokenizer.tokenizer_dir())))
        argv[0] = tools_python()
        output = plan.bench_output_path(cluster.deployment, RANDOM, 8)
        os.makedirs(os.path.dirname(output), exist_ok=True)
        done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                              timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        with open(output) as f:
            theirs = sglang_tools.parse_bench_serving_line(sglang_tools.last_json_line(f.read(), output),
                                                           num_prompts=RANDOM.num_prompts)
    assert ours.failed == 0 and theirs.failed == 0, (ours.errors, theirs.errors)
    lengths = [[(r.prompt_tokens, r.output_tokens) for r in result.records] for result in (ours, theirs)]
    assert lengths[0] == lengths[1]
    assert len(set(lengths[0])) > 30  # distinct draws, not one length repeated
