"""The builtin client against the real bench_serving: same simulated 1P1D, same workload, alternating runs.

    python benchmarks/client_fidelity.py [--runs 5] [--num-prompts 512] [--input-len 512] [--output-len 128]
        [--range-ratio 0.5] [--concurrency 32] [--seed 1] [--sim-speedup 1]

The shipped local-sim.json (1 prefill, 1 decode, the real router) on free ports, brought up by the suite's own
bring-up; then, --runs times each, the builtin client and bench_serving of the SGLang tools venv
($BENCH_TOOLS_VENV, else .bench-tools: `scripts/setup --dev` builds it) run the same random test, alternating,
each in a process of its own, every worker's prefix cache flushed before each run (the prompts repeat).
bench_serving runs the command the suite plans for a bench_client "sglang" test (random-ids prompts on the
simulator's tokenizer). A client's CPU is what its process spent in the benchmark by getrusage (warmup,
requests, metrics; for both, not the prompt generation before it).

The table shows each figure's median over the runs of each client and the ratio builtin / bench_serving:
PASS within 5% (client CPU per 1000 output tokens: at most 0.5x).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pytest_sglang_pd import plan  # noqa: E402
from pytest_sglang_pd.bench import builtin, sglang_tools, workloads  # noqa: E402
from pytest_sglang_pd.config import InferenceTest  # noqa: E402
from pytest_sglang_pd.textgen.tokenizer import tokenizer_dir  # noqa: E402
from pytest_sglang_pd.worker_http import flush_caches  # noqa: E402
from selftests.configs import tools_venv  # noqa: E402
from selftests.live import sim_cluster  # noqa: E402

TIMED_BENCH_SERVING = Path(__file__).resolve().parent / "timed_bench_serving.py"
CPU_LINE = "CLIENT_CPU_S "
TOLERANCE = 0.05
MAX_CPU_RATIO = 0.5
# (label, figure key, format)
FIGURES = (
    ("mean TTFT ms", "mean_ttft_ms", "{:.2f}"),
    ("p99 TTFT ms", "p99_ttft_ms", "{:.2f}"),
    ("mean TPOT ms", "mean_tpot_ms", "{:.3f}"),
    ("mean ITL ms", "mean_itl_ms", "{:.3f}"),
    ("output throughput tok/s", "output_throughput", "{:.1f}"),
    ("total output tokens", "total_output_tokens", "{:.0f}"),
    ("client CPU s / 1000 output tokens", "cpu_s_per_1k_output_tokens", "{:.4f}"),
)
CPU_FIGURE = "cpu_s_per_1k_output_tokens"


def fidelity_test(args: argparse.Namespace) -> InferenceTest:
    return InferenceTest(name="client_fidelity", kind="bench_serving", dataset="random", num_prompts=args.num_prompts,
                         input_length=args.input_len, output_length=args.output_len,
                         random_range_ratio=args.range_ratio, seed=args.seed, max_concurrency=(args.concurrency,),
                         warmup_requests=1)


def figures(metrics: dict[str, float], total_output_tokens: float, cpu_s: float) -> dict[str, float]:
    out = {key: metrics[key] for _, key, _ in FIGURES if key in metrics}
    out["total_output_tokens"] = total_output_tokens
    out[CPU_FIGURE] = cpu_s / max(total_output_tokens, 1) * 1000
    return out


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def builtin_child(url: str, args: argparse.Namespace) -> None:
    """In the builtin's own process: one run, its figures as a JSON line."""
    test = fidelity_test(args)
    workloads.prompts_for(test)  # made before the measured part, as bench_serving makes its dataset before benchmark()
    before = cpu_seconds()
    result = builtin.run(url, test, args.concurrency, timeout_s=1800)
    cpu_s = cpu_seconds() - before
    if result.failed:
        sys.exit(f"the builtin client: {result.failed} requests failed: {result.errors[:3]}")
    print(json.dumps(figures(result.metrics, result.totals["total_output_tokens"], cpu_s)))


def workload_argv(args: argparse.Namespace) -> list[str]:
    return ["--num-prompts", str(args.num_prompts), "--input-len", str(args.input_len), "--output-len",
            str(args.output_len), "--range-ratio", str(args.range_ratio), "--concurrency", str(args.concurrency),
            "--seed", str(args.seed)]


def run_builtin(url: str, args: argparse.Namespace) -> dict[str, float]:
    argv = [sys.executable, __file__, "--builtin-child", url, *workload_argv(args)]
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    if done.returncode != 0:
        sys.exit(f"{' '.join(argv)} exited with {done.returncode}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_bench_serving(cluster, tools_python: str, args: argparse.Namespace) -> dict[str, float]:
    """The suite's planned bench_serving command, run through timed_bench_serving.py; its --output-file's last line."""
    test = fidelity_test(args)
    argv = list(plan.bench_serving_argv(cluster.deployment, test, args.concurrency, str(tokenizer_dir())))
    output = Path(plan.bench_output_path(cluster.deployment, test, args.concurrency))
    output.parent.mkdir(parents=True, exist_ok=True)
    argv[:3] = [tools_python, str(TIMED_BENCH_SERVING), argv[2]]  # python -m MODULE -> python timed.py MODULE
    done = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    cpu_lines = [line for line in done.stdout.splitlines() if line.startswith(CPU_LINE)]
    if done.returncode != 0 or not cpu_lines:
        sys.exit(f"{' '.join(argv)} exited with {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}")
    result = sglang_tools.parse_bench_serving_line(sglang_tools.last_json_line(output.read_text(), str(output)),
                                                   num_prompts=args.num_prompts)
    if result.failed:
        sys.exit(f"bench_serving: {result.failed} requests failed: {result.errors[:3]}")
    return figures(result.metrics, result.totals["total_output_tokens"], float(cpu_lines[-1][len(CPU_LINE):]))


def verdict(key: str, ratio: float) -> str:
    if key == CPU_FIGURE:
        return "PASS" if ratio <= MAX_CPU_RATIO else "FAIL"
    return "PASS" if abs(ratio - 1) <= TOLERANCE else "FAIL"


def table(runs: dict[str, list[dict[str, float]]]) -> tuple[list[str], bool]:
    """The markdown table of medians and ratios, and whether every figure passes."""
    n = len(runs["builtin"])
    lines = [f"| figure | builtin (median of {n}) | bench_serving (median of {n}) | ratio | verdict | builtin runs "
             "| bench_serving runs |", "|---|---|---|---|---|---|---|"]
    passed = True
    for label, key, fmt in FIGURES:
        ours = statistics.median(r[key] for r in runs["builtin"])
        theirs = statistics.median(r[key] for r in runs["bench_serving"])
        ratio = ours / theirs if theirs else float("nan")
        mark = verdict(key, ratio)
        passed &= mark == "PASS"
        limit = f"<= {MAX_CPU_RATIO}x" if key == CPU_FIGURE else f"1 ± {TOLERANCE:.0%}"
        each = {client: ", ".join(fmt.format(r[key]) for r in rs) for client, rs in runs.items()}
        lines.append(f"| {label} | {fmt.format(ours)} | {fmt.format(theirs)} | {ratio:.3f} ({limit}) | {mark} "
                     f"| {each['builtin']} | {each['bench_serving']} |")
    return lines, passed



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs of each client (alternating)")
    parser.add_argument("--num-prompts", type=int, default=512)
    parser.add_argument("--input-len", type=int, default=512)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--range-ratio", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--sim-speedup", type=float, default=1.0,
                        help="the simulated workers' --sim-speedup (< 1: every modelled time longer, the cluster "
                             "less sensitive to a busy machine)")
    parser.add_argument("--builtin-child", metavar="ROUTER_URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.builtin_child:
        builtin_child(args.builtin_child, args)
        return
    tools_python = tools_venv() / "bin" / "python"
    if not tools_python.exists():
        sys.exit(f"no SGLang tools venv at {tools_venv()}: build it with scripts/setup --bench-tools "
                 "(or point $BENCH_TOOLS_VENV at one)")
    runs: dict[str, list[dict[str, float]]] = {"builtin": [], "bench_serving": []}
    load_before = os.getloadavg()[0]
    speed = ["--sim-speedup", str(args.sim_speedup)]
    with tempfile.TemporaryDirectory() as tmp, sim_cluster(Path(tmp), 1, 1, worker_args=speed) as cluster:
        for i in range(args.runs):
            for client in runs:
                if problems := flush_caches(cluster.worker_urls):  # each run from the same cold cache
                    sys.exit("\n".join(problems))
                started = time.monotonic()
                if client == "builtin":
                    runs[client].append(run_builtin(cluster.router_url, args))
                else:
                    runs[client].append(run_bench_serving(cluster, str(tools_python), args))
                r = runs[client][-1]
                print(f"  run {i + 1} {client}: TTFT {r['mean_ttft_ms']:.1f} ms, TPOT {r['mean_tpot_ms']:.2f} ms, "
                      f"{r['output_throughput']:.0f} tok/s, {r['total_output_tokens']:.0f} tokens, "
                      f"CPU {r[CPU_FIGURE]:.4f} s/1k tok ({time.monotonic() - started:.0f} s)", file=sys.stderr)
    lines, passed = table(runs)
    print(f"random {args.input_len}/{args.output_len}, range ratio {args.range_ratio}, {args.num_prompts} prompts, "
          f"concurrency {args.concurrency}, seed {args.seed}, sim speedup {args.sim_speedup:g}, "
          f"{args.runs} alternating runs of each; "
          f"{platform.node()}, {os.cpu_count()} CPUs, load average {load_before:.1f} at the start and "
          f"{os.getloadavg()[0]:.1f} at the end, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print("\n".join(lines))
    print(f"\nPASS: every figure within {TOLERANCE:.0%}, client CPU at most {MAX_CPU_RATIO}x" if passed
          else "\nFAIL: see the FAIL rows")
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
