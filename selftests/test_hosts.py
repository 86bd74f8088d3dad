"""Tests for hosts.py: LocalHost, SSHHost (a real throwaway sshd on two loopback nodes) and SlurmHost (srun steps of
an allocation of a real throwaway Slurm)."""

from __future__ import annotations

import secrets
import signal
import subprocess
import time
from pathlib import Path

import pytest

from pytest_sglang_pd.hosts import (
    Host,
    HostCommandError,
    HostError,
    HostUnreachable,
    LocalHost,
    SSHHost,
    connect_all,
    host_for,
)


@pytest.fixture(params=["local", "ssh-127.0.0.2", "ssh-127.0.0.3", pytest.param("slurm-n2", marks=pytest.mark.slurm)])
def host(request) -> Host:
    if request.param == "local":
        yield LocalHost("localhost")
        return
    if request.param == "slurm-n2":  # node n2 of the allocation, by its address
        job = request.getfixturevalue("slurm_job")
        h = host_for("127.0.0.3", transport="slurm", job_id=job, slurm_nodes={"127.0.0.3": "n2"})
        yield h
        h.close()
        return
    server = request.getfixturevalue("sshd")
    node = request.param.removeprefix("ssh-")
    h = host_for(node, transport="ssh", user=server.user, key_file=server.key_file, port=server.port)
    yield h
    h.close()


def wait_until(predicate, timeout: float = 5) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


@pytest.mark.integration
def test_run_returns_status_and_output_without_raising(host):
    result = host.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (result.exit_status, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert result.host == host.name
    with pytest.raises(HostCommandError, match=r"exited with status 3; stderr:\nerr") as info:
        result.check()
    assert host.name in str(info.value)


@pytest.mark.integration
def test_run_quotes_arguments_and_passes_env_and_stdin(host):
    hostile = "a b; echo INJECTED $(id) 'q\""
    result = host.run(
        ["sh", "-c", 'printf "%s|%s|" "$1" "$GREETING"; cat', "sh", hostile],
        env={"GREETING": "hello; world"}, stdin="piped in",
    ).check()
    assert result.stdout == f"{hostile}|hello; world|piped in"


@pytest.mark.integration
def test_run_timeout_raises_host_error(host):
    started = time.monotonic()
    with pytest.raises(HostError, match=r"timed out after 0.5 s"):
        host.run(["sleep", "3"], timeout=0.5)
    assert time.monotonic() - started < 2.5


@pytest.mark.integration
def test_put_and_get_copy_bytes_and_create_parent_dirs(host, tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(bytes(range(256)) * 10)
    remote = str(tmp_path / "on-node" / "deep" / "copy.bin")
    host.put(source, remote)
    back = tmp_path / "back" / "again" / "copy.bin"
    host.get(remote, back)
    assert back.read_bytes() == source.read_bytes()
    with pytest.raises(HostError, match=rf"^{host.name}: cannot copy .*/missing.bin"):
        host.get(str(tmp_path / "missing.bin"), back)


@pytest.mark.integration
def test_spawn_runs_in_own_group_with_log_and_stops_on_signal(host, tmp_path):
    log_path = str(tmp_path / "logs" / "worker.log")
    pid = host.spawn(["sh", "-c", 'echo "started with $MODE"; exec sleep 60'], log_path=log_path, env={"MODE": "fast"})
    try:
        assert wait_until(lambda: "started with fast" in host.tail(log_path))
        assert host.alive(pid) and host.group_alive(pid)
        pgid = host.run(["ps", "-o", "pgid=", "-p", str(pid)]).check().stdout.strip()
        assert pgid == str(pid), "spawned process must lead its own process group"
        host.signal_group(pid, signal.SIGTERM)
        assert wait_until(lambda: not host.group_alive(pid))
        assert not host.alive(pid)
        host.signal_group(pid, signal.SIGTERM)  # a group that is gone is not an error
    finally:
        host.signal_group(pid, signal.SIGKILL)


@pytest.mark.integration
def test_tail_returns_last_lines_or_a_note(host, tmp_path):
    path = tmp_path / "many.log"
    path.write_text("".join(f"line {i}\n" for i in range(100)))
    assert host.tail(str(path), lines=3) == "line 97\nline 98\nline 99\n"
    assert "cannot read" in host.tail(str(tmp_path / "missing.log"))


@pytest.mark.integration
def test_spawned_secret_reaches_the_process_but_no_command_line_or_log(host, tmp_path):
    secret = "hf_" + secrets.token_hex(16)
    expected = tmp_path / "expected"
    expected.write_text(secret)
    log_path = str(tmp_path / "secret.log")
    script = 'if [ "$HF_TOKEN" = "$(cat "$1")" ]; then echo token-ok; else echo token-wrong; fi; exec sleep 60'
    pid = host.spawn(["sh", "-c", script, "sh", str(expected)], log_path=log_path, secret_env={"HF_TOKEN": secret})
    try:
        assert wait_until(lambda: "token-" in host.tail(log_path))
        assert host.tail(log_path).strip() == "token-ok"
        assert secret not in host.run(["ps", "-eo", "args"]).check().stdout
        leftovers = host.run(["sh", "-c", 'grep -l -F -f - "${TMPDIR:-/tmp}"/tmp.* 2>/dev/null'], stdin=secret)
        assert leftovers.stdout == "", "the private env file must be deleted after it was sourced"
    finally:
        host.signal_group(pid, signal.SIGKILL)
    assert secret not in Path(log_path).read_text()


@pytest.mark.integration
def test_spawn_rejects_an_invalid_env_name_without_showing_the_value(host, tmp_path):
    with pytest.raises(ValueError, match="BAD NAME") as info:
        host.spawn(["true"], log_path=str(tmp_path / "x.log"), secret_env={"BAD NAME": "s3cret"})
    assert "s3cret" not in str(info.value)


@pytest.mark.integration
def test_read_secret_strips_and_errors_name_the_path(host, tmp_path):
    (tmp_path / "token").write_text("  tok-123\n")
    assert host.read_secret(str(tmp_path / "token")) == "tok-123"
    with pytest.raises(HostCommandError, match=r"cannot read secret file .*/absent"):
        host.read_secret(str(tmp_path / "absent"))


def test_local_connect_all_returns_one_host_per_node():
    hosts = connect_all(["localhost", "127.0.0.1", "localhost"], transport="local")
    assert sorted(hosts) == ["127.0.0.1", "localhost"]
    assert all(isinstance(h, LocalHost) for h in hosts.values())


@pytest.mark.integration
def test_ssh_connect_all_connects_every_node_in_parallel(sshd):
    hosts = connect_all(list(sshd.nodes), transport="ssh", user=sshd.user, key_file=sshd.key_file, port=sshd.port)
    try:
        assert sorted(hosts) == sorted(sshd.nodes)
        for node, h in hosts.items():
            assert isinstance(h, SSHHost)
            assert h.run(["echo", node]).check().stdout.strip() == node
    finally:
        for h in hosts.values():
            h.close()


@pytest.mark.integration
def test_ssh_connect_all_names_every_unreachable_node_and_fails_fast(sshd):
    nodes = [sshd.nodes[0], "127.0.0.9", "no-such-node.invalid"]
    started = time.monotonic()
    with pytest.raises(HostUnreachable) as info:
        connect_all(nodes, transport="ssh", user=sshd.user, key_file=sshd.key_file, port=sshd.port, connect_timeout=3)
    message = str(info.value)
    assert time.monotonic() - started < 8
    assert message.startswith("2 of 3 nodes unreachable over ssh")
    assert "127.0.0.9" in message and "no-such-node.invalid" in message
    assert not any(line.strip().startswith(sshd.nodes[0]) for line in message.splitlines())


@pytest.mark.integration
def test_ssh_wrong_key_is_unreachable_naming_the_node(sshd, tmp_path):
    other_key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True)
    h = SSHHost(sshd.nodes[1], user=sshd.user, key_file=str(other_key), port=sshd.port, connect_timeout=3)
    try:
        with pytest.raises(HostUnreachable, match=rf"^{sshd.nodes[1]}: cannot connect over ssh to .*{sshd.port}"):
            h.run(["true"])
    finally:
        h.close()


@pytest.mark.integration
def test_ssh_dropped_connection_is_reopened_once_then_reported_with_user_port_and_key(tmp_path, caplog):
    from selftests.conftest import throwaway_sshd

    with throwaway_sshd(tmp_path) as server:
        h = SSHHost(server.nodes[0], user=server.user, key_file=server.key_file, port=server.port, connect_timeout=3)
        try:
            assert h.run(["echo", "one"]).check().stdout == "one\n"
            for session in server.sessions():  # the node drops the connection (sshd restarted, idle timeout, ...)
                subprocess.run(["kill", str(session)], check=True)
            assert h.run(["echo", "two"]).check().stdout == "two\n"
            assert "re-opening" in caplog.text
        finally:
            h.close()
    # the server is gone for good: the error names node, user, port, key and what SSH said
    with pytest.raises(HostUnreachable) as info:
        h.run(["true"])
    assert str(info.value).startswith(
        f"{server.nodes[0]}: cannot connect over ssh to {server.user}@{server.nodes[0]}:{server.port} "
        f"(key {server.key_file}): ")
    assert f"unable to connect to port {server.port}" in str(info.value).lower()


def test_unknown_transport_is_rejected():
    with pytest.raises(ValueError, match="unknown transport 'telnet'"):
        host_for("node1", transport="telnet")
