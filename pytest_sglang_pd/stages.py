"""Live stages of a long step: a line as it starts, one every few seconds while it runs (what it waits on), and
one as it ends, with the elapsed time; the lines go to a ``Say`` the face provides (terminal, stdout)."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

HEARTBEAT_S = 5.0

Say = Callable[[str, int], None]
"""One line of what is going on and its level: 0 always shown (but with -q), 1 detail (-v)."""


def quiet(line: str, level: int) -> None:
    """A Say that shows nothing."""


def elapsed(seconds: float) -> str:
    """``41 s``, ``3 m 10 s``, ``1 h 02 m``."""
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"
    if s < 3600:
        return f"{s // 60} m {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} m"


@contextmanager
def stage(say: Say, name: str, status: Callable[[], str] = lambda: "", *,
          every_s: float = HEARTBEAT_S) -> Iterator[None]:
    """``name ...`` now, ``name: <status>, 41 s`` every ``every_s`` while the body runs, then ``name: done, 43 s``
    (or ``failed after``). The heartbeat runs in a thread, so a body that blocks (a parallel precheck) still tells."""
    t0 = time.monotonic()
    say(f"{name} ...", 0)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every_s):
            now = status()
            say(f"{name}: {now + ', ' if now else ''}{elapsed(time.monotonic() - t0)}", 0)

    ticker = threading.Thread(target=beat, name=f"stage {name}", daemon=True)
    ticker.start()
    try:
        yield
    except BaseException:
        stop.set()
        ticker.join()
        say(f"{name}: failed after {elapsed(time.monotonic() - t0)}", 0)
        raise
    stop.set()
    ticker.join()
    say(f"{name}: done, {elapsed(time.monotonic() - t0)}", 0)
