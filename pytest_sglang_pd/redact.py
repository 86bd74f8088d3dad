"""Keeping secrets (the HF token, API keys) out of everything the suite prints, logs or reports."""

from __future__ import annotations

import re
from typing import Mapping, Sequence

MASK = "***"
SECRET_NAME_PATTERN = r"TOKEN|SECRET|PASSWORD|PASSWD|API_KEY|APIKEY|ACCESS_KEY|CREDENTIAL"  # in a variable name
_SECRET_NAME = re.compile(SECRET_NAME_PATTERN, re.IGNORECASE)
SECRET_FLAGS = ("--api-key", "--hf-token", "--token", "--admin-api-key")


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def env(values: Mapping[str, str]) -> dict[str, str]:
    return {k: (MASK if is_secret_name(k) else v) for k, v in values.items()}


def argv(args: Sequence[str]) -> list[str]:
    out: list[str] = []
    hide_next = False
    for a in args:
        if hide_next:
            out.append(MASK)
            hide_next = False
        elif a in SECRET_FLAGS:
            out.append(a)
            hide_next = True
        elif a.startswith(tuple(f + "=" for f in SECRET_FLAGS)):
            out.append(a.split("=", 1)[0] + "=" + MASK)
        else:
            out.append(a)
    return out
