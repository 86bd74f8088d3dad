"""GSM8K-shaped arithmetic word problems: the generator, sglang few_shot_gsm8k's few-shot layout, the solver.

Questions are short word problems built from four sentence forms (start, add, take away,
multiply), the same for the same seed. ``solve`` reads a question of that form back into its worked
steps and result: the builtin benchmark client asks them, the simulated model answers them.
"""

from __future__ import annotations

import json
import random
import re

NAMES = ("Tom", "Anna", "John", "Mary", "James", "Linda", "Sarah", "David", "Emma", "Liam", "Olivia", "Noah")
ITEMS = ("apples", "oranges", "cookies", "books", "pencils", "marbles", "stickers", "cards", "eggs",
         "flowers", "shells", "coins", "tickets", "cupcakes", "stamps")
_ADD_VERBS = ("buys", "finds", "gets", "receives", "collects")
_TAKE_VERBS = ("gives away", "loses", "sells", "eats", "shares")

_START = re.compile(r"(\w+) has (\d+) (\w+)")
_ADD = re.compile(r"(?:buys|finds|gets|receives|collects) (\d+) more")
_TAKE = re.compile(r"(?:gives away|loses|sells|eats|shares) (\d+)")
_TIMES = re.compile(r"ends up with (\d+) times as many")
_STEP = re.compile("|".join(p.pattern for p in (_ADD, _TAKE, _TIMES)))


def make_questions(n: int, seed: int) -> list[tuple[str, int]]:
    """``n`` word problems with their correct integer answers, the same for the same seed."""
    rng = random.Random(seed)
    questions = []
    for _ in range(n):
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        value = rng.randint(5, 60)
        sentences = [f"{name} has {value} {item}."]
        for _ in range(rng.randint(2, 3)):
            kind = rng.choice(("add", "take", "times")) if value < 200 else "take"
            if kind == "add":
                amount = rng.randint(2, 40)
                value += amount
                sentences.append(f"Then {name} {rng.choice(_ADD_VERBS)} {amount} more.")
            elif kind == "take" and value > 2:
                amount = rng.randint(1, value - 1)
                value -= amount
                sentences.append(f"Then {name} {rng.choice(_TAKE_VERBS)} {amount} of them.")
            else:
                factor = rng.randint(2, 4)
                value *= factor
                sentences.append(f"Then {name} ends up with {factor} times as many.")
        sentences.append(f"How many {item} does {name} have now?")
        questions.append((" ".join(sentences), value))
    return questions


def few_shot_prompt(question: str, shots: list[tuple[str, int]]) -> str:
    """sglang ``few_shot_gsm8k``'s layout: solved shots, then the open question."""
    solved = "".join(f"Question: {q}\nAnswer: The answer is {a}. #### {a}\n\n" for q, a in shots)
    return f"{solved}Question: {question}\nAnswer:"


def last_question(prompt: str) -> str | None:
    """The text of the last ``Question:`` in ``prompt`` (up to its ``Answer:``), if any."""
    index = prompt.rfind("Question:")
    if index < 0:
        return None
    return prompt[index + len("Question:"):].split("Answer:")[0].strip()


def solve(question: str) -> tuple[list[str], int] | None:
    """The worked steps and the result of a question in ``make_questions``' form, else None."""
    start = _START.search(question)
    if not start:
        return None
    value = int(start.group(2))
    steps = [f"{start.group(1)} starts with {value} {start.group(3)}."]
    for match in _STEP.finditer(question, start.end()):
        add, take, times = match.groups()
        if add:
            steps.append(f"{value} + {add} = {value + int(add)}.")
            value += int(add)
        elif take:
            steps.append(f"{value} - {take} = {value - int(take)}.")
            value -= int(take)
        else:
            steps.append(f"{value} * {times} = {value * int(times)}.")
            value *= int(times)
    return steps, value


def gsm8k_jsonl(n: int, seed: int) -> str:
    """``n`` of ``make_questions``' problems as a GSM8K test file: one ``{"question", "answer"}`` JSON line each,
    the answer its worked steps ending in ``#### N`` (what few_shot_gsm8k's --data-path reads)."""
    lines = []
    for question, value in make_questions(n, seed):
        steps, _ = solve(question)
        lines.append(json.dumps({"question": question, "answer": " ".join(steps) + f"\n#### {value}"}))
    return "\n".join(lines) + "\n"
