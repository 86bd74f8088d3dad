"""Server-sent events as SGLang streams them: ``data: {...}`` blocks separated by a blank line, ``[DONE]`` last."""

from __future__ import annotations

DONE = b"[DONE]"


def split_events(data: bytes) -> tuple[list[bytes], bytes]:
    """(the ``data:`` payloads of the complete events in ``data``, the incomplete rest that waits for more bytes)."""
    end = data.find(b"\n")
    if end == len(data) - 2 and data[end + 1] == 10 and data.startswith(b"data:"):  # one event of one line: most
        return [data[5:end].strip()], b""
    end = data.rfind(b"\n\n")
    if end < 0:
        return [], data
    events = []
    for block in data[:end].split(b"\n\n"):
        if b"\n" in block:  # several lines: the data lines among them
            events.extend(line[5:].strip() for line in block.splitlines() if line.startswith(b"data:"))
        elif block.startswith(b"data:"):
            events.append(block[5:].strip())
    return events, data[end + 2:]


def payloads(body: bytes) -> list[bytes]:
    """The ``data:`` payloads of a whole stream, without empty ones and ``[DONE]``."""
    return [e for e in split_events(body + b"\n\n")[0] if e and e != DONE]
