"""Prefill/decode handoff of the simulator: KV payload format, prefill bootstrap server, decode receive.

Per ``bootstrap_room`` (SGLang's handshake: docs/sglang-interfaces.md section 4):
1. decode reserves KV, takes a slot in its ONE registered receive region, asks the prefill's
   bootstrap server ``GET /route`` (Bootstrapping; cached per server) and checks the engines match;
2. decode ``POST /kv_dest {room, descriptor, offset, length}``; the call is held open
   (WaitingForInput) until the prefill has written the room (Transferring) and then answers
   ``{"status": "success" | "failed", ...}``;
3. prefill waits for that destination (Bootstrapping), computes, WRITES header + payload through
   the transfer engine, answers the decode's held call, then finishes its own HTTP response;
4. decode reads the slot, checks magic, room, size and CRC-32, and only then streams tokens.
Timeouts: ``SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT`` and ``SGLANG_DISAGGREGATION_WAITING_TIMEOUT``
(300 s each, as sglang).
"""

from __future__ import annotations

import asyncio
import os
import struct
import zlib
from concurrent.futures import Executor
from dataclasses import dataclass, field

import aiohttp
import numpy as np
from aiohttp import web

from pytest_sglang_pd.kv_transfer import ReceiveBuffer, TransferEngine, TransferResult
from pytest_sglang_pd.sim.faults import Faults

MAGIC = b"SGKV"
# magic, version, room, prompt tokens, cached tokens, first token id, payload bytes per token,
# payload length, CRC-32 of the payload
HEADER = struct.Struct("!4sHQIIIIQI")


class HandoffError(Exception):
    """The handoff of one room failed; the message says which side, which engine and why."""


def bootstrap_timeout() -> float:
    return float(os.environ.get("SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT", "300"))


def waiting_timeout() -> float:
    return float(os.environ.get("SGLANG_DISAGGREGATION_WAITING_TIMEOUT", "300"))


def payload_length(prompt_tokens: int, bytes_per_token: int) -> int:
    return HEADER.size + prompt_tokens * bytes_per_token


def build_payload(room: int, prompt_tokens: int, cached_tokens: int, first_token: int, bytes_per_token: int) -> bytes:
    """Header + ``prompt_tokens * bytes_per_token`` pseudo-random bytes derived from the room."""
    data = np.random.default_rng(room).bytes(prompt_tokens * bytes_per_token)
    header = HEADER.pack(MAGIC, 1, room, prompt_tokens, cached_tokens, first_token, bytes_per_token, len(data),
                         zlib.crc32(data))
    return header + data


@dataclass(frozen=True)
class KVHeader:
    room: int
    prompt_tokens: int
    cached_tokens: int
    first_token: int


def verify_payload(blob: bytes, room: int, prompt_tokens: int, where: str) -> KVHeader:
    """Check a received payload; raises HandoffError naming what does not match."""
    magic, _, got_room, tokens, cached, first, _, length, crc = HEADER.unpack_from(blob)
    data = memoryview(blob)[HEADER.size:HEADER.size + length]
    if magic != MAGIC:
        raise HandoffError(f"{where}: no KV header in the receive slot of room {room} (magic {magic!r})")
    if got_room != room or tokens != prompt_tokens:
        raise HandoffError(f"{where}: slot holds room {got_room} with {tokens} tokens, expected room {room} "
                           f"with {prompt_tokens} tokens")
    if len(data) != length or zlib.crc32(data) != crc:
        raise HandoffError(f"{where}: KV payload of room {room} failed its CRC-32 check ({length} bytes)")
    return KVHeader(got_room, tokens, cached, first)


# ------------------------------------------------------------------------------------ prefill side


@dataclass
class Room:
    destination: asyncio.Future
    outcome: asyncio.Future


@dataclass
class RoomTable:
    rooms: dict[int, Room] = field(default_factory=dict)

    def get(self, room: int) -> Room:
        if room not in self.rooms:
            loop = asyncio.get_running_loop()
            self.rooms[room] = Room(loop.create_future(), loop.create_future())
        return self.rooms[room]

    def discard(self, room: int) -> None:
        self.rooms.pop(room, None)


class BootstrapServer:
    """The prefill worker's bootstrap HTTP server (``--disaggregation-bootstrap-port``)."""

    def __init__(self, host: str, port: int, engine: TransferEngine, rooms: RoomTable, faults: Faults,
                 info: dict) -> None:
        self.host, self.port = host, port
        self.engine, self.rooms, self.faults, self.info = engine, rooms, faults, info
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/route", self._route)
        app.router.add_post("/kv_dest", self._kv_dest)
        self._runner = web.AppRunner(app, access_log=None)
        self._site: web.TCPSite | None = None

    async def start(self) -> None:
        await self._runner.setup()
        await self.open()

    async def open(self) -> None:
        if self._site is None:
            self._site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
            await self._site.start()

    async def refuse(self) -> None:
        """Close the listening socket: new connections are refused (fault ``refuse_bootstrap``)."""
        if self._site is not None:
            await self._site.stop()
            self._site = None

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _hang_if_faulted(self) -> None:
        while self.faults.hang:
            await asyncio.sleep(3600)

    async def _health(self, _: web.Request) -> web.Response:
        await self._hang_if_faulted()
        return web.Response(text="OK")

    async def _route(self, _: web.Request) -> web.Response:
        await self._hang_if_faulted()
        return web.json_response(self.info)

    async def _kv_dest(self, request: web.Request) -> web.Response:
        await self._hang_if_faulted()
        body = await request.json()
        room_id = int(body["room"])
        engine = body.get("engine")
        if engine != self.engine.name:
            return web.json_response({"status": "failed", "reason": f"prefill uses engine {self.engine.name}, the decode "
                                      f"sent a destination for {engine}"}, status=400)
        room = self.rooms.get(room_id)
        if room.destination.done():
            return web.json_response({"status": "failed", "reason": f"room {room_id} already has a destination"},
                                     status=409)
        room.destination.set_result(body)
        try:
            outcome = await asyncio.wait_for(asyncio.shield(room.outcome), waiting_timeout())
        except TimeoutError:
            self.rooms.discard(room_id)
            outcome = {"status": "failed", "reason": f"prefill got no request for room {room_id} within "
                       f"{waiting_timeout():.0f} s (KVPoll.WaitingForInput)"}
        return web.json_response(outcome)


async def write_room(engine: TransferEngine, destination: dict, blob: bytes, *, refuse: bool,
                     executor: Executor) -> TransferResult:
    """Write ``blob`` to the decode's slot (to a destination its engine refuses when ``refuse``)."""
    descriptor = destination["descriptor"]
    if refuse:
        descriptor = engine.refused_descriptor(descriptor)
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(executor, engine.write, descriptor, blob, int(destination["offset"]))


# ------------------------------------------------------------------------------------- decode side


class ReceiveSlots:
    """First-fit allocation of per-room slots inside the decode's one receive region; waits when full."""

    def __init__(self, buffer: ReceiveBuffer) -> None:
        self.buffer = buffer
        self._free: list[tuple[int, int]] = [(0, buffer.length)]  # (offset, length), sorted
        self._changed = asyncio.Condition()

    async def allocate(self, length: int) -> int:
        if length > self.buffer.length:
            raise HandoffError(f"decode: a KV payload of {length} bytes exceeds the receive region of "
                               f"{self.buffer.length} bytes")
        async with self._changed:
            while True:
                for index, (offset, size) in enumerate(self._free):
                    if size >= length:
                        self._free[index] = (offset + length, size - length)
                        return offset
                await self._changed.wait()

    async def free(self, offset: int, length: int) -> None:
        async with self._changed:
            self._free.append((offset, length))
            self._free.sort()
            merged: list[tuple[int, int]] = []
            for start, size in self._free:
                if merged and merged[-1][0] + merged[-1][1] == start:
                    merged[-1] = (merged[-1][0], merged[-1][1] + size)
                elif size:
                    merged.append((start, size))
            self._free = merged
            self._changed.notify_all()


class DecodeHandoff:
    """The decode side: route lookup (cached), destination registration, receive and verify."""

    def __init__(self, engine: TransferEngine, slots: ReceiveSlots) -> None:
        self.engine, self.slots = engine, slots
        self._routes: dict[tuple[str, int], dict] = {}
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self._session

    async def _route(self, host: str, port: int, room: int) -> dict:
        where = f"decode: bootstrap server {host}:{port} of the prefill"
        if (host, port) not in self._routes:
            try:
                async with self._client().get(f"http://{host}:{port}/route",
                                              timeout=aiohttp.ClientTimeout(total=bootstrap_timeout())) as response:
                    response.raise_for_status()
                    self._routes[(host, port)] = await response.json()
            except TimeoutError:
                raise HandoffError(f"{where} did not answer within {bootstrap_timeout():.0f} s for room {room} "
                                   "(KVPoll.Bootstrapping)") from None
            except aiohttp.ClientError as error:
                raise HandoffError(f"{where} refused or failed for room {room}: {error}") from None
        route = self._routes[(host, port)]
        if route.get("engine") != self.engine.name:
            raise HandoffError(f"decode uses transfer engine {self.engine.name} but the prefill at {host}:{port} uses "
                               f"{route.get('engine')}: set the same --disaggregation-transfer-backend on both")
        return route

    async def receive(self, host: str, port: int, room: int, prompt_tokens: int, bytes_per_token: int,
                      ) -> tuple[KVHeader, int, float]:
        """Register the room's destination, wait for the write, verify it: (header, bytes, seconds)."""
        await self._route(host, port, room)
        length = payload_length(prompt_tokens, bytes_per_token)
        offset = await self.slots.allocate(length)
        try:
            body = {"room": room, "engine": self.engine.name, "descriptor": self.slots.buffer.descriptor,
                    "offset": offset, "length": length}
            try:
                async with self._client().post(f"http://{host}:{port}/kv_dest", json=body,
                                               timeout=aiohttp.ClientTimeout(total=waiting_timeout())) as response:
                    outcome = await response.json()
            except TimeoutError:
                raise HandoffError(f"decode: KV of room {room} from the prefill at {host}:{port} did not arrive within "
                                   f"{waiting_timeout():.0f} s (KVPoll.WaitingForInput, engine {self.engine.name})") from None
            except aiohttp.ClientError as error:
                self._routes.pop((host, port), None)
                raise HandoffError(f"decode: bootstrap server {host}:{port} of the prefill failed for room {room}: "
                                   f"{error}") from None
            if outcome.get("status") != "success":
                raise HandoffError(f"decode: the prefill at {host}:{port} reports a failed KV handoff of room {room}: "
                                   f"{outcome.get('reason')}")
            blob = self.slots.buffer.read(offset, length)
            header = verify_payload(blob, room, prompt_tokens, f"decode ({self.engine.name})")
            return header, length, float(outcome.get("seconds", 0.0))
        finally:
            await self.slots.free(offset, length)
