"""With a cluster config, pytest runs the suite's own tests and nothing else: from the checkout or any other
folder, with ``--opt value`` or ``--opt=value``, from an editable or a regular (wheel) install."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from selftests.configs import REPO, sim_config

pytestmark = pytest.mark.integration  # runs pytest and pip as processes

SUITE_TESTS = ["test_cluster.py::test_nodes_reachable[llama-8b]", "test_cluster.py::test_workers_healthy[llama-8b]",
               "test_cluster.py::test_router_ready_with_every_worker[llama-8b]", "test_cluster.py::test_kv_handoff[llama-8b]",
               "test_cluster.py::test_rdma_devices_present[llama-8b]", "test_inference.py::test_inference[llama-8b-gsm8k]",
               "test_inference.py::test_inference[llama-8b-bench_serv_random]",
               "test_inference.py::test_inference[llama-8b-generated_shared_prefix]"]


def pytest_run(python: str, cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run([python, "-m", "pytest", "-p", "no:cacheprovider", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def collected(result: subprocess.CompletedProcess) -> list[str]:
    """The collected test ids, each from the suite file's name on (the rest of a node id is where it lies)."""
    ids = [line for line in result.stdout.splitlines() if "::" in line]
    return [line[line.index("test_", line.rindex("/") if "/" in line.split("::")[0] else 0):] for line in ids]


def option(form: str, name: str, value: str) -> list[str]:
    return [f"{name}={value}"] if form == "equals" else [name, value]


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A config, a results folder and a working folder, all outside the checkout."""
    folder = tmp_path / "elsewhere"
    folder.mkdir()
    (folder / "test_not_the_suite.py").write_text("def test_other():\n    pass\n")
    return folder


@pytest.mark.parametrize("form", ["space", "equals"])
@pytest.mark.parametrize("where", ["checkout", "elsewhere"])
def test_the_readme_command_collects_exactly_the_suite(tmp_path: Path, elsewhere: Path, form: str, where: str):
    config = sim_config(tmp_path)
    cwd = REPO if where == "checkout" else elsewhere
    result = pytest_run(sys.executable, cwd, *option(form, "--cluster-config", str(config)),
                        *option(form, "--results-dir", str(tmp_path / "out")), "--collect-only", "-q")
    assert result.returncode == 0, result.stdout + result.stderr
    assert collected(result) == SUITE_TESTS, result.stdout


def test_paths_the_user_names_are_run_as_named(tmp_path: Path, elsewhere: Path):
    result = pytest_run(sys.executable, elsewhere, "--cluster-config", str(sim_config(tmp_path)),
                        "test_not_the_suite.py", "--collect-only", "-q")
    assert collected(result) == ["test_not_the_suite.py::test_other"], result.stdout


def test_the_jenkinsfile_command_runs_the_suite_from_another_folder(tmp_path: Path, elsewhere: Path):
    """The Gate stage's command line (its --baseline in the space form) against a baseline run's results."""
    config = sim_config(tmp_path)
    results = tmp_path / "reports"
    first = pytest_run(sys.executable, REPO, f"--cluster-config={config}", "-k", "gsm8k", f"--results-dir={results}",
                       "--run-id=before", timeout=300)
    assert first.returncode == 0, first.stdout[-3000:]
    gate = pytest_run(sys.executable, elsewhere, f"--cluster-config={config}", "-k", "gsm8k",
                      "--baseline", str(results / "before" / "results.json"), "--perf-tolerance=50",
                      "--baseline-tolerance=100",  # the same run twice on a loaded machine moves 20% and more
                      f"--results-dir={results}", "--run-id=jenkins-1", f"--junitxml={results}/jenkins-1/junit.xml",
                      "-o", "junit_family=xunit2", "-rA", timeout=300)
    assert gate.returncode == 0, gate.stdout[-3000:]
    ran = json.loads((results / "jenkins-1" / "results.json").read_text())["tests"]
    assert [t["id"] for t in ran] == ["llama-8b-gsm8k"] and ran[0]["outcome"] == "passed"
    assert "test_not_the_suite" not in gate.stdout


def test_a_regular_install_has_the_suite_and_collects_it(tmp_path: Path, elsewhere: Path):
    """``pip install .`` (a wheel, not the editable checkout) into a fresh venv: the suite comes with it."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    build = tmp_path / "wheel"
    subprocess.run([python, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(build),
                    str(REPO)], check=True, timeout=300, capture_output=True)
    wheel, = build.glob("pytest_sglang_pd-*.whl")
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)], check=True, timeout=300,
                   capture_output=True)
    where = subprocess.run([python, "-c", "import pytest_sglang_pd; print(pytest_sglang_pd.__file__)"],
                           capture_output=True, text=True, check=True, cwd=elsewhere).stdout
    assert str(venv) in where, where  # the installed copy, not the checkout
    result = pytest_run(python, elsewhere, "--cluster-config", str(sim_config(tmp_path)),
                        "--results-dir", str(tmp_path / "out"), "--collect-only", "-q")
    assert collected(result) == SUITE_TESTS, result.stdout + result.stderr
    assert "site-packages/pytest_sglang_pd/suite/test_inference.py" in result.stdout


def test_the_jenkinsfile_cleans_up_after_every_build_and_locks_the_cluster(tmp_path: Path):
    """post { always }: its `sglang-pd cleanup` line runs as written; the Gate stage holds a lock per config."""
    text = (REPO / "Jenkinsfile").read_text()
    always = text.split("post {", 1)[1].split("always {", 1)[1]
    line = next(part.split("'")[1] for part in always.splitlines() if part.strip().startswith("sh 'sglang-pd cleanup"))
    env = {**os.environ, "CLUSTER_CONFIG": str(sim_config(tmp_path)), "RESULTS": str(tmp_path / "reports")}
    done = subprocess.run(["sh", "-c", line], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("cleanup: 0 left-over"), done.stdout + done.stderr
    assert 'lock(resource: "sglang-pd:${params.CLUSTER_CONFIG}")' in text.split("stage('Gate')", 1)[1]
