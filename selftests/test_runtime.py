"""Tests for runtime.py: ProcessRuntime (local and over ssh) and DockerRuntime against a real engine."""

from __future__ import annotations

import dataclasses

import secrets
import time
import uuid
from pathlib import Path

import docker
import pytest

from pytest_sglang_pd.docker_node import DockerNode
from pytest_sglang_pd.hosts import HostError, LocalHost, host_for
from pytest_sglang_pd.plan import ContainerSpec, ProcessSpec
from pytest_sglang_pd.runtime import (
    LABEL_MANAGED,
    LABEL_OWNER,
    LABEL_RUN_ID,
    DockerRuntime,
    ImageMissing,
    ProcessRuntime,
    RuntimeStartError,
    find_leftover_containers,
    runtime_for,
)

pytestmark = pytest.mark.integration  # real processes, sshd and the Docker engine


def process_spec(tmp_path: Path, script: str, *, key: str = "prefill_0", node: str = "localhost",
                 log_path: Path | None = None, **kw) -> ProcessSpec:
    role = key.split("_")[0]
    return ProcessSpec(
        key=key, role=role, node=node, argv=("sh", "-c", script), env={"ROLE": role}, port=0,
        log_path=str(log_path or tmp_path / "logs" / node / f"{key}.log"), **kw,
    )


def wait_for_exit(runtime, rp, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while (code := runtime.exit_code(rp)) is None:
        assert time.monotonic() < deadline, f"{rp.spec.key} still running after {timeout} s"
        time.sleep(0.1)
    return code


def wait_for_log(runtime, rp, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while text not in runtime.log_tail(rp, lines=5):
        assert time.monotonic() < deadline, f"{rp.spec.key} did not log {text!r} within {timeout} s"
        time.sleep(0.05)


def assert_process_gone(pid: int) -> None:
    result = LocalHost().run(["ps", "-o", "pid=,stat=", "-g", str(pid)])
    live = [line for line in result.stdout.splitlines() if not line.split()[1].startswith("Z")]
    assert live == [], f"process group {pid} still has processes: {live}"


@pytest.fixture(params=["local", "ssh"])
def process_runtime(request):
    """A ProcessRuntime on node "localhost" (LocalHost) or 127.0.0.3 (through the throwaway sshd)."""
    if request.param == "local":
        host = LocalHost("localhost")
    else:
        server = request.getfixturevalue("sshd")
        host = host_for(server.nodes[1], transport="ssh", user=server.user, key_file=server.key_file, port=server.port)
    runtime = ProcessRuntime({host.name: host})
    yield runtime
    runtime.teardown()
    host.close()


def test_process_start_poll_stop_leaves_no_process(process_runtime, tmp_path):
    node = next(iter(process_runtime.hosts))
    rp = process_runtime.start(process_spec(tmp_path, 'echo "up as $ROLE"; exec sleep 60', node=node))
    assert process_runtime.exit_code(rp) is None
    deadline = time.monotonic() + 5
    while "up as prefill" not in process_runtime.log_tail(rp) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "up as prefill" in process_runtime.log_tail(rp)
    process_runtime.stop(rp, grace_s=5)
    assert process_runtime.exit_code(rp) == 143  # 128 + SIGTERM
    assert_process_gone(rp.pid)
    process_runtime.stop(rp)  # idempotent


def test_exit_codes_of_many_processes_in_one_look_per_node(process_runtime, tmp_path):
    node = next(iter(process_runtime.hosts))
    running = process_runtime.start(process_spec(tmp_path, "exec sleep 60", key="prefill_0", node=node))
    failed = process_runtime.start(process_spec(tmp_path, "exit 3", key="decode_0", node=node))
    killed = process_runtime.start(process_spec(tmp_path, "echo up; exec sleep 60", key="decode_1", node=node))
    wait_for_log(process_runtime, killed, "up")  # a SIGTERM before the command runs meets only the exit recorder
    process_runtime.stop(killed, grace_s=5)
    wait_for_exit(process_runtime, failed)
    assert process_runtime.exit_codes([running, failed, killed]) == [None, 3, 143]
    process_runtime.stop(running, grace_s=5)
    assert process_runtime.exit_codes([running]) == [143]


def test_an_earlier_runs_exit_status_is_not_read_as_a_new_processs(process_runtime, tmp_path):
    """A reused run id: the log folder still holds the last run's `<log>.exit`; the new process is running."""
    node = next(iter(process_runtime.hosts))
    spec = process_spec(tmp_path, "exec sleep 30", key="decode_0", node=node)
    Path(spec.log_path).parent.mkdir(parents=True, exist_ok=True)
    Path(spec.log_path + ".exit").write_text("143\n")
    rp = process_runtime.start(spec)
    assert process_runtime.exit_code(rp) is None
    process_runtime.stop(rp, grace_s=5)


def test_process_exit_code_log_tail_and_collect_log(process_runtime, tmp_path):
    node = next(iter(process_runtime.hosts))
    rp = process_runtime.start(process_spec(tmp_path, "echo starting; echo 'boom: no GPU' >&2; exit 3", node=node))
    assert wait_for_exit(process_runtime, rp) == 3
    assert process_runtime.log_tail(rp, lines=1) == "boom: no GPU\n"
    dest = tmp_path / "collected" / node / "prefill-0.log"
    process_runtime.collect_log(rp, dest)
    assert dest.read_text() == "starting\nboom: no GPU\n"


def test_stop_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path):
    runtime = ProcessRuntime({"localhost": LocalHost()})
    rp = runtime.start(process_spec(tmp_path, "trap '' TERM; echo ready; while :; do sleep 0.1; done"))
    try:
        time.sleep(0.3)
        started = time.monotonic()
        runtime.stop(rp, grace_s=1)
        assert 1 <= time.monotonic() - started < 5
        assert_process_gone(rp.pid)
        assert runtime.exit_code(rp) == 137  # killed without a recorded status
    finally:
        runtime.teardown()


def test_secret_file_becomes_env_without_argv_exposure(tmp_path):
    secret = "hf_" + secrets.token_hex(16)
    (tmp_path / "hf_token").write_text(secret + "\n")
    runtime = ProcessRuntime({"localhost": LocalHost()})
    script = f'[ "$HF_TOKEN" = "$(cat {tmp_path / "hf_token"})" ] && echo token-ok; exec sleep 60'
    rp = runtime.start(process_spec(tmp_path, script, secret_env_files={"HF_TOKEN": str(tmp_path / "hf_token")}))
    try:
        deadline = time.monotonic() + 5
        while "token-ok" not in runtime.log_tail(rp) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert runtime.log_tail(rp) == "token-ok\n"
        assert secret not in LocalHost().run(["ps", "-eo", "args"]).stdout
    finally:
        runtime.teardown()
    assert_process_gone(rp.pid)


def test_teardown_stops_every_started_process(tmp_path):
    runtime = runtime_for("process", {"localhost": LocalHost()})
    started = [runtime.start(process_spec(tmp_path, "exec sleep 60", key=f"decode_{i}")) for i in range(2)]
    runtime.teardown()
    for rp in started:
        assert_process_gone(rp.pid)


def test_start_errors_name_role_node_and_cause(tmp_path):
    runtime = ProcessRuntime({"localhost": LocalHost()})
    with pytest.raises(RuntimeStartError, match=r"decode decode_0: node gpu-node-7 is not connected"):
        runtime.start(process_spec(tmp_path, "true", key="decode_0", node="gpu-node-7"))
    missing = process_spec(tmp_path, "true", secret_env_files={"HF_TOKEN": str(tmp_path / "no_token")})
    with pytest.raises(RuntimeStartError, match=r"prefill prefill_0 on localhost: .*cannot read secret file .*no_token"):
        runtime.start(missing)


# ---- DockerRuntime -------------------------------------------------------------------------------


@pytest.fixture
def run_id() -> str:
    return f"selftest-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def docker_runtime(docker_engine, run_id):
    """A DockerRuntime on node "localhost" with a per-test owner, so parallel runs never meet."""
    runtime = DockerRuntime({"localhost": LocalHost()}, owner=f"owner-{run_id}")
    yield runtime
    runtime.teardown()


def container_spec(image: str, run_id: str, log_dir: Path, key: str = "prefill_0") -> ContainerSpec:
    return ContainerSpec(
        key=key, role=key.split("_")[0], node="localhost", name=f"pytest-sglang-pd-{run_id}-{key}", image=image,
        volumes={str(log_dir): "/sglang-logs"}, env={"IN_CONTAINER": "yes"}, labels={LABEL_RUN_ID: run_id},
    )


def containers_of_run(client, run_id: str) -> list:
    return client.containers.list(all=True, filters={"label": f"{LABEL_RUN_ID}={run_id}"})


def test_docker_prepare_start_stop_teardown_leaves_no_container(docker_runtime, docker_engine, sim_base_image,
                                                                 run_id, tmp_path):
    log_dir = tmp_path / "logs"
    (tmp_path / "hf_token").write_text("hf_secret_in_container\n")
    docker_runtime.prepare([container_spec(sim_base_image, run_id, log_dir)])
    [container] = containers_of_run(docker_engine, run_id)
    assert container.status == "running" and container.labels[LABEL_MANAGED] == "true"

    server = process_spec(
        tmp_path, 'echo "in=$IN_CONTAINER role=$ROLE token=${#HF_TOKEN}"; exec sleep 60',
        container="prefill_0", log_path=log_dir / "prefill-0.log",
        secret_env_files={"HF_TOKEN": str(tmp_path / "hf_token")},
    )
    rp = docker_runtime.start(server)
    assert rp.container_id == container.id
    deadline = time.monotonic() + 5
    while "in=" not in docker_runtime.log_tail(rp) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert docker_runtime.log_tail(rp) == "in=yes role=prefill token=22\n"  # log read on the node (bind mount)
    # the node's own pid of the process: its status is read on the node, no docker exec per poll
    assert rp.node_pid != rp.pid and "sleep" in Path(f"/proc/{rp.node_pid}/cmdline").read_text()
    assert docker_runtime.exit_code(rp) is None
    docker_runtime.stop(rp, grace_s=5)
    assert docker_runtime.exit_code(rp) == 143
    assert not any("sleep 60" in " ".join(p) for p in container.top()["Processes"])

    crash = process_spec(tmp_path, "echo bad flag >&2; exit 2", container="prefill_0", log_path=log_dir / "crash.log")
    crashed = docker_runtime.start(crash)
    assert wait_for_exit(docker_runtime, crashed) == 2
    docker_runtime.collect_log(crashed, tmp_path / "collected.log")
    assert (tmp_path / "collected.log").read_text() == "bad flag\n"

    docker_runtime.teardown()
    assert containers_of_run(docker_engine, run_id) == []
    docker_runtime.teardown()  # idempotent
    # without the node pid the status is asked in the container; once it is gone, what the node has recorded
    assert docker_runtime.exit_code(dataclasses.replace(rp, node_pid=None)) == 143


def test_docker_log_outside_a_bind_mount_is_a_clear_error(docker_runtime, sim_base_image, run_id, tmp_path):
    docker_runtime.prepare([container_spec(sim_base_image, run_id, tmp_path / "logs")])
    stray = process_spec(tmp_path / "elsewhere", "true", container="prefill_0")
    with pytest.raises(RuntimeStartError, match=r"is not inside any of its bind mounts"):
        docker_runtime.start(stray)


def test_docker_missing_image_fails_before_anything_starts(docker_runtime, docker_engine, sim_base_image,
                                                           run_id, tmp_path):
    specs = [
        container_spec(sim_base_image, run_id, tmp_path, key="prefill_0"),
        container_spec("pytest-sglang-pd-no-such-image:0", run_id, tmp_path, key="decode_0"),
    ]
    with pytest.raises(ImageMissing, match=r"image pytest-sglang-pd-no-such-image:0 on node localhost"):
        docker_runtime.prepare(specs)
    assert containers_of_run(docker_engine, run_id) == []


def test_docker_prepare_removes_own_leftovers_and_keeps_foreign_containers(docker_runtime, docker_engine,
                                                                           sim_base_image, run_id, tmp_path):
    owner = docker_runtime.owner
    aborted = docker_engine.containers.run(
        sim_base_image, ["sleep", "infinity"], detach=True, name=f"pytest-sglang-pd-{run_id}-aborted",
        labels={LABEL_MANAGED: "true", LABEL_OWNER: owner, LABEL_RUN_ID: "an-aborted-run"},
    )
    foreign = [
        docker_engine.containers.create(sim_base_image, ["sleep", "infinity"], name=f"foreign-{run_id}"),
        docker_engine.containers.create(
            sim_base_image, ["sleep", "infinity"], name=f"other-owner-{run_id}",
            labels={LABEL_MANAGED: "true", LABEL_OWNER: f"someone-else-{run_id}", LABEL_RUN_ID: "theirs"},
        ),
    ]
    try:
        assert [c.id for c in find_leftover_containers(DockerNode(LocalHost()), owner)] == [aborted.id]
        docker_runtime.prepare([container_spec(sim_base_image, run_id, tmp_path)])
        remaining = {c.id for c in docker_engine.containers.list(all=True)}
        assert aborted.id not in remaining
        assert {c.id for c in foreign} <= remaining
        assert len(containers_of_run(docker_engine, run_id)) == 1
    finally:
        for container in [aborted, *foreign]:
            try:
                container.remove(force=True)
            except docker.errors.NotFound:  # removed by the code under test
                pass


def test_container_host_runs_inside_copies_files_and_times_out(docker_runtime, sim_base_image, run_id, tmp_path):
    docker_runtime.prepare([container_spec(sim_base_image, run_id, tmp_path / "logs")])
    shell = docker_runtime.container_host("prefill_0")
    assert shell.name == f"localhost/pytest-sglang-pd-{run_id}-prefill_0"
    result = shell.run(["sh", "-c", 'echo "$IN_CONTAINER $EXTRA"; cat'], env={"EXTRA": "x y"}, stdin="from stdin")
    assert (result.exit_status, result.stdout) == (0, "yes x y\nfrom stdin")
    source = tmp_path / "blob.bin"
    source.write_bytes(bytes(range(256)))
    shell.put(source, "/opt/copied/blob.bin")
    shell.get("/opt/copied/blob.bin", tmp_path / "back" / "blob.bin")
    assert (tmp_path / "back" / "blob.bin").read_bytes() == source.read_bytes()
    with pytest.raises(HostError, match="timed out after 1 s"):
        shell.run(["sleep", "10"], timeout=1)
    with pytest.raises(RuntimeStartError, match="no container 'decode_9' prepared"):
        docker_runtime.container_host("decode_9")
