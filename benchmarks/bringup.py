"""Bring-up and teardown time of a simulated cluster: 1P1D against 8P8D, one node per instance.

    python benchmarks/bringup.py [--repeat 3]

Each layout is the shipped local-sim.json on free ports with every instance on its own loopback "node"
(1P1D: prefill 127.0.0.2, decode 127.0.0.3; 8P8D: prefill 127.0.0.2-9, decode 127.0.0.10-17; the router
on 127.0.0.1), brought up by the suite's own bring-up (LiveCluster.bring_up: connect, prechecks,
prefill and decode, router, smoke requests) and torn down by leaving its context. The two layouts
alternate, --repeat times each; the table shows the median seconds and the 8P8D / 1P1D ratios, and the
longest silence: the longest time without a stage line (``stages.stage``, what the terminal shows) from the
start of the bring-up to the end of the teardown.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_sglang_pd import plan  # noqa: E402
from pytest_sglang_pd.cluster import LiveCluster  # noqa: E402
from selftests.configs import sim_config  # noqa: E402

LAYOUTS = {
    "1P1D": (("127.0.0.2",), ("127.0.0.3",)),
    "8P8D": (tuple(f"127.0.0.{i}" for i in range(2, 10)), tuple(f"127.0.0.{i}" for i in range(10, 18))),
}


def measure(prefill: tuple[str, ...], decode: tuple[str, ...]) -> tuple[float, float, float]:
    """(setup seconds, teardown seconds, longest silence in seconds) of one bring-up of this layout."""
    told: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = plan.load_config(sim_config(Path(tmp), prefill=prefill, decode=decode, tests=("gsm8k",)))
        cluster = LiveCluster(cfg, plan.plan(cfg, "llama-8b", run_id="bench"), Path(tmp) / "run",
                              say=lambda line, level: told.append(time.monotonic()) if level == 0 else None)
        started = time.monotonic()
        with cluster:
            cluster.bring_up()
            up = time.monotonic()
        ended = time.monotonic()
    marks = [started, *told, ended]
    return up - started, ended - up, max(b - a for a, b in zip(marks, marks[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[tuple[float, float, float]]] = {name: [] for name in LAYOUTS}
    for _ in range(args.repeat):
        for name, (prefill, decode) in LAYOUTS.items():
            runs[name].append(measure(prefill, decode))
            print(f"  {name}: setup {runs[name][-1][0]:.2f} s, teardown {runs[name][-1][1]:.2f} s", file=sys.stderr)
    median = {name: (statistics.median(s for s, _, _ in r), statistics.median(t for _, t, _ in r))
              for name, r in runs.items()}
    print(f"| layout | setup s (median of {args.repeat}) | setup runs | teardown s (median) | teardown runs "
          f"| longest silence s (max) |")
    print("|---|---|---|---|---|---|")
    for name, r in runs.items():
        print(f"| {name} | {median[name][0]:.2f} | {', '.join(f'{s:.2f}' for s, _, _ in r)} "
              f"| {median[name][1]:.2f} | {', '.join(f'{t:.2f}' for _, t, _ in r)} | {max(q for _, _, q in r):.2f} |")
    small, large = median["1P1D"], median["8P8D"]
    print(f"\n8P8D / 1P1D: setup {large[0] / small[0]:.2f}x, teardown {large[1] / small[1]:.2f}x")


if __name__ == "__main__":
    main()
