"""What the simulated model answers: the planned output tokens of one request, stop rules applied.

The output is deterministic: the arithmetic answer when the prompt has a ``Question:``
(``arithmetic.answer_text``), then filler words drawn from a generator seeded by the prompt and
``--sim-seed``. Stop strings end the output at the token that completes the first match (its text
excluded), stop token ids at the first such token; otherwise it has ``max_new_tokens`` tokens.
The simulated model never emits EOS by itself (as with ``ignore_eos``).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from pytest_sglang_pd.sim import tokenizer
from pytest_sglang_pd.sim.arithmetic import answer_text


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


def plan_output(prompt: str, max_new_tokens: int, stop: list[str], stop_token_ids: list[int], seed: int,
                accuracy: float) -> OutputPlan:
    answer = answer_text(prompt, seed, accuracy) or ""
    pieces = tokenizer.pieces(answer)[:max_new_tokens] if answer else []
    missing = max_new_tokens - len(pieces)
    if missing > 0:
        digest = hashlib.sha256(f"{seed}:{prompt}".encode()).digest()
        words = tokenizer.random_text(missing, random.Random(digest)).split(" ")
        pieces += [(" " + word, tokenizer.encode(word)[0]) for word in words]
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
