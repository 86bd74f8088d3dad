"""Run by the python of the SGLang tools venv: bench_serving exactly as ``python -m MODULE ARGS...`` runs it, and
the CPU seconds its process spent in the benchmark proper (warmup, requests, metrics; not its imports, the
tokenizer load or the prompt generation) as a last line ``CLIENT_CPU_S <seconds>``.

    .bench-tools/bin/python benchmarks/timed_bench_serving.py sglang.bench_serving --backend sglang ...
"""

from __future__ import annotations

import resource
import sys

import sglang.benchmark.serving as serving

MODULES = ("sglang.bench_serving", "sglang.benchmark.serving")  # the old path is a shim for the new one


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    module, args = sys.argv[1], sys.argv[2:]
    if module not in MODULES:
        sys.exit(f"{module} is not bench_serving ({' or '.join(MODULES)})")
    measured = serving.benchmark

    async def timed(*a, **kw):
        before = cpu_seconds()
        try:
            return await measured(*a, **kw)
        finally:
            print(f"CLIENT_CPU_S {cpu_seconds() - before:.6f}", flush=True)

    serving.benchmark = timed  # run_benchmark looks it up in the module when it starts the run
    sys.argv = [module, *args]
    serving.cli_main()


if __name__ == "__main__":
    main()
