"""The cluster configs derived from the user's: one per candidate (its layout, the tests it measures), the
winner's (gated by the SLA's limits), and each candidate planned as a deployment would be."""

from __future__ import annotations

import copy
import os
import re

from ..config import AGGREGATED, DISAGGREGATED
from .layouts import Exclusion, Layout, Shape
from .sla import Constraint, Workload


TEST = "tune"  # the inference test of every derived config


def worker_nodes(raw: dict) -> list[str]:
    """The distinct worker nodes a config names, prefill list first."""
    c = raw["config"]
    return list(dict.fromkeys([*c.get("prefill_node_list", []), *c.get("decode_node_list", [])]))


def worker_count(raw: dict) -> int:
    """The worker nodes the search lays out: those the config names; on Slurm without node lists, the allocation's
    slurm.prefill_nodes + slurm.decode_nodes (1 each by default)."""
    named = worker_nodes(raw)
    if named or raw["config"].get("transport") != "slurm":
        return len(named)
    s = raw["config"].get("slurm", {})
    return int(s.get("prefill_nodes", 1)) + int(s.get("decode_nodes", 1))


def own_allocations(raw: dict) -> bool:
    """Whether each deployment gets an allocation of its own (Slurm, where the suite allocates), so that several
    candidates can run at once; not in an allocation the config names or the run is in."""
    c = raw["config"]
    return c.get("transport") == "slurm" and not (c.get("slurm", {}).get("job_id") or os.environ.get("SLURM_JOB_ID"))


def _slurm_counts(c: dict, layout: Layout) -> None:
    """A Slurm config without node lists: each role's nodes by count, the allocation sized by them (not slurm.nodes)."""
    s = c.setdefault("slurm", {})
    s.pop("nodes", None)
    if layout.mode == AGGREGATED:  # aggregated workers run on both counts' nodes
        n = layout.aggregated.nodes
        s["prefill_nodes"], s["decode_nodes"] = str((n + 1) // 2), str(n // 2)
    else:
        s["prefill_nodes"], s["decode_nodes"] = str(layout.prefill.nodes), str(layout.decode.nodes)


def _section(shape: Shape) -> dict:
    dp = {"dp_size": str(shape.dp)} if shape.dp > 1 else {"dp_size": str(shape.dpa), "dp_attention": "true"} \
        if shape.dpa > 1 else {}
    return {"tensor_parallelism": str(shape.tp), "instances_per_node": str(shape.instances_per_node), **dp}


_LAYOUT_KEYS = ("mode", "prefill", "decode", "aggregated", "dp_size", "dp_attention", "inference_tests")


def candidate_config(raw: dict, model_id: str, layout: Layout, tests: dict[str, dict]) -> dict:
    """The user's config with only ``model_id``, laid out as ``layout`` (its own layout keys replaced: mode, role
    sections, dp_size, dp_attention) and running ``tests``; disaggregated on separate nodes: the first nodes
    prefill, the rest decode (on Slurm without node lists: that many nodes of the candidate's own allocation)."""
    out = copy.deepcopy(raw)
    nodes = worker_nodes(raw)
    model = {k: v for k, v in out["benchmark_params"][model_id].items() if k not in _LAYOUT_KEYS}
    c = out["config"]
    if layout.mode == AGGREGATED:
        model.update(mode=AGGREGATED, tensor_parallelism=str(layout.aggregated.tp),
                     aggregated=_section(layout.aggregated))
    else:
        model.update(mode=DISAGGREGATED, tensor_parallelism=str(layout.decode.tp), prefill=_section(layout.prefill),
                     decode=_section(layout.decode))
    if nodes:
        c["prefill_node_list"], c["decode_node_list"] = _named(nodes, layout)
        c["nnodes"] = str(len(c["prefill_node_list"]) + len(c["decode_node_list"]))
    else:
        _slurm_counts(c, layout)
    if c.get("transport") == "slurm":
        _exclusive(c.setdefault("slurm", {}))
    model["inference_tests"] = tests
    out["benchmark_params"] = {model_id: model}
    return out


def _exclusive(slurm: dict) -> None:
    """``--exclusive`` among the allocation's sbatch arguments: candidates allocated at once must not share a node
    (nor, naming the same nodes, run on them together: the second waits in the queue)."""
    if "--exclusive" not in slurm.get("extra_args", []):
        slurm["extra_args"] = [*slurm.get("extra_args", []), "--exclusive"]


def _named(nodes: list[str], layout: Layout) -> tuple[list[str], list[str]]:
    """The prefill and decode node lists of ``layout`` on the config's nodes."""
    if layout.mode == AGGREGATED:
        mine = nodes[:layout.aggregated.nodes]  # aggregated workers run on both lists' nodes, each once
        return (mine, mine) if len(mine) == 1 else (mine[:len(mine) // 2], mine[len(mine) // 2:])
    k = layout.prefill.nodes
    return (nodes[:1], nodes[:1]) if layout.shared else (nodes[:k], nodes[k:k + layout.decode.nodes])


def bench_test(work: Workload, concurrency: int | list[int], prompts: int, **extra: str) -> dict:
    """An inference test of fixed-length random prompts (the suite's builtin client)."""
    return {"data_set_name": "random", "bench_client": "builtin", "input_length": str(work.isl),
            "output_length": str(work.osl), "random_range_ratio": "1", "num_prompts": str(prompts),
            "max_concurrency": [str(c) for c in concurrency] if isinstance(concurrency, list) else str(concurrency),
            "warmup_requests": "0", **extra}


def winner_config(raw: dict, model_id: str, layout: Layout, work: Workload, sla: tuple[Constraint, ...],
                  concurrency: int, prompts: int) -> dict:
    """A ready-to-use cluster config of the winner: its layout, one test at the concurrency found, gated by the
    SLA's limits (not the figures measured) and with the SLA's latency limits as the test's SLO."""
    slo = {c.metric.split("_")[1] + "_ms": str(c.limit) for c in sla if re.fullmatch(r"mean_(ttft|tpot|itl)_ms", c.metric)}
    test = bench_test(work, concurrency, prompts,
                      expected_results={"auto": {c.metric: str(c.limit) for c in sla}}, **({"slo": slo} if slo else {}))
    test.pop("warmup_requests")
    winner = candidate_config(raw, model_id, layout, {TEST: test})
    sim = winner["config"].get("sim")
    if sim and float(sim.get("speedup", 1)) > 1:  # the suite reports a fast-forwarded simulator in wall-clock time:
        winner["config"]["sim"] = {**sim, "speedup": "1"}  # in real time its figures are the search's modelled ones
    return winner


def planned(raw: dict, model_id: str, layouts: list[Layout], work: Workload) -> tuple[list[tuple[Layout, str]],
                                                                                      list[Exclusion]]:
    """Each layout's config planned as a deployment would be (no process started): (layout, where its instances
    run) for those the config checks and the plan accept, an exclusion naming the problem for the others."""
    from .. import config as config_mod
    from .. import plan as plan_mod
    from .. import slurm

    ok, excluded = [], []
    for lay in layouts:
        try:
            cfg = config_mod.from_dict(candidate_config(raw, model_id, lay, {TEST: bench_test(work, 1, 8)}),
                                       source=lay.id, checks=(plan_mod.plan_problems,))
        except config_mod.ConfigError as exc:
            excluded.append(Exclusion(lay.id, "; ".join(map(str, exc.problems[:2]))))
            continue
        dep = plan_mod.plan(slurm.planned(cfg), model_id, run_id="RUN_ID")  # on Slurm: node1, node2, ... unallocated
        where = "; ".join(f"{role} {dep.model.layout(role).describe()} on "
                          f"{', '.join(dict.fromkeys(p.node for p in dep.role(role)))}" for role in dep.worker_roles)
        ok.append((lay, where))
    return ok, excluded
