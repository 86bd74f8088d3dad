"""Self-tests of pytest_sglang_pd.kv_transfer against the real engines, writer and receiver in separate processes."""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from pytest_sglang_pd import kv_transfer
from pytest_sglang_pd.kv_transfer import (
    BACKENDS,
    PeerProcess,
    EngineUnavailable,
    KVTransferError,
    TransferEngine,
    open_engine,
)

REPO = Path(__file__).resolve().parents[1]
ENGINES = ("mooncake_tcp", "nixl", "tcp")  # "mooncake" on this machine is mooncake over tcp, tested below
PEER_REGION = 8 << 20
MIB = 1 << 20


@pytest.fixture(scope="module", params=ENGINES)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def peer(backend: str):
    process = PeerProcess(backend, PEER_REGION)
    yield process
    process.stop()
    assert process.process.returncode == 0, f"{backend} peer process exited with {process.process.returncode}"


@pytest.fixture(scope="module")
def writer(backend: str):
    engine = open_engine(backend, hostname="127.0.0.1")
    yield engine
    engine.close()


@pytest.mark.integration
def test_write_at_offset_lands_in_the_peer_process(writer: TransferEngine, peer: PeerProcess, backend: str) -> None:
    payload = os.urandom(MIB)
    started = time.perf_counter()
    result = writer.write(peer.descriptor, payload, offset=12_345)
    elapsed = time.perf_counter() - started
    assert peer.read(12_345, MIB) == payload
    assert result.bytes == MIB
    assert 0 < result.seconds <= elapsed
    assert (result.engine, result.peer) == (backend, peer.descriptor["peer"])


@pytest.mark.integration
def test_memoryview_payload_is_written_as_bytes(writer: TransferEngine, peer: PeerProcess) -> None:
    words = memoryview(bytearray(os.urandom(4096))).cast("I")
    result = writer.write(peer.descriptor, words, offset=7 * MIB)
    assert result.bytes == 4096
    assert peer.read(7 * MIB, 4096) == words.tobytes()


@pytest.mark.integration
def test_concurrent_writes_from_threads_all_land(writer: TransferEngine, peer: PeerProcess) -> None:
    chunk = 256 << 10
    payloads = [os.urandom(chunk) for _ in range(16)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda i: writer.write(peer.descriptor, payloads[i], offset=i * chunk), range(16)))
    assert [r.bytes for r in results] == [chunk] * 16
    assert peer.read(0, 16 * chunk) == b"".join(payloads)


@pytest.mark.integration
def test_sizes_beyond_the_staging_buffer_grow_it(writer: TransferEngine, peer: PeerProcess) -> None:
    small, large = os.urandom(1000), os.urandom(5 * MIB + 3)
    writer.write(peer.descriptor, small, offset=0)
    writer.write(peer.descriptor, large, offset=1000)
    assert peer.read(0, 1000 + len(large)) == small + large


@pytest.mark.integration
def test_refused_descriptor_fails_fast_naming_engine_and_peer(
    writer: TransferEngine, peer: PeerProcess, backend: str
) -> None:
    refused = writer.refused_descriptor(peer.descriptor)
    assert refused is not peer.descriptor and refused != peer.descriptor
    started = time.monotonic()
    with pytest.raises(KVTransferError) as caught:
        writer.write(refused, os.urandom(64 << 10), offset=0)
    assert time.monotonic() - started < 5
    error = caught.value
    assert (error.engine, error.peer) == (backend, peer.descriptor["peer"])
    assert str(error).startswith(f"{backend} transfer to {peer.descriptor['peer']} failed: ")
    assert error.reason
    # the refusal came from the peer's engine, the connection is still usable
    payload = os.urandom(1024)
    writer.write(peer.descriptor, payload, offset=3 * MIB)
    assert peer.read(3 * MIB, 1024) == payload


@pytest.mark.integration
def test_write_outside_the_region_is_refused(writer: TransferEngine, peer: PeerProcess, backend: str) -> None:
    with pytest.raises(KVTransferError, match=rf"outside the peer's region of {PEER_REGION} bytes") as caught:
        writer.write(peer.descriptor, b"x" * 10, offset=PEER_REGION - 5)
    assert caught.value.engine == backend


@pytest.mark.integration
def test_descriptor_of_another_engine_is_refused(writer: TransferEngine, backend: str) -> None:
    other = "tcp" if backend != "tcp" else "nixl"
    foreign = {"engine": other, "protocol": "elsewhere", "peer": "127.0.0.1:1", "addr": 4096, "length": MIB}
    with pytest.raises(KVTransferError, match=rf"descriptor is for {other} over elsewhere, this engine is {backend}"):
        writer.write(foreign, b"x")


@pytest.mark.integration
def test_unreachable_peer_fails_fast(backend: str, writer: TransferEngine, peer: PeerProcess) -> None:
    with open_engine(backend, hostname="127.0.0.1") as gone:
        descriptor = gone.register_receive_buffer(MIB).descriptor
    started = time.monotonic()
    with pytest.raises(KVTransferError) as caught:
        writer.write(descriptor, b"x" * 100)
    assert time.monotonic() - started < 5
    assert caught.value.peer == descriptor["peer"]


@pytest.mark.integration
def test_loopback_write_and_local_read(backend: str) -> None:
    with open_engine(backend, hostname="127.0.0.1") as engine:
        buffer = engine.register_receive_buffer(2 * MIB)
        assert buffer.descriptor["peer"] == engine.session_id
        assert json.loads(json.dumps(buffer.descriptor)) == buffer.descriptor
        payload = os.urandom(MIB)
        engine.write(buffer.descriptor, payload, offset=MIB)
        assert buffer.read(MIB, MIB) == payload
        with pytest.raises(ValueError, match="outside buffer"):
            buffer.read(MIB, MIB + 1)


@pytest.mark.integration
def test_close_is_idempotent_and_later_writes_raise(backend: str) -> None:
    engine = open_engine(backend, hostname="127.0.0.1")
    descriptor = engine.register_receive_buffer(MIB).descriptor
    engine.close()
    engine.close()
    with pytest.raises(KVTransferError, match="the engine is closed"):
        engine.write(descriptor, b"x")


EXIT_SCRIPT = textwrap.dedent("""
    import sys
    from pytest_sglang_pd.kv_transfer import open_engine
    engine = open_engine(sys.argv[1], hostname="127.0.0.1")
    buffer = engine.register_receive_buffer(1 << 20)
    engine.write(buffer.descriptor, b"k" * 4096, offset=100)
    assert buffer.read(100, 4096) == b"k" * 4096
    if sys.argv[2] == "close":
        engine.close()
    print("done", flush=True)
""")


@pytest.mark.parametrize("ending", ["close", "leave-open"])
@pytest.mark.integration
def test_a_process_using_an_engine_exits_cleanly(backend: str, ending: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "UCX_MODULES"}  # as a fresh worker starts (nixl sets it)
    finished = subprocess.run(
        [sys.executable, "-c", EXIT_SCRIPT, backend, ending], cwd=REPO, env=env, capture_output=True, text=True,
        timeout=60,
    )
    assert finished.returncode == 0, f"{backend} ({ending}) exited {finished.returncode}: {finished.stderr[-2000:]}"
    assert "done" in finished.stdout


@pytest.mark.integration
def test_mooncake_uses_rdma_only_where_devices_exist(caplog: pytest.LogCaptureFixture) -> None:
    devices = kv_transfer._rdma_devices()
    caplog.set_level(logging.INFO, logger="pytest_sglang_pd.kv_transfer")
    with open_engine("mooncake", hostname="127.0.0.1") as engine:
        assert engine.name == "mooncake"
        assert engine.protocol == ("rdma" if devices else "tcp")
    assert any(f"protocol {engine.protocol}" in r.getMessage() for r in caplog.records)
    with open_engine("mooncake", hostname="127.0.0.1", ib_devices=["no_such_hca_0"]) as engine:
        assert engine.protocol == "tcp"
    assert any("['no_such_hca_0'] not found" in r.getMessage() for r in caplog.records)


@pytest.mark.integration
def test_mooncake_writes_into_a_mooncake_tcp_peer() -> None:
    if kv_transfer._rdma_devices():
        pytest.skip("this machine has RDMA devices, so `mooncake` runs over rdma and cannot reach a tcp peer")
    peer = PeerProcess("mooncake_tcp", PEER_REGION)
    try:
        with open_engine("mooncake", hostname="127.0.0.1") as engine:
            payload = os.urandom(MIB)
            assert engine.write(peer.descriptor, payload, offset=5).engine == "mooncake"
        assert peer.read(5, MIB) == payload
    finally:
        peer.stop()


@pytest.mark.integration
def test_nixl_peer_registering_more_memory_later_is_reloaded() -> None:
    with open_engine("nixl", hostname="127.0.0.1") as receiver, open_engine("nixl", hostname="127.0.0.1") as sender:
        first = receiver.register_receive_buffer(MIB)
        sender.write(first.descriptor, b"a" * 100)
        second = receiver.register_receive_buffer(MIB)
        sender.write(second.descriptor, b"b" * 100)
        sender.write(first.descriptor, b"c" * 100, offset=200)
        assert (first.read(0, 100), second.read(0, 100), first.read(200, 100)) == (b"a" * 100, b"b" * 100, b"c" * 100)


def test_unknown_backend_lists_the_known_ones() -> None:
    expected = "unknown KV transfer backend 'ucx'; expected one of mooncake, mooncake_tcp, nixl, tcp"
    with pytest.raises(ValueError, match=expected):
        open_engine("ucx", hostname="127.0.0.1")
    assert BACKENDS == ("mooncake", "mooncake_tcp", "nixl", "tcp")


def test_missing_nixl_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nixl_cu12", None)
    with pytest.raises(EngineUnavailable, match=r"pip install --no-deps nixl-cu12 numpy") as caught:
        open_engine("nixl", hostname="127.0.0.1")
    assert isinstance(caught.value, KVTransferError) and caught.value.engine == "nixl"


def test_missing_mooncake_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mooncake.engine", None)
    with pytest.raises(EngineUnavailable, match=r"pip install mooncake-transfer-engine-non-cuda"):
        open_engine("mooncake_tcp", hostname="127.0.0.1")


def test_missing_libibverbs_names_the_apt_packages() -> None:
    error = ImportError("libibverbs.so.1: cannot open shared object file: No such file or directory")
    assert "apt-get install -y libibverbs1 librdmacm1" in kv_transfer._mooncake_install_hint(error)


def test_errors_survive_pickling() -> None:
    error = pickle.loads(pickle.dumps(KVTransferError("nixl", "agent-1", "boom")))
    assert (error.engine, error.peer, error.reason, str(error)) == (
        "nixl", "agent-1", "boom", "nixl transfer to agent-1 failed: boom")
    unavailable = pickle.loads(pickle.dumps(EngineUnavailable("nixl", "pip install x")))
    assert str(unavailable) == "nixl transfer engine is unavailable on this machine: pip install x"
