"""The builtin client's request sets: random, generated shared prefix and gsm8k-shaped, from an InferenceTest."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..config import InferenceTest
from ..textgen import arithmetic, tokenizer

GSM8K_STOP = ("Question", "Assistant:", "<|separator|>")  # sglang.test.few_shot_gsm8k's stop strings
GSM8K_MAX_NEW_TOKENS = 512
INVALID_ANSWER = -9999999


@dataclass(frozen=True)
class Prompt:
    text: str
    max_new_tokens: int
    ignore_eos: bool = True
    stop: tuple[str, ...] = ()
    answer: int | None = None  # the correct answer (gsm8k)
    group: int | None = None  # shared-prefix group


def random_lengths(length: int, range_ratio: float, count: int, rng: np.random.RandomState) -> list[int]:
    """bench_serving's ``compute_random_lens``: uniform integers in [max(int(length * ratio), 1), length]."""
    return rng.randint(max(int(length * range_ratio), 1), length + 1, size=count).tolist()


def random_prompts(test: InferenceTest) -> list[Prompt]:
    """bench_serving's ``random-ids`` prompts (``sample_random_requests``, text prompts) on the simulator's tokenizer,
    draw for draw: numpy seeded with the test's seed draws the input lengths, the output lengths, then one offset per
    prompt; prompt i is the decoded ids ``(offset_i + i + j) % vocab_size`` for j < its input length. Same seed, same
    prompts as bench_serving given the simulator's tokenizer (it adds no special tokens, so no length is trimmed)."""
    rng = np.random.RandomState(test.seed)  # bench_serving's np.random.seed(args.seed)
    inputs = random_lengths(test.input_length, test.random_range_ratio, test.num_prompts, rng)
    outputs = random_lengths(test.output_length, test.random_range_ratio, test.num_prompts, rng)
    vocab = tokenizer.vocab_size()
    offsets = rng.randint(0, vocab, size=test.num_prompts).tolist()
    return [Prompt(tokenizer.decode([(offset + i + j) % vocab for j in range(n_in)]), n_out)
            for i, (offset, n_in, n_out) in enumerate(zip(offsets, inputs, outputs))]


def shared_prefix_prompts(test: InferenceTest) -> list[Prompt]:
    """gsp_num_groups groups of gsp_prompts_per_group prompts: one system prompt per group, then a
    question of its own (bench_serving's generated-shared-prefix layout), group by group."""
    rng = random.Random(test.seed)
    prompts = []
    for group in range(test.gsp_num_groups):
        system = tokenizer.random_text(test.gsp_system_prompt_len, rng)
        for _ in range(test.gsp_prompts_per_group):
            question = tokenizer.random_text(test.gsp_question_len, rng)
            prompts.append(Prompt(f"{system}\n\n{question}", test.gsp_output_len, group=group))
    return prompts


def gsm8k_prompts(test: InferenceTest) -> list[Prompt]:
    """``num_questions`` generated arithmetic word problems in few_shot_gsm8k's few-shot layout."""
    items = arithmetic.make_questions(test.num_questions + test.num_shots, test.seed)
    shots, questions = items[:test.num_shots], items[test.num_shots:]
    return [Prompt(arithmetic.few_shot_prompt(q, shots), GSM8K_MAX_NEW_TOKENS, ignore_eos=False,
                   stop=GSM8K_STOP, answer=a) for q, a in questions]


@lru_cache(maxsize=4)
def prompts_for(test: InferenceTest) -> tuple[Prompt, ...]:
    """The test's prompts, made once for its repeats (the same seed draws the same prompts)."""
    return tuple(_prompts(test))


def _prompts(test: InferenceTest) -> list[Prompt]:
    if test.kind == "gsm8k":
        return gsm8k_prompts(test)
    if test.dataset == "generated-shared-prefix":
        return shared_prefix_prompts(test)
    if test.dataset in ("random", "random-ids"):
        return random_prompts(test)
    raise ValueError(f"the builtin client cannot generate dataset {test.dataset!r} of test {test.name!r}: "
                     "use bench_client \"sglang\" for it")


def answer_value(text: str) -> int:
    """few_shot_gsm8k's rule: the last integer in the answer, else INVALID_ANSWER."""
    numbers = re.findall(r"\d+", text.replace(",", ""))
    return int(numbers[-1]) if numbers else INVALID_ANSWER
