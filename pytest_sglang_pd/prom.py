"""Reading Prometheus text exposition: a metric summed over its label sets, over a role's workers, and the
workers' KV transfer counters."""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import requests

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


def scrape(urls_by_role: Mapping[str, Sequence[str]], names: Sequence[str]) -> dict[str, dict[str, float]]:
    """Per role, each metric's total over the role's workers' /metrics; a metric no worker exposes is absent."""
    out: dict[str, dict[str, float]] = {}
    for role, urls in urls_by_role.items():
        sums: dict[str, float] = {}
        for url in urls:
            try:
                text = requests.get(f"{url}/metrics", timeout=5).text
            except requests.RequestException:
                continue
            for name in names:
                found = samples(text, name)
                if found:
                    sums[name] = sums.get(name, 0.0) + sum(v for _, v in found)
        out[role] = sums
    return out


KV_COUNTERS = ("handoffs", "bytes", "failures", "seconds")  # the workers' sglang:kv_transfer_<name>_total
TOKEN_COUNTERS = ("prompt_tokens", "cached_tokens")  # sglang:<name>_total: prompt tokens, those from the prefix cache


def kv_counters(urls_by_role: Mapping[str, Sequence[str]]) -> dict[str, dict[str, float]]:
    """Per role, the workers' KV transfer and prompt token counters by short name (absent where the workers have none)."""
    names = {f"sglang:kv_transfer_{n}_total": n for n in KV_COUNTERS}
    names.update({f"sglang:{n}_total": n for n in TOKEN_COUNTERS})
    scraped = scrape(urls_by_role, list(names))
    return {role: {names[metric]: value for metric, value in sums.items()} for role, sums in scraped.items()}
