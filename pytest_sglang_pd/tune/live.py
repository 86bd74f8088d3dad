"""``LiveTune``, the search's ``Live`` on the config's nodes: every deployment a ``LiveCluster`` of a derived config,
brought up and torn down inside its context; the builtin client measures, each time with prompts of a seed of its
own after the workers' caches are flushed."""

from __future__ import annotations

import itertools
import json
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Iterator

from .. import metrics as metrics_mod
from ..config import DISAGGREGATED
from .derived_configs import TEST, bench_test, candidate_config, worker_nodes
from .layouts import Layout, Shape
from .predict import PROFILE_ISL_FRACTIONS, Profile
from .search import Say
from .sla import Workload


Measure = Callable[[Any, int], dict]  # an inference test at a concurrency -> the figures measured


def unscale(figures: dict[str, float], speedup: float) -> dict[str, float]:
    """Figures of a simulator run at ``speedup`` in simulated time: times x speedup, rates / speedup."""
    out = {}
    for name, value in figures.items():
        unit = metrics_mod.METRICS[name].unit if name in metrics_mod.METRICS else \
            ("tok/s/GPU" if name == "output_throughput_per_gpu" else "")
        out[name] = value * speedup if unit in ("ms", "s") else value / speedup if "/s" in unit else value
    return out


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
        from .. import plan as plan_mod
        from ..cluster import LiveCluster, flush_caches

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
        from ..bench import run_benchmark
        from ..bench.figures import GPUs, gpus_of, with_figures, SLO
        from ..config import InferenceCase

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
