"""The layout search as a test, for a CI stage: `pytest --cluster-config=CONFIG --tune='--isl 3000 --osl 150 --sla
"user_tok_s>=50,ttft_ms<=2000"'` runs it (and nothing else of the suite); without --tune it is not collected.

It passes when some layout met the SLA: the report (tune.html), the results (tune.json, resumed from on a rerun) and
the winner config (winner.json) are in the run's folder under tune/ (or --results-dir of the options)."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

import pytest

from pytest_sglang_pd import tune
from pytest_sglang_pd.tune import output, sla


def test_tune(request, suite_run, cluster_config):
    props = request.node.user_properties  # the JUnit properties of the test
    parser = argparse.ArgumentParser(prog="--tune", exit_on_error=False)
    tune.add_arguments(parser)
    try:
        args = parser.parse_args(shlex.split(request.config.getoption("tune")))
        plan, raw = tune.plan_of(cluster_config, args)
    except (argparse.ArgumentError, sla.TuneError) as exc:
        raise pytest.UsageError(f"--tune: {exc}") from None
    say = request.config.pluginmanager.get_plugin("terminalreporter")
    tell = (lambda line: say.write_line(line)) if say else print
    tell(plan.text())
    if args.dry_run:
        return
    results = Path(args.results_dir) if args.results_dir else suite_run.run_dir / "tune"
    data, winner = tune.run(plan, raw, cluster_config, results, prompts_per_user=args.prompts_per_user, say=tell)
    props.append(("tune_summary", output.summary(data)))
    props.append(("tune_report", str(results / output.REPORT_FILE)))
    if output.ratio(data) is not None:
        props.append(("disaggregated_over_aggregated", f"{output.ratio(data):.3f}"))
    assert winner is not None, f"no layout met the SLA {args.sla}:\n{output.summary(data)}\nreport: {results / output.REPORT_FILE}"
    props.append(("tune_winner_config", str(winner)))
    tell(output.summary(data) + f"\nwinner config {winner}")
