"""What the simulated model answers: the planned output tokens of one request, stop rules applied.

The output is deterministic: the answer to the last ``Question:`` of the prompt when it has one
(``answer_text``), then filler words drawn from a generator seeded by the prompt and ``--sim-seed``. Stop strings end the output at the token that completes the first match (its text
excluded), stop token ids at the first such token; otherwise it has ``max_new_tokens`` tokens.
The simulated model never emits EOS by itself (as with ``ignore_eos``).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from pytest_sglang_pd.textgen import tokenizer
from pytest_sglang_pd.textgen.arithmetic import last_question, solve


@dataclass(frozen=True)
class OutputPlan:
    surfaces: tuple[str, ...]  # text of each output token
    ids: tuple[int, ...]
    text_end: int  # chars of the joined surfaces the final text keeps (stop strings cut)
    finish_reason: dict

    @property
    def num_tokens(self) -> int:
        return len(self.ids)

    def text(self, tokens: int) -> str:
        """The output text after ``tokens`` tokens (never past a matched stop string)."""
        return "".join(self.surfaces[:tokens])[: self.text_end]


def _unit(question: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{question}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def answer_text(prompt: str, seed: int, accuracy: float) -> str | None:
    """The answer to the last gsm8k-shaped question of ``prompt`` (``textgen.arithmetic``); None when there is none.

    It solves the question step by step and ends ``... The answer is N.`` then ``\\n\\nQuestion`` (so the
    client's stop string ``Question`` ends the output with finish_reason stop). With probability
    ``1 - accuracy`` (deterministic per question and seed) the final number is off by 1 to 9.
    """
    question = last_question(prompt)
    if question is None:
        return None
    solved = solve(question)
    unit = _unit(question, seed)
    if solved is None:
        steps, value = ["Let me think step by step."], int(unit * 1000)
    else:
        steps, value = solved
    if unit >= accuracy:
        offset = 1 + int(unit * 1e6) % 9
        value = value + offset if int(unit * 1e7) % 2 else value - offset
    return " " + " ".join(steps) + f" The answer is {value}.\n\nQuestion"


def plan_output(prompt: str, max_new_tokens: int, stop: list[str], stop_token_ids: list[int], seed: int,
                accuracy: float) -> OutputPlan:
    answer = answer_text(prompt, seed, accuracy) or ""
    pieces = tokenizer.pieces(answer)[:max_new_tokens] if answer else []
    missing = max_new_tokens - len(pieces)
    if missing > 0:
        digest = hashlib.sha256(f"{seed}:{prompt}".encode()).digest()
        filler = tokenizer.random_text(missing, random.Random(digest))  # one vocabulary word per token
        pieces += list(zip((" " + word for word in filler.split(" ")), tokenizer.encode(filler)))
    surfaces = [surface for surface, _ in pieces]
    ids = [token_id for _, token_id in pieces]
    full = "".join(surfaces)
    finish: dict = {"type": "length", "length": len(ids)}
    end_tokens, text_end = len(ids), len(full)
    for position, token_id in enumerate(ids):
        if token_id in stop_token_ids:
            end_tokens, text_end = position + 1, len("".join(surfaces[:position]))
            finish = {"type": "stop", "matched": token_id}
            break
    for string in stop:
        index = full.find(string) if string else -1
        if 0 <= index < text_end:
            match_end, consumed, tokens = index + len(string), 0, 0
            while consumed < match_end:
                consumed += len(surfaces[tokens])
                tokens += 1
            if tokens <= end_tokens:
                end_tokens, text_end = tokens, index
                finish = {"type": "stop", "matched": string}
    return OutputPlan(tuple(surfaces[:end_tokens]), tuple(ids[:end_tokens]), text_end, finish)
