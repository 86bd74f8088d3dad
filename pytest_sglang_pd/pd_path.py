"""The PD path proven before the smoke request and the benchmarks, and explained when it fails: each prefill's
bootstrap address reached from each decode's node, a payload moved through the configured KV engine per
prefill -> decode pair from the prefill's node to the decode's, inside the workers' containers (GB/s), and the worker-log lines that tell why a handoff failed."""

from __future__ import annotations

import json
import random
import re
import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable
from urllib.parse import urlparse

from . import kv_transfer, prom
from .hosts import CommandResult, Host
from .plan import Deployment, ProcessSpec, bind_host

PAIR_BYTES = 16 << 20  # the payload each pair moves
PAIR_WAIT_S = 60.0  # how long either side of a pair waits for the other
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


def pair_script(dep: Deployment) -> str:
    """Where the pair check's engine script (``kv_transfer.py``, which needs nothing of this suite) lies on every
    worker node: in the run's log folder, which the workers' containers mount at the same path."""
    return f"{dep.log_dir}/kv_transfer_pair.py"


def _engine_env(spec: ProcessSpec) -> dict[str, str]:
    """The transfer engines' settings of a worker's environment (MC_*, MOONCAKE_*, UCX_*), nothing else of it."""
    return {k: v for k, v in spec.env.items() if k.startswith(("MC_", "MOONCAKE_", "UCX_"))}


def measure_pairs(dep: Deployment, backend: str, host_of: Callable[[ProcessSpec], Host],
                  ib_devices: tuple[str, ...] = ()) -> list[PairResult]:
    """Each prefill -> decode pair moves ``PAIR_BYTES`` through ``backend``: a receiving engine on the decode's node
    (in its container), a sending one on the prefill's, as the workers' own engines talk (``pair_script`` must lie
    on every worker node)."""
    return [_move(dep, backend, prefill, decode, host_of, ib_devices)
            for prefill in dep.servers("prefill") for decode in dep.servers("decode")]


def _move(dep: Deployment, backend: str, prefill: ProcessSpec, decode: ProcessSpec,
          host_of: Callable[[ProcessSpec], Host], ib_devices: tuple[str, ...]) -> PairResult:
    seed, script, receiver_host = random.randrange(1 << 31), pair_script(dep), host_of(decode)
    descriptor_file = f"{dep.log_dir}/kv_pair-{prefill.key}-{decode.key}.json"
    common = ["--backend", backend, "--seed", str(seed), "--ib-devices", ",".join(ib_devices)]
    receive = [dep.python, script, "receive", *common, "--hostname", bind_host(decode.node),
               "--length", str(PAIR_BYTES), "--descriptor-file", descriptor_file, "--wait-s", f"{PAIR_WAIT_S:g}"]
    received: list[CommandResult] = []
    receiver = threading.Thread(target=lambda: received.append(
        receiver_host.run(receive, timeout=PAIR_WAIT_S + 60, env=_engine_env(decode))), daemon=True)
    receiver.start()
    sent = None
    try:
        descriptor = _descriptor(receiver_host, descriptor_file, receiver)
        if descriptor is not None:
            send = [dep.python, script, "send", *common, "--hostname", bind_host(prefill.node),
                    "--descriptor", descriptor, "--slow", f"{_slow_factor(prefill, decode):g}"]
            sent = host_of(prefill).run(send, timeout=PAIR_WAIT_S, env=_engine_env(prefill))
    finally:
        receiver_host.run(["rm", "-f", descriptor_file], timeout=15)  # ends the receiver's wait
        receiver.join(PAIR_WAIT_S + 70)
    if sent is not None and sent.exit_status == 0 and received and received[0].exit_status == 0:
        measured = _pair_line(sent)
        if measured is not None:
            return PairResult(prefill, decode, round(measured["gbps"], 4))
    said = [f"{side} side: {_said(r)}" for side, r in (("sending", sent), ("receiving", received[0] if received else None))
            if r is not None and (r.exit_status != 0 or _pair_line(r) is None)]
    return PairResult(prefill, decode, None, "; ".join(said) or "the receiving side gave no descriptor")


def _descriptor(host: Host, path: str, receiver: threading.Thread) -> str | None:
    """The receiving side's descriptor once it has written it; None when the receiver ended or took too long."""
    deadline = time.monotonic() + PAIR_WAIT_S
    while receiver.is_alive() and time.monotonic() < deadline:
        found = host.run(["cat", path], timeout=15)
        if found.exit_status == 0 and found.stdout.strip():
            return found.stdout.strip()
        time.sleep(0.2)
    return None


def _pair_line(result: CommandResult) -> dict | None:
    found = [line for line in result.stdout.splitlines() if line.startswith(kv_transfer.PAIR_LINE_PREFIX)]
    return json.loads(found[-1][len(kv_transfer.PAIR_LINE_PREFIX):]) if found else None


def _said(result: CommandResult) -> str:
    return "; ".join(result.stderr.strip().splitlines()[-3:]) or f"exit status {result.exit_status}"


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
