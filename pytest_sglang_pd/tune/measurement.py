"""What makes a measurement valid: prompts no earlier measurement on that deployment sent, which a prefix cache
therefore cannot serve; a point the cache served anyway is an invalid measurement, never a result."""

from __future__ import annotations


MAX_CACHE_HIT_RATE = 0.05  # above it a measurement timed the prefix cache, not the prefill of fresh prompts
MEASUREMENT = "fresh prompts per point, caches flushed"  # in the search's key: older results measured cached prompts


def cache_problem(hit_rate: float | None) -> str | None:
    """Why a measurement whose prompts the workers' prefix cache served is invalid; None when it is not."""
    if hit_rate is None or hit_rate != hit_rate or hit_rate <= MAX_CACHE_HIT_RATE:
        return None
    return (f"invalid measurement: cache_hit_rate {hit_rate:.3f} above {MAX_CACHE_HIT_RATE:g} (the workers' prefix "
            "cache served that share of the prompt tokens, so it timed cached prompts, not fresh ones)")
