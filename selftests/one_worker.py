"""One simulated worker on its own (no router, no PD peer) for the worker's unit-level integration tests.

    with sim_worker(["--sim-fault", "hang"]) as (url, proc):
        ...

Its output goes to a log file; it is ready when it says so; it is stopped (SIGTERM, grace, SIGKILL) on
exit, whatever happened. Clusters use the suite's own bring-up instead (selftests/live.py).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pytest_sglang_pd.plan import SIM_ROUTER_ENV
from selftests.configs import REPO, free_port

DEFAULT_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
STOP_GRACE_S = 5.0


@dataclass
class Proc:
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def check_alive(self) -> None:
        code = self.popen.poll()
        if code is not None:
            raise RuntimeError(f"the worker exited with code {code}; argv: {shlex.join(self.argv)}\n"
                               f"--- last lines of {self.log_path} ---\n{self.tail()}")


def _stop(proc: Proc) -> None:
    if proc.popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.popen.pid, signal.SIGTERM)
    try:
        proc.popen.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.popen.pid, signal.SIGKILL)
        proc.popen.wait()


@contextlib.contextmanager
def sim_worker(args: Sequence[str] = (), model: str = DEFAULT_MODEL, env: dict[str, str] | None = None,
               ready_timeout: float = 30.0) -> Iterator[tuple[str, Proc]]:
    """One sim worker (mode null unless ``args`` say otherwise) on a free port: (url, process)."""
    with tempfile.TemporaryDirectory(prefix="sim-worker-") as directory:
        port = free_port()
        full_env = {**os.environ, **SIM_ROUTER_ENV, **(env or {})}
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full_env.get("PYTHONPATH")]))
        argv = [sys.executable, "-m", "pytest_sglang_pd.sim.launch_server", "--model-path", model,
                "--host", "127.0.0.1", "--port", str(port), "--enable-metrics", *args]
        log_path = Path(directory) / "worker.log"
        with open(log_path, "wb") as log_file:
            popen = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, env=full_env,
                                     start_new_session=True)
        proc = Proc(argv, log_path, popen)
        try:
            deadline = time.monotonic() + ready_timeout
            while "ready to roll" not in proc.tail(50):
                proc.check_alive()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"sim worker not ready after {ready_timeout:.0f} s:\n{proc.tail()}")
                time.sleep(0.05)
            yield f"http://127.0.0.1:{port}", proc
        finally:
            _stop(proc)
