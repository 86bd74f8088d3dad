"""A SIGTERM (a Jenkins abort, `kill`, a Slurm time limit) made a KeyboardInterrupt, as Ctrl-C is, so that what the
suite or `sglang-pd` started is stopped on the way out; inside an event loop, a cancellation first."""

from __future__ import annotations

import asyncio
import signal
import threading
from contextlib import contextmanager
from typing import Any, Awaitable, Callable, Iterator, TypeVar

T = TypeVar("T")

SIGTERM_NAME = "received signal SIGTERM"


def interrupt_on_sigterm() -> Any:
    """SIGTERM raises KeyboardInterrupt(SIGTERM_NAME) from now on; the handler it replaces, to restore (None off the
    main thread, which signals never reach)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum, frame):
        raise KeyboardInterrupt(SIGTERM_NAME)

    return signal.signal(signal.SIGTERM, interrupt)


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """``interrupt_on_sigterm`` for the length of a block, the handler before it restored after."""
    previous = interrupt_on_sigterm()
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def exit_code(interrupt: KeyboardInterrupt) -> int:
    """A shell's exit status for the signal behind ``interrupt``: 128 + SIGTERM's number, else + SIGINT's."""
    return 128 + (signal.SIGTERM if str(interrupt) == SIGTERM_NAME else signal.SIGINT)


def loop_cancelled_on_sigterm(run: Callable[[Awaitable[T]], T], main: Awaitable[T]) -> T:
    """``run(main)`` (``uvloop.run``, ``asyncio.run``), a SIGTERM cancelling ``main`` between two steps of the loop
    and then, once the loop is closed, handed to the Python handler that was in place (``interrupt_on_sigterm``'s,
    which raises). Raised from inside the loop, that KeyboardInterrupt can leave a task half-stepped and the loop's
    shutdown waiting on it for ever. SIGINT needs nothing: asyncio's runner already cancels the main task for it."""
    previous = signal.getsignal(signal.SIGTERM)
    if not callable(previous) or threading.current_thread() is not threading.main_thread():
        return run(main)
    caught = False
    running: list[tuple[asyncio.AbstractEventLoop, asyncio.Task]] = []

    async def guarded() -> T:
        running.append((asyncio.get_running_loop(), asyncio.current_task()))
        if caught:  # a SIGTERM before the loop ran
            running[0][1].cancel()
        try:
            return await main
        finally:
            running.clear()

    def cancel(signum: int, frame: object) -> None:
        nonlocal caught
        caught = True
        for loop, task in running:
            loop.call_soon_threadsafe(task.cancel)

    signal.signal(signal.SIGTERM, cancel)
    try:
        return run(guarded())
    except asyncio.CancelledError:
        if not caught:
            raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        if caught:
            previous(signal.SIGTERM, None)
    raise KeyboardInterrupt(SIGTERM_NAME)  # the handler in place did not raise
