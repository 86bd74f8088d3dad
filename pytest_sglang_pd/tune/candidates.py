"""The search's plan (layouts, exclusions, the TPs to profile, the budget) and the layouts it deploys: every
layout ranked by its prediction, the best few of each mode chosen."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..config import AGGREGATED, DISAGGREGATED
from .layouts import Exclusion, Layout, Shape, profile_name
from .measurement import MEASUREMENT
from .predict import DEFAULT_BATCHES, PROFILE_ISL_FRACTIONS, Profile, predicted_best
from .sla import Constraint, Workload


@dataclass
class Plan:
    """What a search will do: the layouts, why others were left out, the TPs to profile, the budget."""

    model: str
    work: Workload
    sla: tuple[Constraint, ...]
    layouts: list[Layout]
    excluded: list[Exclusion]
    batches: tuple[int, ...] = DEFAULT_BATCHES
    deploy_disaggregated: int = 2
    deploy_aggregated: int = 1
    max_candidates: int = 3
    max_minutes: float = math.inf
    placements: dict[str, str] = field(default_factory=dict)  # layout id -> where its instances run (``planned``)
    at_once: bool = False  # the chosen layouts deployed at once, each in a Slurm allocation of its own

    @property
    def profiled(self) -> list[Shape]:
        """The shapes to profile, each once: a TP size, and a TP size with DP attention where a layout has it."""
        shapes = {s.profiled for lay in self.layouts for s in (lay.prefill, lay.decode, lay.aggregated) if s}
        return sorted(shapes, key=lambda s: (s.tp, s.dpa))

    @property
    def key(self) -> dict:
        """What a stored result must match to be reused."""
        return {"model": self.model, "isl": self.work.isl, "osl": self.work.osl, "sla": [str(c) for c in self.sla],
                "batches": list(self.batches), "measurement": MEASUREMENT}

    def text(self) -> str:
        lines = [f"model {self.model}: ISL {self.work.isl}, OSL {self.work.osl}, SLA {', '.join(map(str, self.sla))}",
                 f"  profiles (once each): {', '.join(profile_name(s.tp, s.dpa) for s in self.profiled)}: prefill "
                 "alone (1P1D, concurrency 1, "
                 f"ISL x {', '.join(f'{f:g}' for f in PROFILE_ISL_FRACTIONS)}), decode alone at batches "
                 f"{', '.join(map(str, self.batches))}"
                 + ("; at once, each in a Slurm allocation of its own" if self.at_once else ""),
                 *self._dp_attention_text(),
                 f"  then deploy the best {self.deploy_disaggregated} disaggregated and {self.deploy_aggregated} "
                 f"aggregated predicted ({'at once, each in a Slurm allocation of its own; ' if self.at_once else ''}"
                 f"at most {self.max_candidates}, "
                 f"{'no time limit' if math.isinf(self.max_minutes) else f'within {self.max_minutes:g} minutes'}), "
                 "each bisected for the highest concurrency that meets the SLA",
                 f"  {len(self.layouts)} candidate layouts:"]
        lines += [f"    {lay.id}: {lay.mode}, {lay.gpus} GPUs" + (f": {self.placements[lay.id]}" if lay.id in
                                                                  self.placements else "") for lay in self.layouts]
        lines.append(f"  {len(self.excluded)} excluded:")
        lines += [f"    {e.what}: {e.why}" for e in self.excluded]
        return "\n".join(lines)

    def _dp_attention_text(self) -> list[str]:
        """What DP attention adds to the search (--dp-attention, --dp-attention-sizes): its profiles and layouts."""
        shapes = [s for s in self.profiled if s.dpa > 1]
        with_it = sum(any(s.dpa > 1 for s in (lay.prefill, lay.decode, lay.aggregated) if s) for lay in self.layouts)
        return [f"  DP attention adds {len(shapes)} of these profiles and {with_it} of the {len(self.layouts)} "
                f"candidate layouts"] if shapes else []


def rank(plan: Plan, profiles: dict[str, Profile]) -> list[dict]:
    """Every layout's prediction at its best concurrency under the SLA, best output tok/s per GPU first; layouts whose
    profiles are missing or failed, or which cannot meet the SLA at any concurrency, last with why."""
    out = []
    for lay in plan.layouts:
        entry: dict[str, Any] = {"id": lay.id, "mode": lay.mode, "gpus": lay.gpus, "layout": lay.as_dict()}
        missing = [f"{profiles[k].name} profile failed: {profiles[k].error}" if k in profiles else f"{k} not profiled"
                   for k in lay.profiles if k not in profiles or profiles[k].error]
        if missing:
            entry["why"] = "; ".join(missing)
        else:
            best, figures = predicted_best(lay, profiles, plan.work, plan.sla, max(plan.batches))
            entry.update(concurrency=best, predicted=figures)
            if best is None:
                entry["why"] = "predicted to miss the SLA even at concurrency 1"
        out.append(entry)
    return sorted(out, key=lambda e: -e.get("predicted", {}).get("output_throughput_per_gpu", -1.0))


def chosen(plan: Plan, ranked: list[dict]) -> list[dict]:
    """The best predicted of each mode, as many as the plan deploys, within max_candidates."""
    feasible = [e for e in ranked if "why" not in e]
    picks = [e for e in feasible if e["mode"] == DISAGGREGATED][:plan.deploy_disaggregated] + \
        [e for e in feasible if e["mode"] == AGGREGATED][:plan.deploy_aggregated]
    return sorted(picks, key=ranked.index)[:plan.max_candidates]
