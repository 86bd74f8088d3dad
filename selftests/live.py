"""A simulated PD cluster for the self-tests and benchmarks, brought up by the suite's own bring-up.

    with sim_cluster(tmp_path, prefills=1, decodes=1, backend="mooncake") as cluster:
        requests.post(cluster.router_url + "/generate", json=...)

The shipped local-sim.json on free ports, edited, planned and carried out by ``LiveCluster`` exactly as
the fixtures and `sglang-pd up` do; leaving the block stops everything, whatever happened.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence

from pytest_sglang_pd import plan
from pytest_sglang_pd.cluster import LiveCluster
from selftests.configs import REPO, sim_config

MODEL = "llama-8b"


@contextmanager
def sim_cluster(tmp_path: Path, prefills: int = 1, decodes: int = 1, *, backend: str = "mooncake",
                worker_args: Sequence[str] = (), prefill_args: Sequence[str] = (), decode_args: Sequence[str] = (),
                router_args: Sequence[str] = (), env: dict[str, str] | None = None, smoke: bool = False,
                model_profile: str | None = None, router: dict[str, str] | None = None,
                sim: dict[str, str] | None = None) -> Iterator[LiveCluster]:
    """prefills + decodes simulated workers (instance i of a role on 127.0.0.<1+i>) behind the real router (``router``:
    config.router, its package and python), ready (with ``smoke`` also proven by the smoke requests, which the workers
    then count); ``sim`` keys override ``config.sim``; stopped on exit."""
    path = sim_config(tmp_path, prefill=tuple(f"127.0.0.{1 + i}" for i in range(prefills)),
                      decode=tuple(f"127.0.0.{1 + i}" for i in range(decodes)),
                      kv_transfer={"backend": backend}, router_args=list(router_args), sim=dict(sim or {}),
                      container_config={"device_list": [], "volume_dict": {}, "env_dict": dict(env or {})})
    data = json.loads(path.read_text())
    model = data["benchmark_params"][MODEL]
    model.update(server_args=list(worker_args), prefill_server_args=list(prefill_args),
                 decode_server_args=list(decode_args))
    if model_profile:
        model["sim_model_profile"] = model_profile
    if router:
        data["config"]["router"] = router
    path.write_text(json.dumps(data))
    cfg = plan.load_config(path)
    with LiveCluster(cfg, plan.plan(cfg, MODEL, run_id="selftest"), tmp_path / "run") as cluster:
        cluster.bring_up(smoke=smoke)
        yield cluster


def log_tail(cluster: LiveCluster, key: str, lines: int = 50) -> str:
    """The last lines of a process's log, read on its node."""
    return cluster.runtime.log_tail(cluster.procs[key], lines)


def alive(pid: int) -> bool:
    """Whether a process of that pid (or its process group) still exists and is not a zombie."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,pgid=,stat="], capture_output=True, text=True).stdout
    for line in out.splitlines():
        p, g, stat = line.split(None, 2)
        if str(pid) in (p, g) and not stat.startswith("Z"):
            return True
    return False


CLUSTER_TESTS = str(REPO / "pytest_sglang_pd" / "suite" / "test_cluster.py")


def start_suite(config: Path, results: Path) -> subprocess.Popen:
    """The cluster tests of the validation suite in a subprocess, as a user starts them (run id "run")."""
    return subprocess.Popen([sys.executable, "-m", "pytest", CLUSTER_TESTS, f"--cluster-config={config}",
                             f"--results-dir={results}", "--run-id=run", "-p", "no:cacheprovider"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)


def recorded(results: Path, role: str, timeout: float = 90) -> tuple[dict, dict]:
    """(process record, whole state) of a role's first process, once the run's state file records it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = json.loads((results / "run" / "cluster-state.json").read_text())
        except (OSError, ValueError):
            state = {}
        for p in state.get("processes", []):
            if p["role"] == role and p["pid"]:
                return p, state
        time.sleep(0.1)
    raise AssertionError(f"no {role} process recorded in {results} after {timeout} s")


def killed_while_loading(config: Path, results: Path, kill: Callable[[dict, dict], None],
                         role: str = "decode") -> tuple[int, str, float]:
    """Start the suite on ``config`` (whose workers load slowly), ``kill(record, state)`` a process of ``role``
    while the suite waits for /health; (the suite's exit code, its output, seconds from the kill to its end)."""
    suite = start_suite(config, results)
    try:
        record, state = recorded(results, role)
        time.sleep(1.0)  # the workers are loading (startup delay): the suite is waiting for /health
        kill(record, state)
        killed = time.monotonic()
        out, _ = suite.communicate(timeout=120)
        return suite.returncode, out, time.monotonic() - killed
    finally:
        if suite.poll() is None:
            suite.kill()


@contextmanager
def running_batch_peak(worker_url: str, also: Callable[[], None] = lambda: None) -> Iterator[list[int]]:
    """While the block runs, the worker's running batch (the sum over its DP ranks in ``/v1/loads``) every 50 ms;
    yields a one-item list whose item is the largest seen so far. ``also`` runs on every look (another probe)."""
    import threading

    import requests

    peak, done = [0], threading.Event()

    def poll() -> None:
        while not done.wait(0.05):
            try:
                body = requests.get(worker_url + "/v1/loads", params={"include": "core"}, timeout=2).json()
                peak[0] = max(peak[0], sum(load["num_running_reqs"] for load in body["loads"]))
            except (requests.RequestException, ValueError):
                pass
            also()

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    try:
        yield peak
    finally:
        done.set()
        watcher.join()
