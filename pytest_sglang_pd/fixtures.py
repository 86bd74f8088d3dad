"""Session fixtures, one per cluster role (README: Bring-up, teardown and failures): each makes one state
change and undoes it."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest

from . import plan as plan_mod
from . import report
from .cluster import ClusterError, ExternalCluster, KVTransferCheck, LiveCluster, facts_of
from .config import ClusterConfig
from .facts import ClusterFacts
from .failures import first_error_first
from .hosts import HostError
from .runtime import RuntimeFailure
from .session import NO_CONFIG_HINT, SuiteRun, suite_run_key


@pytest.fixture(scope="session")
def suite_run(request: pytest.FixtureRequest) -> SuiteRun:
    return request.config.stash[suite_run_key]


@pytest.fixture(scope="session")
def cluster_config(suite_run: SuiteRun) -> ClusterConfig:
    if suite_run.cluster_config is None:
        pytest.fail(NO_CONFIG_HINT, pytrace=False)
    return suite_run.cluster_config


@pytest.fixture(scope="session")
def model_under_test(request: pytest.FixtureRequest, cluster_config: ClusterConfig) -> str:
    """The model id this part of the session validates (a session param, see session.SuiteRun.pytest_generate_tests)."""
    return request.param


@pytest.fixture(scope="session")
def deployment(cluster_config: ClusterConfig, model_under_test: str, suite_run: SuiteRun) -> plan_mod.Deployment:
    return plan_mod.plan(cluster_config, model_under_test, run_id=suite_run.run_id,
                         python=plan_mod.node_python(cluster_config))


def _run_dir(suite_run: SuiteRun, cfg: ClusterConfig, model: str) -> Path:
    """`<results>/<run-id>`; one folder per model below it when the config has several."""
    return suite_run.run_dir if len(cfg.models) == 1 else suite_run.run_dir / model


@contextmanager
def _as_failure() -> Iterator[None]:
    """A bring-up error is reported as its message (role, node, log tail), not as a traceback."""
    try:
        yield
    except (ClusterError, HostError, RuntimeFailure) as exc:
        raise pytest.fail.Exception(str(exc), pytrace=False) from None


def _tell_report(request: pytest.FixtureRequest, facts: ClusterFacts) -> None:
    report.of(request.config).add_cluster(facts)


def _undo(suite_run: SuiteRun, step) -> None:
    if not suite_run.keep_cluster:
        with _as_failure():
            step()


@contextmanager
def _setting_up(undo: Callable[[], None]) -> Iterator[None]:
    """One role's set-up. When it fails, undo runs at once and the set-up's error is raised first; an undo that
    fails as well is told after it, never instead of it."""
    try:
        with _as_failure():
            yield
    except BaseException as first:
        try:
            with _as_failure():
                undo()
        except pytest.fail.Exception as second:
            if isinstance(first, pytest.fail.Exception):
                raise pytest.fail.Exception(first_error_first(first.msg, second.msg), pytrace=False) from None
            first.add_note(first_error_first(None, second.msg))
        raise


@pytest.fixture(scope="session")
def cluster_nodes(request: pytest.FixtureRequest, cluster_config: ClusterConfig, deployment: plan_mod.Deployment,
                  model_under_test: str, suite_run: SuiteRun) -> Iterator[LiveCluster]:
    """Every node of the deployment connected and answering (in parallel); disconnected at the end."""
    cluster = LiveCluster(cluster_config, deployment, _run_dir(suite_run, cluster_config, model_under_test))
    suite_run.clusters.append(cluster)
    _tell_report(request, facts_of(cluster, versions=False))  # a failed bring-up still links the logs collected

    def disconnect() -> None:
        if suite_run.keep_cluster:
            cluster.snapshot_logs()
        else:
            cluster.mark_stopped()
        cluster.disconnect()

    with _setting_up(disconnect):
        cluster.connect()
    try:
        yield cluster
    finally:
        disconnect()


@pytest.fixture(scope="session")
def kv_transfer(cluster_nodes: LiveCluster) -> KVTransferCheck:
    """The transfer backend checked on every worker node (IB devices / engine loads) before anything starts."""
    with _as_failure():
        return cluster_nodes.precheck_kv_transfer()


def _role_fixture(suite_run: SuiteRun, set_up: Callable[[], object], undo: Callable[[], None]) -> Iterator:
    """The body of a role fixture: set up (undone at once on failure), yield, undo at the end."""
    with _setting_up(lambda: _undo(suite_run, undo)):
        value = set_up()
    try:
        yield value
    finally:
        _undo(suite_run, undo)


@pytest.fixture(scope="session")
def node_containers(cluster_nodes: LiveCluster, kv_transfer: KVTransferCheck, suite_run: SuiteRun) -> Iterator[LiveCluster]:
    """One container per logical node (docker runtime; nothing for plain processes); removed at the end."""
    def prepare() -> LiveCluster:
        cluster_nodes.prepare_containers()
        return cluster_nodes

    yield from _role_fixture(suite_run, prepare, cluster_nodes.remove_containers)


@pytest.fixture(scope="session")
def prefill_group(node_containers: LiveCluster, suite_run: SuiteRun) -> Iterator[list]:
    """The prefill instances launched (parallel across nodes); stopped, logs collected, at the end."""
    yield from _role_fixture(suite_run, lambda: node_containers.start("prefill"),
                             lambda: _raise_all(node_containers.stop("prefill")))


@pytest.fixture(scope="session")
def decode_group(node_containers: LiveCluster, prefill_group: list, suite_run: SuiteRun) -> Iterator[list]:
    """The decode instances launched, then prefill and decode waited on together until all are healthy."""
    def start() -> list:
        procs = node_containers.start("decode")
        node_containers.wait_healthy(("prefill", "decode"))
        return procs

    yield from _role_fixture(suite_run, start, lambda: _raise_all(node_containers.stop("decode")))


@pytest.fixture(scope="session")
def proxy_router(node_containers: LiveCluster, decode_group: list, suite_run: SuiteRun) -> Iterator[dict]:
    """The sglang router in PD mode, ready on /readiness with every instance healthy; stopped at the end."""
    def start() -> dict:
        node_containers.start("router")
        return node_containers.wait_router_ready()

    yield from _role_fixture(suite_run, start,
                             lambda: _raise_all(node_containers.stop("router") + node_containers.stop("bench")))


@pytest.fixture(scope="session")
def pd_cluster(request: pytest.FixtureRequest, suite_run: SuiteRun, cluster_config: ClusterConfig,
               model_under_test: str):
    """The whole cluster, proven by a streamed and a non-streamed request across prefill -> decode.

    With --router-url: the running cluster behind that router; nothing is started.
    """
    if suite_run.router_url:
        with _as_failure():
            cluster = ExternalCluster.behind(suite_run.router_url, cluster_config.simulated)
    else:
        request.getfixturevalue("proxy_router")
        cluster = request.getfixturevalue("node_containers")
        with _as_failure():
            cluster.smoke()
    _tell_report(request, facts_of(cluster))
    return cluster


def _raise_all(errors: list[str]) -> None:
    if errors:
        raise ClusterError("teardown incomplete:\n" + "\n".join(f"  {e}" for e in errors))
