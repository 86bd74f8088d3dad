"""Thresholds and baselines -> verdicts, with one readable message per failing metric.

A threshold's limit is its expected value widened by the tolerance: ``expected * (1 + tol)`` for an
upper bound ("max", the ``*_ms`` latencies), ``expected * (1 - tol)`` for a lower bound ("min",
throughput, accuracy, cache hit rate). The tolerance is ``--perf-tolerance`` when given, else the
test's ``tolerance``, else 0. A baseline (an earlier results.json) turns each gated metric's earlier
value into one more limit with the same direction and the baseline tolerance (``--baseline-tolerance``,
default ``BASELINE_TOLERANCE_PCT``: identical reruns differ by several percent, so 0 would fail them), and
every other metric both runs measured becomes a ``Change``: a warning when it got worse beyond that tolerance.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Mapping

from . import metrics as metrics_mod
from .bench.result import TRUNCATED, BenchResult, truncated_count
from .config import InferenceCase, InferenceTest, Threshold
from .stats import SIGNIFICANCE, Summary, welch_p

BASELINE_TOLERANCE_PCT = 15.0


@dataclass(frozen=True)
class Verdict:
    metric: str  # as the user wrote it
    canonical: str
    actual: float | None  # None: not measured
    limit: float
    expected: float
    direction: str  # "max" | "min"
    tolerance_pct: float
    source: str  # "threshold" | "baseline" | "requests" | "pd" | "stability" | "lengths"
    passed: bool
    message: str  # the failure line, or a short "ok" line
    within_noise: bool = False  # with repeats: the limit lies inside the mean's 95% confidence interval


@dataclass(frozen=True)
class Change:
    """One metric both this run and the baseline measured: its change, and whether it is a warning."""

    metric: str  # canonical
    before: float
    after: float
    change_pct: float | None  # (after - before) / |before|, None when before is 0
    worse_pct: float | None  # how much worse in the metric's direction (negative: better); None: no direction
    gated: bool  # a threshold gates it (then a baseline verdict judges it)
    warned: bool  # ungated and worse than the baseline tolerance allows

    @property
    def message(self) -> str:
        change = "n/a" if self.change_pct is None else f"{self.change_pct:+.1f}%"
        return f"{self.metric} {_g4(self.before)} -> {_g4(self.after)} ({change})"


@dataclass(frozen=True)
class GateResult:
    case_id: str
    verdicts: tuple[Verdict, ...]
    changes: tuple[Change, ...] = ()  # against the baseline, every metric both runs measured

    @property
    def warnings(self) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.warned)

    @property
    def failures(self) -> tuple[Verdict, ...]:
        return tuple(v for v in self.verdicts if not v.passed)

    @property
    def passed(self) -> bool:
        return not self.failures

    def message(self) -> str:
        """Every failing metric, one per line, under a header naming the case."""
        fails = self.failures
        names = ", ".join(dict.fromkeys(v.metric + (" vs baseline" if v.source == "baseline" else "") for v in fails))
        head = f"{self.case_id}: {len(fails)} of {len(self.verdicts)} checks failed: {names}"
        return "\n".join([head, *(f"  {v.message}" for v in fails)])


@dataclass(frozen=True)
class Baseline:
    """An earlier run to compare with (--baseline): where it was read, its run id, its metrics per case id."""

    source: str
    run_id: str
    metrics: Mapping[str, Mapping[str, float]]
    runs: Mapping[str, list[Mapping[str, float]]] = dataclasses.field(default_factory=dict)  # case id -> repeats


def gate(case: InferenceCase, result: BenchResult, *, perf_tolerance_pct: float | None = None,
         baseline: Baseline | None = None, baseline_tolerance_pct: float | None = None) -> GateResult:
    """The verdicts of one case: its thresholds at the run's tolerance (--perf-tolerance, else the test's own),
    and the baseline's measurements of the same case id, at the baseline tolerance, when a baseline is given."""
    return evaluate(case.id, case.test, result, tol_pct=tolerance_pct(perf_tolerance_pct, case.test),
                    baseline=baseline.metrics.get(case.id) if baseline else None,
                    baseline_runs=baseline.runs.get(case.id, []) if baseline else [],
                    baseline_name=f"run {baseline.run_id}" if baseline else "baseline",
                    baseline_tol_pct=BASELINE_TOLERANCE_PCT if baseline_tolerance_pct is None else baseline_tolerance_pct)


def tolerance_pct(option_pct: float | None, test: InferenceTest) -> float:
    """--perf-tolerance wins, then the test's own tolerance, else 0."""
    if option_pct is not None:
        return option_pct
    return test.tolerance_pct if test.tolerance_pct is not None else 0.0


def limit_for(expected: float, direction: str, tol_pct: float) -> float:
    factor = 1 + tol_pct / 100 if direction == "max" else 1 - tol_pct / 100
    return expected * factor


def _fmt(x: float, digits: int) -> str:
    if abs(x) >= 10:
        return f"{x:.{digits}f}"
    text = f"{x:.{digits + 2}g}"
    return text if any(c in text for c in ".en") else f"{text}.0"


def _fmt_pair(actual: float, limit: float) -> tuple[str, str]:
    """Both numbers with one decimal (three significant digits below 10), more when they would print alike."""
    for digits in range(1, 7):
        a, b = _fmt(actual, digits), _fmt(limit, digits)
        if a != b:
            return a, b
    return repr(actual), repr(limit)


def _g(x: float) -> str:
    return f"{x:g}"


def _g4(x: float) -> str:
    return f"{x:.4g}" if abs(x) < 1e4 else f"{x:.0f}"


def change_pct(before: float, after: float) -> float | None:
    return None if before == 0 else (after - before) / abs(before) * 100


def check(metric: str, canonical: str, actual: float | None, expected: float, direction: str,
          tol_pct: float, *, source: str = "threshold", origin: str = "") -> Verdict:
    """One comparison; the failure message reads ``mean_tpot_ms 61.2 > 55.0 (expected 50, tolerance 10%)``
    (``baseline 50 in <origin>`` instead of ``expected 50`` for a baseline comparison)."""
    limit = limit_for(expected, direction, tol_pct)
    reference = f"expected {_g(expected)}"
    if source == "baseline":
        moved = change_pct(expected, actual) if actual is not None else None
        reference = f"baseline {_g4(expected)} in {origin}" + ("" if moved is None else f", {moved:+.1f}%")
    context = f"({reference}, tolerance {_g(tol_pct)}%)"
    if actual is None:
        return Verdict(metric, canonical, None, limit, expected, direction, tol_pct, source, False,
                       f"{metric} was not measured by this benchmark {context}")
    passed = actual <= limit if direction == "max" else actual >= limit
    a, b = _fmt_pair(actual, limit)
    if passed:
        op = "<=" if direction == "max" else ">="
    else:
        op = ">" if direction == "max" else "<"
    return Verdict(metric, canonical, actual, limit, expected, direction, tol_pct, source, passed,
                   f"{metric} {a} {op} {b} {context}")


def check_requests(result: BenchResult, allowed_failures: int) -> Verdict:
    """Fewer completed requests than sent fails unless the test allows that many failures."""
    failed = result.failed
    passed = failed <= allowed_failures
    first = f"; first error: {result.errors[0]}" if result.errors and failed else ""
    cut = truncated_count(result.records)
    cut_note = f" ({cut} of them {TRUNCATED}s: responses cut short mid-stream)" if cut else ""
    message = (f"failed requests {failed} of {result.num_requests} {'<=' if passed else '>'} allowed {allowed_failures}"
               f"{cut_note}{first}")
    return Verdict("failed", "failed", float(failed), float(allowed_failures), float(allowed_failures), "max", 0.0,
                   "requests", passed, message)


def check_pd(result: BenchResult, *, decode_alone: bool = False) -> list[Verdict]:
    """What fails a PD run whatever its limits (a failing verdict each, none when all is well): requests served with
    no KV transfer (a silent fallback to non-PD serving; a decode-alone test moves none by design), and requests left
    in the decode queues (they hold KV slots)."""
    out = []
    handoffs, leaks = result.metrics.get("kv_handoffs"), result.metrics.get("kv_queue_leaks")
    if handoffs == 0 and result.completed > 0 and not decode_alone:
        out.append(Verdict("kv_handoffs", "kv_handoffs", 0.0, 1.0, 1.0, "min", 0.0, "pd", False,
                           f"no KV transfer for {result.completed} completed requests (kv_handoffs 0): the cluster "
                           "served them without prefill -> decode, a silent fallback to non-PD serving"))
    if leaks:
        out.append(Verdict("kv_queue_leaks", "kv_queue_leaks", leaks, 0.0, 0.0, "max", 0.0, "pd", False,
                           f"{leaks:g} requests left in the decode prealloc / transfer queues after the benchmark "
                           "(a leak: they hold KV slots)"))
    return out


def evaluate(case_id: str, test: InferenceTest, result: BenchResult, *, tol_pct: float,
             baseline: Mapping[str, float] | None = None, baseline_name: str = "baseline",
             baseline_tol_pct: float = BASELINE_TOLERANCE_PCT,
             baseline_runs: list[Mapping[str, float]] = ()) -> GateResult:
    """All verdicts of one case: the request count, every threshold (on the mean of the repeats, marked within
    noise when the limit lies inside its confidence interval), the stability of each gated metric over the repeats
    (``max_cv_pct``), every baseline comparison (at the baseline tolerance, and significant by Welch's t-test when
    both runs have repeats), and the change of every metric both runs measured."""
    verdicts = [check_requests(result, test.allow_failed_requests), *check_pd(result, decode_alone=test.decode_alone),
                *check_lengths(test, result)]
    spread = result.spread
    for t in test.thresholds:
        verdicts.append(_noted(check(t.metric, t.canonical, result.metrics.get(t.canonical), t.value, t.direction,
                                     tol_pct), spread.get(t.canonical)))
    verdicts += stability_verdicts(test, spread)
    if not baseline:
        return GateResult(case_id, tuple(verdicts))
    verdicts += [_significant(v, result.runs, baseline_runs)
                 for v in baseline_verdicts(test.thresholds, result, baseline, baseline_tol_pct, baseline_name)]
    gated = {t.canonical for t in test.thresholds}
    return GateResult(case_id, tuple(verdicts), compare(result.metrics, baseline, gated, baseline_tol_pct))


def compare(after: Mapping[str, float], before: Mapping[str, float], gated: set[str],
            tol_pct: float) -> tuple[Change, ...]:
    """Every metric both runs measured, by name; an ungated one that got worse by more than ``tol_pct`` is warned."""
    out = []
    for name in sorted(set(after) & set(before)):
        a, b = after[name], before[name]
        if a is None or b is None or a != a or b != b:
            continue
        moved = change_pct(b, a)
        known = metrics_mod.METRICS.get(name)
        spread = name.startswith("std_")  # a spread has no better direction
        worse = None if moved is None or known is None or spread else (moved if known.direction == "max" else -moved)
        out.append(Change(name, b, a, moved, worse, name in gated,
                          name not in gated and worse is not None and worse > tol_pct))
    return tuple(out)


def baseline_verdicts(thresholds: tuple[Threshold, ...], result: BenchResult, baseline: Mapping[str, float],
                      tol_pct: float, baseline_name: str) -> list[Verdict]:
    """A regression check per gated metric that the baseline also measured (direction from the threshold)."""
    out = []
    seen = set()
    for t in thresholds:
        before = baseline.get(t.canonical)
        actual = result.metrics.get(t.canonical)
        if before is None or actual is None or t.canonical in seen:
            continue
        seen.add(t.canonical)
        out.append(check(t.metric, t.canonical, actual, before, t.direction, tol_pct,
                         source="baseline", origin=baseline_name))
    return out


def _ci(summary: Summary) -> str:
    return f"95% CI {_g4(summary.ci_low)}..{_g4(summary.ci_high)} over {summary.n} runs"


def _noted(v: Verdict, summary: Summary | None) -> Verdict:
    """A threshold verdict on a mean whose confidence interval holds the limit: said to be within noise."""
    if summary is None or not summary.contains(v.limit):
        return v
    return dataclasses.replace(v, within_noise=True, message=f"{v.message} (within noise: {_ci(summary)})")


def stability_verdicts(test: InferenceTest, spread: Mapping[str, Summary]) -> list[Verdict]:
    """Each gated metric whose coefficient of variation over the repeats exceeds the test's ``max_cv_pct``: unstable."""
    if test.max_cv_pct is None or not spread:
        return []
    out = []
    for name in dict.fromkeys(t.canonical for t in test.thresholds):
        summary = spread.get(name)
        if summary is None or summary.cv_pct is None:
            continue
        passed = summary.cv_pct <= test.max_cv_pct
        word = "stable" if passed else "unstable"
        out.append(Verdict(name, name, summary.cv_pct, test.max_cv_pct, test.max_cv_pct, "max", 0.0, "stability",
                           passed, f"{name} {word}: CV {summary.cv_pct:.1f}% {'<=' if passed else '>'} max_cv_pct "
                                   f"{_g(test.max_cv_pct)}% (mean {_g4(summary.mean)}, {_ci(summary)})"
                                   + ("" if passed else ": a verdict on it would be luck")))
    return out


def _significant(v: Verdict, runs: list[Mapping[str, float]], baseline_runs: list[Mapping[str, float]]) -> Verdict:
    """A baseline verdict beyond the tolerance stands only if the change is significant (Welch's t-test, p <
    SIGNIFICANCE) when both runs have repeats; otherwise it passes as noise."""
    after = [r[v.canonical] for r in runs if r.get(v.canonical) is not None]
    before = [r[v.canonical] for r in baseline_runs if r.get(v.canonical) is not None]
    p = welch_p(after, before)
    if p is None:
        return v
    note = f"Welch p={p:.3g}, {len(after)} vs {len(before)} runs"
    if v.passed or p < SIGNIFICANCE:
        return dataclasses.replace(v, message=f"{v.message} ({'significant: ' if not v.passed else ''}{note})")
    return dataclasses.replace(v, passed=True, within_noise=True,
                               message=f"{v.message}: not significant ({note}), within noise")


LENGTH_TOLERANCE_PCT = 5.0  # how far the mean length the server saw may be from the asked one (at 512+ requests)


def asked_lengths(test: InferenceTest) -> dict[str, tuple[int, int]]:
    """The (least, most) prompt and output tokens a bench test asks per request, where its dataset fixes them:
    random lengths are drawn in [max(int(L x random_range_ratio), 1), L], as bench_serving draws them."""
    if test.kind != "bench_serving":
        return {}
    if test.dataset == "generated-shared-prefix":
        prompt = test.gsp_system_prompt_len + test.gsp_question_len
        return {"prompt": (prompt, prompt), "output": (test.gsp_output_len, test.gsp_output_len)}
    if test.dataset in ("random", "random-ids", "synthetic"):
        r = test.random_range_ratio
        return {"prompt": (max(int(test.input_length * r), 1), test.input_length),
                "output": (max(int(test.output_length * r), 1), test.output_length)}
    return {}


def check_lengths(test: InferenceTest, result: BenchResult) -> list[Verdict]:
    """The prompt and output tokens the server reported against what the test asked: a mean more than
    LENGTH_TOLERANCE_PCT away from the asked mean, or requests outside the asked range (by more than that
    tolerance), make the measurement invalid (a failing verdict per side, naming the figures)."""
    ok = [r for r in result.records if r.success]
    out = []
    for side, (least, most) in asked_lengths(test).items():
        got = [r.prompt_tokens if side == "prompt" else r.output_tokens for r in ok]
        if not got or not any(got):
            continue  # the tool reported no lengths
        asked = (least + most) / 2
        mean = sum(got) / len(got)
        off = (mean - asked) / asked * 100
        # a few requests' mean strays from the range's by sampling alone: 3 standard errors of a uniform draw
        # (repeats send the same draw again: the draw has one repeat's requests)
        drawn = max(len(got) // max(len(result.runs), 1), 1)
        allowed = max(LENGTH_TOLERANCE_PCT, 3 * (most - least) / math.sqrt(12 * drawn) / asked * 100)
        slack = max(LENGTH_TOLERANCE_PCT / 100 * most, 2)
        outside = sum(1 for n in got if n < least - slack or n > most + slack)
        passed = abs(off) <= allowed and not outside
        span = f"{least}" if least == most else f"{least}..{most}"
        message = (f"{side} tokens the server reported: mean {mean:.1f} vs asked {asked:g} ({off:+.1f}%, allowed "
                   f"{allowed:.3g}%), min {min(got)}, max {max(got)}, {outside} of {len(got)} requests "
                   f"outside {span}")
        out.append(Verdict(f"{side}_tokens", f"{side}_tokens", mean, asked, asked, "max", allowed,
                           "lengths", passed, message if passed else f"invalid measurement: {message}"))
    return out
