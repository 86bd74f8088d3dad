"""Unit tests of the simulator's pure parts and the text it shares with the load generator (textgen/):
tokenizer, arithmetic, output plan, radix cache, catalog, performance model, faults, flags."""

from __future__ import annotations

import asyncio
import json
import random
import re

import pytest

from pytest_sglang_pd import prom
from pytest_sglang_pd.sim import catalog
from pytest_sglang_pd.sim.faults import Faults
from pytest_sglang_pd.sim.launch_server import parse_args
from pytest_sglang_pd.sim.metrics import RanBatch, WorkerMetrics, batch_counters, modelled_tpot_s
from pytest_sglang_pd.sim.output import answer_text, plan_output
from pytest_sglang_pd.sim.pd import HandoffError, build_payload, payload_length, verify_payload
from pytest_sglang_pd.sim.perf_model import PerfModel
from pytest_sglang_pd.sim.radix_cache import RadixCache
from pytest_sglang_pd.sim.scheduler import WINDOW_S, BatchStats, Scheduler, Sequence
from pytest_sglang_pd.textgen import arithmetic, tokenizer

SAMPLES = [
    "Hello World! 123 apples, \"quoted\" (3+4)). #### 42\n\nQuestion: Tom has 12 apples.",
    "naïve café déjà-vu 1st 2nd x_y __init__ \t tabs ½ ² 三",
    "<|user|>\nhi there<|assistant|>\n",
]


def test_shipped_tokenizer_files_are_the_generated_ones():
    directory = tokenizer.tokenizer_dir()
    assert json.loads((directory / "tokenizer.json").read_text()) == tokenizer.tokenizer_json()
    assert json.loads((directory / "tokenizer_config.json").read_text()) == tokenizer.tokenizer_config_json()


def test_huggingface_tokenizers_give_the_same_ids():
    tokenizers = pytest.importorskip("tokenizers", reason="the `tokenizers` package is not installed")
    hf = tokenizers.Tokenizer.from_file(str(tokenizer.tokenizer_dir() / "tokenizer.json"))
    texts = SAMPLES + [tokenizer.random_text(300, random.Random(7))]
    for text in texts:
        assert hf.encode(text).ids == tokenizer.encode(text), text
    assert hf.get_vocab_size() == tokenizer.vocab_size()


def test_pretrained_tokenizer_fast_loads_the_directory():
    transformers = pytest.importorskip("transformers", reason="the `transformers` package is not installed")
    hf = transformers.PreTrainedTokenizerFast.from_pretrained(str(tokenizer.tokenizer_dir()))
    assert hf.encode(SAMPLES[0]) == tokenizer.encode(SAMPLES[0])
    messages = [{"role": "user", "content": "hi"}]
    rendered = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == tokenizer.apply_chat_template(messages)


def test_random_text_and_decode_round_trip_exactly():
    rng = random.Random(3)
    for n in (1, 17, 1000):
        ids = tokenizer.encode(tokenizer.random_text(n, rng))
        assert len(ids) == n
        assert tokenizer.encode(tokenizer.decode(ids)) == ids


def test_pieces_concatenate_to_the_text():
    text = " The answer is 42.\n\nQuestion: why"
    pieces = tokenizer.pieces(text)
    assert "".join(surface for surface, _ in pieces) == text
    assert [token_id for _, token_id in pieces] == tokenizer.encode(text)


def test_arithmetic_answers_are_correct_at_accuracy_one_and_deterministic():
    questions = arithmetic.make_questions(50, seed=1)
    assert questions == arithmetic.make_questions(50, seed=1)
    for question, answer in questions:
        prompt = arithmetic.few_shot_prompt(question, questions[:3])
        assert prompt.endswith(f"Question: {question}\nAnswer:")
        output = answer_text(prompt, seed=0, accuracy=1.0)
        assert output.endswith(f"The answer is {answer}.\n\nQuestion")
        assert not any(t == tokenizer.UNK_ID for t in tokenizer.encode(prompt + output))


def test_arithmetic_accuracy_is_the_configured_fraction():
    questions = arithmetic.make_questions(400, seed=2)
    correct = sum(int(re.findall(r"-?\d+", answer_text(f"Question: {q}\nAnswer:", 5, 0.6))[-1]) == a
                  for q, a in questions)
    assert 0.5 < correct / 400 < 0.7


def test_output_plan_stops_at_stop_string_and_respects_max_tokens():
    question, answer = arithmetic.make_questions(1, seed=4)[0]
    plan = plan_output(arithmetic.few_shot_prompt(question, []), 200, ["Question"], [], 0, 1.0)
    assert plan.finish_reason == {"type": "stop", "matched": "Question"}
    assert plan.text(plan.num_tokens).rstrip().endswith(f"The answer is {answer}.")
    assert "Question" not in plan.text(plan.num_tokens)
    plan = plan_output("no question here", 7, [], [], 0, 1.0)
    assert plan.num_tokens == 7 and plan.finish_reason == {"type": "length", "length": 7}
    plan = plan_output("no question here", 20, [], [plan.ids[3]], 0, 1.0)
    assert plan.num_tokens == 4 and plan.finish_reason["type"] == "stop"


def test_radix_cache_matches_pages_and_evicts_least_recent_first():
    cache = RadixCache(page_size=4)
    cache.insert(list(range(10)))
    assert cache.size == 8
    assert cache.match_prefix(list(range(7)) + [99]) == 4
    cache.insert(list(range(6)) + [50, 51, 52, 53])
    assert cache.match_prefix(list(range(6)) + [50, 51]) == 8
    assert cache.evict(1) == 2  # the older leaf [6, 7]
    assert cache.match_prefix(list(range(8))) == 4
    assert RadixCache(enabled=False).match_prefix([1, 2]) == 0


def test_catalog_infers_profiles_and_lists_the_catalog_on_error():
    assert catalog.find_model(None, "/models/meta-llama/Llama-3.3-70B-Instruct").name == "Llama-3.3-70B"
    assert catalog.find_model(None, "deepseek-ai/DeepSeek-R1-0528").name == "DeepSeek-R1"
    with pytest.raises(ValueError, match="Llama-3.1-8B.*Qwen3-32B"):
        catalog.find_model(None, "some/unknown-model")
    with pytest.raises(ValueError, match="MI300X"):
        catalog.find_gpu("V100")
    assert catalog.MODELS["Llama-3.3-70B"].kv_bytes_per_token == 327680


def test_perf_model_is_realistic_and_monotonic():
    model = PerfModel(catalog.GPUS["MI355X"], catalog.MODELS["Llama-3.3-70B"], 8)
    tpot_64 = model.decode_step_seconds(64, 64 * 1536)
    assert 0.008 < tpot_64 < 0.05
    assert model.prefill_seconds([(4096, 0)]) > model.prefill_seconds([(1024, 0)]) > model.prefill_seconds([(128, 0)])
    assert model.decode_step_seconds(64, 64 * 1536) > model.decode_step_seconds(1, 1536)
    assert model.transfer_seconds(1024) == pytest.approx(1024 * 327680 / (8 * 50e9) + 1e-3)
    with pytest.raises(ValueError, match="not enough memory"):
        PerfModel(catalog.GPUS["H100"], catalog.MODELS["Llama-3.3-70B"], 1).kv_capacity_tokens(0.9)


def test_faults_parse_and_reject_with_the_valid_list():
    faults = Faults()
    for spec in ("crash_after=3", "hang", "slow=2.5", "kv_fail_fraction=0.5", "refuse_bootstrap", "kv_stall",
                 "cut_streams=0.25", "slow_kv=4"):
        faults.apply(spec)
    assert faults.as_dict() == {"crash_after": 3, "hang": True, "slow": 2.5, "kv_fail_fraction": 0.5,
                                "refuse_bootstrap": True, "kv_stall": True, "cut_streams": 0.25, "slow_kv": 4.0}
    share = sum(faults.fails_transfer(room, 0) for room in range(2000)) / 2000
    assert 0.45 < share < 0.55
    cut = sum(faults.cuts_stream(n, 0) for n in range(2000)) / 2000
    assert 0.2 < cut < 0.3
    with pytest.raises(ValueError, match="cut_streams=F"):
        faults.apply("cut_streams=1.5")
    faults.apply("clear")
    assert faults.as_dict()["hang"] is False
    with pytest.raises(ValueError, match="valid: crash_after=N"):
        faults.apply("explode")


def test_flags_accept_sglang_aliases_and_warn_on_unknown(capsys):
    args = parse_args(["--model", "m", "--tp", "8", "--disaggregation-mode", "prefill", "--enable-torch-compile",
                       "--sim-fault", "hang", "--sim-fault", "slow=2"])
    assert (args.model_path, args.tp_size, args.disaggregation_mode) == ("m", 8, "prefill")
    assert args.sim_fault == ["hang", "slow=2"]
    assert "--enable-torch-compile" in capsys.readouterr().err
    assert parse_args(["--model-path", "m", "--tensor-parallel-size", "4"]).tp_size == 4


def test_payload_verification_names_the_mismatch():
    blob = build_payload(room=7, prompt_tokens=10, cached_tokens=2, first_token=42, bytes_per_token=64)
    assert len(blob) == payload_length(10, 64)
    header = verify_payload(blob, 7, 10, "decode")
    assert (header.cached_tokens, header.first_token) == (2, 42)
    corrupted = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(HandoffError, match="CRC-32"):
        verify_payload(corrupted, 7, 10, "decode")
    with pytest.raises(HandoffError, match="expected room 8"):
        verify_payload(blob, 8, 10, "decode")


def test_batch_stats_count_what_each_step_ran_and_the_window_forgets_old_steps():
    stats = BatchStats()
    stats.record(4, 4000, 0.010, now=100.0)
    stats.record(2, 2100, 0.020, now=100.5)
    assert (stats.steps, stats.reqs, stats.reqs_squared, stats.reqs_context) == (2, 6, 20, 4 * 4000 + 2 * 2100)
    assert stats.seconds == pytest.approx(0.030) and stats.reqs_seconds == pytest.approx(0.080)
    mean, peak = stats.window_mean_max(now=101.0)
    assert mean == pytest.approx((4 * 0.010 + 2 * 0.020) / 0.030) and peak == 4
    stats.record(1, 1000, 0.010, now=100.5 + WINDOW_S + 0.1)  # the first two steps left the window
    assert stats.window_mean_max(now=100.5 + WINDOW_S + 0.1) == (1.0, 1)
    assert stats.steps == 3  # the counters keep everything


def test_scheduler_reports_the_decode_batches_it_ran_as_sim_metrics():
    model = PerfModel(catalog.GPUS["MI355X"], catalog.MODELS["Llama-3.3-70B"], 8)

    async def scenario() -> Scheduler:
        scheduler = Scheduler(model, role="null", capacity_tokens=100_000, max_running=16, chunked_prefill_size=8192,
                              cache=RadixCache(1, enabled=False), policy="fcfs", time_scale=lambda: 1e-4)
        sequences = [Sequence(f"r{n}", list(range(1, 101)), tokens, 100 + tokens) for n, tokens in enumerate((4, 6, 8))]
        done = [asyncio.ensure_future(scheduler.prefill(seq)) for seq in sequences]
        scheduler.start()
        await asyncio.gather(*done)
        while not all(seq.finished for seq in sequences):
            await asyncio.sleep(0.001)
        await scheduler.stop()
        return scheduler

    scheduler = asyncio.run(scenario())
    decode = scheduler.batches["decode"]
    # first tokens come with the prefill; then batches of 3 (3 steps), 2 (2 steps), 1 (2 steps)
    assert (decode.steps, decode.reqs, decode.reqs_squared) == (7, 15, 3 * 9 + 2 * 4 + 2 * 1)
    assert (scheduler.batches["prefill"].steps, scheduler.batches["prefill"].reqs) == (1, 3)
    assert decode.reqs_seconds / decode.seconds == pytest.approx(
        sum(b * model.decode_step_seconds(b, c) for b, c in _decode_steps()) /
        sum(model.decode_step_seconds(b, c) for b, c in _decode_steps()))
    metrics = WorkerMetrics("null", "m", "none")
    metrics.watch_batches(lambda: [scheduler.batches])
    samples = [s for s in prom.parse(metrics.render({})) if s.labels.get("forward_mode") == "decode"]
    values = {s.name: s.value for s in samples}
    assert values["sim_forward_steps_total"] == 7 and values["sim_forward_batch_reqs_squared_total"] == 37
    assert values["sim_running_reqs_window_max"] == 3
    # a client differencing the counters gets the batch its tokens were computed in, and the model at that batch is
    # the mean time between the tokens the steps emitted (the step time is affine in batch and context)
    ran = RanBatch.between(dict.fromkeys(batch_counters([]), 0.0), batch_counters(prom.parse(metrics.render({}))))
    assert (ran.tokens, ran.steps, ran.mean_batch) == (15, 7, pytest.approx(37 / 15))
    token_mean_s = sum(b * model.decode_step_seconds(b, c) for b, c in _decode_steps()) / 15
    assert modelled_tpot_s(model, [ran]) == pytest.approx(token_mean_s)


def _decode_steps() -> list[tuple[int, int]]:
    """(batch, KV tokens) of the decode steps of the scenario above: prompts of 100, outputs of 4, 6, 8."""
    steps, generated = [], [1, 1, 1]
    for _ in range(7):
        running = [n for n, total in enumerate((4, 6, 8)) if generated[n] < total]
        steps.append((len(running), sum(100 + generated[n] for n in running)))
        for n in running:
            generated[n] += 1
    return steps


def test_running_requests_are_the_batch_in_forwards_not_the_kv_reservations():
    """sglang:num_running_reqs counts what runs forwards; a decode's reserved requests waiting for their KV are its
    transfer queue, not running (the DP balancer still counts them as the rank's load)."""
    model = PerfModel(catalog.GPUS["MI355X"], catalog.MODELS["Llama-3.3-70B"], 8)

    async def scenario() -> tuple[int, int, int, int]:
        scheduler = Scheduler(model, role="decode", capacity_tokens=100_000, max_running=16, chunked_prefill_size=8192,
                              cache=RadixCache(1, enabled=False), policy="fcfs", time_scale=lambda: 1e-4)
        scheduler.start()
        sequences = [Sequence(f"r{n}", list(range(1, 101)), 50, 150) for n in range(3)]
        await asyncio.gather(*(scheduler.reserve(seq) for seq in sequences))
        waiting_for_kv = (scheduler.num_running, scheduler.num_admitted)
        scheduler.start_decode(sequences[0], 0.0)
        decoding = (scheduler.num_running, scheduler.num_admitted)
        await scheduler.stop()
        return (*waiting_for_kv, *decoding)

    assert asyncio.run(scenario()) == (0, 3, 1, 3)
