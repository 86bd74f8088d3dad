"""Benchmark: KV write throughput per transfer engine between two processes on this machine.

The receiver is `python -m pytest_sglang_pd.kv_transfer peer`; this process writes into its region.
Prints, per engine and write size, MB/s (10^6 bytes/s), the median write latency and what a fresh
registration of that size costs (why writers reuse registered staging buffers).

    python benchmarks/kv_transfer_throughput.py [--backends mooncake_tcp nixl tcp] [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pytest_sglang_pd.kv_transfer import PeerProcess, TransferEngine, open_engine  # noqa: E402

SIZES = (64 << 10, 1 << 20, 16 << 20)
REGION = 64 << 20


def measure(engine: TransferEngine, peer: PeerProcess, size: int, seconds: float) -> tuple[float, float, float]:
    """(MB/s, median latency ms, registration ms) for writes of `size` bytes, data verified at the end."""
    payload = os.urandom(size)
    offsets = [(i * size) % (REGION - size + 1) for i in range(REGION // size)]
    engine.write(peer.descriptor, payload, offset=0)  # warm-up: connection, staging buffer
    latencies: list[float] = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or len(latencies) < 5:
        latencies.append(engine.write(peer.descriptor, payload, offset=offsets[len(latencies) % len(offsets)]).seconds)
    wall = time.perf_counter() - started
    last = offsets[(len(latencies) - 1) % len(offsets)]
    if hashlib.sha256(peer.read(last, size)).hexdigest() != hashlib.sha256(payload).hexdigest():
        raise SystemExit(f"{engine.name}: data at offset {last} differs from what was written")
    registration = time.perf_counter()
    engine.register_receive_buffer(size)
    registration = time.perf_counter() - registration
    return size * len(latencies) / wall / 1e6, statistics.median(latencies) * 1e3, registration * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=["mooncake_tcp", "nixl", "tcp"])
    parser.add_argument("--seconds", type=float, default=1.0, help="time spent writing per engine and size")
    args = parser.parse_args()
    print(f"{'engine':<13} {'protocol':<8} {'write size':>10} {'MB/s':>9} {'p50 ms':>8} {'register ms':>11}")
    for backend in args.backends:
        peer = PeerProcess(backend, REGION)
        try:
            with open_engine(backend, hostname="127.0.0.1") as engine:
                for size in SIZES:
                    rate, p50, registration = measure(engine, peer, size, args.seconds)
                    print(f"{backend:<13} {engine.protocol:<8} {size >> 10:>7} KiB {rate:>9.0f} {p50:>8.3f}"
                          f" {registration:>11.3f}", flush=True)
        finally:
            peer.stop()


if __name__ == "__main__":
    main()
