"""The real KV transfer engines (Mooncake, NIXL) and a plain-socket one behind one interface.

A decode worker opens an engine, registers a receive region and hands the region's JSON
`descriptor` to a prefill worker, which writes KV payloads into it with `write`. Calls block;
`write` may be called from several threads at once.

Run `python -m pytest_sglang_pd.kv_transfer peer --backend B` for a receiving peer process
(prints its descriptor, then serves reads of its region) - the self-tests and the benchmark use it;
`... receive` on a decode's node and `... send` on a prefill's node move one payload between them and print its
GB/s (the live cluster's prefill -> decode pair check). The file imports nothing of its package, so the check copies
it into the workers' containers (an SGLang image has the engines, not this suite) and runs it there.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import json
import logging
import mmap
import os
import random
import socket
import struct
import sys
import threading
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Sequence


log = logging.getLogger("pytest_sglang_pd.kv_transfer")

IB_SYSFS = "/sys/class/infiniband"  # one folder per RDMA device
BACKENDS = ("mooncake", "mooncake_tcp", "nixl", "tcp")

NIXL_TRANSFER_TIMEOUT_S = 30.0
TCP_CONNECT_TIMEOUT_S = 5.0
TCP_TRANSFER_TIMEOUT_S = 30.0
# An address no engine ever registers: the first page after NULL is never mapped on Linux.
UNREGISTERED_ADDR = 0x1000


class KVTransferError(RuntimeError):
    """A failed transfer: which engine, which peer, why."""

    def __init__(self, engine: str, peer: str, reason: str) -> None:
        self.engine, self.peer, self.reason = engine, peer, reason
        super().__init__(self._message())

    def _message(self) -> str:
        return f"{self.engine} transfer to {self.peer} failed: {self.reason}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.engine, self.peer, self.reason))


class EngineUnavailable(KVTransferError):
    """The engine cannot be loaded on this machine; the reason names what to install."""

    def __init__(self, engine: str, reason: str, peer: str = "-") -> None:
        super().__init__(engine, peer, reason)

    def _message(self) -> str:
        return f"{self.engine} transfer engine is unavailable on this machine: {self.reason}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.engine, self.reason, self.peer))


@dataclass(frozen=True)
class TransferResult:
    bytes: int
    seconds: float
    engine: str
    peer: str


class _HostMemory:
    """Page-aligned anonymous memory with a stable address (what engines register)."""

    def __init__(self, length: int) -> None:
        if length <= 0:
            raise ValueError(f"buffer length must be positive, got {length}")
        self.length = length
        self._mmap = mmap.mmap(-1, length)
        self._pin = (ctypes.c_char * length).from_buffer(self._mmap)
        self.addr = ctypes.addressof(self._pin)
        self.view = memoryview(self._mmap)

    def fill(self, data: memoryview) -> None:
        self._mmap[: len(data)] = data

    def free(self) -> None:
        if self._mmap.closed:
            return
        self.view.release()
        del self._pin
        try:
            self._mmap.close()
        except BufferError:  # a view is still in use by another thread; the GC unmaps it later
            log.debug("kv_transfer: buffer at %#x still in use, left to the garbage collector", self.addr)


class ReceiveBuffer:
    """A registered region that peers write into; `descriptor` is what they need to do so."""

    def __init__(self, memory: _HostMemory, descriptor: dict) -> None:
        self._memory = memory
        self.addr = memory.addr
        self.length = memory.length
        self.descriptor = descriptor

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.length:
            raise ValueError(f"read [{offset}, {offset + length}) outside buffer of {self.length} bytes")
        return bytes(self._memory.view[offset : offset + length])


class _StagingPool:
    """Registered local source buffers, reused across writes (one per concurrent writer)."""

    def __init__(self, register: Callable[[_HostMemory], Any], unregister: Callable[[_HostMemory, Any], None]):
        self._register, self._unregister = register, unregister
        self._lock = threading.Lock()
        self._idle: list[tuple[_HostMemory, Any]] = []
        self._all: list[tuple[_HostMemory, Any]] = []

    def acquire(self, length: int) -> tuple[_HostMemory, Any]:
        with self._lock:
            fitting = [entry for entry in self._idle if entry[0].length >= length]
            if fitting:
                entry = min(fitting, key=lambda e: e[0].length)
                self._idle.remove(entry)
                return entry
            if self._idle:  # grow: replace the largest idle buffer by a bigger one
                self._drop(max(self._idle, key=lambda e: e[0].length))
        memory = _HostMemory(max(1 << 20, 1 << (length - 1).bit_length()))
        try:
            entry = (memory, self._register(memory))
        except BaseException:
            memory.free()
            raise
        with self._lock:
            self._all.append(entry)
        return entry

    def release(self, entry: tuple[_HostMemory, Any]) -> None:
        with self._lock:
            if entry in self._all:
                self._idle.append(entry)

    def _drop(self, entry: tuple[_HostMemory, Any]) -> None:
        self._idle.remove(entry)
        self._all.remove(entry)
        self._unregister(*entry)
        entry[0].free()

    def close(self) -> None:
        with self._lock:
            entries, self._all, self._idle = self._all, [], []
        for memory, handle in entries:
            self._unregister(memory, handle)
            memory.free()


def _as_bytes_view(data: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


class TransferEngine(ABC):
    """One transfer engine in this process: receive regions plus writes to peers' regions."""

    name: str
    protocol: str
    session_id: str

    def __init__(self) -> None:
        self._buffers: list[tuple[ReceiveBuffer, Any]] = []
        self._closed = False
        self._close_lock = threading.Lock()

    def register_receive_buffer(self, length: int) -> ReceiveBuffer:
        self._check_open()
        memory = _HostMemory(length)
        try:
            handle, extra = self._register_receive(memory)
        except BaseException:
            memory.free()
            raise
        descriptor = {
            "engine": self.name,
            "protocol": self.protocol,
            "peer": self.session_id,
            "addr": memory.addr,
            "length": length,
            **extra,
        }
        buffer = ReceiveBuffer(memory, descriptor)
        self._buffers.append((buffer, handle))
        return buffer

    def write(self, descriptor: dict, data: bytes | bytearray | memoryview, offset: int = 0) -> TransferResult:
        """Write `data` into the peer's region at `offset`; raises KVTransferError on any failure."""
        view = _as_bytes_view(data)
        peer = str(descriptor.get("peer", "?"))
        self._check_open(peer)
        self._check_descriptor(descriptor, peer, offset, len(view))
        start = time.perf_counter()
        try:
            if len(view):
                self._write(descriptor, peer, view, int(descriptor["addr"]) + offset)
        except KVTransferError:
            raise
        except Exception as error:
            if self._closed:  # close() ran in another thread while this write was under way
                raise KVTransferError(self.name, peer, "the engine was closed during the write") from error
            raise
        return TransferResult(len(view), time.perf_counter() - start, self.name, peer)

    def refused_descriptor(self, descriptor: dict) -> dict:
        """A copy of `descriptor` the peer's engine refuses fast: its address is in no registered region.

        Observed: Mooncake (tcp) answers such a write with -1 in under a millisecond (the peer logs
        "not within any registered buffer"), as it does for an unknown session; NIXL raises
        NIXL_ERR_NOT_FOUND when preparing the transfer from the peer's metadata.
        """
        return {**descriptor, "addr": UNREGISTERED_ADDR}

    def close(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        try:
            self._shutdown()
        finally:
            for buffer, _ in self._buffers:
                buffer._memory.free()
            self._buffers.clear()

    def __enter__(self) -> TransferEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} over {self.protocol} at {self.session_id}>"

    def _check_open(self, peer: str = "-") -> None:
        if self._closed:
            raise KVTransferError(self.name, peer, "the engine is closed")

    def _check_descriptor(self, descriptor: dict, peer: str, offset: int, length: int) -> None:
        family = self.name.split("_")[0]
        theirs = str(descriptor.get("engine", "?")).split("_")[0]
        if theirs != family or descriptor.get("protocol") != self.protocol:
            raise KVTransferError(
                self.name, peer,
                f"descriptor is for {descriptor.get('engine')} over {descriptor.get('protocol')}, "
                f"this engine is {self.name} over {self.protocol}",
            )
        region = int(descriptor.get("length", 0))
        if offset < 0 or offset + length > region:
            raise KVTransferError(
                self.name, peer, f"write [{offset}, {offset + length}) outside the peer's region of {region} bytes"
            )

    @abstractmethod
    def _register_receive(self, memory: _HostMemory) -> tuple[Any, dict]:
        """Register `memory` for remote writes; returns (handle, extra descriptor fields)."""

    @abstractmethod
    def _write(self, descriptor: dict, peer: str, data: memoryview, remote_addr: int) -> None:
        """Move `data` to `remote_addr` of the peer; raise KVTransferError on failure."""

    @abstractmethod
    def _shutdown(self) -> None:
        """Release engine resources (receive buffers are freed afterwards by close())."""


def _rdma_devices() -> list[str]:
    try:
        return sorted(os.listdir(IB_SYSFS))
    except OSError:
        return []


# ---------------------------------------------------------------------------------------- Mooncake


def _mooncake_install_hint(error: ImportError) -> str:
    text = str(error)
    if "libibverbs" in text or "librdmacm" in text:
        return f"{text}; install the RDMA user-space libraries: apt-get install -y libibverbs1 librdmacm1"
    return (
        f"{text}; install it with `pip install mooncake-transfer-engine-non-cuda` "
        "(or `mooncake-transfer-engine` on a CUDA host)"
    )


class MooncakeEngine(TransferEngine):
    """Mooncake's TransferEngine with P2P handshake (no etcd), over RDMA or TCP."""

    def __init__(self, backend: str, hostname: str, ib_devices: Sequence[str]) -> None:
        super().__init__()
        try:
            from mooncake.engine import TransferEngine as _Mooncake
        except ImportError as error:
            raise EngineUnavailable(backend, _mooncake_install_hint(error)) from error
        self.name = backend
        self.protocol, device = self._choose_protocol(backend, ib_devices)
        self._engine = _Mooncake()
        rc = self._engine.initialize(hostname, "P2PHANDSHAKE", self.protocol, device)
        if rc != 0:
            reason = f"initialize({hostname!r}, P2PHANDSHAKE, {self.protocol!r}, {device!r}) returned {rc}"
            raise KVTransferError(backend, hostname, reason)
        self.session_id = f"{hostname}:{self._engine.get_rpc_port()}"
        self._staging = _StagingPool(self._register, self._unregister)

    @staticmethod
    def _choose_protocol(backend: str, ib_devices: Sequence[str]) -> tuple[str, str]:
        if backend == "mooncake_tcp":
            log.info("mooncake_tcp: protocol tcp")
            return "tcp", ""
        present = _rdma_devices()
        wanted = [d for d in ib_devices if d in present] if ib_devices else present
        if os.environ.get("MC_FORCE_TCP", "").lower() in ("1", "true"):
            log.info("mooncake: MC_FORCE_TCP is set -> protocol tcp")
            return "tcp", ""
        if not wanted:
            asked = f"devices {list(ib_devices)} not" if ib_devices else "no RDMA device"
            log.info("mooncake: %s found in %s -> protocol tcp (as sglang's MC_FORCE_TCP)", asked, IB_SYSFS)
            return "tcp", ""
        log.info("mooncake: protocol rdma on %s", ",".join(wanted))
        return "rdma", ",".join(wanted) if ib_devices else ""

    def _register(self, memory: _HostMemory) -> None:
        rc = self._engine.register_memory(memory.addr, memory.length)
        if rc != 0:
            raise KVTransferError(self.name, self.session_id, f"register_memory({memory.length} bytes) returned {rc}")

    def _unregister(self, memory: _HostMemory, _handle: Any) -> None:
        self._engine.unregister_memory(memory.addr)

    def _register_receive(self, memory: _HostMemory) -> tuple[Any, dict]:
        self._register(memory)
        return None, {}

    def _write(self, descriptor: dict, peer: str, data: memoryview, remote_addr: int) -> None:
        entry = self._staging.acquire(len(data))
        try:
            staging = entry[0]
            staging.fill(data)
            rc = self._engine.transfer_sync_write(peer, staging.addr, remote_addr, len(data))
        finally:
            self._staging.release(entry)
        if rc < 0:
            raise KVTransferError(
                self.name, peer,
                f"transfer_sync_write of {len(data)} bytes to remote address {remote_addr:#x} returned {rc} "
                "(the peer refused it or is unreachable; mooncake's log on stderr has the cause)",
            )

    def _shutdown(self) -> None:
        self._staging.close()
        for buffer, _ in self._buffers:
            self._engine.unregister_memory(buffer.addr)
        del self._engine


# -------------------------------------------------------------------------------------------- NIXL


def _import_nixl() -> Any:
    if not _rdma_devices() and "UCX_MODULES" not in os.environ:
        # UCX's InfiniBand module pulls in a second libnl copy whose destructor segfaults at exit.
        log.info("nixl: no RDMA device in %s -> UCX_MODULES=^ib (UCX without its InfiniBand module)", IB_SYSFS)
        os.environ["UCX_MODULES"] = "^ib"
    try:  # what SGLang imports (the `nixl` package of its images), else the CUDA 12 wheel itself
        from nixl import _api
    except ImportError:
        try:
            from nixl_cu12 import _api
        except ImportError as error:
            raise EngineUnavailable(
                "nixl",
                f"{error}; install it with `pip install --no-deps nixl-cu12 numpy` (its torch dependency is not needed)",
            ) from error
    return _api


_NIXL_ERROR_HINTS = {
    "nixlNotFoundError": ": the peer agent is unknown or has no registered region covering the target",
    "nixlInvalidParamError": ": the peer's agent metadata was rejected",
}


class NixlEngine(TransferEngine):
    """A NIXL agent with the UCX backend; DRAM regions; the descriptor carries the agent metadata."""

    name = "nixl"
    protocol = "ucx"

    def __init__(self, hostname: str) -> None:
        super().__init__()
        api = _import_nixl()
        self.session_id = f"{hostname}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            self._agent = api.nixl_agent(self.session_id, api.nixl_agent_config(backends=["UCX"]))
        except RuntimeError as error:
            raise EngineUnavailable("nixl", f"cannot create a NIXL agent: {error}") from error
        if "UCX" not in self._agent.backends:
            raise EngineUnavailable("nixl", f"the NIXL UCX plugin did not load (plugins: {self._agent.plugin_list})")
        self._lock = threading.Lock()  # the agent is created without internal thread synchronisation
        self._remote_metadata: dict[str, bytes] = {}
        self._staging = _StagingPool(self._register_dram, self._deregister)

    def _register_dram(self, memory: _HostMemory) -> Any:
        with self._lock:
            return self._agent.register_memory([(memory.addr, memory.length, 0, "")], "DRAM")

    def _deregister(self, _memory: _HostMemory, registration: Any) -> None:
        with self._lock:
            self._agent.deregister_memory(registration)

    def _register_receive(self, memory: _HostMemory) -> tuple[Any, dict]:
        registration = self._register_dram(memory)
        with self._lock:
            metadata = self._agent.get_agent_metadata()
        return registration, {"agent_metadata": base64.b64encode(metadata).decode("ascii")}

    def _load_peer(self, descriptor: dict, peer: str) -> None:
        """Add (or refresh, when it registered more memory since) the peer agent; caller holds the lock."""
        if peer == self.session_id:  # loopback: the agent knows its own registrations
            return
        try:
            metadata = base64.b64decode(descriptor["agent_metadata"])
        except (KeyError, ValueError) as error:
            raise KVTransferError(self.name, peer, f"descriptor has no valid agent_metadata ({error})") from error
        if self._remote_metadata.get(peer) == metadata:
            return
        if peer in self._remote_metadata:
            self._agent.remove_remote_agent(peer)
            del self._remote_metadata[peer]
        loaded = self._agent.add_remote_agent(metadata)
        loaded = loaded.decode() if isinstance(loaded, bytes) else loaded
        if loaded != peer:
            self._agent.remove_remote_agent(loaded)
            raise KVTransferError(self.name, peer, f"agent metadata is for agent {loaded!r}, not {peer!r}")
        self._remote_metadata[peer] = metadata

    def _write(self, descriptor: dict, peer: str, data: memoryview, remote_addr: int) -> None:
        entry = self._staging.acquire(len(data))
        handle = None
        try:
            entry[0].fill(data)
            with self._lock:
                self._load_peer(descriptor, peer)
                source = self._agent.get_xfer_descs([(entry[0].addr, len(data), 0)], "DRAM")
                target = self._agent.get_xfer_descs([(remote_addr, len(data), 0)], "DRAM")
                handle = self._agent.initialize_xfer("WRITE", source, target, peer, b"")
                state = self._agent.transfer(handle)
            self._wait(handle, state, peer, len(data))
        except KVTransferError:
            raise
        except Exception as error:  # nixl raises its own exception types (nixlNotFoundError, ...)
            hint = _NIXL_ERROR_HINTS.get(type(error).__name__, "")
            reason = f"{type(error).__name__}: {error}{hint} (writing {len(data)} bytes to {remote_addr:#x})"
            raise KVTransferError(self.name, peer, reason) from error
        finally:
            if handle is not None:
                self._release(handle, peer)
            self._staging.release(entry)

    def _wait(self, handle: Any, state: str, peer: str, length: int) -> None:
        deadline = time.monotonic() + NIXL_TRANSFER_TIMEOUT_S
        while state == "PROC":
            if time.monotonic() > deadline:
                raise KVTransferError(self.name, peer, f"{length} bytes not DONE after {NIXL_TRANSFER_TIMEOUT_S:.0f} s")
            time.sleep(0.0001)
            with self._lock:
                state = self._agent.check_xfer_state(handle)
        if state != "DONE":
            raise KVTransferError(self.name, peer, f"transfer state {state} for {length} bytes")

    def _release(self, handle: Any, peer: str) -> None:
        try:
            with self._lock:
                self._agent.release_xfer_handle(handle)
        except Exception as error:
            log.warning("nixl: could not release the transfer handle to %s: %s", peer, error)

    def _shutdown(self) -> None:
        self._staging.close()
        with self._lock:
            for _, registration in self._buffers:
                self._agent.deregister_memory(registration)
            for peer in self._remote_metadata:
                self._agent.remove_remote_agent(peer)
            self._remote_metadata.clear()
            del self._agent


# --------------------------------------------------------------------------------------------- tcp

_TCP_HEADER = struct.Struct("!QQQ")  # buffer id, offset, length; then `length` payload bytes
_TCP_ACK = struct.Struct("!BI")  # status (0 ok), length of a UTF-8 reason that follows


def _recv_exact(sock: socket.socket, length: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < length:
        chunk = sock.recv(length - len(chunks))
        if not chunk:
            raise ConnectionError("peer closed the connection")
        chunks += chunk
    return bytes(chunks)


def _recv_into(sock: socket.socket, view: memoryview) -> None:
    while len(view):
        received = sock.recv_into(view)
        if not received:
            raise ConnectionError("peer closed the connection")
        view = view[received:]


class PlainTcpEngine(TransferEngine):
    """NOT a real KV transfer engine: the project's own framed writes over a plain socket.

    Useful where neither Mooncake nor NIXL can run; numbers from it say nothing about RDMA.
    """

    name = "tcp"
    protocol = "socket"

    def __init__(self, hostname: str) -> None:
        super().__init__()
        self._listener = socket.create_server((hostname, 0))
        self.session_id = f"{hostname}:{self._listener.getsockname()[1]}"
        self._regions: dict[int, _HostMemory] = {}
        self._connections: set[socket.socket] = set()
        self._idle: dict[str, list[socket.socket]] = {}
        self._lock = threading.Lock()
        self._acceptor = threading.Thread(target=self._accept, name=f"kv-tcp-accept-{self.session_id}", daemon=True)
        self._acceptor.start()

    def _register_receive(self, memory: _HostMemory) -> tuple[Any, dict]:
        with self._lock:
            buffer_id = len(self._regions) + 1
            self._regions[buffer_id] = memory
        return buffer_id, {"buffer_id": buffer_id}

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                self._connections.add(conn)
            threading.Thread(target=self._serve, args=(conn,), name="kv-tcp-serve", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                try:
                    header = _recv_exact(conn, _TCP_HEADER.size)
                except ConnectionError:
                    return
                buffer_id, offset, length = _TCP_HEADER.unpack(header)
                region = self._regions.get(buffer_id)
                if region is None:
                    reason = f"no receive buffer {buffer_id} is registered here"
                elif offset + length > region.length:
                    reason = f"write [{offset}, {offset + length}) outside receive buffer of {region.length} bytes"
                else:
                    reason = ""
                    _recv_into(conn, region.view[offset : offset + length])
                if reason:
                    self._drain(conn, length)
                encoded = reason.encode()
                conn.sendall(_TCP_ACK.pack(1 if reason else 0, len(encoded)) + encoded)
        except OSError:
            return
        finally:
            with self._lock:
                self._connections.discard(conn)
            conn.close()

    @staticmethod
    def _drain(conn: socket.socket, length: int) -> None:
        scratch = memoryview(bytearray(min(length, 1 << 20) or 1))
        while length:
            received = conn.recv_into(scratch[: min(length, len(scratch))])
            if not received:
                raise ConnectionError("peer closed the connection")
            length -= received

    def refused_descriptor(self, descriptor: dict) -> dict:
        """A copy naming a receive buffer the peer never registered (the peer replies with an error)."""
        return {**descriptor, "buffer_id": 0}

    def _connection(self, peer: str) -> socket.socket:
        with self._lock:
            idle = self._idle.get(peer)
            if idle:
                return idle.pop()
        host, _, port = peer.rpartition(":")
        sock = socket.create_connection((host, int(port)), timeout=TCP_CONNECT_TIMEOUT_S)
        sock.settimeout(TCP_TRANSFER_TIMEOUT_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _write(self, descriptor: dict, peer: str, data: memoryview, remote_addr: int) -> None:
        offset = remote_addr - int(descriptor["addr"])
        try:
            sock = self._connection(peer)
        except (OSError, ValueError) as error:
            raise KVTransferError(self.name, peer, f"cannot connect: {error}") from error
        try:
            sock.sendall(_TCP_HEADER.pack(int(descriptor.get("buffer_id", 0)), offset, len(data)))
            sock.sendall(data)
            status, reason_length = _TCP_ACK.unpack(_recv_exact(sock, _TCP_ACK.size))
            reason = _recv_exact(sock, reason_length).decode(errors="replace")
        except (OSError, ConnectionError) as error:
            sock.close()
            raise KVTransferError(self.name, peer, f"connection failed mid-transfer: {error}") from error
        with self._lock:
            if self._closed:
                sock.close()
            else:
                self._idle.setdefault(peer, []).append(sock)
        if status:
            raise KVTransferError(self.name, peer, f"peer refused the write: {reason}")

    def _shutdown(self) -> None:
        with self._lock:
            sockets = [s for idle in self._idle.values() for s in idle] + list(self._connections)
            self._idle.clear()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        self._acceptor.join(timeout=5)


def open_engine(backend: str, *, hostname: str, ib_devices: Sequence[str] = ()) -> TransferEngine:
    """Open the engine sglang's `--disaggregation-transfer-backend` names (or our plain `tcp`)."""
    if backend in ("mooncake", "mooncake_tcp"):
        return MooncakeEngine(backend, hostname, ib_devices)
    if backend == "nixl":
        return NixlEngine(hostname)
    if backend == "tcp":
        return PlainTcpEngine(hostname)
    raise ValueError(f"unknown KV transfer backend {backend!r}; expected one of {', '.join(BACKENDS)}")


# ------------------------------------------------------------------------------------ peer process

PEER_LINE_PREFIX = "KVPEER "


def _serve_peer(backend: str, hostname: str, length: int) -> None:
    """Print the descriptor of a fresh receive region, then answer `read OFFSET LENGTH` lines on stdin."""
    engine = open_engine(backend, hostname=hostname)
    try:
        buffer = engine.register_receive_buffer(length)
        print(PEER_LINE_PREFIX + json.dumps(buffer.descriptor), flush=True)
        for line in sys.stdin:
            command = line.split()
            if command[:1] == ["read"]:
                data = buffer.read(int(command[1]), int(command[2]))
                print(PEER_LINE_PREFIX + base64.b64encode(data).decode("ascii"), flush=True)
            elif command[:1] == ["quit"]:
                break
    finally:
        engine.close()


class PeerProcess:
    """A receiving engine in its own process (`python -m pytest_sglang_pd.kv_transfer peer`), as a decode
    worker holds one: `descriptor` to write to, `read()` to see what landed. For checks and benchmarks."""

    def __init__(self, backend: str, length: int, hostname: str = "127.0.0.1") -> None:
        import subprocess
        import tempfile

        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", __spec__.name if __spec__ else __name__, "peer", "--backend", backend, "--hostname", hostname,
             "--length", str(length)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
        )
        self.descriptor = json.loads(self._reply())

    def _reply(self) -> str:
        for line in self.process.stdout:
            if line.startswith(PEER_LINE_PREFIX):
                return line[len(PEER_LINE_PREFIX):]
        self.log.seek(0)
        raise RuntimeError(f"KV peer process exited with {self.process.wait()} before replying; its log:\n"
                           + self.log.read()[-3000:])

    def read(self, offset: int, length: int) -> bytes:
        self.process.stdin.write(f"read {offset} {length}\n")
        self.process.stdin.flush()
        return base64.b64decode(self._reply())

    def stop(self) -> None:
        import subprocess

        try:
            self.process.stdin.write("quit\n")
            self.process.stdin.close()
            self.process.wait(timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()
        self.log.close()


def pair_payload(seed: int, length: int) -> bytes:
    """The pair check's payload: the same bytes on the sending and the receiving node for the same seed."""
    return random.Random(seed).randbytes(length)


def receive_pair(backend: str, hostname: str, length: int, seed: int, descriptor_file: str, wait_s: float,
                 ib_devices: Sequence[str] = ()) -> dict:
    """The decode's side of the pair check: a receive region whose descriptor goes to ``descriptor_file``, then a wait
    until the payload of ``seed`` has landed whole. The sender's side removes the file when it is done: the wait then
    ends at once (a last look at the region decides), as it does after ``wait_s``."""
    expected = pair_payload(seed, length)
    with open_engine(backend, hostname=hostname, ib_devices=ib_devices) as engine:
        buffer = engine.register_receive_buffer(length)
        with open(descriptor_file + ".part", "w") as out:
            json.dump(buffer.descriptor, out)
        os.replace(descriptor_file + ".part", descriptor_file)
        deadline = time.monotonic() + wait_s
        try:
            while buffer.read(0, length) != expected:
                if not os.path.exists(descriptor_file) or time.monotonic() > deadline:
                    if buffer.read(0, length) == expected:
                        break
                    landed = sum(a == b for a, b in zip(buffer.read(0, 4096), expected[:4096]))
                    raise KVTransferError(engine.name, hostname, f"the payload did not land whole within {wait_s:g} s"
                                          if os.path.exists(descriptor_file) else
                                          f"the sender ended but the payload did not land whole "
                                          f"({landed} of the first 4096 bytes right)")
                time.sleep(0.02)
        finally:
            if os.path.exists(descriptor_file):
                os.unlink(descriptor_file)
    return {"engine": engine.name, "bytes": length, "received": True}


def send_pair(backend: str, hostname: str, descriptor: dict, seed: int, slow: float = 1.0,
              ib_devices: Sequence[str] = ()) -> dict:
    """The prefill's side of the pair check: the payload of ``seed`` written into the peer's region; the GB/s it
    took (``slow``: the simulator's slowed pair, the time stretched that many times)."""
    data = pair_payload(seed, int(descriptor["length"]))
    with open_engine(backend, hostname=hostname, ib_devices=ib_devices) as engine:
        result = engine.write(descriptor, data)
    seconds = result.seconds * slow
    if slow > 1:
        time.sleep(seconds - result.seconds)
    return {"engine": result.engine, "bytes": len(data), "seconds": seconds, "gbps": len(data) / seconds / 1e9}


PAIR_LINE_PREFIX = "KVPAIR "


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pytest_sglang_pd.kv_transfer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    peer = sub.add_parser("peer", help="a receiving peer: prints its descriptor, serves reads on stdin")
    peer.add_argument("--backend", choices=BACKENDS, required=True)
    peer.add_argument("--hostname", default="127.0.0.1")
    peer.add_argument("--length", type=int, default=64 << 20)
    probe = sub.add_parser("probe", help="open the engine on this node, print its name and protocol, close it")
    probe.add_argument("--backend", choices=BACKENDS, required=True)
    probe.add_argument("--hostname", default="127.0.0.1")
    receive = sub.add_parser("receive", help="the pair check's receiving side: descriptor to a file, wait for the payload")
    receive.add_argument("--length", type=int, required=True)
    receive.add_argument("--descriptor-file", required=True)
    receive.add_argument("--wait-s", type=float, default=60.0)
    send = sub.add_parser("send", help="the pair check's sending side: the payload into --descriptor, print its GB/s")
    send.add_argument("--descriptor", required=True, help="the receiving side's descriptor (JSON)")
    send.add_argument("--slow", type=float, default=1.0, help="stretch the measured time (a simulated slow pair)")
    for side in (receive, send):
        side.add_argument("--backend", choices=BACKENDS, required=True)
        side.add_argument("--hostname", default="127.0.0.1")
        side.add_argument("--seed", type=int, required=True)
        side.add_argument("--ib-devices", default="", help="comma-separated RDMA devices (default: the engine's choice)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    devices = tuple(d for d in getattr(args, "ib_devices", "").split(",") if d)
    if args.command == "receive":
        print(PAIR_LINE_PREFIX + json.dumps(receive_pair(args.backend, args.hostname, args.length, args.seed,
                                                         args.descriptor_file, args.wait_s, devices)), flush=True)
    elif args.command == "send":
        print(PAIR_LINE_PREFIX + json.dumps(send_pair(args.backend, args.hostname, json.loads(args.descriptor),
                                                      args.seed, args.slow, devices)), flush=True)
    elif args.command == "probe":
        engine = open_engine(args.backend, hostname=args.hostname)
        print(engine.name, engine.protocol)
        engine.close()
    else:
        _serve_peer(args.backend, args.hostname, args.length)


if __name__ == "__main__":
    main()
