"""SIGTERM as an interrupt in `sglang-pd`: what it says, the exit status, the handler restored after."""

from __future__ import annotations

import os
import signal
import time

from pytest_sglang_pd import cli


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
