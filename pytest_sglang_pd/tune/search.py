"""The search over a ``Live`` (what it needs of a cluster): profiles first (each TP once), predictions, then the best
few deployed and bisected, every result stored as it comes and checked (measurement.py) before it counts."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ContextManager, Protocol

from .candidates import Plan, chosen, rank
from .layouts import Layout, Shape, profile_name
from .measurement import cache_problem
from .output import brief
from .predict import Profile, highest_passing
from .sla import Workload, sla_met
from .store import Store


@dataclass
class Deployed:
    """A layout deployed: how it is measured at a concurrency, and where it runs (its Slurm allocation, ...)."""

    measure: Callable[[int], dict[str, float]]
    facts: dict[str, str] = field(default_factory=dict)


class Live(Protocol):
    """What the search needs of a cluster: a TP size profiled, a layout deployed and measured at a concurrency;
    ``parallel``: the profiles, and the chosen layouts, may be deployed at once (each on nodes of its own), ``abort``
    then stops them."""

    parallel: bool

    def profile(self, shape: Shape, work: Workload, batches: tuple[int, ...]) -> Profile: ...

    def deploy(self, layout: Layout, work: Workload) -> ContextManager[Deployed]: ...

    def abort(self) -> None: ...


Say = Callable[[str], None]


def _budget_left(started: float, plan: Plan) -> bool:
    return (time.monotonic() - started) / 60.0 < plan.max_minutes


def search(plan: Plan, live: Live, store: Store, say: Say = print) -> dict:
    """Profiles first (each TP once), predictions, then the best few deployed and bisected (profiles and candidates
    at once where ``live`` is parallel); every result stored as it comes, and a stored one (of the same search key)
    not measured again."""
    started = time.monotonic()

    def take_profile(shape: Shape) -> None:
        say(f"profiling {profile_name(shape.tp, shape.dpa)}")
        store.put_profile(shape.profile, asdict(checked_profile(live.profile(shape, plan.work, plan.batches), say)))

    todo = [s for s in plan.profiled if s.profile not in store.profiles]
    _each(todo, take_profile, live, started, plan, say, "profiling {} shapes", "profiled",
          lambda s: profile_name(s.tp, s.dpa))
    profiles = {k: Profile.from_dict(v) for k, v in store.profiles.items()}
    ranked = rank(plan, profiles)
    store.data["predictions"] = ranked
    store.save()
    picks = [e for e in chosen(plan, ranked) if not store.candidates.get(e["id"], {}).get("done")]

    def deploy(entry: dict) -> None:
        say(f"deploying {entry['id']} (predicted best concurrency {entry['concurrency']})")
        measure_candidate(plan, live, Layout.from_dict(entry["layout"]), entry["concurrency"], store, say)

    _each(picks, deploy, live, started, plan, say, "deploying {} candidates", "deployed", lambda e: e["id"])
    return store.data


def _each(items: list, run: Callable[[Any], None], live: Live, started: float, plan: Plan, say: Say, doing: str,
          undone: str, name: Callable[[Any], str]) -> None:
    """``run`` on every item: all at once where ``live`` is parallel (each in an allocation of its own), else one after
    another while the budget lasts."""
    if live.parallel and len(items) > 1 and _budget_left(started, plan):
        say(f"{doing.format(len(items))} at once, each in an allocation of its own")
        _at_once(items, run, live)
        return
    for item in items:
        if not _budget_left(started, plan):
            say(f"budget of {plan.max_minutes:g} minutes spent: {name(item)} not {undone}")
            break
        run(item)


def _at_once(items: list, run: Callable[[Any], None], live: Live) -> None:
    """Each item run in a thread of its own; an interrupt of the search stops them all (``live.abort``)."""
    with ThreadPoolExecutor(len(items), thread_name_prefix="tune") as pool:
        futures = [pool.submit(run, item) for item in items]
        try:
            pending = set(futures)
            while pending:  # a short wait at a time: the interrupt is raised here as soon as it comes
                _, pending = wait(pending, timeout=1.0)
            for f in futures:
                f.result()
        except BaseException:
            live.abort()
            raise


def checked_profile(profile: Profile, say: Say) -> Profile:
    """The profile, failed when the prefix cache served one of its measurements (the layouts it predicts left out)."""
    invalid = [f"{what}: {problem}" for what, rate in profile.cache_hit_rate.items() if (problem := cache_problem(rate))]
    if invalid and not profile.error:
        profile.error = "; ".join(invalid)
        say(f"  {profile.name}: {profile.error}")
    return profile


def measure_candidate(plan: Plan, live: Live, layout: Layout, predicted: int, store: Store, say: Say) -> None:
    """One layout deployed; the highest concurrency meeting the SLA found by bisection from the predicted one. Its
    record in ``store`` as it goes (points, where it ran, when it was ready and when torn down), ``done`` at the end."""
    record: dict[str, Any] = {"layout": layout.as_dict(), "mode": layout.mode, "gpus": layout.gpus, "points": {}}
    store.put(layout.id, record)
    try:
        with live.deploy(layout, plan.work) as deployed:
            store.put(layout.id, {**record, **deployed.facts, "ready_at": time.time()})

            def passes(c: int) -> bool:
                figures = deployed.measure(c)
                invalid = cache_problem(figures.get("cache_hit_rate"))
                met = sla_met(plan.sla, figures) and not invalid
                store.put_point(layout.id, str(c), {"figures": figures, "met": met, **({"invalid": invalid} if invalid else {})})
                say(f"  {layout.id} at concurrency {c}: {brief(figures)}: " + (invalid or f"SLA {'met' if met else 'missed'}"))
                if invalid:  # the bisection cannot go on from a point that measured something else
                    raise RuntimeError(f"concurrency {c}: {invalid}")
                return met
            best = highest_passing(passes, start=predicted, hi=max(plan.batches) * (layout.aggregated or layout.decode).instances)
        done_at = time.time()  # torn down (and its allocation released)
    except Exception as exc:  # a candidate that fails to deploy or measure is recorded; the search goes on
        error = f"{type(exc).__name__}: {exc}"
        store.put(layout.id, {**store.candidates[layout.id], "error": error, "done": True})
        say(f"  {layout.id} failed: {error}")
        return
    points = store.candidates[layout.id]["points"]
    store.put(layout.id, {**store.candidates[layout.id], "concurrency": best, "done": True, "done_at": done_at,
                          "figures": points[str(best)]["figures"] if best else {}})
