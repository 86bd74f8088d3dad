"""How a later failure is told after the one that started it: the first error always comes first."""

from __future__ import annotations


def first_error_first(first: str | None, then: str, when: str = "while tearing down") -> str:
    """``first``, then ``then`` under a line saying when it happened (``then`` alone if nothing failed first)."""
    if not first:
        return then
    if not then:
        return first
    return f"{first}\n\nthen, {when}:\n{then}"
