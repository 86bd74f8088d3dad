"""Fault injection of the simulated worker: parsing ``--sim-fault`` specs and the live fault state.

Specs (flag, repeatable; or ``POST /sim/fault {"spec": ...}`` at run time):
    crash_after=N        the (N+1)-th generation request makes the process exit at once (code 1):
                         clients and the router see the connection refused / reset
    hang                 the worker stops answering (HTTP, bootstrap server and scheduler) without
                         exiting: requests and /health time out
    slow=FACTOR          every modelled time is multiplied by FACTOR
    kv_fail_fraction=F   that fraction of rooms (deterministic per room and seed) is written by the
                         prefill to a destination the decode's engine refuses: the engine's own error
    refuse_bootstrap     the prefill closes its bootstrap port: decodes get "connection refused"
    kv_stall             the KV never arrives: on a decode every request waits in its transfer queue, on a
                         prefill in its inflight queue, while HTTP and /health answer as usual
    slow_kv=FACTOR       this worker's KV transfers (modelled, and the suite's pair check to or from it) take
                         FACTOR times as long
    cut_streams=F        that fraction of streamed responses (deterministic per request and seed) is cut
                         short after its first chunk: the connection closes before the chunked body ends
    clear                removes every fault
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass

@dataclass
class Faults:
    crash_after: int | None = None
    hang: bool = False
    slow: float = 1.0
    kv_fail_fraction: float = 0.0
    refuse_bootstrap: bool = False
    kv_stall: bool = False
    cut_streams: float = 0.0
    slow_kv: float = 1.0

    def apply(self, spec: str) -> None:
        """Add the fault ``spec`` describes; raises ValueError naming the valid specs."""
        name, _, value = spec.strip().partition("=")
        try:
            if name == "crash_after":
                self.crash_after = int(value)
                if self.crash_after < 0:
                    raise ValueError("must be >= 0")
            elif name == "hang" and not value:
                self.hang = True
            elif name == "slow":
                self.slow = float(value)
                if self.slow <= 0:
                    raise ValueError("must be > 0")
            elif name == "kv_fail_fraction":
                self.kv_fail_fraction = float(value)
                if not 0 <= self.kv_fail_fraction <= 1:
                    raise ValueError("must be within [0, 1]")
            elif name == "slow_kv":
                self.slow_kv = float(value)
                if self.slow_kv < 1:
                    raise ValueError("must be >= 1")
            elif name == "cut_streams":
                self.cut_streams = float(value)
                if not 0 <= self.cut_streams <= 1:
                    raise ValueError("must be within [0, 1]")
            elif name == "refuse_bootstrap" and not value:
                self.refuse_bootstrap = True
            elif name == "kv_stall" and not value:
                self.kv_stall = True
            elif name == "clear" and not value:
                self.__init__()  # type: ignore[misc]
            else:
                raise ValueError("unknown fault")
        except ValueError as error:
            raise ValueError(
                f"bad --sim-fault {spec!r} ({error}); valid: crash_after=N, hang, slow=FACTOR, "
                "kv_fail_fraction=F, refuse_bootstrap, kv_stall, cut_streams=F, slow_kv=FACTOR, clear"
            ) from None

    def fails_transfer(self, room: int, seed: int) -> bool:
        """Whether the KV write of ``room`` is sent to a refused destination (deterministic)."""
        return _picked(self.kv_fail_fraction, f"{seed}:{room}")

    def cuts_stream(self, number: int, seed: int) -> bool:
        """Whether the ``number``-th streamed response is cut short (deterministic)."""
        return _picked(self.cut_streams, f"{seed}:stream:{number}")

    def as_dict(self) -> dict:
        return asdict(self)


def _picked(fraction: float, name: str) -> bool:
    if fraction <= 0:
        return False
    digest = hashlib.sha256(name.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction
