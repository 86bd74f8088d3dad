"""The PD path proven before the smoke request and the benchmarks, and explained when it fails: each prefill's
bootstrap address reached from each decode's node, a payload moved through the configured KV engine per
prefill -> decode pair (GB/s), and the worker-log lines that tell why a handoff failed."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Callable, Iterable
from urllib.parse import urlparse

from . import kv_transfer, prom
from .hosts import Host
from .plan import Deployment, ProcessSpec, bind_host

PAIR_BYTES = 16 << 20  # the payload each pair moves
_CONNECT = ("import socket, sys\n"
            "try:\n"
            "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()\n"
            "except OSError as e:\n"
            "    sys.exit(f'{type(e).__name__}: {e}')\n")
# What a failed handoff leaves in SGLang's (and the simulator's) logs: aborts, KVPoll states, engine errors.
_EXPLAINS = re.compile(r"abort|KVPoll|KVTransferError|transfer\b.*\bfail|bootstrap|refused|timed out|"
                       r"Traceback|Error\b|NIXL_ERR|mooncake", re.IGNORECASE)


@dataclass(frozen=True)
class PairResult:
    """One prefill -> decode pair's payload through the engine: its GB/s, or why it moved none."""

    prefill: ProcessSpec
    decode: ProcessSpec
    gbps: float | None
    error: str | None = None

    @property
    def name(self) -> str:
        return f"{self.prefill.key} on {self.prefill.node} -> {self.decode.key} on {self.decode.node}"


def bootstrap_address(prefill: ProcessSpec) -> str:
    """host:port the decodes reach this prefill's bootstrap server at (the router hands them that host)."""
    return f"{urlparse(prefill.url).hostname}:{prefill.bootstrap_port}"


def unreachable_bootstraps(dep: Deployment, host_of: Callable[[ProcessSpec], Host]) -> list[str]:
    """From each decode's node (in its container), a TCP connection to each prefill's bootstrap address; one line
    per pair that fails, naming both sides, the address and what the connection said."""
    out = []
    for decode in dep.servers("decode"):
        for prefill in dep.servers("prefill"):
            address = bootstrap_address(prefill)
            result = host_of(decode).run([dep.python, "-c", _CONNECT, *address.rsplit(":", 1)], timeout=15)
            if result.exit_status != 0:
                said = (result.stderr.strip().splitlines() or [f"exit status {result.exit_status}"])[-1]
                out.append(f"decode {decode.key} on node {decode.node} cannot connect to the bootstrap server "
                           f"{address} of prefill {prefill.key} ($.config.kv_transfer.bootstrap_port): {said}")
    return out


def _slow_factor(*specs: ProcessSpec) -> float:
    """The simulator's ``slow_kv=FACTOR`` faults in the workers' argv, multiplied."""
    factor = 1.0
    for spec in specs:
        for flag, value in zip(spec.argv, spec.argv[1:]):
            if flag == "--sim-fault" and value.startswith("slow_kv="):
                factor *= float(value.partition("=")[2])
    return factor


def measure_pairs(dep: Deployment, backend: str, host_of: Callable[[ProcessSpec], Host]) -> list[PairResult]:
    """Each prefill -> decode pair moves ``PAIR_BYTES`` through ``backend``, run on the prefill's node (in its
    container) into a peer engine on the decode's address (on the simulator's loopback nodes that is the
    decode's own address)."""
    out = []
    for prefill in dep.servers("prefill"):
        for decode in dep.servers("decode"):
            argv = [dep.python, "-m", "pytest_sglang_pd.kv_transfer", "pair", "--backend", backend,
                    "--hostname", bind_host(prefill.node), "--peer-hostname", bind_host(decode.node),
                    "--bytes", str(PAIR_BYTES), "--slow", f"{_slow_factor(prefill, decode):g}"]
            result = host_of(prefill).run(argv, timeout=120)
            found = [line for line in result.stdout.splitlines() if line.startswith(kv_transfer.PAIR_LINE_PREFIX)]
            if result.exit_status == 0 and found:
                measured = json.loads(found[-1][len(kv_transfer.PAIR_LINE_PREFIX):])
                out.append(PairResult(prefill, decode, round(measured["gbps"], 4)))
            else:
                said = "; ".join(result.stderr.strip().splitlines()[-3:]) or f"exit status {result.exit_status}"
                out.append(PairResult(prefill, decode, None, said))
    return out


def slow_pairs(pairs: Iterable[PairResult], backend: str, min_gbps: float | None) -> list[str]:
    """One line per pair that moved nothing or moved less than ``min_gbps``."""
    out = []
    for p in pairs:
        if p.gbps is None:
            out.append(f"{p.name}: no payload through {backend}: {p.error}")
        elif min_gbps is not None and p.gbps < min_gbps:
            out.append(f"{p.name}: {p.gbps:g} GB/s through {backend} < {min_gbps:g} ($.config.kv_transfer.min_gbps)")
    return out


_HOLDING = ("prefill_bootstrap_queue", "prefill_inflight_queue", "decode_prealloc_queue", "decode_transfer_queue",
            "transfer_failed", "bootstrap_failed")


def where_requests_wait(dep: Deployment) -> list[str]:
    """Per worker, its PD queues that hold requests and its failed-transfer counters (SGLang's metric names)."""
    by_url = {s.url: s for role in ("prefill", "decode") for s in dep.servers(role)}
    metrics = prom.worker_metrics({role: [s.url for s in dep.servers(role)] for role in ("prefill", "decode")})
    out = []
    for role, workers in metrics.items():
        for url, found in workers.items():
            held = [f"{prom.WORKER_METRICS[k]} {found[k]:g}" for k in _HOLDING if found.get(k)]
            if held:
                spec = by_url[url]
                out.append(f"{role} {spec.key} on node {spec.node}: " + ", ".join(held))
    return out


def explaining_lines(log_text: str, most: int = 12) -> list[str]:
    """The last ``most`` lines of a worker log that tell why a handoff failed (aborts, KVPoll, engine errors)."""
    return [line for line in log_text.splitlines() if _EXPLAINS.search(line)][-most:]
