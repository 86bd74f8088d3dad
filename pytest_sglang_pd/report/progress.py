"""Live lines in the terminal, through pytest's terminal reporter: the cluster's stages and benchmark progress.

Quiet with ``-q``, detail lines with ``-v``; written with output capture suspended and under one lock, so a
stage's heartbeat thread and the test never cut into each other's lines.
"""

from __future__ import annotations

import threading
import time

import pytest

from ..bench import Progress
from ..stages import Say, elapsed

_lock = threading.Lock()


def terminal_say(config: pytest.Config) -> Say:
    """A ``stages.Say`` on the terminal: level 0 lines unless -q, level 1 lines with -v."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    verbosity = config.option.verbose

    def say(line: str, level: int = 0) -> None:
        if reporter is None or verbosity < level:
            return
        with _lock:
            if capture is not None:
                with capture.global_and_fixture_disabled():
                    _write(reporter, line)
            else:
                _write(reporter, line)

    return say


def _write(reporter, line: str) -> None:
    """On a line of its own, also right after a test's progress letter."""
    reporter.ensure_newline()
    if getattr(getattr(reporter, "_tw", None), "width_of_current_line", 0):
        reporter.write("\n")
    reporter.write_line(f"  {line}")


def terminal_progress(config: pytest.Config, label: str, every_s: float = 5.0) -> Progress:
    """A progress callback printing ``label: 37/128 requests, 12.4 s, 3.0 req/s, about 30 s left`` at most every
    ``every_s`` and at the end."""
    say = terminal_say(config)
    last = [0.0]

    def show(done: int, total: int, elapsed_s: float) -> None:
        now = time.monotonic()
        if done < total and now - last[0] < every_s:
            return
        last[0] = now
        rate = done / elapsed_s if elapsed_s > 0 else 0.0
        settled = done >= max(2, total // 10)  # the first requests' rate says little of the rest
        left = f", about {elapsed((total - done) / rate)} left" if rate and settled and done < total else ""
        say(f"{label}: {done}/{total} requests, {elapsed_s:.1f} s, {rate:.1f} req/s{left}")

    return show
