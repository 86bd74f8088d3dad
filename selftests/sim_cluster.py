"""A small sim PD cluster for integration tests: N prefill + M decode sim workers behind the REAL router.

    with sim_cluster(prefills=1, decodes=1, backend="mooncake") as cluster:
        requests.post(cluster.router_url + "/generate", json=...)

Every process runs on free loopback ports with its output in a log file; the cluster is ready when
the router's ``/readiness`` says so; all processes are stopped (SIGTERM, grace, SIGKILL) on exit,
whatever happened. Usable outside pytest.
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
from dataclasses import dataclass, field
from pathlib import Path

import requests

from pytest_sglang_pd.plan import SIM_ROUTER_ENV
from selftests.configs import free_port

DEFAULT_MODEL = "meta-llama/Llama-3.1-8B-Instruct"
STOP_GRACE_S = 5.0


@dataclass
class Proc:
    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@dataclass
class SimCluster:
    router_url: str
    prefill_urls: list[str] = field(default_factory=list)
    decode_urls: list[str] = field(default_factory=list)
    bootstrap_ports: list[int] = field(default_factory=list)
    procs: list[Proc] = field(default_factory=list)
    log_dir: Path = Path(".")

    def proc(self, name: str) -> Proc:
        return next(p for p in self.procs if p.name == name)

    def check_alive(self) -> None:
        for proc in self.procs:
            code = proc.popen.poll()
            if code is not None:
                raise RuntimeError(f"{proc.name} exited with code {code}; argv: {shlex.join(proc.argv)}\n"
                                   f"--- last lines of {proc.log_path} ---\n{proc.tail()}")


def _start(name: str, argv: list[str], log_dir: Path, env: dict[str, str]) -> Proc:
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log_file:
        popen = subprocess.Popen(argv, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    return Proc(name, argv, log_path, popen)


def stop_all(procs: Sequence[Proc]) -> None:
    """SIGTERM every process (group), wait up to STOP_GRACE_S, SIGKILL what is left."""
    for proc in procs:
        if proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for proc in procs:
        try:
            proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.popen.pid, signal.SIGKILL)
            proc.popen.wait()


def worker_argv(role: str, port: int, bootstrap_port: int, backend: str, model: str, extra: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "pytest_sglang_pd.sim.launch_server", "--model-path", model,
            "--host", "127.0.0.1", "--port", str(port), "--disaggregation-mode", role,
            "--disaggregation-transfer-backend", backend, "--disaggregation-bootstrap-port", str(bootstrap_port),
            "--enable-metrics", *extra]


@contextlib.contextmanager
def sim_cluster(
    prefills: int = 1,
    decodes: int = 1,
    backend: str = "mooncake",
    model: str = DEFAULT_MODEL,
    worker_args: Sequence[str] = (),
    prefill_args: Sequence[str] = (),
    decode_args: Sequence[str] = (),
    router_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    ready_timeout: float = 90.0,
    log_dir: Path | None = None,
) -> Iterator[SimCluster]:
    own_dir = None if log_dir else tempfile.TemporaryDirectory(prefix="sim-cluster-")
    directory = log_dir or Path(own_dir.name)  # type: ignore[union-attr]
    full_env = {**os.environ, **SIM_ROUTER_ENV, **(env or {})}
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                           full_env.get("PYTHONPATH")]))
    router_port = free_port()
    cluster = SimCluster(f"http://127.0.0.1:{router_port}", log_dir=directory)
    try:
        router_cmd = [sys.executable, "-m", "sglang_router.launch_router", "--pd-disaggregation",
                      "--host", "127.0.0.1", "--port", str(router_port), "--prometheus-port", str(free_port()),
                      "--worker-startup-timeout-secs", str(int(ready_timeout)), "--log-level", "warn"]
        for index in range(prefills):
            port, bootstrap = free_port(), free_port()
            argv = worker_argv("prefill", port, bootstrap, backend, model, [*worker_args, *prefill_args])
            cluster.procs.append(_start(f"prefill_{index}", argv, directory, full_env))
            cluster.prefill_urls.append(f"http://127.0.0.1:{port}")
            cluster.bootstrap_ports.append(bootstrap)
            router_cmd += ["--prefill", f"http://127.0.0.1:{port}", str(bootstrap)]
        for index in range(decodes):
            port = free_port()
            argv = worker_argv("decode", port, free_port(), backend, model, [*worker_args, *decode_args])
            cluster.procs.append(_start(f"decode_{index}", argv, directory, full_env))
            cluster.decode_urls.append(f"http://127.0.0.1:{port}")
            router_cmd += ["--decode", f"http://127.0.0.1:{port}"]
        cluster.procs.append(_start("router", router_cmd + list(router_args), directory, full_env))
        wait_ready(cluster, ready_timeout)
        yield cluster
    finally:
        stop_all(cluster.procs)
        if own_dir is not None:
            own_dir.cleanup()


def wait_ready(cluster: SimCluster, timeout: float) -> None:
    """Until the router's /readiness answers 200; a dead process fails at once with its log tail."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        cluster.check_alive()
        try:
            response = requests.get(cluster.router_url + "/readiness", timeout=2)
            if response.status_code == 200:
                return
            last = f"{response.status_code} {response.text[:200]}"
        except requests.RequestException as error:
            last = str(error)
        time.sleep(0.2)
    cluster.check_alive()
    raise TimeoutError(f"router {cluster.router_url}/readiness not ready after {timeout:.0f} s (last: {last})\n"
                       f"--- router log ---\n{cluster.proc('router').tail()}")


@contextlib.contextmanager
def sim_worker(args: Sequence[str] = (), model: str = DEFAULT_MODEL, env: dict[str, str] | None = None,
               ready_timeout: float = 30.0) -> Iterator[tuple[str, Proc]]:
    """One sim worker (mode null unless ``args`` say otherwise) on a free port: (url, process)."""
    with tempfile.TemporaryDirectory(prefix="sim-worker-") as directory:
        port = free_port()
        full_env = {**os.environ, **SIM_ROUTER_ENV, **(env or {})}
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                               full_env.get("PYTHONPATH")]))
        argv = [sys.executable, "-m", "pytest_sglang_pd.sim.launch_server", "--model-path", model,
                "--host", "127.0.0.1", "--port", str(port), "--enable-metrics", *args]
        proc = _start("worker", argv, Path(directory), full_env)
        try:
            cluster = SimCluster(f"http://127.0.0.1:{port}", procs=[proc])
            deadline = time.monotonic() + ready_timeout
            while "ready to roll" not in proc.tail(50):
                cluster.check_alive()
                if time.monotonic() > deadline:
                    raise TimeoutError(f"sim worker not ready after {ready_timeout:.0f} s:\n{proc.tail()}")
                time.sleep(0.05)
            yield cluster.router_url, proc
        finally:
            stop_all([proc])
