"""A SIGTERM (a Jenkins abort, `kill`, a Slurm time limit) made a KeyboardInterrupt, as Ctrl-C is, so that what the
suite or `sglang-pd` started is stopped on the way out."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

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
