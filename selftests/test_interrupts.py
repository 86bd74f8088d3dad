"""SIGTERM as an interrupt: inside an event loop a cancellation first; in `sglang-pd` what it says, the exit status,
the handler restored after."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest
import uvloop

from pytest_sglang_pd import cli, interrupts


def test_an_interrupted_command_says_so_and_exits_with_the_signals_status(monkeypatch, capsys) -> None:
    def killed(args) -> int:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        return 0

    def ctrl_c(args) -> int:
        raise KeyboardInterrupt

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(cli, "cmd_validate", killed)
    assert cli.main(["validate", "cluster.json"]) == 128 + signal.SIGTERM
    assert "sglang-pd validate: interrupted (received signal SIGTERM)" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGTERM) is before
    monkeypatch.setattr(cli, "cmd_validate", ctrl_c)
    assert cli.main(["validate", "cluster.json"]) == 128 + signal.SIGINT
    assert "sglang-pd validate: interrupted (Ctrl-C)" in capsys.readouterr().err


def test_sigterm_cancels_the_benchmark_between_steps_then_reaches_the_handler_in_place() -> None:
    """A Jenkins abort mid-benchmark (the builtin client's loop): its tasks are cancelled, not broken mid-step by the
    plugin's KeyboardInterrupt (which left the loop's shutdown waiting for ever), and that KeyboardInterrupt comes
    after."""
    seen: list[str] = []

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"received signal {signal.Signals(signum).name}")

    async def benchmark() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        with pytest.raises(KeyboardInterrupt, match="^received signal SIGTERM$"):
            interrupts.loop_cancelled_on_sigterm(uvloop.run, benchmark())
        assert seen == ["cancelled"]
        assert signal.getsignal(signal.SIGTERM) is interrupt
    finally:
        signal.signal(signal.SIGTERM, previous)
