"""The full layout search of the Dynamo tuning guide on the simulated two-node H100 cluster (about 3 minutes here).

    python benchmarks/tune_search.py [--results-dir reports/tune-search] [--speedup 2] [--prefill-of-matmul SHARE]
                                     [-- more sglang-pd tune options]

`sglang-pd tune cluster_configs/local-sim-tune-h100.json --isl 3000 --osl 150 --sla "user_tok_s>=50,ttft_ms<=2000"
--tp 4,8` (the seed's FP8 70B), the simulator at ``--speedup``, timed; it prints the best
disaggregated and aggregated layouts and their ratio next to the seed's (87.6 / 56.3 tok/s/GPU, 1.56x). The
simulator's figures are scaled back to simulated time, so the per-request overhead of this machine's HTTP stack is
scaled up by the speedup too: keep it low enough that TTFT and ITL stay well above a few ms of real time.
``--prefill-of-matmul`` calibrates the simulator's prefill rate (config.sim.prefill_of_matmul, docs/simulator.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pytest_sglang_pd import cli  # noqa: E402
from pytest_sglang_pd.tune import output, store  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "cluster_configs" / "local-sim-tune-h100.json"
SEED = {"disaggregated": 87.6, "aggregated": 56.3}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results-dir", default="reports/tune-search")
    parser.add_argument("--speedup", default="2", help="the simulator's speedup (config.sim.speedup)")
    parser.add_argument("--prefill-of-matmul", default=None, help="config.sim.prefill_of_matmul (default: the model's)")
    args, more = parser.parse_known_args()
    data = json.loads(CONFIG.read_text())
    data["config"]["sim"]["speedup"] = args.speedup
    if args.prefill_of_matmul:
        data["config"]["sim"]["prefill_of_matmul"] = args.prefill_of_matmul
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / CONFIG.name
        config.write_text(json.dumps(data))
        started = time.monotonic()
        code = cli.main(["tune", str(config), "--isl", "3000", "--osl", "150", "--sla", "user_tok_s>=50,ttft_ms<=2000",
                         "--tp", "4,8", "--results-dir", args.results_dir, *[m for m in more if m != "--"]])
        minutes = (time.monotonic() - started) / 60
    found = json.loads((Path(args.results_dir) / store.RESULTS_FILE).read_text())
    for mode, seed in SEED.items():
        best = output.best_of(found, mode)
        if best:
            got = best[1]["figures"]["output_throughput_per_gpu"]
            print(f"{mode}: {best[0]} {got:.1f} tok/s/GPU (seed {seed}, {100 * (got / seed - 1):+.0f}%)")
    ratio = output.ratio(found)
    print(f"ratio {ratio:.2f}x (seed 1.56x)" if ratio else "ratio: a mode has no layout under the SLA")
    print(f"search took {minutes:.1f} minutes")
    return code


if __name__ == "__main__":
    sys.exit(main())
