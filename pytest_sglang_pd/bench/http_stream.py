"""A streamed HTTP/1.1 POST on a connection of its own, its body handed over in the event loop's data callback.

The builtin client's transport. Like bench_serving (an aiohttp session per request) every request opens its own
connection, so connection setup counts in the TTFT of both the same way; unlike aiohttp, a body chunk costs one
callback, not a task wakeup and a stream read, which keeps the client's CPU per output token low.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from typing import Callable
from urllib.parse import urlsplit

from .. import __version__

CONNECT_TIMEOUT_S = 30.0
OnBody = Callable[[bytes, float], bool]  # (body bytes, when they arrived: perf_counter) -> False to stop reading


class HTTPStatusError(Exception):
    """The server answered with a status other than 200; ``body`` is what it said."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}")
        self.status, self.body = status, body


class StreamCut(Exception):
    """The connection closed (or was reset) before the response's end."""


async def post_stream(url: str, payload: dict, on_body: OnBody) -> None:
    """POST ``payload`` as JSON to ``url`` and hand each piece of the 200 response's body to ``on_body`` as it
    arrives. Raises OSError / asyncio.TimeoutError (no connection), HTTPStatusError, StreamCut."""
    parts = urlsplit(url)
    host, secure = parts.hostname or "localhost", parts.scheme == "https"
    port = parts.port or (443 if secure else 80)
    body = json.dumps(payload).encode()
    head = (f"POST {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1\r\n"
            f"Host: {parts.netloc}\r\nUser-Agent: pytest-sglang-pd/{__version__}\r\nAccept: */*\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    loop = asyncio.get_running_loop()
    response = _Response(head + body, on_body, loop.create_future())
    transport, _ = await asyncio.wait_for(loop.create_connection(
        lambda: response, host, port, ssl=ssl.create_default_context() if secure else None), CONNECT_TIMEOUT_S)
    try:
        await response.done
    finally:
        transport.close()


class _Response(asyncio.Protocol):
    """Reads the status line and headers, then the body: chunked, Content-Length or up to the close."""

    def __init__(self, request: bytes, on_body: OnBody, done: asyncio.Future) -> None:
        self.request, self.on_body, self.done = request, on_body, done
        self.head = bytearray()
        self.status = 0
        self.body: _Chunked | _Sized | None = None
        self.error_body = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if self.done.done():
            return
        if self.body is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            data = bytes(self.head[end + 4:])
            self._read_head(bytes(self.head[:end]))
        piece, ended = self.body.feed(data)  # type: ignore[union-attr]
        if self.status != 200:
            self.error_body += piece
            if ended:
                self.done.set_exception(HTTPStatusError(self.status, bytes(self.error_body)))
            return
        try:
            stop = bool(piece) and not self.on_body(piece, now)
        except Exception as exc:  # noqa: BLE001 - the reader's error is the request's, raised where it awaits
            self.done.set_exception(exc)
            return
        if stop or ended:
            self.done.set_result(None)

    def _read_head(self, head: bytes) -> None:
        status_line, *lines = head.split(b"\r\n")
        self.status = int(status_line.split(None, 2)[1])
        headers = {}
        for line in lines:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip().lower()
        if b"chunked" in headers.get(b"transfer-encoding", b""):
            self.body = _Chunked()
        elif b"content-length" in headers:
            self.body = _Sized(int(headers[b"content-length"]))
        else:
            self.body = _Sized(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done.done():
            return
        if exc is not None and not isinstance(exc, Exception):  # an interrupt raised in a callback: the loop closed
            self.done.set_exception(exc)  # the transport with it; the request's await raises it on, not a cut stream
            return
        if self.body is not None and self.body.length is None and exc is None:  # a body that ends with the connection
            if self.status != 200:
                self.done.set_exception(HTTPStatusError(self.status, bytes(self.error_body)))
            else:
                self.done.set_result(None)
            return
        cause = f"{type(exc).__name__}: {exc}" if exc else "the server closed the connection"
        where = ("the end of the response: not enough data to satisfy transfer length header" if self.body
                 else "the response's headers")
        self.done.set_exception(StreamCut(f"{cause} before {where}"))


class _Sized:
    """A body of ``length`` bytes (None: up to the close)."""

    def __init__(self, length: int | None) -> None:
        self.length = self.left = length

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        if self.left is None:
            return data, False
        data = data[:self.left]
        self.left -= len(data)
        return data, self.left == 0


def _whole_chunk(data: bytes) -> bytes:
    """The data of ``data`` when it is exactly one non-empty chunk (size line without extensions, data, CRLF)."""
    eol = data.find(b"\r\n", 0, 10)
    if eol <= 0 or not data.endswith(b"\r\n"):
        return b""
    try:
        size = int(data[:eol], 16)
    except ValueError:  # chunk extensions: the general path
        return b""
    return data[eol + 2:-2] if size and eol + 4 + size == len(data) else b""


class _Chunked:
    """Transfer-Encoding: chunked, decoded as the bytes come (size line, data, CRLF; a 0 size ends it)."""

    length = -1  # not None: the end is the last chunk, not the close

    def __init__(self) -> None:
        self.rest = b""  # an incomplete size line or chunk end, waiting for more bytes
        self.left = 0  # data bytes still to come in the current chunk; -1: its closing CRLF

    def feed(self, data: bytes) -> tuple[bytes, bool]:
        if self.rest:
            data, self.rest = self.rest + data, b""
        elif not self.left and (whole := _whole_chunk(data)):  # most reads are exactly one chunk
            return whole, False
        out = []
        pos, size = 0, len(data)
        while pos < size:
            if self.left > 0:
                end = pos + self.left
                out.append(data[pos:end])
                if end > size:
                    self.left = end - size
                    return b"".join(out), False
                pos, self.left = end, -1
            if self.left < 0:
                if size - pos < 2:
                    break
                pos, self.left = pos + 2, 0
            eol = data.find(b"\r\n", pos)
            if eol < 0:
                break
            length = int(data[pos:eol].split(b";", 1)[0], 16)
            pos = eol + 2
            if length == 0:
                return b"".join(out), True
            self.left = length
        self.rest = data[pos:]
        return b"".join(out), False
