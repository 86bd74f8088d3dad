"""Data parallelism in the simulator (sim/dp.py): SGLang's DP flags and their errors, the load-balance methods, the
DP-attention cost model and the lockstep loop, per-rank load and DP metrics."""

from __future__ import annotations

import asyncio
import time

import pytest

from pytest_sglang_pd import prom
from pytest_sglang_pd.sim import catalog, loads
from pytest_sglang_pd.sim.dp import IDLE, Balancer, DPAttentionModel, DPGroup
from pytest_sglang_pd.sim.launch_server import parse_args
from pytest_sglang_pd.sim.perf_model import PerfModel
from pytest_sglang_pd.sim.scheduler import Rejected, Sequence
from pytest_sglang_pd.sim.worker import SimWorker

DEEPSEEK = catalog.MODELS["DeepSeek-R1"]
MI355X = catalog.GPUS["MI355X"]


def args_of(*flags: str):
    return parse_args(["--model-path", "deepseek-ai/DeepSeek-R1", "--tp", "8", *flags])


def worker_of(*flags: str) -> SimWorker:
    return SimWorker(args_of(*flags), MI355X, DEEPSEEK)


# ------------------------------------------------------------------------------------------------ the flags

def test_deprecated_dp_attention_flags_resolve_to_attn_dp_size(capsys):
    args = args_of("--dp-size", "4", "--enable-dp-attention", "--disaggregation-mode", "decode")
    assert (args.attn_dp_size, args.dp_size, args.enable_dp_attention) == (4, 1, False)
    assert args.chunked_prefill_size == 16384 // 4  # MI355X's default chunk; SGLang divides it among the ranks
    assert args.load_balance_method == "round_robin"  # auto on a PD decode
    err = capsys.readouterr().err
    assert "'--enable-dp-attention' is deprecated" in err and "adjusted from 16384 to 4096" in err
    new = args_of("--attention-data-parallel-size", "4", "--disaggregation-mode", "prefill")
    assert (new.attn_dp_size, new.load_balance_method) == (4, "follow_bootstrap_room")  # auto on a PD prefill
    assert args_of("--attn-dp-size", "2", "--load-balance-method", "total_tokens").load_balance_method == "total_tokens"


@pytest.mark.parametrize("flags, message", [
    (("--dp-size", "2", "--attn-dp-size", "4"), "--dp-size 2 with --attn-dp-size 4: data-parallel replicas combined "
                                               "with attention data parallelism are not supported."),
    (("--attn-dp-size", "0"), "--attn-dp-size must be positive (got 0)."),
    (("--attn-dp-size", "3"), "tp_size must be divisible by attn_dp_size (--tp-size 8, --attn-dp-size 3)"),
    (("--disaggregation-mode", "prefill", "--disaggregation-transfer-backend", "fake"),
     "Prefill server does not support 'fake' as the transfer backend"),
    (("--load-balance-method", "shortest_queue"), "invalid choice: 'shortest_queue'"),
])
def test_dp_flags_refused_with_sglangs_message(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        args_of(*flags)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------- the model

def test_one_rank_dp_model_gives_the_base_model_times():
    base = PerfModel(MI355X, DEEPSEEK, 8)
    one = DPAttentionModel(base, 1)
    assert one.step([one.decode_load(64, 64 * 2000)])[0] == pytest.approx(base.decode_step_seconds(64, 64 * 2000))
    chunks = [(1024, 0), (512, 512)]
    assert one.step([one.prefill_load(chunks)])[0] == pytest.approx(base.prefill_seconds(chunks))
    assert one.kv_capacity_tokens(0.88) == base.kv_capacity_tokens(0.88)


def test_lockstep_step_lasts_as_long_as_the_slowest_rank_and_idle_ranks_still_run():
    model = DPAttentionModel(PerfModel(MI355X, DEEPSEEK, 8), 4)
    busy, light = model.decode_load(64, 64 * 4000), model.decode_load(8, 8 * 4000)
    seconds, own = model.step([busy, light, light, IDLE])
    assert seconds == pytest.approx(max(own) + model.base.step_overhead_s)
    assert own[0] == max(own) > own[1] == own[2] > own[3] > 0  # the idle rank runs the MoE weights all the same
    # the same 88 tokens balanced: a shorter step than with one rank doing most of them
    balanced = model.decode_load(22, 22 * 4000)
    assert model.step([balanced] * 4)[0] < model.step([model.decode_load(82, 82 * 4000), model.decode_load(2, 8000),
                                                        model.decode_load(2, 8000), model.decode_load(2, 8000)])[0]


def test_dp_attention_shortens_long_context_decode_and_multiplies_the_kv_pool():
    """MLA keeps a full latent KV per attention-TP rank: with TP8 every GPU reads every sequence's KV; DP8 reads
    only its rank's, and each rank holds its own pool."""
    base = PerfModel(MI355X, DEEPSEEK, 8)
    dp8 = DPAttentionModel(base, 8)
    batch, context = 256, 256 * 8000
    tp_step = base.decode_step_seconds(batch, context)
    dp_step = dp8.step([dp8.decode_load(batch // 8, context // 8)] * 8)[0]
    every_gpu_reads_all_kv_s = context * DEEPSEEK.kv_bytes_per_token / base.decode_bytes_per_s_per_gpu
    assert tp_step - dp_step == pytest.approx(every_gpu_reads_all_kv_s * 7 / 8)  # DP8 reads an eighth of it
    assert dp_step < 0.6 * tp_step
    assert 8 * dp8.kv_capacity_tokens(0.88) == pytest.approx(8 * base.kv_capacity_tokens(0.88), rel=1e-6)


# -------------------------------------------------------------------------------------------- the balancer

def seq(room: int | None = None, routed: int | None = None) -> Sequence:
    return Sequence("r", [1] * 10, 4, 14, room=room, routed_dp_rank=routed)


def test_balancer_methods_pick_ranks_as_sglangs_controller():
    ranks = worker_of("--attn-dp-size", "4").ranks
    rr = Balancer("round_robin", ranks)
    assert [rr.pick(seq()) for _ in range(6)] == [0, 1, 2, 3, 0, 1]
    room = Balancer("follow_bootstrap_room", ranks)
    assert [room.pick(seq(room=r)) for r in (0, 5, 10, 0)] == [0, 1, 2, 0]  # every fake request (room 0): rank 0
    assert rr.pick(seq(routed=3)) == 3 and room.pick(seq(room=1, routed=2)) == 2  # routed_dp_rank wins
    with pytest.raises(Rejected, match="DP rank 4 is not active"):
        rr.pick(seq(routed=4))
    with pytest.raises(Rejected, match="bootstrap_room should not be None"):
        room.pick(seq())
    ranks[0].reserved, ranks[1].admitted_count = 100, 1
    assert Balancer("total_requests", ranks).pick(seq()) == 0  # 0 requests on rank 0 (tokens do not count)
    assert Balancer("total_tokens", ranks).pick(seq()) == 2  # fewest tokens, then fewest requests


# ---------------------------------------------------------------------------------------- the lockstep loop

def test_lockstep_loop_runs_idle_batches_and_reports_the_imbalance():
    worker = worker_of("--attn-dp-size", "2", "--disaggregation-mode", "decode", "--sim-speedup", "0.5")
    group = worker.scheduler
    assert isinstance(group, DPGroup) and len(group.ranks) == 2
    steps = []
    observe = group.on_step  # the worker's metrics
    group.on_step = lambda stats: (steps.append(stats), observe(stats))
    output_tokens = 6

    async def run() -> float:
        group.start()
        seqs = [Sequence(f"r{i}", [1] * 500, output_tokens, 520, routed_dp_rank=0) for i in range(4)]
        await asyncio.gather(*(group.reserve(s) for s in seqs))
        started = time.monotonic()
        for s in seqs:
            group.start_decode(s, started)  # the first token, then output_tokens - 1 decode steps
        while not all(s.finished for s in seqs):
            await asyncio.sleep(0.005)
        elapsed = time.monotonic() - started
        await group.stop()
        return elapsed

    elapsed = asyncio.run(run())
    assert [s.tokens for s in steps] == [[4, 0]] * (output_tokens - 1)
    assert all(s.imbalance_ratio == 2.0 and s.sync_wait_s[0] == 0 < s.sync_wait_s[1] for s in steps)
    model = group.lockstep
    expected = sum(model.step([model.decode_load(4, 4 * (500 + k)), IDLE])[0] for k in range(1, output_tokens)) / 0.5
    assert expected * 0.9 < elapsed < expected * 3 + 0.2
    text = worker.metrics.render({}, [{"num_running_reqs": 0}] * 2)
    samples = prom.parse(text)

    def value(name: str, **labels: str) -> float:
        return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())

    assert value("sglang:dp_attention_steps_total", dp_rank="1", rank_state="idle") == output_tokens - 1
    assert value("sglang:dp_attention_steps_total", dp_rank="0", rank_state="active") == output_tokens - 1
    assert value("sglang:dp_attention_tokens_total", dp_rank="1", kind="imbalance") == 4 * (output_tokens - 1)
    assert value("sglang:dp_attention_token_imbalance_ratio_count") == output_tokens - 1
    assert value("sglang:dp_attention_sync_wait_seconds_count", dp_rank="1") == output_tokens - 1


def test_loads_report_each_rank():
    worker = worker_of("--attn-dp-size", "4", "--max-running-requests", "1024")
    worker.ranks[2].reserved, worker.ranks[2].decoding = 300, [object()] * 3
    body = loads.v1_loads(worker, "core", None)
    assert [load["dp_rank"] for load in body["loads"]] == [0, 1, 2, 3]
    assert body["num_accelerators"] == 2 and body["version"] == "0.5.23"
    assert body["loads"][2]["num_running_reqs"] == 3 and body["loads"][2]["num_used_tokens"] == 300
    assert {load["max_running_requests"] for load in body["loads"]} == {256}  # --max-running-requests per rank
    assert [load["dp_rank"] for load in loads.v1_loads(worker, None, "3")["loads"]] == [3]
    assert "disaggregation" in loads.v1_loads(worker, "all", None)["loads"][0]
    with pytest.raises(ValueError, match="Invalid include sections"):
        loads.v1_loads(worker, "core,bogus", None)


def test_dp_replicas_are_independent_full_copies():
    worker = worker_of("--dp-size", "2")
    group = worker.scheduler
    assert isinstance(group, DPGroup) and group.lockstep is None
    assert {rank.max_running for rank in group.ranks} == {1024}
    assert group.ranks[0].capacity_tokens == PerfModel(MI355X, DEEPSEEK, 8).kv_capacity_tokens(0.88)
    assert [(labels["dp_rank"], labels["tp_rank"]) for labels in worker.metrics.rank_labels] == [("0", "0"), ("1", "0")]
    attention = worker_of("--attn-dp-size", "4").metrics.rank_labels  # each rank exported by its first TP rank
    assert [(labels["dp_rank"], labels["tp_rank"]) for labels in attention] == [("0", "0"), ("1", "2"), ("2", "4"),
                                                                               ("3", "6")]


# ------------------------------------------------------------------------------------ decode alone, planned

def test_a_decode_alone_test_is_planned_straight_to_the_decode_worker_and_refused_for_gsm8k():
    from pytest_sglang_pd import config, plan
    from selftests.configs import raw

    data = raw("local-sim.json")
    tests = data["benchmark_params"]["llama-8b"]["inference_tests"]
    tests["alone"] = {"data_set_name": "random", "mode": "decode_alone", "max_concurrency": "1024",
                      "bench_client": "sglang"}
    cfg = config.from_dict(data, user="u")
    assert [t.decode_alone for t in cfg.model("llama-8b").tests][-1]
    dep = plan.plan(cfg, "llama-8b", run_id="r")
    argv = next(p.argv for p in dep.bench if p.key == "bench_alone_c1024")
    decode = dep.servers("decode")[0]
    assert argv[argv.index("--port") + 1] == str(decode.port) and argv[-1] == "--fake-prefill"
    tests["gsm8k"]["mode"] = "decode_alone"
    with pytest.raises(config.ConfigError, match=r"gsm8k.mode: decode_alone measures decode throughput"):
        config.from_dict(data, user="u")


# ------------------------------------------------------------------------------------------ over real HTTP

@pytest.mark.integration
@pytest.mark.parametrize("package", ["sglang-router", "smg"])  # 0.3.2 polls /get_load, smg /v1/loads
def test_attn_dp_decode_behind_the_real_router_serves_and_reports_four_ranks(tmp_path, package):
    import requests
    from concurrent.futures import ThreadPoolExecutor

    from selftests.configs import smg_python
    from selftests.live import sim_cluster

    router = {"package": "smg", "python": smg_python()} if package == "smg" else None
    with sim_cluster(tmp_path, 1, 1, backend="tcp", worker_args=["--sim-speedup", "20"],
                     decode_args=["--tp", "4", "--attn-dp-size", "4"], router=router) as cluster:
        decode = cluster.deployment.role("decode")[0].url
        body = {"text": "one two three " * 30, "sampling_params": {"max_new_tokens": 8, "ignore_eos": True}}
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: requests.post(cluster.router_url + "/generate", json=body, timeout=60),
                                    range(16)))
        assert [a.status_code for a in answers] == [200] * 16, answers[0].text
        assert {a.json()["meta_info"]["completion_tokens"] for a in answers} == {8}
        body = requests.get(decode + "/v1/loads", params={"include": "core"}, timeout=5).json()
        assert [load["dp_rank"] for load in body["loads"]] == [0, 1, 2, 3] and body["num_accelerators"] == 1
        assert len(requests.get(decode + "/get_load", timeout=5).json()) == 4
        info = requests.get(decode + "/server_info", timeout=5).json()
        assert (info["attn_dp_size"], info["enable_dp_attention"], info["load_balance_method"]) == (4, True, "round_robin")
        samples = prom.fetch(decode + "/metrics")
        scheduled = {s.labels["dp_rank"]: s.value for s in samples
                     if s.name == "sglang:dp_attention_tokens_total" and s.labels["kind"] == "scheduled"}
        assert sorted(scheduled) == ["0", "1", "2", "3"] and all(v > 0 for v in scheduled.values()), scheduled
        assert sum(scheduled.values()) == 16 * 7  # the decode steps' tokens (the first token comes with the KV)


@pytest.mark.integration
def test_decode_alone_runs_at_batch_1024_on_the_simulator(tmp_path, pytester):
    """The seed's benchmark mode: 1024 streams straight to the decode worker with the fake bootstrap host; its
    running batch (polled in /v1/loads while the suite runs) reaches 1024 and the figures are in results.json."""
    import json

    from selftests.configs import REPO, sim_config
    from selftests.live import running_batch_peak

    config = sim_config(tmp_path, tests=("bench_serv_random",))
    data = json.loads(config.read_text())
    data["config"]["sim"]["speedup"] = "0.1"  # 10x slower steps: the simulator keeps up with 1024 streams on 2 cores
    data["benchmark_params"]["llama-8b"]["inference_tests"] = {"decode_alone": {
        "data_set_name": "random", "mode": "decode_alone", "num_prompts": "1024", "max_concurrency": "1024",
        "input_length": "128", "output_length": "32", "random_range_ratio": "1", "warmup_requests": "0",
        "expected_results": {"auto": {"output_throughput": {"min": "1000"}}}}}
    config.write_text(json.dumps(data))
    decode = f"http://127.0.0.1:{data['config']['decode_serv_port']}"
    with running_batch_peak(decode) as peak:
        out = pytester.runpytest_subprocess(str(REPO / "pytest_sglang_pd" / "suite" / "test_inference.py"),
                                            f"--cluster-config={config}", f"--results-dir={tmp_path / 'r'}",
                                            "--run-id=run", "-p", "no:cacheprovider", timeout=600)
    assert out.ret == 0, out.stdout.str()
    run = json.loads((tmp_path / "r" / "run" / "results.json").read_text())
    test = run["tests"][0]
    metrics = test["metrics"]
    assert metrics["completed"] == 1024 and metrics["steady_peak_concurrency"] >= 1000, metrics
    assert peak[0] >= 1000, f"the decode worker's running batch peaked at {peak[0]}"
    assert "fake prefill" in test["command"] and metrics["output_throughput"] >= 1000
    # the steps ran (nearly) the whole batch: TPOT near the modelled step of 1024 sequences (mean context 128 + 16).
    # The client opens a connection per request, as bench_serving does, so the batch ramps up over the first steps
    # and their tokens come faster (measured 210-238 ms wall-clock; more when the 2 cores are shared). Speedup 0.1 is
    # time dilation 10x, so results.json has the figures rescaled to modelled time (23.7 ms for the step).
    assert run["time_dilation"] == 10
    step_ms = PerfModel(MI355X, catalog.MODELS["Llama-3.1-8B"], 1).decode_step_seconds(1024, 1024 * 144) * 1000
    assert 0.8 * step_ms < metrics["mean_tpot_ms"] < 3 * step_ms, (metrics["mean_tpot_ms"], step_ms)


@pytest.mark.integration
def test_decode_on_the_fake_backend_serves_without_kv_and_a_fake_prefill_refuses_to_start():
    import subprocess
    import sys

    import requests

    from selftests.one_worker import sim_worker

    with sim_worker(["--disaggregation-mode", "decode", "--disaggregation-transfer-backend", "fake",
                     "--sim-speedup", "20"]) as (url, proc):
        for extra in ({}, {"bootstrap_host": "2.2.2.2", "bootstrap_room": 0},  # every request on a fake decode
                      {"bootstrap_host": "127.0.0.1", "bootstrap_port": 1, "bootstrap_room": 7}):
            body = {"text": "a b c d", "sampling_params": {"max_new_tokens": 5}, **extra}
            answer = requests.post(url + "/generate", json=body, timeout=30)
            assert answer.status_code == 200 and answer.json()["meta_info"]["completion_tokens"] == 5, answer.text
        assert requests.get(url + "/server_info", timeout=5).json()["sim"]["engine"] is None  # no KV engine opened
        assert "KV transfer engine" not in proc.tail(50)
    with sim_worker(["--disaggregation-mode", "decode", "--disaggregation-transfer-backend", "tcp"]) as (url, _):
        body = {"text": "a b c d", "sampling_params": {"max_new_tokens": 3}}
        refused = requests.post(url + "/generate", json=body, timeout=30)  # a real backend needs the prefill's room
        assert refused.status_code == 400 and "no bootstrap_host" in refused.text
        faked = requests.post(url + "/generate", json={**body, "bootstrap_host": "2.2.2.2", "bootstrap_room": 0},
                              timeout=30)
        assert faked.json()["meta_info"]["completion_tokens"] == 3  # the fake host needs no KV on any backend
    done = subprocess.run([sys.executable, "-m", "pytest_sglang_pd.sim.launch_server", "--model-path", "llama-8b",
                           "--disaggregation-mode", "prefill", "--disaggregation-transfer-backend", "fake"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Prefill server does not support 'fake' as the transfer backend" in done.stderr


@pytest.mark.integration
def test_real_bench_serving_fake_prefill_measures_the_simulated_decode_alone(tmp_path, pytester):
    """SGLang 0.5.23's own bench_serving --fake-prefill, planned by the suite, straight to the simulated decode."""
    import json

    from selftests.configs import REPO, sim_config, tools_python

    config = sim_config(tmp_path, tests=("bench_serv_random",), base="local-sim-sglang-tools.json",
                        bench_python=tools_python())
    data = json.loads(config.read_text())
    data["benchmark_params"]["llama-8b"]["inference_tests"] = {"decode_alone": {
        "data_set_name": "random", "mode": "decode_alone", "bench_client": "sglang", "num_prompts": "64",
        "max_concurrency": "64", "input_length": "128", "output_length": "32", "random_range_ratio": "1"}}
    config.write_text(json.dumps(data))
    out = pytester.runpytest_subprocess(str(REPO / "pytest_sglang_pd" / "suite" / "test_inference.py"),
                                        f"--cluster-config={config}", f"--results-dir={tmp_path / 'r'}",
                                        "--run-id=run", "-p", "no:cacheprovider", timeout=300)
    assert out.ret == 0, out.stdout.str()
    run = json.loads((tmp_path / "r" / "run" / "results.json").read_text())
    test = run["tests"][0]
    assert "--fake-prefill" in test["command"]
    assert test["command"].split("--port ")[1].split()[0] == str(data["config"]["decode_serv_port"])  # not the router
    assert test["metrics"]["completed"] == 64 and test["metrics"]["kv_handoffs"] == 0
