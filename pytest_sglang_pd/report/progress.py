"""Live benchmark progress in the terminal (completed / total, elapsed), through pytest's terminal reporter."""

from __future__ import annotations

import time

import pytest

from ..bench import Progress


def terminal_progress(config: pytest.Config, label: str, every_s: float = 5.0) -> Progress:
    """A progress callback printing ``label: 37/128 requests, 12.4 s`` at most every ``every_s`` and at the end."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    last = [0.0]

    def show(done: int, total: int, elapsed_s: float) -> None:
        now = time.monotonic()
        if reporter is None or (done < total and now - last[0] < every_s):
            return
        last[0] = now
        line = f"  {label}: {done}/{total} requests, {elapsed_s:.1f} s"
        if capture is not None:
            with capture.global_and_fixture_disabled():
                reporter.write_line(line)
        else:
            reporter.write_line(line)

    return show
