"""``LiveTune``, the search's ``Live`` on the config's nodes: every deployment a ``LiveCluster`` of a derived config,
brought up and torn down inside its context; the builtin client measures, each time with prompts of a seed of its
own after the workers' caches are flushed."""

from __future__ import annotations

import itertools
import json
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

from ..plan import default_run_id
from .derived_configs import TEST, bench_test, candidate_config, own_allocations, worker_count
from .layouts import Layout, Shape, profile_layout
from .predict import PROFILE_ISL_FRACTIONS, Profile
from .search import Deployed, Say
from .sla import Workload


Measure = Callable[[Any, int], dict]  # an inference test at a concurrency -> the figures measured


def modelled_figures(result: Any, gpus: Any, speedup: float) -> dict[str, float]:
    """The search's figures of ``result`` in simulated time: a simulator run at ``speedup`` rescaled as the suite
    rescales a dilated one (``bench.result.undilate``), then its per-GPU, per-user and goodput figures."""
    from ..bench.figures import SLO, with_figures
    from ..bench.result import undilate

    figures = with_figures(undilate(result, 1 / speedup), gpus, SLO()).metrics
    figures["output_throughput_per_gpu"] = figures["output_throughput"] / gpus.total
    return {k: float(v) for k, v in figures.items() if isinstance(v, (int, float))}


class LiveTune:
    """The search's ``Live`` on the config's nodes: every deployment a ``LiveCluster`` of a derived config (written
    under ``results_dir/configs``), brought up and torn down inside its context; the builtin client measures. On
    Slurm each deployment is in an allocation of its own that the suite makes and releases, so the chosen candidates
    run at once (``parallel``) where the Slurm cluster has the nodes (the others wait in its queue); not so in an
    allocation the config names or the run is in, whose nodes every deployment would share."""

    def __init__(self, raw: dict, model_id: str, results_dir: Path, *, prompts_per_user: int = 4,
                 min_prompts: int = 8, say: Say = print):
        self.raw, self.model_id = raw, model_id
        self.results_dir, self.say = results_dir, say
        self.prompts_per_user, self.min_prompts = prompts_per_user, min_prompts
        self.parallel = own_allocations(raw)
        self._jobs: dict[str, str] = {}  # deployment -> the Slurm allocation it runs in, while it does
        self._search_id = default_run_id()  # in every run id: two searches never share logs, containers or jobs

    def abort(self) -> None:
        """Every allocation of a deployment under way cancelled: their processes end, their threads unwind."""
        from .. import slurm

        for name, job in list(self._jobs.items()):
            self.say(f"  {name}: cancelling allocation {job}")
            slurm.cancel(job)

    def _prompts(self, concurrency: int) -> int:
        return max(self.min_prompts, self.prompts_per_user * concurrency)

    @contextmanager
    def _cluster(self, name: str, layout: Layout, tests: dict[str, dict]) -> Iterator[tuple[Any, Measure, dict]]:
        """The deployment's loaded config, how it measures a test at a concurrency (each measurement with prompts of a
        seed of its own, since random prompts of one seed share their starts and a repeat would hit the prefix cache,
        after the workers' caches are flushed) and where it runs (on Slurm its allocation and nodes)."""
        from .. import plan as plan_mod
        from .. import slurm
        from ..cluster import LiveCluster
        from ..worker_http import flush_caches

        path = self.results_dir / "configs" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(candidate_config(self.raw, self.model_id, layout, tests), indent=2))
        run_id = f"tune-{self._search_id}-{name}"

        def tell(line: str, level: int) -> None:
            if level == 0:
                self.say(f"    {name}: {line}")
        with slurm.allocation(plan_mod.load_config(path), run_id, say=tell) as alloc:
            cfg = alloc.cfg
            facts = {"slurm_job": cfg.slurm.job_id, "slurm_nodes": ", ".join(cfg.slurm.node_names.values()),
                     "allocated_at": time.time()} if cfg.transport == "slurm" else {}
            if facts:
                self._jobs[name] = cfg.slurm.job_id
            try:
                with LiveCluster(cfg, plan_mod.plan(cfg, self.model_id, run_id=run_id),
                                 self.results_dir / "runs" / name, say=tell) as cluster:
                    cluster.bring_up()
                    seeds = itertools.count(1)

                    def measure(test: Any, concurrency: int) -> dict[str, float]:
                        for problem in flush_caches(cluster.worker_urls):
                            self.say(f"    {name}: cache not flushed: {problem}")
                        return self._run(cfg, cluster, replace(test, seed=next(seeds)), concurrency, name)
                    yield cfg, measure, facts
            finally:
                self._jobs.pop(name, None)

    def _run(self, cfg: Any, cluster: Any, test: Any, concurrency: int, name: str) -> dict[str, float]:
        from ..bench import run_benchmark
        from ..bench.figures import gpus_of
        from ..config import InferenceCase

        case = InferenceCase(cfg.model(self.model_id), test, concurrency)
        result = run_benchmark(cluster, case, timeout_s=cfg.timeouts.benchmark_s,
                               artifacts_dir=self.results_dir / "artifacts" / name)
        if result.completed < result.num_requests or not result.completed:
            raise RuntimeError(f"{case.id} at concurrency {concurrency}: {result.completed} of {result.num_requests} "
                               f"requests completed: {'; '.join(result.errors[:3])}")
        return modelled_figures(result, gpus_of(cluster.deployment), cfg.sim.speedup if cfg.simulated else 1.0)

    def profile(self, shape: Shape, work: Workload, batches: tuple[int, ...]) -> Profile:
        """A 1P1D of ``shape`` (both roles: TP, with DP attention where it has it): prefill alone at concurrency 1 per
        ISL, decode alone per batch."""
        nodes = worker_count(self.raw)
        gpus = int(self.raw["config"].get("gpus_per_node", 8))
        layout = profile_layout(shape, nodes)
        if shape.tp * (2 if nodes < 2 else 1) > gpus:
            return Profile(shape.tp, dpa=shape.dpa, error=f"a 1P1D at TP{shape.tp} does not fit {nodes} node(s) of "
                                                          f"{gpus} GPUs")
        isls = sorted({max(1, int(work.isl * f)) for f in PROFILE_ISL_FRACTIONS})
        tests = {f"prefill_isl{isl}": bench_test(Workload(isl, 2), 1, 3) for isl in isls}
        tests["decode_alone"] = bench_test(work, list(batches), self.min_prompts, mode="decode_alone")
        profile = Profile(shape.tp, dpa=shape.dpa)
        try:
            with self._cluster(f"profile-tp{shape.profile}", layout, tests) as (cfg, measure, _):
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
        except Exception as exc:  # its layouts are left out of the search, with why
            profile.error = f"{type(exc).__name__}: {exc}"
        self.say(f"  {profile.name}: TTFT {profile.ttft_ms} ms, ITL {profile.itl_ms} ms" + (f", {profile.error}" if profile.error else ""))
        return profile

    @contextmanager
    def deploy(self, layout: Layout, work: Workload) -> Iterator[Deployed]:
        with self._cluster(layout.id, layout, {TEST: bench_test(work, 1, self.min_prompts)}) as (cfg, measure, facts):
            test = cfg.model(self.model_id).tests[0]
            yield Deployed(lambda c: measure(replace(test, num_prompts=self._prompts(c), max_concurrency=(c,)), c), facts)


def _note_hit_rate(profile: Profile, what: str, figures: dict[str, float]) -> None:
    if "cache_hit_rate" in figures:
        profile.cache_hit_rate[what] = figures["cache_hit_rate"]
