"""The report's words and numbers: per-metric formats and the closing table of the terminal."""

from __future__ import annotations

from dataclasses import asdict

from pytest_sglang_pd import gating
from pytest_sglang_pd.report import fmt, terminal


def test_numbers_are_formatted_per_metric() -> None:
    assert fmt.value("cache_hit_rate", 0.8681) == "86.8%"
    assert fmt.value("cache_hit_rate", 0.006497) == "0.65%"  # the same unit as its neighbour, never 0.006497
    assert fmt.value("mean_ttft_ms", 294.12) == "294.1 ms" and fmt.value("mean_tpot_ms", 5.234) == "5.23 ms"
    assert fmt.value("output_throughput", 1970.84) == "1,970.8 tok/s"
    assert fmt.value("kv_transfer_bytes", 3 * 2 ** 30) == "3.00 GiB"
    assert fmt.value("completed", 64.0) == "64" and fmt.value("accuracy", None) == "-"
    assert fmt.pct(12.34) == "+12.3%" and fmt.pct(None) == "-"


def _entry(test_id: str, verdicts, outcome: str = "passed", changes=(), message=None) -> dict:
    return {"id": test_id, "model": "llama-8b", "outcome": outcome, "message": message,
            "verdicts": [asdict(v) for v in verdicts], "baseline_changes": [asdict(c) for c in changes]}


def test_the_closing_table_has_value_limit_margin_verdict_and_baseline_change() -> None:
    tput = gating.check("tokens_per_sec", "output_throughput", 500.0, 400.0, "min", 0)
    tpot = gating.check("mean_tpot_ms", "mean_tpot_ms", 61.2, 50.0, "max", 10)
    regress = gating.check("tokens_per_sec", "output_throughput", 500.0, 1000.0, "min", 15, source="baseline",
                           origin="run before")
    change = gating.Change("output_throughput", 1000.0, 500.0, -50.0, 50.0, True, False)
    tests = [_entry("llama-8b-gsm8k", [tput, regress], "failed", [change]),
             _entry("llama-8b-bench_serv_random", [tpot], "failed"),
             _entry("llama-8b-generated_shared_prefix", [], "error", message="prefill prefill_0 exited with code 1\n...")]
    lines = [line for line, _ in terminal.table(tests)]
    assert lines[0].split() == ["test", "metric", "value", "limit", "margin", "verdict", "vs", "baseline"]
    assert lines[1] == "llama-8b"
    assert lines[2].split() == ["gsm8k", "tokens_per_sec", "500.0", "tok/s", ">=", "400.0", "tok/s", "+25.0%",
                                "FAIL", "vs", "baseline", "-50.0%"]
    assert lines[3].split() == ["bench_serv_random", "mean_tpot_ms", "61.2", "ms", "<=", "55.0", "ms", "-11.3%", "FAIL"]
    assert "ERROR" in lines[4] and "prefill prefill_0 exited with code 1" in lines[4]
    assert [failed for _, failed in terminal.table(tests)] == [False, False, True, True, True]
    assert len({len(line) for line in lines[2:4]}) <= 2  # aligned columns (only the last may be shorter)
    assert "vs baseline" not in terminal.table(tests[1:])[0][0]  # no baseline, no empty column
    assert terminal.failing(tests) == ["llama-8b-gsm8k FAILED: tokens_per_sec vs baseline",
                                       "llama-8b-bench_serv_random FAILED: mean_tpot_ms",
                                       "llama-8b-generated_shared_prefix ERROR: prefill prefill_0 exited with code 1"]


def test_an_ungated_drop_beyond_the_baseline_tolerance_is_a_warning_with_its_percentage() -> None:
    drop = gating.Change("output_throughput", 1000.0, 600.0, -40.0, 40.0, False, True)
    ok = gating.Change("mean_ttft_ms", 100.0, 90.0, -10.0, -10.0, False, False)
    tests = [_entry("llama-8b-generated_shared_prefix", [], changes=[drop, ok])]
    assert terminal.warnings(tests, 15) == [
        "llama-8b-generated_shared_prefix: output_throughput 1,000.0 tok/s -> 600.0 tok/s (-40.0%), "
        "worse than the baseline by more than 15%"]
