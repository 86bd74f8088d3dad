"""Reading Prometheus text exposition: the sum of one metric over its label sets."""

from __future__ import annotations

import re

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def samples(text: str, name: str) -> list[tuple[str, float]]:
    """(label block, value) of every sample of `name`."""
    out = []
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m and m.group(1) == name:
            try:
                out.append((m.group(2) or "", float(m.group(3))))
            except ValueError:
                continue
    return out


def total(text: str, name: str) -> float:
    return sum(v for _, v in samples(text, name))
