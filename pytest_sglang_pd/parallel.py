"""Per-node work at once: one function over many items in threads, every result and every error kept."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, TypeVar

T = TypeVar("T")
R = TypeVar("R")

MAX_THREADS = 32


def on_each(fn: Callable[[T], R], items: Iterable[T]) -> list[tuple[T, R | None, Exception | None]]:
    """(item, result, None) or (item, None, error) for every item, in the items' order; all run at once."""
    items = list(items)
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(len(items), MAX_THREADS)) as pool:
        futures = [pool.submit(fn, item) for item in items]
    out = []
    for item, future in zip(items, futures):
        error = future.exception()
        if error is not None and not isinstance(error, Exception):
            raise error  # KeyboardInterrupt and the like are not per-item failures
        out.append((item, None if error else future.result(), error))
    return out


def all_of(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """fn over every item at once; the results in order, or the first item's error once all have ended."""
    done = on_each(fn, items)
    for _, _, error in done:
        if error is not None:
            raise error
    return [result for _, result, _ in done]
