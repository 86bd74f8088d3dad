"""`sglang-pd tune`: the search for the best layout under an SLA (candidates -> profiles -> predictions -> deploy ->
bisect), as Dynamo's profile_sla does it: measure each TP size once, predict every layout, deploy only the best few.

The pure parts (no process started, tested in the quick tier): ``parse_sla``, ``enumerate_layouts``,
``predict``, ``highest_passing``, ``candidate_config`` and ``search`` over a ``Live`` (what the search needs of
a cluster). ``LiveTune`` is that ``Live`` on real (or simulated) nodes: every deployment a ``LiveCluster`` from a
config derived from the user's, torn down before the next. The model behind ``predict`` is in docs/tune.md.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import math
import re
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator, Protocol

from . import metrics as metrics_mod
from .config import AGGREGATED, DISAGGREGATED, ROLES

DEFAULT_BATCHES = (1, 4, 16, 64)  # decode-alone batch sizes profiled per TP
PROFILE_ISL_FRACTIONS = (0.5, 1.0)  # prefill profiled at these fractions of the ISL (TTFT fitted as a line)
RESULTS_FILE = "tune.json"
WINNER_FILE = "winner.json"
REPORT_FILE = "tune.html"
TEST = "tune"  # the inference test of every derived config
MAX_CACHE_HIT_RATE = 0.05  # above it a measurement timed the prefix cache, not the prefill of fresh prompts
MEASUREMENT = "fresh prompts per point, caches flushed"  # in the search's key: older results measured cached prompts


# ------------------------------------------------------------------------------------------------ the SLA
class TuneError(ValueError):
    """A bad search request (the SLA, the layout space): what is wrong and the value."""


@dataclass(frozen=True)
class Constraint:
    """One term of the SLA: ``metric op limit`` over the canonical metric names of metrics.py."""

    written: str  # the name as the user wrote it (an alias such as user_tok_s)
    metric: str
    op: str  # ">=" or "<="
    limit: float

    def met(self, figures: dict[str, float]) -> bool | None:
        """Whether ``figures`` meet it; None when they hold no value for its metric."""
        value = figures.get(self.metric)
        if value is None or value != value:
            return None
        return value >= self.limit if self.op == ">=" else value <= self.limit

    def __str__(self) -> str:
        return f"{self.written}{self.op}{self.limit:g}"


_TERM = re.compile(r"^\s*([A-Za-z0-9_]+)\s*(>=|<=)\s*([-+0-9.eE]+)\s*$")


def parse_sla(text: str) -> tuple[Constraint, ...]:
    """``"user_tok_s>=50,ttft_ms<=2000"`` -> constraints; the operator must agree with the metric's direction."""
    terms = [t for t in text.split(",") if t.strip()]
    if not terms:
        raise TuneError(f"--sla {text!r}: no term; write e.g. \"user_tok_s>=50,ttft_ms<=2000\"")
    out = []
    for term in terms:
        m = _TERM.match(term)
        if not m:
            raise TuneError(f"--sla term {term.strip()!r}: not of the form NAME>=LIMIT or NAME<=LIMIT")
        name, op, number = m.groups()
        metric = metrics_mod.canonical(name)
        if metric is None:
            raise TuneError(f"--sla term {term.strip()!r}: unknown metric {name!r} (known: ttft_ms, tpot_ms, itl_ms, "
                            "user_tok_s, tok_s_per_gpu, interactivity, and every name of docs/config-keys.md's metrics)")
        try:
            limit = float(number)
        except ValueError:
            raise TuneError(f"--sla term {term.strip()!r}: {number!r} is not a number") from None
        wanted = ">=" if metrics_mod.METRICS[metric].direction == "min" else "<="
        if op != wanted:
            bound = "a lower bound (higher is better)" if wanted == ">=" else "an upper bound (lower is better)"
            raise TuneError(f"--sla term {term.strip()!r}: {name} is {bound}: write {name}{wanted}{number}")
        out.append(Constraint(name, metric, op, limit))
    return tuple(out)


def sla_met(sla: tuple[Constraint, ...], figures: dict[str, float]) -> bool:
    """Every term met; a term whose metric is missing from ``figures`` counts as not met."""
    return all(c.met(figures) for c in sla)


# ------------------------------------------------------------------------------------------------ layouts
@dataclass(frozen=True)
class Shape:
    """One role's instances: ``instances_per_node`` x TP (x DP replicas) on each of ``nodes`` nodes."""

    tp: int
    instances_per_node: int
    nodes: int
    dp: int = 1

    @property
    def gpus_per_node(self) -> int:
        return self.tp * self.instances_per_node * self.dp

    @property
    def instances(self) -> int:
        """Serving engines of the role (a DP replica counts as one)."""
        return self.instances_per_node * self.nodes * self.dp

    @property
    def gpus(self) -> int:
        return self.gpus_per_node * self.nodes

    def label(self) -> str:
        dp = f"dp{self.dp}" if self.dp > 1 else ""
        return f"{self.instances_per_node * self.nodes}xtp{self.tp}{dp}"


@dataclass(frozen=True)
class Layout:
    """A candidate: prefill and decode shapes (disaggregated, ``shared``: on the same nodes) or one aggregated."""

    mode: str
    prefill: Shape | None = None
    decode: Shape | None = None
    aggregated: Shape | None = None
    shared: bool = False

    @property
    def id(self) -> str:
        if self.mode == AGGREGATED:
            return f"agg-{self.aggregated.label()}"
        return f"p{self.prefill.label()}-d{self.decode.label()}" + ("-shared" if self.shared else "")

    @property
    def gpus(self) -> int:
        return sum(s.gpus for s in (self.prefill, self.decode, self.aggregated) if s)

    @property
    def tps(self) -> tuple[int, ...]:
        return tuple(sorted({s.tp for s in (self.prefill, self.decode, self.aggregated) if s}))

    def as_dict(self) -> dict:
        return {"id": self.id, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> Layout:
        return cls(mode=d["mode"], shared=d.get("shared", False),
                   **{r: Shape(**d[r]) for r in (*ROLES, AGGREGATED) if d.get(r)})


@dataclass(frozen=True)
class Exclusion:
    what: str
    why: str


def _per_node_shapes(tps: tuple[int, ...], gpus: int, nodes: int, role: str,
                     excluded: list[Exclusion]) -> list[Shape]:
    """The shapes that fill a node's GPUs exactly; the others named with why they do not fit."""
    out = []
    for tp in tps:
        if tp > gpus:
            excluded.append(Exclusion(f"{role} TP{tp}", f"TP{tp} spans nodes of {gpus} GPUs (the multi_node layout is "
                                      "not searched)"))
            continue
        for ipn in range(1, gpus // tp + 2):
            need = ipn * tp
            if need == gpus:
                out.append(Shape(tp, ipn, nodes))
            elif need > gpus:
                excluded.append(Exclusion(f"{role} {ipn}xTP{tp} per node", f"needs {need} GPUs, gpus_per_node is {gpus}"))
            elif ipn == gpus // tp - 1:  # the largest that leaves GPUs idle (the smaller ones leave more)
                excluded.append(Exclusion(f"{role} {ipn}xTP{tp} per node (and fewer)",
                                          f"leaves {gpus - need} of {gpus} GPUs idle: layouts that do are not searched"))
    return out


def enumerate_layouts(nodes: int, gpus_per_node: int, tps: tuple[int, ...], *,
                      aggregated_dp: bool = False) -> tuple[list[Layout], list[Exclusion]]:
    """Every layout that fills ``nodes`` nodes of ``gpus_per_node`` GPUs: disaggregated with the nodes split between
    the roles (k prefill nodes, the rest decode; on one node both roles share it, GPUs split between them) and
    aggregated (instances x TP per node; with ``aggregated_dp`` one instance of TP x DP replicas per node too)."""
    excluded: list[Exclusion] = []
    layouts: list[Layout] = []
    if nodes >= 2:
        for k in range(1, nodes):
            for p in _per_node_shapes(tps, gpus_per_node, k, "a role's", excluded):
                for d in _per_node_shapes(tps, gpus_per_node, nodes - k, "decode", []):
                    layouts.append(Layout(DISAGGREGATED, prefill=p, decode=d))
    else:
        for tp_p in tps:
            for tp_d in tps:
                for ipn_p in range(1, gpus_per_node // tp_p + 1):
                    rest = gpus_per_node - ipn_p * tp_p
                    if rest and rest % tp_d == 0:
                        layouts.append(Layout(DISAGGREGATED, prefill=Shape(tp_p, ipn_p, 1),
                                              decode=Shape(tp_d, rest // tp_d, 1), shared=True))
        excluded.append(Exclusion("disaggregated on separate nodes", "one worker node: prefill and decode share it"))
    for s in _per_node_shapes(tps, gpus_per_node, nodes, "aggregated", []):
        layouts.append(Layout(AGGREGATED, aggregated=s))
        if aggregated_dp and s.instances_per_node > 1:
            layouts.append(Layout(AGGREGATED, aggregated=Shape(s.tp, 1, nodes, dp=s.instances_per_node)))
    return layouts, excluded


# ------------------------------------------------------------------------------------------------ profiles and predictions
@dataclass
class Profile:
    """One TP size measured alone: TTFT (ms) against ISL at concurrency 1, ITL (ms) against decode batch."""

    tp: int
    ttft_ms: dict[int, float] = field(default_factory=dict)
    itl_ms: dict[int, float] = field(default_factory=dict)
    error: str | None = None
    cache_hit_rate: dict[str, float] = field(default_factory=dict)  # per measurement ("prefill ISL 1500", ...)

    def ttft_at(self, isl: int) -> float:
        """TTFT on the line through the two measured ISLs nearest ``isl`` (one point: proportional to ISL)."""
        return _interpolate(self.ttft_ms, isl, through_origin=True)

    def itl_at(self, batch: float) -> float:
        """ITL interpolated linearly between the measured batches, extended along the last two beyond them."""
        return _interpolate(self.itl_ms, max(batch, 1.0), through_origin=False)

    @classmethod
    def from_dict(cls, d: dict) -> Profile:
        return cls(d["tp"], {int(k): v for k, v in d["ttft_ms"].items()}, {int(k): v for k, v in d["itl_ms"].items()},
                   d.get("error"), d.get("cache_hit_rate", {}))


def cache_problem(hit_rate: float | None) -> str | None:
    """Why a measurement whose prompts the workers' prefix cache served is invalid; None when it is not."""
    if hit_rate is None or hit_rate != hit_rate or hit_rate <= MAX_CACHE_HIT_RATE:
        return None
    return (f"invalid measurement: cache_hit_rate {hit_rate:.3f} above {MAX_CACHE_HIT_RATE:g} (the workers' prefix "
            "cache served that share of the prompt tokens, so it timed cached prompts, not fresh ones)")


def _interpolate(points: dict[int, float], x: float, *, through_origin: bool) -> float:
    xs = sorted(points)
    if len(xs) == 1:
        return points[xs[0]] * x / xs[0] if through_origin else points[xs[0]]
    lo, hi = (xs[0], xs[1]) if x <= xs[0] else (xs[-2], xs[-1]) if x >= xs[-1] else \
        next((a, b) for a, b in zip(xs, xs[1:]) if a <= x <= b)
    y = points[lo] + (points[hi] - points[lo]) * (x - lo) / (hi - lo)
    return max(y, min(points.values()) if not through_origin else 0.0)


@dataclass(frozen=True)
class Workload:
    isl: int
    osl: int


def _queued(service_ms: float, rho: float, others: float) -> float:
    """The service plus a wait: M/D/1's rho / (2 (1 - rho)) services, at most the ``others`` services a closed loop
    can hold ahead of a request (its C - 1 other requests shared over the prefill instances)."""
    rho = min(rho, 0.99)
    return service_ms * (1.0 + min(rho / (2.0 * (1.0 - rho)), others))


def predict(layout: Layout, profiles: dict[int, Profile], work: Workload, concurrency: int) -> dict[str, float]:
    """The figures a layout should reach at ``concurrency`` in-flight requests, from the profiles (docs/tune.md).
    Prefill capacity = prefill instances / TTFT_p(ISL); ITL = ITL_d(C / decoding instances). The request rate
    X = C / (TTFT + (OSL - 1) x ITL) where TTFT is TTFT_p(ISL) plus an M/D/1 wait at utilisation X0 / capacity (X0:
    the rate without any wait), and never below what Little's law leaves once the prefills saturate
    (C / capacity - (OSL - 1) x ITL). Aggregated: each instance prefills and decodes in one batch, so its decode
    steps stretch by 1 / (1 - the share of time it prefills), X / capacity, found by fixed-point iteration."""
    shape = layout.aggregated or layout.decode
    prefill = layout.aggregated or layout.prefill
    ttft0 = profiles[prefill.tp].ttft_at(work.isl)
    itl0 = profiles[shape.tp].itl_at(concurrency / shape.instances)
    capacity = prefill.instances / ttft0  # requests per ms
    share, itl, ttft = 0.0, itl0, ttft0
    for _ in range(1 if layout.mode == DISAGGREGATED else 40):
        itl = itl0 / (1.0 - share)
        decode_ms = (work.osl - 1) * itl
        ttft = max(_queued(ttft0, concurrency / (ttft0 + decode_ms) / capacity,
                           (concurrency - 1) / prefill.instances),
                   concurrency / capacity - decode_ms)
        share = 0.5 * share + 0.5 * min(concurrency / (ttft + decode_ms) / capacity, 0.9)
    latency_ms = ttft + (work.osl - 1) * itl
    rate_s = concurrency / latency_ms * 1000.0
    out_tok_s = rate_s * work.osl
    return {"mean_ttft_ms": ttft, "mean_itl_ms": itl, "mean_tpot_ms": itl, "mean_e2e_latency_ms": latency_ms,
            "request_throughput": rate_s, "output_throughput": out_tok_s,
            "total_throughput": rate_s * (work.isl + work.osl),
            "total_throughput_per_gpu": rate_s * (work.isl + work.osl) / layout.gpus,
            "output_throughput_per_gpu": out_tok_s / layout.gpus,
            "user_output_throughput": work.osl / latency_ms * 1000.0, "interactivity": 1000.0 / itl}


def highest_passing(measure: Callable[[int], bool], *, start: int = 1, hi: int = 1024,
                    tolerance: float = 0.1) -> int | None:
    """The highest concurrency in [1, hi] that ``measure`` passes, assuming it passes below some value and fails
    above: doubles up from ``start`` while it passes (halves down while it fails), then bisects until the gap is
    within ``tolerance`` of the passing value. None: even 1 fails."""
    start = max(1, min(start, hi))
    if measure(start):
        good, bad = start, None
        while bad is None and good < hi:
            step = min(good * 2, hi)
            if measure(step):
                good = step
            else:
                bad = step
        if bad is None:
            return good
    else:
        bad, good = start, None
        while good is None and bad > 1:
            step = max(bad // 2, 1)
            if measure(step):
                good = step
            else:
                bad = step
        if good is None:
            return None
    while bad - good > max(1, int(good * tolerance)):
        mid = (good + bad) // 2
        if measure(mid):
            good = mid
        else:
            bad = mid
    return good


def predicted_best(layout: Layout, profiles: dict[int, Profile], work: Workload, sla: tuple[Constraint, ...],
                   max_batch: int) -> tuple[int | None, dict[str, float]]:
    """The highest concurrency the prediction says meets the SLA (at most ``max_batch`` per decoding instance: the
    profiles say nothing beyond) and the figures predicted there."""
    shape = layout.aggregated or layout.decode
    best = highest_passing(lambda c: sla_met(sla, predict(layout, profiles, work, c)),
                           hi=max_batch * shape.instances, tolerance=0.0)
    return best, (predict(layout, profiles, work, best) if best else {})


# ------------------------------------------------------------------------------------------------ derived configs
def worker_nodes(raw: dict) -> list[str]:
    """The distinct worker nodes of a config, prefill list first."""
    c = raw["config"]
    return list(dict.fromkeys([*c.get("prefill_node_list", []), *c.get("decode_node_list", [])]))


def _section(shape: Shape) -> dict:
    return {"tensor_parallelism": str(shape.tp), "instances_per_node": str(shape.instances_per_node),
            **({"dp_size": str(shape.dp)} if shape.dp > 1 else {})}


_LAYOUT_KEYS = ("mode", "prefill", "decode", "aggregated", "dp_size", "dp_attention", "inference_tests")


def candidate_config(raw: dict, model_id: str, layout: Layout, tests: dict[str, dict]) -> dict:
    """The user's config with only ``model_id``, laid out as ``layout`` (its own layout keys replaced: mode, role
    sections, dp_size, dp_attention) and running ``tests``; disaggregated on separate nodes: the first nodes
    prefill, the rest decode."""
    out = copy.deepcopy(raw)
    nodes = worker_nodes(raw)
    model = {k: v for k, v in out["benchmark_params"][model_id].items() if k not in _LAYOUT_KEYS}
    c = out["config"]
    if layout.mode == AGGREGATED:
        model.update(mode=AGGREGATED, tensor_parallelism=str(layout.aggregated.tp),
                     aggregated=_section(layout.aggregated))
        mine = nodes[:layout.aggregated.nodes]  # aggregated workers run on both lists' nodes, each once
        c["prefill_node_list"], c["decode_node_list"] = (mine, mine) if len(mine) == 1 else \
            (mine[:len(mine) // 2], mine[len(mine) // 2:])
    else:
        model.update(mode=DISAGGREGATED, tensor_parallelism=str(layout.decode.tp), prefill=_section(layout.prefill),
                     decode=_section(layout.decode))
        k = layout.prefill.nodes
        c["prefill_node_list"], c["decode_node_list"] = (nodes[:1], nodes[:1]) if layout.shared else \
            (nodes[:k], nodes[k:k + layout.decode.nodes])
    c["nnodes"] = str(len(c["prefill_node_list"]) + len(c["decode_node_list"]))
    model["inference_tests"] = tests
    out["benchmark_params"] = {model_id: model}
    return out


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
    return candidate_config(raw, model_id, layout, {TEST: test})


def planned(raw: dict, model_id: str, layouts: list[Layout], work: Workload) -> tuple[list[tuple[Layout, str]],
                                                                                      list[Exclusion]]:
    """Each layout's config planned as a deployment would be (no process started): (layout, where its instances
    run) for those the config checks and the plan accept, an exclusion naming the problem for the others."""
    from . import config as config_mod
    from . import plan as plan_mod

    ok, excluded = [], []
    for lay in layouts:
        try:
            cfg = config_mod.from_dict(candidate_config(raw, model_id, lay, {TEST: bench_test(work, 1, 8)}),
                                       source=lay.id, checks=(plan_mod.plan_problems,))
        except config_mod.ConfigError as exc:
            excluded.append(Exclusion(lay.id, "; ".join(map(str, exc.problems[:2]))))
            continue
        dep = plan_mod.plan(cfg, model_id, run_id="RUN_ID")
        where = "; ".join(f"{role} {dep.model.layout(role).describe()} on "
                          f"{', '.join(dict.fromkeys(p.node for p in dep.role(role)))}" for role in dep.worker_roles)
        ok.append((lay, where))
    return ok, excluded


# ------------------------------------------------------------------------------------------------ the search
class Live(Protocol):
    """What the search needs of a cluster: a TP size profiled, a layout deployed and measured at a concurrency."""

    def profile(self, tp: int, work: Workload, batches: tuple[int, ...]) -> Profile: ...

    def deploy(self, layout: Layout, work: Workload) -> ContextManager[Callable[[int], dict[str, float]]]: ...


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

    @property
    def tps(self) -> tuple[int, ...]:
        return tuple(sorted({tp for lay in self.layouts for tp in lay.tps}))

    @property
    def key(self) -> dict:
        """What a stored result must match to be reused."""
        return {"model": self.model, "isl": self.work.isl, "osl": self.work.osl, "sla": [str(c) for c in self.sla],
                "batches": list(self.batches), "measurement": MEASUREMENT}

    def text(self) -> str:
        lines = [f"model {self.model}: ISL {self.work.isl}, OSL {self.work.osl}, SLA {', '.join(map(str, self.sla))}",
                 f"  profiles (once per TP): TP {', '.join(map(str, self.tps))}: prefill alone (1P1D, concurrency 1, "
                 f"ISL x {', '.join(f'{f:g}' for f in PROFILE_ISL_FRACTIONS)}), decode alone at batches "
                 f"{', '.join(map(str, self.batches))}",
                 f"  then deploy the best {self.deploy_disaggregated} disaggregated and {self.deploy_aggregated} "
                 f"aggregated predicted (at most {self.max_candidates}, "
                 f"{'no time limit' if math.isinf(self.max_minutes) else f'within {self.max_minutes:g} minutes'}), "
                 "each bisected for the highest concurrency that meets the SLA",
                 f"  {len(self.layouts)} candidate layouts:"]
        lines += [f"    {lay.id}: {lay.mode}, {lay.gpus} GPUs" + (f": {self.placements[lay.id]}" if lay.id in
                                                                  self.placements else "") for lay in self.layouts]
        lines.append(f"  {len(self.excluded)} excluded:")
        lines += [f"    {e.what}: {e.why}" for e in self.excluded]
        return "\n".join(lines)


class Store:
    """The search's results as they come, in one JSON file: an interrupted search resumes from it."""

    def __init__(self, path: Path, key: dict):
        self.path = path
        data = json.loads(path.read_text()) if path.exists() else {}
        self.data = data if data.get("key") == key else {"key": key}
        self.data.setdefault("profiles", {})
        self.data.setdefault("candidates", {})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True))
        tmp.replace(self.path)

    @property
    def profiles(self) -> dict[str, dict]:
        return self.data["profiles"]

    @property
    def candidates(self) -> dict[str, dict]:
        return self.data["candidates"]


Say = Callable[[str], None]
Measure = Callable[[Any, int], dict]  # an inference test at a concurrency -> the figures measured


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


def rank(plan: Plan, profiles: dict[int, Profile]) -> list[dict]:
    """Every layout's prediction at its best concurrency under the SLA, best output tok/s per GPU first; layouts whose
    TPs were not profiled, or which cannot meet the SLA at any concurrency, last with why."""
    out = []
    for lay in plan.layouts:
        entry: dict[str, Any] = {"id": lay.id, "mode": lay.mode, "gpus": lay.gpus, "layout": lay.as_dict()}
        missing = [f"TP{tp} " + (f"profile failed: {profiles[tp].error}" if tp in profiles else "not profiled")
                   for tp in lay.tps if tp not in profiles or profiles[tp].error]
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
                say(f"  {layout.id} at concurrency {c}: {_brief(figures)}: " + (invalid or f"SLA {'met' if met else 'missed'}"))
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


def _brief(figures: dict[str, float]) -> str:
    names = (("output_throughput_per_gpu", "tok/s/GPU"), ("user_output_throughput", "tok/s/user"),
             ("mean_ttft_ms", "ms TTFT"), ("mean_itl_ms", "ms ITL"))
    return ", ".join(f"{figures[n]:.1f} {u}" for n, u in names if n in figures)


def best_of(data: dict, mode: str) -> tuple[str, dict] | None:
    """The measured candidate of ``mode`` with the highest output tok/s per GPU under the SLA."""
    found = [(cid, r) for cid, r in data["candidates"].items()
             if r.get("mode") == mode and r.get("figures", {}).get("output_throughput_per_gpu")]
    return max(found, key=lambda kv: kv[1]["figures"]["output_throughput_per_gpu"], default=None)


def unscale(figures: dict[str, float], speedup: float) -> dict[str, float]:
    """Figures of a simulator run at ``speedup`` in simulated time: times x speedup, rates / speedup."""
    out = {}
    for name, value in figures.items():
        unit = metrics_mod.METRICS[name].unit if name in metrics_mod.METRICS else \
            ("tok/s/GPU" if name == "output_throughput_per_gpu" else "")
        out[name] = value * speedup if unit in ("ms", "s") else value / speedup if "/s" in unit else value
    return out


# ------------------------------------------------------------------------------------------------ on the nodes
class LiveTune:
    """The search's ``Live`` on the config's nodes: every deployment a ``LiveCluster`` of a derived config (written
    under ``results_dir/configs``), brought up and torn down inside its context; the builtin client measures."""

    def __init__(self, raw: dict, model_id: str, results_dir: Path, *, prompts_per_user: int = 4,
                 min_prompts: int = 8, say: Say = print):
        self.raw, self.model_id = raw, model_id
        self.results_dir, self.say = results_dir, say
        self.prompts_per_user, self.min_prompts = prompts_per_user, min_prompts

    def _prompts(self, concurrency: int) -> int:
        return max(self.min_prompts, self.prompts_per_user * concurrency)

    @contextmanager
    def _cluster(self, name: str, layout: Layout, tests: dict[str, dict]) -> Iterator[tuple[Any, Measure]]:
        """The deployment's loaded config and how it measures a test at a concurrency: each measurement with prompts
        of a seed of its own (random prompts of one seed share their starts, so a repeat would hit the prefix cache),
        after the workers' caches are flushed."""
        from . import plan as plan_mod
        from .cluster import LiveCluster, flush_caches

        path = self.results_dir / "configs" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(candidate_config(self.raw, self.model_id, layout, tests), indent=2))
        cfg = plan_mod.load_config(path)
        dep = plan_mod.plan(cfg, self.model_id, run_id=f"tune-{name}")
        with LiveCluster(cfg, dep, self.results_dir / "runs" / name,
                         say=lambda line, level: self.say(f"    {line}") if level == 0 else None) as cluster:
            cluster.bring_up()
            seeds = itertools.count(1)

            def measure(test: Any, concurrency: int) -> dict[str, float]:
                for problem in flush_caches(cluster.worker_urls):
                    self.say(f"    cache not flushed: {problem}")
                return self._run(cfg, cluster, replace(test, seed=next(seeds)), concurrency)
            yield cfg, measure

    def _run(self, cfg: Any, cluster: Any, test: Any, concurrency: int) -> dict[str, float]:
        from .bench import run_benchmark
        from .bench.figures import GPUs, gpus_of, with_figures, SLO
        from .config import InferenceCase

        case = InferenceCase(cfg.model(self.model_id), test, concurrency)
        result = run_benchmark(cluster, case, timeout_s=cfg.timeouts.benchmark_s,
                               artifacts_dir=self.results_dir / "artifacts")
        if result.completed < result.num_requests or not result.completed:
            raise RuntimeError(f"{case.id} at concurrency {concurrency}: {result.completed} of {result.num_requests} "
                               f"requests completed: {'; '.join(result.errors[:3])}")
        gpus: GPUs = gpus_of(cluster.deployment)
        figures = with_figures(result, gpus, SLO()).metrics
        figures["output_throughput_per_gpu"] = figures["output_throughput"] / gpus.total
        return unscale({k: float(v) for k, v in figures.items() if isinstance(v, (int, float))},
                       cfg.sim.speedup if cfg.simulated else 1.0)

    def profile(self, tp: int, work: Workload, batches: tuple[int, ...]) -> Profile:
        """A 1P1D at TP ``tp`` (both roles): prefill alone at concurrency 1 per ISL, decode alone per batch."""
        nodes = len(worker_nodes(self.raw))
        gpus = int(self.raw["config"].get("gpus_per_node", 8))
        shape = Shape(tp, 1, 1)
        layout = Layout(DISAGGREGATED, prefill=shape, decode=shape, shared=nodes < 2)
        if tp * (2 if nodes < 2 else 1) > gpus:
            return Profile(tp, error=f"a 1P1D at TP{tp} does not fit {nodes} node(s) of {gpus} GPUs")
        isls = sorted({max(1, int(work.isl * f)) for f in PROFILE_ISL_FRACTIONS})
        tests = {f"prefill_isl{isl}": bench_test(Workload(isl, 2), 1, 3) for isl in isls}
        tests["decode_alone"] = bench_test(work, list(batches), self.min_prompts, mode="decode_alone")
        profile = Profile(tp)
        try:
            with self._cluster(f"profile-tp{tp}", layout, tests) as (cfg, measure):
                for test in cfg.model(self.model_id).tests:
                    if test.decode_alone:
                        for b in batches:
                            run = replace(test, num_prompts=max(self.min_prompts, 2 * b), max_concurrency=(b,))
                            figures = measure(run, b)
                            profile.itl_ms[b] = figures["mean_itl_ms"]
                            _note_hit_rate(profile, f"decode batch {b}", figures)
                    else:
                        figures = measure(test, 1)
                        profile.ttft_ms[test.input_length] = figures["mean_ttft_ms"]
                        _note_hit_rate(profile, f"prefill ISL {test.input_length}", figures)
        except Exception as exc:  # the TP is left out of the search, with why
            profile.error = f"{type(exc).__name__}: {exc}"
        self.say(f"  TP{tp}: TTFT {profile.ttft_ms} ms, ITL {profile.itl_ms} ms" + (f", {profile.error}" if profile.error else ""))
        return profile

    @contextmanager
    def deploy(self, layout: Layout, work: Workload) -> Iterator[Callable[[int], dict[str, float]]]:
        with self._cluster(layout.id, layout, {TEST: bench_test(work, 1, self.min_prompts)}) as (cfg, measure):
            test = cfg.model(self.model_id).tests[0]
            yield lambda c: measure(replace(test, num_prompts=self._prompts(c), max_concurrency=(c,)), c)


def _note_hit_rate(profile: Profile, what: str, figures: dict[str, float]) -> None:
    if "cache_hit_rate" in figures:
        profile.cache_hit_rate[what] = figures["cache_hit_rate"]


# ------------------------------------------------------------------------------------------------ the outcome
def ratio(data: dict) -> float | None:
    """Best disaggregated over best aggregated output tok/s per GPU (both under the SLA)."""
    dis, agg = best_of(data, DISAGGREGATED), best_of(data, AGGREGATED)
    if not dis or not agg:
        return None
    return dis[1]["figures"]["output_throughput_per_gpu"] / agg[1]["figures"]["output_throughput_per_gpu"]


def summary(data: dict) -> str:
    """The best of each mode and their ratio, in one paragraph."""
    lines = []
    for mode in (DISAGGREGATED, AGGREGATED):
        best = best_of(data, mode)
        lines.append(f"best {mode}: " + (f"{best[0]} at concurrency {best[1]['concurrency']}: "
                                         f"{_brief(best[1]['figures'])}" if best else "none met the SLA"))
    r = ratio(data)
    if r is not None:
        lines.append(f"disaggregated / aggregated, output tok/s per GPU under the SLA: {r:.2f}x")
    return "\n".join(lines)


def table_rows(data: dict) -> list[list[str]]:
    """Per candidate: mode, GPUs, predicted and measured concurrency, tok/s/GPU, tok/s/user, TTFT, ITL."""
    def num(figs: dict, name: str) -> str:
        return f"{figs[name]:.1f}" if name in figs else "-"

    rows = []
    for e in data.get("predictions", []):
        m = data["candidates"].get(e["id"], {})
        p, f = e.get("predicted", {}), m.get("figures", {})
        rows.append([e["id"], e["mode"], str(e["gpus"]), str(e.get("concurrency") or "-"),
                     num(p, "output_throughput_per_gpu"), num(p, "user_output_throughput"),
                     str(m.get("concurrency") or "-") if m else "not deployed",
                     num(f, "output_throughput_per_gpu"), num(f, "user_output_throughput"), num(f, "mean_ttft_ms"),
                     num(f, "mean_itl_ms"), m.get("error") or e.get("why", "")])
    return rows


TABLE_HEADER = ["layout", "mode", "GPUs", "predicted c", "predicted tok/s/GPU", "predicted tok/s/user", "measured c",
                "tok/s/GPU", "tok/s/user", "TTFT ms", "ITL ms", "note"]


def report_html(plan: Plan, data: dict, simulated: bool) -> str:
    """The search as one HTML page: the summary, the Pareto chart of every measured point, the table, exclusions."""
    from html import escape

    from .report import charts

    series = {cid: [(p["figures"]["user_output_throughput"], p["figures"]["output_throughput_per_gpu"])
                    for p in r["points"].values() if "user_output_throughput" in p["figures"]]
              for cid, r in data["candidates"].items() if r.get("points")}
    chart = charts.pareto(series, "output tok/s per GPU against tok/s per user", "tok/s/user (output tokens / "
                          "request latency)", "output tok/s/GPU")
    head = "".join(f"<th>{escape(h)}</th>" for h in TABLE_HEADER)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in table_rows(data))
    excluded = "".join(f"<li>{escape(e.what)}: {escape(e.why)}</li>" for e in plan.excluded)
    banner = "<p><b>SIMULATED: every figure comes from the simulator's performance model.</b></p>" if simulated else ""
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>sglang-pd tune {escape(plan.model)}</title>"
            "<style>table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:3px 8px}"
            "th{background:#f0f0f0}</style></head><body>"
            f"<h2>sglang-pd tune: {escape(plan.model)}, ISL {plan.work.isl}, OSL {plan.work.osl}, SLA "
            f"{escape(', '.join(map(str, plan.sla)))}</h2>{banner}<pre>{escape(summary(data))}</pre>{chart}"
            f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            f"<h3>Excluded layouts</h3><ul>{excluded}</ul></body></html>")


def finish(plan: Plan, data: dict, raw: dict, results_dir: Path, *, prompts_per_user: int, simulated: bool) -> Path | None:
    """The report, and the winner (the best measured under the SLA, any mode) as a cluster config; its path."""
    (results_dir / REPORT_FILE).write_text(report_html(plan, data, simulated))
    winners = [b for b in (best_of(data, DISAGGREGATED), best_of(data, AGGREGATED)) if b]
    if not winners:
        return None
    _, best = max(winners, key=lambda kv: kv[1]["figures"]["output_throughput_per_gpu"])
    c = best["concurrency"]
    path = results_dir / WINNER_FILE
    path.write_text(json.dumps(winner_config(raw, plan.model, Layout.from_dict(best["layout"]), plan.work, plan.sla,
                                             c, max(8, prompts_per_user * c)), indent=2) + "\n")
    return path


# ------------------------------------------------------------------------------------------------ both faces
def prepare(cfg: Any, model_id: str, work: Workload, sla: tuple[Constraint, ...], *, tps: tuple[int, ...] | None = None,
            aggregated_dp: bool = False, **budget: Any) -> tuple[Plan, dict]:
    """The search's plan for a loaded config (and the config's raw form the candidates are derived from): the layouts
    of its worker nodes, each planned; ``budget``: Plan's batches, deploy_* and max_* fields."""
    from . import config as config_mod

    if cfg.transport == "slurm":
        raise TuneError("$.config.transport: slurm is not searched yet (each candidate would need its own "
                        "allocation); name the allocation's nodes in a config of transport ssh or local")
    raw = config_mod.parse_text(Path(cfg.source).read_text(), cfg.source)
    tps = tps or tuple(2 ** i for i in range(8) if 2 ** i <= cfg.gpus_per_node)
    layouts, excluded = enumerate_layouts(len(worker_nodes(raw)), cfg.gpus_per_node, tps, aggregated_dp=aggregated_dp)
    placed, refused = planned(raw, model_id, layouts, work)
    return Plan(model_id, work, sla, [lay for lay, _ in placed], excluded + refused,
                placements={lay.id: where for lay, where in placed}, **budget), raw


def run(plan: Plan, raw: dict, cfg: Any, results_dir: Path, *, prompts_per_user: int = 4,
        say: Say = print) -> tuple[dict, Path | None]:
    """The search on the config's nodes, resumed from ``results_dir``; its results and the winner config's path."""
    store = Store(results_dir / RESULTS_FILE, plan.key)
    live = LiveTune(raw, plan.model, results_dir, prompts_per_user=prompts_per_user, say=say)
    data = search(plan, live, store, say=say)
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
    p.add_argument("--batches", type=_ints, default=DEFAULT_BATCHES, help="decode-alone batch sizes profiled (1,4,16,64)")
    p.add_argument("--prompts-per-user", type=int, default=4, help="requests per concurrency slot of a measurement")
    p.add_argument("--results-dir", help="results (resumed from), report, winner config (default: reports/tune; "
                                         "under pytest: the run's folder/tune)")


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: not a comma list of whole numbers") from None


def plan_of(cfg: Any, args: Any) -> tuple[Plan, dict]:
    """``prepare`` from parsed ``add_arguments`` options (the SLA parsed: a TuneError names a bad term)."""
    return prepare(cfg, args.model or cfg.model_ids[0], Workload(args.isl, args.osl), parse_sla(args.sla), tps=args.tp,
                   aggregated_dp=args.aggregated_dp, batches=args.batches, deploy_disaggregated=args.deploy_disaggregated,
                   deploy_aggregated=args.deploy_aggregated, max_candidates=args.max_candidates,
                   max_minutes=args.max_minutes)
