"""The search over a ``Live`` (what it needs of a cluster): profiles first (each TP once), predictions, then the best
few deployed and bisected, every result stored as it comes and checked (measurement.py) before it counts."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any, Callable, ContextManager, Protocol

from .candidates import Plan, chosen, rank
from .layouts import Layout
from .measurement import cache_problem
from .output import brief
from .predict import Profile, highest_passing
from .sla import Workload, sla_met
from .store import Store


class Live(Protocol):
    """What the search needs of a cluster: a TP size profiled, a layout deployed and measured at a concurrency."""

    def profile(self, tp: int, work: Workload, batches: tuple[int, ...]) -> Profile: ...

    def deploy(self, layout: Layout, work: Workload) -> ContextManager[Callable[[int], dict[str, float]]]: ...


Say = Callable[[str], None]


def _budget_left(started: float, plan: Plan) -> bool:
    return (time.monotonic() - started) / 60.0 < plan.max_minutes


def search(plan: Plan, live: Live, store: Store, say: Say = print) -> dict:
    """Profiles first (each TP once), predictions, then the best few deployed and bisected; every result stored as it
    comes, and a stored one (of the same model, workload and SLA) not measured again."""
    started = time.monotonic()
    for tp in plan.tps:
        if str(tp) in store.profiles:
            continue
        if not _budget_left(started, plan):
            say(f"budget of {plan.max_minutes:g} minutes spent: TP{tp} not profiled")
            break
        say(f"profiling TP{tp}")
        store.profiles[str(tp)] = asdict(checked_profile(live.profile(tp, plan.work, plan.batches), say))
        store.save()
    profiles = {int(k): Profile.from_dict(v) for k, v in store.profiles.items()}
    ranked = rank(plan, profiles)
    store.data["predictions"] = ranked
    store.save()
    for entry in chosen(plan, ranked):
        cid = entry["id"]
        if store.candidates.get(cid, {}).get("done"):
            continue
        if not _budget_left(started, plan):
            say(f"budget of {plan.max_minutes:g} minutes spent: {cid} not deployed")
            break
        say(f"deploying {cid} (predicted best concurrency {entry['concurrency']})")
        store.candidates[cid] = measure_candidate(plan, live, Layout.from_dict(entry["layout"]),
                                                  entry["concurrency"], lambda: store.save(), say)
        store.save()
    return store.data


def checked_profile(profile: Profile, say: Say) -> Profile:
    """The profile, failed when the prefix cache served one of its measurements (its TP's layouts left out)."""
    invalid = [f"{what}: {problem}" for what, rate in profile.cache_hit_rate.items() if (problem := cache_problem(rate))]
    if invalid and not profile.error:
        profile.error = "; ".join(invalid)
        say(f"  TP{profile.tp}: {profile.error}")
    return profile


def measure_candidate(plan: Plan, live: Live, layout: Layout, predicted: int, saved: Callable[[], None],
                      say: Say) -> dict:
    """One layout deployed; the highest concurrency meeting the SLA found by bisection from the predicted one."""
    record: dict[str, Any] = {"layout": layout.as_dict(), "mode": layout.mode, "gpus": layout.gpus, "points": {}}
    try:
        with live.deploy(layout, plan.work) as measure:
            def passes(c: int) -> bool:
                figures = measure(c)
                invalid = cache_problem(figures.get("cache_hit_rate"))
                met = sla_met(plan.sla, figures) and not invalid
                record["points"][str(c)] = {"figures": figures, "met": met, **({"invalid": invalid} if invalid else {})}
                say(f"  {layout.id} at concurrency {c}: {brief(figures)}: " + (invalid or f"SLA {'met' if met else 'missed'}"))
                saved()
                if invalid:  # the bisection cannot go on from a point that measured something else
                    raise RuntimeError(f"concurrency {c}: {invalid}")
                return met
            best = highest_passing(passes, start=predicted, hi=max(plan.batches) * (layout.aggregated or layout.decode).instances)
    except Exception as exc:  # a candidate that fails to deploy or measure is recorded; the search goes on
        record.update(error=f"{type(exc).__name__}: {exc}", done=True)
        say(f"  {layout.id} failed: {record['error']}")
        return record
    record.update(concurrency=best, figures=record["points"][str(best)]["figures"] if best else {}, done=True)
    return record
