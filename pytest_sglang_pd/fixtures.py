"""Session fixtures, one per cluster role (DESIGN.md): each makes one state change and undoes it."""

from __future__ import annotations

import sys

import pytest

from . import plan as plan_mod
from .config import ClusterConfig
from .plugin import NO_CONFIG_HINT, SuiteRun, suite_run_key


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
    """The model id this part of the session validates (a session param, see plugin.pytest_generate_tests)."""
    return request.param


@pytest.fixture(scope="session")
def deployment(cluster_config: ClusterConfig, model_under_test: str, suite_run: SuiteRun) -> plan_mod.Deployment:
    python = sys.executable if cluster_config.runtime == "process" and cluster_config.transport == "local" else "python3"
    return plan_mod.plan(cluster_config, model_under_test, run_id=suite_run.run_id, python=python)
