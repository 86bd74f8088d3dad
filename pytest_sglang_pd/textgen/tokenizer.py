"""The deterministic word-level tokenizer of the simulated model, and its HuggingFace ``tokenizer.json`` twin.

The simulated workers count and produce tokens with it (and serve its files as the model's tokenizer);
the builtin benchmark client builds its prompts with it (``decode`` of bench_serving's random-ids runs of ids,
``random_text`` for shared prefixes), each of an exact token length.

The rule (a client can reproduce it without this module, or load ``tokenizer_dir()`` with
``PreTrainedTokenizerFast``):
1. Special tokens (``<unk> <s> </s> <|system|> <|user|> <|assistant|>``) are cut out of the raw
   text first; each is one token.
2. The rest is lower-cased and split by the regex ``\\w+|[^\\w\\s]+`` (whitespace is dropped), then
   every ASCII digit is split off as its own piece.
3. Each piece is looked up in the fixed vocabulary (ids: specials, digits, punctuation, English
   words, then generated consonant-vowel words up to ``VOCAB_SIZE``); a piece not in it is ``<unk>``.
``decode`` joins the tokens with single spaces (the HuggingFace default without a decoder), so
``encode(decode(ids)) == ids`` for every id. ``random_text(n, rng)`` joins n random vocabulary
words and encodes to exactly n tokens.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from functools import lru_cache
from pathlib import Path

VOCAB_SIZE = 8192
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>")
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
DIGITS = tuple("0123456789")
PUNCTUATION = tuple("!\"#$%&'()*+,-./:;<=>?@[\\]^`{|}~") + (
    "####", "###", "##", "...", "..", ").", "),", ".)", ".,", "?\"", ".\"", ",\"", "!\"", "\".",
    "\",", "**", "--", "->", "=>", "<=", ">=", "==", "!=", "):", "?)", "!)", ");", "'.", "',",
)
ENGLISH_WORDS = tuple(
    """
    the a an and or but if then else of to in on at by for with from as into over under after before
    is are was were be been being has have had do does did will would can could should may might must
    i you he she it we they me him her us them my your his its our their this that these those there
    here what which who whom whose when where why how all each every both few more most other some
    such no not only own same so than too very just now also again once up down out off about above
    below between through during without within along across behind beyond near since until while
    because although though whether either neither yes one two three four five six seven eight nine
    ten eleven twelve twenty thirty forty fifty hundred thousand million first second third last next
    many much half twice double triple times total sum left remaining each per more less fewer equal
    answer question answers questions step steps solve solution result number numbers count counts
    starts start started gives give gave gets get got buys buy bought sells sell sold finds find found
    loses lose lost eats eat ate makes make made takes take took puts put keeps keep kept adds add
    added receives receive received spends spend spent pays pay paid earns earn earned saves save
    saved collects collect collected shares share shared picks pick picked plants plant planted ends end bakes
    bake baked away more now then after each day days week weeks month months year years hour hours
    minute minutes money dollars dollar cents price cost costs store shop market school class friend
    friends family mother father brother sister teacher student students farmer baker
    apples apple oranges orange bananas banana cookies cookie cakes cake pies pie books book pencils
    pencil pens pen marbles marble stickers sticker cards card toys toy cars car balls ball eggs egg
    flowers flower trees tree shells shell candies candy cupcakes cupcake muffins muffin stamps stamp
    coins coin tickets ticket boxes box bags bag baskets basket bottles bottle cups cup plates plate
    tom anna john mary james linda robert susan michael sarah david emma liam olivia noah ava lucas
    mia ethan sophia mason isabella leo chloe jack grace ben lily sam zoe max ella
    how many does do have left now in total altogether
    user assistant system hello hi please thank thanks help write tell explain describe list give
    example story poem code function data model server request response token tokens text word words
    good great nice bad new old big small long short high low large little right wrong true false
    time way thing things people man woman child children world life work part place case point
    group problem fact hand eye home water room mother area house night light end side line name
    """.split()
)
_WORD_RE = re.compile(r"\w+|[^\w\s]+")
_DIGIT_SPLIT_RE = re.compile(r"[0-9]|[^0-9]+")
_SPECIAL_RE = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))


def _generated_words() -> itertools.chain[str]:
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    two = (a + b for a in syllables for b in syllables)
    three = (a + b + c for a in syllables for b in syllables for c in syllables)
    return itertools.chain(two, three)


@lru_cache(maxsize=1)
def _vocab() -> tuple[tuple[str, ...], dict[str, int], int]:
    """(id -> token, token -> id, id of the first word token)."""
    tokens: list[str] = list(SPECIAL_TOKENS) + list(DIGITS) + list(dict.fromkeys(PUNCTUATION))
    first_word = len(tokens)
    seen = set(tokens)
    for word in itertools.chain(ENGLISH_WORDS, _generated_words()):
        if len(tokens) >= VOCAB_SIZE:
            break
        if word not in seen:
            seen.add(word)
            tokens.append(word)
    return tuple(tokens), {t: i for i, t in enumerate(tokens)}, first_word


def vocab_size() -> int:
    return VOCAB_SIZE


def _pieces_with_spans(text: str) -> list[tuple[int, int, int]]:
    """(start, end, token id) of every token of ``text``, in order."""
    _, ids, _ = _vocab()
    out: list[tuple[int, int, int]] = []
    pos = 0
    for special in itertools.chain(_SPECIAL_RE.finditer(text), [None]):
        stop = special.start() if special else len(text)
        segment = text[pos:stop].lower()
        for word in _WORD_RE.finditer(segment):
            for part in _DIGIT_SPLIT_RE.finditer(word.group()):
                start = pos + word.start() + part.start()
                out.append((start, start + len(part.group()), ids.get(part.group(), UNK_ID)))
        if special:
            out.append((special.start(), special.end(), ids[special.group()]))
            pos = special.end()
    return out


def encode(text: str) -> list[int]:
    return [token_id for _, _, token_id in _pieces_with_spans(text)]


def decode(ids: list[int]) -> str:
    tokens, _, _ = _vocab()
    return " ".join([tokens[i] if 0 <= i < VOCAB_SIZE else tokens[UNK_ID] for i in ids])


def pieces(text: str) -> list[tuple[str, int]]:
    """``text`` cut into one (surface text, token id) per token; the surfaces concatenate to ``text``
    (whitespace goes with the token after it, trailing whitespace with the last token)."""
    spans = _pieces_with_spans(text)
    out: list[tuple[str, int]] = []
    previous_end = 0
    for index, (_, end, token_id) in enumerate(spans):
        stop = len(text) if index == len(spans) - 1 else end
        out.append((text[previous_end:stop], token_id))
        previous_end = stop
    return out


def random_text(num_tokens: int, rng: random.Random) -> str:
    """``num_tokens`` random vocabulary words joined by spaces: encodes to exactly ``num_tokens`` ids."""
    tokens, _, first_word = _vocab()
    return " ".join(tokens[rng.randrange(first_word, VOCAB_SIZE)] for _ in range(num_tokens))


CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def apply_chat_template(messages: list[dict]) -> str:
    """The text ``CHAT_TEMPLATE`` renders (with the generation prompt) for OpenAI-style messages."""
    parts = []
    for message in messages:
        content = message.get("content") or ""
        if isinstance(content, list):  # OpenAI content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        role = message.get("role", "user")
        role = role if f"<|{role}|>" in SPECIAL_TOKENS else "user"
        parts.append(f"<|{role}|>\n{content}\n")
    return "".join(parts) + "<|assistant|>\n"


def tokenizer_json() -> dict:
    """The HuggingFace ``tokenizers`` description of exactly this tokenizer."""
    tokens, ids, _ = _vocab()
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": ids[t], "content": t, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for t in SPECIAL_TOKENS
        ],
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [{"type": "Whitespace"}, {"type": "Digits", "individual_digits": True}],
        },
        "post_processor": None,
        "decoder": None,
        "model": {"type": "WordLevel", "vocab": {t: i for i, t in enumerate(tokens)}, "unk_token": "<unk>"},
    }


def tokenizer_config_json() -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "model_max_length": 131072,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }


def tokenizer_dir() -> Path:
    """The shipped directory with ``tokenizer.json`` and ``tokenizer_config.json``."""
    return Path(__file__).resolve().parent / "tokenizer"


def write_tokenizer_dir(directory: Path) -> None:
    """(Re)generate the shipped files; ``python -m pytest_sglang_pd.textgen.tokenizer`` runs this."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in (("tokenizer.json", tokenizer_json()), ("tokenizer_config.json", tokenizer_config_json())):
        (directory / name).write_text(json.dumps(content, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    write_tokenizer_dir(tokenizer_dir())
