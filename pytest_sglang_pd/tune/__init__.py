"""`sglang-pd tune`: the search for the best layout under an SLA (candidates -> profiles -> predictions -> deploy ->
bisect), as Dynamo's profile_sla does it: measure each TP size once, predict every layout, deploy only the best few.
Both faces (`sglang-pd tune`, pytest --tune) enter here: the options, the search's plan for a config, the run.

The modules, in import order: ``sla`` (workload and SLA), ``layouts`` (what fits the nodes), ``measurement`` (what
makes a point valid), ``predict`` (profiles, predictions, bisection), ``derived_configs`` (candidate and winner
configs), ``candidates`` (the plan, ranked and chosen layouts), ``store`` (resume), ``output`` (summary, table, HTML,
winner), ``search`` (the search over a ``Live``), ``live`` (``LiveTune``, that ``Live`` on the nodes).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from .candidates import Plan
from .derived_configs import own_allocations, planned, worker_count
from .layouts import enumerate_layouts
from .live import LiveTune
from .output import finish
from .predict import DEFAULT_BATCHES
from .search import Say
from .search import search as run_search  # the name `search` stays the module
from .sla import Constraint, Workload, parse_sla
from .store import RESULTS_FILE, Store


def prepare(cfg: Any, model_id: str, work: Workload, sla: tuple[Constraint, ...], *, tps: tuple[int, ...] | None = None,
            aggregated_dp: bool = False, dp_attention: bool = False, dp_attention_sizes: tuple[int, ...] = (),
            **budget: Any) -> tuple[Plan, dict]:
    """The search's plan for a loaded config (and the config's raw form the candidates are derived from): the layouts
    of its worker nodes, each planned; ``budget``: Plan's batches, deploy_* and max_* fields."""
    from .. import config as config_mod

    raw = config_mod.parse_text(Path(cfg.source).read_text(), cfg.source)
    tps = tps or tuple(2 ** i for i in range(8) if 2 ** i <= cfg.gpus_per_node)
    layouts, excluded = enumerate_layouts(worker_count(raw), cfg.gpus_per_node, tps, aggregated_dp=aggregated_dp,
                                          dp_attention=dp_attention, dp_attention_sizes=dp_attention_sizes)
    placed, refused = planned(raw, model_id, layouts, work)
    return Plan(model_id, work, sla, [lay for lay, _ in placed], excluded + refused,
                placements={lay.id: where for lay, where in placed}, at_once=own_allocations(raw), **budget), raw


def run(plan: Plan, raw: dict, cfg: Any, results_dir: Path, *, prompts_per_user: int = 4,
        say: Say = print) -> tuple[dict, Path | None]:
    """The search on the config's nodes, resumed from ``results_dir``; its results and the winner config's path."""
    store = Store(results_dir / RESULTS_FILE, plan.key)
    live = LiveTune(raw, plan.model, results_dir, prompts_per_user=prompts_per_user, say=say)
    data = run_search(plan, live, store, say=say)
    return data, finish(plan, data, raw, results_dir, prompts_per_user=prompts_per_user, simulated=cfg.simulated)


def add_arguments(p: Any) -> None:
    """The search's options (an argparse parser): `sglang-pd tune` and pytest's --tune take the same."""
    p.add_argument("--model", help="model id (default: the config's first)")
    p.add_argument("--isl", type=int, required=True, help="input tokens per request")
    p.add_argument("--osl", type=int, required=True, help="output tokens per request")
    p.add_argument("--sla", required=True, help='e.g. "user_tok_s>=50,ttft_ms<=2000" (metric names of config-keys.md)')
    p.add_argument("--dry-run", action="store_true", help="list the candidates, exclusions and plans; start nothing")
    p.add_argument("--max-candidates", type=int, default=3, help="layouts deployed at most (default 3)")
    p.add_argument("--max-minutes", type=float, default=math.inf, help="no new profile or deployment after this")
    p.add_argument("--deploy-disaggregated", type=int, default=2, help="best predicted disaggregated deployed (2)")
    p.add_argument("--deploy-aggregated", type=int, default=1, help="best predicted aggregated deployed (1)")
    p.add_argument("--tp", type=_ints, help="TP sizes searched, e.g. 4,8 (default: powers of two up to gpus_per_node)")
    p.add_argument("--aggregated-dp", action="store_true", help="also aggregated instances of TP x DP replicas")
    p.add_argument("--dp-attention", action="store_true", help="also prefill, decode (each, and both) and aggregated "
                   "instances with DP attention over all their TP ranks (each TP with it profiled apart)")
    p.add_argument("--dp-attention-sizes", type=_dp_sizes, default=(), help="also DP attention over that many of an "
                   "instance's TP ranks where the size divides its TP, e.g. 2,4 (TP8 with DP attention 2 and 4; each "
                   "TP and size profiled apart)")
    p.add_argument("--batches", type=_ints, default=DEFAULT_BATCHES, help="decode-alone batch sizes profiled (1,4,16,64)")
    p.add_argument("--prompts-per-user", type=int, default=4, help="requests per concurrency slot of a measurement")
    p.add_argument("--results-dir", help="results (resumed from), report, winner config (default: reports/tune; "
                                         "under pytest: the run's folder/tune)")


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a comma list of whole numbers") from None


def _dp_sizes(text: str) -> tuple[int, ...]:
    sizes = _ints(text)
    if min(sizes) < 2:
        raise argparse.ArgumentTypeError(f"{text!r}: DP attention needs 2 ranks or more")
    return sizes


def plan_of(cfg: Any, args: Any) -> tuple[Plan, dict]:
    """``prepare`` from parsed ``add_arguments`` options (the SLA parsed: a TuneError names a bad term)."""
    return prepare(cfg, args.model or cfg.model_ids[0], Workload(args.isl, args.osl), parse_sla(args.sla), tps=args.tp,
                   aggregated_dp=args.aggregated_dp, dp_attention=args.dp_attention,
                   dp_attention_sizes=args.dp_attention_sizes, batches=args.batches,
                   deploy_disaggregated=args.deploy_disaggregated, deploy_aggregated=args.deploy_aggregated,
                   max_candidates=args.max_candidates, max_minutes=args.max_minutes)
