"""Server-sent events as SGLang streams them: ``data: {...}`` blocks separated by a blank line, ``[DONE]`` last."""

from __future__ import annotations

DONE = b"[DONE]"


def take_events(buffer: bytearray) -> list[bytes]:
    """Cut the complete events' ``data:`` payloads out of ``buffer`` (in place); the rest waits for more bytes."""
    events = []
    while (end := buffer.find(b"\n\n")) >= 0:
        block = bytes(buffer[:end])
        del buffer[:end + 2]
        for line in block.splitlines():
            if line.startswith(b"data:"):
                events.append(line[5:].strip())
    return events


def payloads(body: bytes) -> list[bytes]:
    """The ``data:`` payloads of a whole stream, without empty ones and ``[DONE]``."""
    return [e for e in take_events(bytearray(body + b"\n\n")) if e and e != DONE]
