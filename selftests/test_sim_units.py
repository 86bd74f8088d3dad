"""Unit tests of the simulator's pure parts and the text it shares with the load generator (textgen/):
tokenizer, arithmetic, output plan, radix cache, catalog, performance model, faults, flags."""

from __future__ import annotations

import json
import random
import re

import pytest

from pytest_sglang_pd.sim import catalog
from pytest_sglang_pd.sim.faults import Faults
from pytest_sglang_pd.sim.launch_server import parse_args
from pytest_sglang_pd.sim.output import answer_text, plan_output
from pytest_sglang_pd.sim.pd import HandoffError, build_payload, payload_length, verify_payload
from pytest_sglang_pd.sim.perf_model import PerfModel
from pytest_sglang_pd.sim.radix_cache import RadixCache
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
    args = parse_args(["--model", "m", "--tp", "8", "--disaggregation-mode", "prefill", "--enable-mixed-chunk",
                       "--sim-fault", "hang", "--sim-fault", "slow=2"])
    assert (args.model_path, args.tp_size, args.disaggregation_mode) == ("m", 8, "prefill")
    assert args.sim_fault == ["hang", "slow=2"]
    assert "--enable-mixed-chunk" in capsys.readouterr().err
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
