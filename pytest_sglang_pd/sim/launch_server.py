"""``python -m pytest_sglang_pd.sim.launch_server``: sglang.launch_server's flags, a simulated worker.

Multi-node instances (``--nnodes N``): rank 0 listens on ``--dist-init-addr`` and waits (up to
SGLANG_DISAGGREGATION_BOOTSTRAP_TIMEOUT) until the N-1 other ranks have connected before it serves
HTTP; ranks > 0 serve nothing, hold that connection and exit when rank 0 goes away or on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

from pytest_sglang_pd import releases
from pytest_sglang_pd.kv_transfer import BACKENDS, KVTransferError
from pytest_sglang_pd.sim import catalog, dtypes
from pytest_sglang_pd.sim.dp import FAKE_BACKEND, LOAD_BALANCE_METHODS, resolve_parallelism
from pytest_sglang_pd.sim.perf_model import PREFILL_OF_MATMUL

log = logging.getLogger("pytest_sglang_pd.sim")
READY_LINE = "The server is fired up and ready to roll!"
RANK_JOIN_TIMEOUT_S = 300.0
STORE_CONNECT_TIMEOUT_S = 5.0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pytest_sglang_pd.sim.launch_server",
                                description="Simulated SGLang worker (same flags as python -m sglang.launch_server).")
    a = p.add_argument
    a("--model-path", "--model", dest="model_path", required=True)
    a("--tokenizer-path", default=None)
    a("--tokenizer-mode", choices=("auto", "slow"), default="auto")
    a("--served-model-name", default=None)
    a("--context-length", type=int, default=None)
    a("--trust-remote-code", action="store_true")
    a("--host", default="127.0.0.1")
    a("--port", type=int, default=30000)
    a("--tp-size", "--tensor-parallel-size", "--tp", dest="tp_size", type=int, default=1)
    a("--dp-size", "--data-parallel-size", "--dp", dest="dp_size", type=int, default=1)
    a("--attn-dp-size", "--attention-data-parallel-size", dest="attn_dp_size", type=int, default=1)
    a("--enable-dp-attention", action="store_true", help="deprecated: --dp-size N --enable-dp-attention is --attn-dp-size N")
    a("--load-balance-method", choices=LOAD_BALANCE_METHODS, default="auto")
    a("--pp-size", "--pipeline-parallel-size", dest="pp_size", type=int, default=1)
    a("--ep-size", "--expert-parallel-size", dest="ep_size", type=int, default=1)
    a("--nnodes", type=int, default=1)
    a("--node-rank", type=int, default=0)
    a("--dist-init-addr", default=None)
    a("--base-gpu-id", type=int, default=0)
    a("--nccl-port", type=int, default=None)
    a("--disaggregation-mode", choices=("null", "prefill", "decode"), default="null")
    a("--disaggregation-transfer-backend", choices=(*BACKENDS, FAKE_BACKEND), default="mooncake")
    a("--disaggregation-bootstrap-port", type=int, default=8998)
    a("--disaggregation-ib-device", default=None)
    a("--mem-fraction-static", type=float, default=0.88)
    a("--max-total-tokens", type=int, default=None)
    a("--max-running-requests", type=int, default=1024)
    a("--chunked-prefill-size", type=int, default=None, help="default: SGLang's per GPU memory (sim/catalog.py)")
    a("--enable-mixed-chunk", action="store_true", help="aggregated: run a prefill chunk in the decode batch's step")
    a("--schedule-policy", choices=("lpm", "random", "fcfs", "dfs-weight", "lof", "priority"), default="fcfs")
    a("--page-size", type=int, default=1)
    a("--disable-radix-cache", action="store_true")
    a("--kv-cache-dtype", choices=releases.KV_CACHE_DTYPES, default="auto")
    a("--quantization", default=None, help="SGLang's quantization method (sets the weight dtype, sim/dtypes.py)")
    a("--enable-metrics", action="store_true")
    a("--log-level", default="info")
    a("--enable-hierarchical-cache", action="store_true")
    a("--hicache-storage-backend", default=None)
    a("--hicache-storage-backend-extra-config", default=None)
    sim = p.add_argument_group("simulator")
    s = sim.add_argument
    s("--sim-gpu", default="MI355X", help=f"one of {', '.join(catalog.GPUS)}")
    s("--sim-model-profile", default=None, help=f"one of {', '.join(catalog.MODELS)} (default: from --model-path)")
    s("--sim-gpus-per-instance", type=int, default=None, help="default: tp size x pp size")
    s("--sim-startup-delay", type=float, default=0.0, help="seconds before the server starts (model load)")
    s("--sim-speedup", type=float, default=1.0, help="divides every modelled time")
    s("--sim-seed", type=int, default=0)
    s("--sim-fault", action="append", default=[], help="crash_after=N | hang | slow=F | kv_fail_fraction=F | "
                                                        "refuse_bootstrap (repeatable)")
    s("--sim-kv-payload-bytes-per-token", type=int, default=256, help="KV bytes per prompt token moved for real")
    s("--sim-accuracy", type=float, default=1.0, help="probability of a correct arithmetic answer")
    s("--sim-prefill-of-matmul", type=float, default=PREFILL_OF_MATMUL,
      help="the share of the GPU's measured matmul rate a prefill forward reaches (docs/simulator.md)")
    return p


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    flags = [u for u in unknown if u.startswith("--")]
    if flags:
        print(f"WARNING: sim launch_server ignores sglang flags it does not model: {' '.join(flags)}", file=sys.stderr)
    stray = [u for u in unknown if not u.startswith("-")]
    if stray and not flags:
        parser.error(f"unexpected arguments: {' '.join(stray)}")
    if args.sim_speedup <= 0:
        parser.error("--sim-speedup must be > 0")
    if not 0 <= args.sim_accuracy <= 1:
        parser.error("--sim-accuracy must be within [0, 1]")
    if not 0 < args.sim_prefill_of_matmul <= 1:
        parser.error("--sim-prefill-of-matmul must be within (0, 1]")
    try:
        if args.chunked_prefill_size is None:
            args.chunked_prefill_size = catalog.default_chunked_prefill_size(catalog.find_gpu(args.sim_gpu))
        resolve_parallelism(args)
    except ValueError as error:
        parser.error(str(error))
    return args


def _install_stop(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


def _split_addr(addr: str | None) -> tuple[str, int]:
    if not addr or ":" not in addr:
        raise SystemExit(f"--nnodes > 1 needs --dist-init-addr HOST:PORT (got {addr!r})")
    host, _, port = addr.rpartition(":")
    return host, int(port)


async def _follow_rank0(args: argparse.Namespace) -> int:
    """A rank > 0 process: connect to rank 0, stay until it goes away or SIGTERM."""
    stop = asyncio.Event()
    _install_stop(stop)
    host, port = _split_addr(args.dist_init_addr)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RANK_JOIN_TIMEOUT_S
    while True:
        try:
            reader, writer = await asyncio.open_connection(host, port)
            break
        except OSError as error:
            if loop.time() > deadline or stop.is_set():
                log.error("node rank %d: rank 0 at %s:%d unreachable for %.0f s: %s", args.node_rank, host, port,
                          RANK_JOIN_TIMEOUT_S, error)
                return 1
            await asyncio.sleep(0.2)
    writer.write(f"{args.node_rank}\n".encode())
    await writer.drain()
    log.info("node rank %d joined rank 0 at %s:%d; serving no HTTP (rank > 0)", args.node_rank, host, port)
    gone = asyncio.ensure_future(reader.read())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({gone, stopped}, return_when=asyncio.FIRST_COMPLETED)
    log.info("node rank %d: %s, exiting", args.node_rank, "SIGTERM" if stop.is_set() else "rank 0 went away")
    gone.cancel()
    stopped.cancel()
    writer.close()
    return 0


async def _wait_for_ranks(args: argparse.Namespace, stop: asyncio.Event) -> asyncio.base_events.Server | None:
    if args.nnodes <= 1:
        return None
    host, port = _split_addr(args.dist_init_addr)
    joined: set[int] = set()
    everyone = asyncio.Event()
    peers: list[asyncio.StreamWriter] = []

    async def on_join(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        rank = int((await reader.readline()).strip() or -1)
        joined.add(rank)
        peers.append(writer)
        log.info("node rank %d joined (%d of %d)", rank, len(joined) + 1, args.nnodes)
        if len(joined) >= args.nnodes - 1:
            everyone.set()

    server = await asyncio.start_server(on_join, host, port)
    log.info("rank 0 waiting for %d more node(s) on %s:%d", args.nnodes - 1, host, port)
    waiter = asyncio.ensure_future(everyone.wait())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({waiter, stopped}, timeout=RANK_JOIN_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    stopped.cancel()
    if not everyone.is_set() and not stop.is_set():
        raise SystemExit(f"only {len(joined) + 1} of {args.nnodes} node ranks joined {host}:{port} within "
                         f"{RANK_JOIN_TIMEOUT_S:.0f} s")
    return server


async def _serve(args: argparse.Namespace) -> int:
    from pytest_sglang_pd.sim.api import build_app  # noqa: PLC0415 (rank > 0 processes need none of it)
    from pytest_sglang_pd.sim.worker import SimWorker  # noqa: PLC0415

    stop = asyncio.Event()
    _install_stop(stop)
    gpu = catalog.find_gpu(args.sim_gpu)
    profile = dtypes.with_dtypes(catalog.find_model(args.sim_model_profile, args.model_path), args.quantization,
                                 args.kv_cache_dtype, args.model_path)
    worker = SimWorker(args, gpu, profile)
    log.info("simulating %s (%s weights, %s KV) on %d x %s, role %s, speedup %g, KV capacity %d tokens",
             profile.name, profile.weight_dtype, profile.kv_dtype, worker.perf.gpus, gpu.name, args.disaggregation_mode,
             args.sim_speedup, worker.scheduler.capacity_tokens)
    ranks = await _wait_for_ranks(args, stop)
    runner = web.AppRunner(build_app(worker), access_log=None, shutdown_timeout=0.5)
    try:
        if args.sim_startup_delay > 0:
            try:
                await asyncio.wait_for(stop.wait(), args.sim_startup_delay)
                return 0
            except TimeoutError:
                pass
        await worker.start()
        await runner.setup()
        await web.TCPSite(runner, args.host, args.port, reuse_address=True).start()
        log.info(READY_LINE)
        await stop.wait()
        log.info("SIGTERM: shutting down")
        return 0
    finally:
        await runner.cleanup()
        await worker.stop()
        if ranks is not None:
            ranks.close()


def check_mooncake_store(args: argparse.Namespace) -> None:
    """HiCache on Mooncake: the store's master must answer where SGLang 0.5.23 looks for it (the extra config's
    master_server_address, else MOONCAKE_MASTER), as the real store's setup needs it; fail at start like SGLang."""
    if not (args.enable_hierarchical_cache and args.hicache_storage_backend == "mooncake"):
        return
    extra = json.loads(args.hicache_storage_backend_extra_config or "{}")
    master = extra.get("master_server_address") or os.environ.get("MOONCAKE_MASTER")
    if not master:
        raise ValueError("Either the environment variable 'MOONCAKE_MASTER' or 'MOONCAKE_CLIENT' is not set.")
    host, _, port = master.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=STORE_CONNECT_TIMEOUT_S).close()
    except OSError as error:
        raise ValueError(f"Failed to setup Mooncake store: master {master} unreachable ({error})") from None
    log.info("Mooncake store master %s answering (metadata server %s)", master,
             extra.get("metadata_server") or os.environ.get("MOONCAKE_TE_META_DATA_SERVER", "P2PHANDSHAKE"))


class _DropHttp2Probe(logging.Filter):
    """The router probes workers with an HTTP/2 preface (``PRI *``); aiohttp logs it as a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "PRI/Upgrade" not in str(record.exc_info[1] if record.exc_info else record.getMessage())


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stdout,
                        format=f"[%(asctime)s {args.disaggregation_mode} r{args.node_rank}] %(message)s")
    logging.getLogger("aiohttp.server").addFilter(_DropHttp2Probe())
    try:
        check_mooncake_store(args)
        if args.node_rank > 0:
            return asyncio.run(_follow_rank0(args))
        return asyncio.run(_serve(args))
    except (ValueError, KVTransferError, OSError) as error:
        log.error("sim worker failed to start: %s", error)
        return 1


if __name__ == "__main__":
    sys.exit(main())
