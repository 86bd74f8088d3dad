"""Session fixtures, one per cluster role (README: Bring-up, teardown and failures): each makes one state
change and undoes it."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest

from . import plan as plan_mod
from . import report, slurm
from .cluster import ClusterError, KVTransferCheck, LiveCluster
from .cluster_facts import facts_of
from .config import ClusterConfig
from .external_cluster import ExternalCluster
from .facts import ClusterFacts
from .failures import first_error_first
from .hosts import HostError
from .runtime import RuntimeFailure
from .report.progress import terminal_say
from .session import NO_CONFIG_HINT, SuiteRun, suite_run_key
from .watch import ClusterWatch


@pytest.fixture(scope="session")
def suite_run(request: pytest.FixtureRequest) -> SuiteRun:
    return request.config.stash[suite_run_key]


@pytest.fixture(scope="session")
def cluster_config(request: pytest.FixtureRequest, suite_run: SuiteRun) -> Iterator[ClusterConfig]:
    """The run's config; with transport slurm placed on the run's allocation (docs/slurm.md). One the suite made
    is released once every cluster of the run is down, also on Ctrl-C / SIGTERM (kept with --keep-cluster)."""
    if suite_run.cluster_config is None:
        pytest.fail(NO_CONFIG_HINT, pytrace=False)
    if suite_run.router_url:  # a cluster already up: no node is reached, nothing allocated
        yield suite_run.cluster_config
        return
    with _as_failure(), slurm.allocation(suite_run.cluster_config, suite_run.run_id,
                                         say=terminal_say(request.config)) as alloc:
        alloc.keep = suite_run.keep_cluster
        suite_run.cluster_config = alloc.cfg  # the report records the nodes the run got
        yield alloc.cfg


@pytest.fixture(scope="session")
def model_under_test(request: pytest.FixtureRequest, cluster_config: ClusterConfig) -> str:
    """The model id this part of the session validates (a session param, see session.SuiteRun.pytest_generate_tests)."""
    return request.param


@pytest.fixture(scope="session")
def deployment(cluster_config: ClusterConfig, model_under_test: str, suite_run: SuiteRun) -> plan_mod.Deployment:
    return plan_mod.plan(cluster_config, model_under_test, run_id=suite_run.run_id)


def _run_dir(suite_run: SuiteRun, cfg: ClusterConfig, model: str) -> Path:
    """`<results>/<run-id>`; one folder per model below it when the config has several."""
    return suite_run.run_dir if len(cfg.models) == 1 else suite_run.run_dir / model


@contextmanager
def _as_failure() -> Iterator[None]:
    """A bring-up error is reported as its message (role, node, log tail), not as a traceback."""
    try:
        yield
    except (ClusterError, HostError, RuntimeFailure, slurm.SlurmError) as exc:
        raise pytest.fail.Exception(str(exc), pytrace=False) from None


def _tell_report(request: pytest.FixtureRequest, facts: ClusterFacts) -> None:
    report.of(request.config).add_cluster(facts)


@contextmanager
def _setting_up(cluster: LiveCluster, step: str) -> Iterator[None]:
    """One step's set-up. When it fails, the step is undone at once and the set-up's error is raised first; an
    undo that fails as well is told after it, never instead of it."""
    try:
        with _as_failure():
            yield
    except BaseException as first:
        try:
            with _as_failure():
                cluster.undo(step)
        except pytest.fail.Exception as second:
            if isinstance(first, pytest.fail.Exception):
                raise pytest.fail.Exception(first_error_first(first.msg, second.msg), pytrace=False) from None
            first.add_note(first_error_first(None, second.msg))
        raise


def _step_fixture(cluster: LiveCluster, step: str, set_up: Callable[[], object]) -> Iterator:
    """The body of a role fixture: enter one step of the cluster (undone at once if it fails), yield, undo it."""
    try:
        with _setting_up(cluster, step):
            value = set_up()
        yield value
    finally:
        with _as_failure():
            cluster.undo(step)


@pytest.fixture(scope="session")
def cluster_nodes(request: pytest.FixtureRequest, cluster_config: ClusterConfig, deployment: plan_mod.Deployment,
                  model_under_test: str, suite_run: SuiteRun) -> Iterator[LiveCluster]:
    """Every node of the deployment connected and answering (in parallel); disconnected at the end, after every
    later step was undone (the run's state file then says stopped)."""
    cluster = LiveCluster(cluster_config, deployment, _run_dir(suite_run, cluster_config, model_under_test),
                          keep=suite_run.keep_cluster, say=terminal_say(request.config))
    suite_run.clusters.append(cluster)
    _tell_report(request, facts_of(cluster, versions=False))  # a failed bring-up still links the logs collected
    try:
        with _setting_up(cluster, "connect"):
            cluster.connect()
        yield cluster
    finally:
        with _as_failure():
            cluster.close()


@pytest.fixture(scope="session")
def kv_transfer(cluster_nodes: LiveCluster) -> KVTransferCheck:
    """The deployment's prechecks on every node at once (GPU and RDMA devices, the engine loads, side services)."""
    with _as_failure():
        return cluster_nodes.precheck()


@pytest.fixture(scope="session")
def node_containers(cluster_nodes: LiveCluster, kv_transfer: KVTransferCheck) -> Iterator[LiveCluster]:
    """One container per logical node (docker runtime; nothing for plain processes); removed at the end."""
    yield from _step_fixture(cluster_nodes, "containers", lambda: cluster_nodes.prepare_containers() or cluster_nodes)


@pytest.fixture(scope="session")
def side_services(node_containers: LiveCluster) -> Iterator[LiveCluster]:
    """The side services some deployments need (HiCache's Mooncake Store), answering before any worker; stopped
    after every worker."""
    yield from _step_fixture(node_containers, "store", lambda: node_containers.start_services() or node_containers)


@pytest.fixture(scope="session")
def prefill_group(node_containers: LiveCluster, side_services: LiveCluster) -> Iterator[list]:
    """The prefill instances (aggregated mode: the workers) launched (parallel across nodes); stopped together, logs
    collected, at the end."""
    first = node_containers.deployment.worker_roles[0]
    yield from _step_fixture(node_containers, first, lambda: node_containers.start(first))


@pytest.fixture(scope="session")
def decode_group(node_containers: LiveCluster, prefill_group: list) -> Iterator[list]:
    """The decode instances launched (none in aggregated mode), then every worker waited on until all are healthy."""
    roles = node_containers.deployment.worker_roles
    rest = roles[1:]

    def start() -> list:
        procs = [p for role in rest for p in node_containers.start(role)]
        node_containers.wait_healthy(roles)
        return procs

    yield from _step_fixture(node_containers, rest[0] if rest else "workers healthy", start)


@pytest.fixture(scope="session")
def proxy_router(node_containers: LiveCluster, decode_group: list) -> Iterator[dict]:
    """The sglang router in PD mode, ready on /readiness with every instance healthy; stopped at the end."""
    yield from _step_fixture(node_containers, "router", node_containers.start_router)


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
    picked = suite_run.resolve_baseline(report.of(request.config))
    if picked:
        terminal_say(request.config)(picked, 0)
    return cluster


@pytest.fixture
def cluster_watch(pd_cluster, cluster_config: ClusterConfig, inference_case) -> Iterator[ClusterWatch]:
    """The cluster watch beside the test's benchmark. A deployment the watch found broken in an earlier test ends
    this one at once (an error) with that cause: no benchmark runs against a dead cluster."""
    if pd_cluster.broken:
        cause = pd_cluster.broken.splitlines()[0]
        pytest.fail(f"{cause}\n(the deployment of {inference_case.model.id} broke in an earlier test: "
                    f"{inference_case.id} was not run; the next model starts a fresh deployment)", pytrace=False)
    timeouts = cluster_config.timeouts
    with ClusterWatch(pd_cluster, inference_case.id, stall_s=timeouts.stall_s, health_s=timeouts.health_s,
                      health_misses=timeouts.health_misses) as watch:
        yield watch
