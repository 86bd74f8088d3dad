"""What each client adds to the TTFT it reports: the builtin client and the real bench_serving's request function
against a server that answers at once.

    python benchmarks/client_overhead.py [--runs 3] [--rounds 20] [--concurrency 32]

The server (a process of its own) reads a /generate request and at once streams one SSE event with text, a second
5 ms later and [DONE], chunked as SGLang and the router do: every millisecond a client reports as TTFT is its own
(connection, sending, reading, its event loop), plus loopback. Each round starts ``--concurrency`` requests together,
as a benchmark's first wave does. bench_serving's ``async_request_sglang_generate`` (sglang 0.5.23, the SGLang tools
venv) runs in that venv; the builtin's ``send_request`` here. On a simulated cluster whose TTFT is tens of ms, the
difference between the two is what separates their TTFT figures (docs/benchmarks/client_fidelity.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from selftests.configs import tools_venv  # noqa: E402

PROMPT = "hello " * 400


def _chunk(data: bytes) -> bytes:
    return f"{len(data):X}\r\n".encode() + data + b"\r\n"


def _event(tokens: int) -> bytes:
    meta = {"completion_tokens": tokens, "prompt_tokens": 400, "finish_reason": {"type": "length"} if tokens > 1 else None}
    return _chunk(b"data: " + json.dumps({"text": "x" * tokens, "meta_info": meta}).encode() + b"\n\n")


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
    await reader.readexactly(length)
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n" + _event(1))
    await writer.drain()
    await asyncio.sleep(0.005)
    writer.write(_event(2) + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    await writer.drain()
    writer.close()


async def _serve(port: int) -> None:
    server = await asyncio.start_server(_handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


BENCH_SERVING = """
import asyncio, argparse, json, sys
import sglang.benchmark.serving as S
class Args(argparse.Namespace):
    def __getattr__(self, name): return None
S.args = Args(temperature=0.0, disable_ignore_eos=False, top_p=1.0, disable_stream=False, return_logprob=False,
              return_routed_experts=False, logprob_start_len=-1, top_logprobs_num=0, token_ids_logprob=None)
url, rounds, concurrency, prompt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
async def main():
    out = []
    for _ in range(rounds):
        inp = S.RequestFuncInput(prompt=prompt, api_url=url + "/generate", prompt_len=400, output_len=2, model="m",
                                 lora_name=None, image_data=None, extra_request_body={})
        res = await asyncio.gather(*(S.async_request_sglang_generate(inp) for _ in range(concurrency)))
        assert all(r.success for r in res), res[0].error
        out += [r.ttft for r in res]
    print(json.dumps(out))
asyncio.run(main())
"""


def builtin_ttfts(url: str, rounds: int, concurrency: int) -> list[float]:
    import uvloop

    from pytest_sglang_pd.bench import builtin
    from pytest_sglang_pd.bench.workloads import Prompt

    async def main() -> list[float]:
        out: list[float] = []
        for _ in range(rounds):
            records = await asyncio.gather(*(builtin.send_request(url, Prompt(PROMPT, 2)) for _ in range(concurrency)))
            assert all(r.success for r in records), records[0].error
            out += [r.ttft_s for r in records]
        return out

    return uvloop.run(main())


def bench_serving_ttfts(url: str, rounds: int, concurrency: int) -> list[float]:
    python = tools_venv() / "bin" / "python"
    if not python.exists():
        sys.exit(f"no SGLang tools venv at {tools_venv()}: build it with scripts/setup --bench-tools")
    done = subprocess.run([str(python), "-W", "ignore", "-c", BENCH_SERVING, url, str(rounds), str(concurrency), PROMPT],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def summary(ttfts: list[float]) -> dict[str, float]:
    ms = sorted(t * 1000 for t in ttfts)
    return {"mean": statistics.mean(ms), "median": statistics.median(ms), "p99": ms[int(len(ms) * 0.99)]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="alternating runs of each client")
    parser.add_argument("--rounds", type=int, default=20, help="waves of requests per run")
    parser.add_argument("--concurrency", type=int, default=32, help="requests started together per wave")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.serve))
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    try:
        time.sleep(1.0)
        url = f"http://127.0.0.1:{port}"
        print(f"| run | client | mean TTFT ms | median ms | p99 ms |  ({args.rounds} waves of {args.concurrency} requests)")
        print("|---|---|---|---|---|")
        for run in range(1, args.runs + 1):
            for name, measure in (("builtin", builtin_ttfts), ("bench_serving", bench_serving_ttfts)):
                s = summary(measure(url, args.rounds, args.concurrency))
                print(f"| {run} | {name} | {s['mean']:.2f} | {s['median']:.2f} | {s['p99']:.2f} |", flush=True)
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    main()
