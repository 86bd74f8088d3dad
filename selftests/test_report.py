"""Reports: results.json (atomic, schema, baseline), SVG charts, and a whole run rendered by pytest-html.

The end-to-end tests run the REAL tests/test_inference.py through the installed plugin in a pytest
subprocess, on a simulated cluster the plugin brings up (real router, sim workers), as users run it.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest

from pytest_sglang_pd.bench.result import BenchResult, RequestRecord
from pytest_sglang_pd.gating import GateResult, Verdict
from pytest_sglang_pd.report import charts, html, results
from selftests.browser import probe
from selftests.configs import REPO, sim_config

# ------------------------------------------------------------------ unit


NS = "{http://www.w3.org/2000/svg}"


def _svg(text: str) -> ET.Element:
    root = ET.fromstring(text)
    assert root.tag == f"{NS}svg" and not text.startswith("<?xml")  # inline: an element, no document prolog
    return root


def _texts(root: ET.Element) -> list[str]:
    return [t.text.strip() for t in root.iter(f"{NS}text") if t.text and t.text.strip()]


def test_histogram_is_inline_svg_with_one_bar_per_bin_and_the_mean_and_p99_named() -> None:
    root = _svg(charts.histogram([10.0, 12.0, 12.5, 30.0], "TTFT distribution", bins=8))
    bars = [g for g in root.iter(f"{NS}g") if g.get("id", "").startswith("bar-")]
    assert len(bars) == 8 and {"mean", "p99"} <= {g.get("id") for g in root.iter(f"{NS}g")}
    texts = _texts(root)
    assert "TTFT distribution" in texts and "mean 16.12 ms" in texts and "p99 29.47 ms" in texts
    assert "no data" in _texts(_svg(charts.histogram([], "empty")))


def test_sweep_chart_names_every_concurrency() -> None:
    root = _svg(charts.sweep([(64, 30.0, 900.0), (8, 10.0, 200.0)], "t", "mean TPOT (ms)", "output tok/s"))
    assert {"c8", "c64"} <= {g.get("id") for g in root.iter(f"{NS}g")} and {"c8", "c64"} <= set(_texts(root))


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("figure", [
    lambda: charts.histogram_figure(list(range(290, 300)) * 9 + [358, 359], "gsm8k TTFT distribution"),
    lambda: charts.histogram_figure([11.0] * 50 + [11.3], "bench TPOT distribution"),  # p99 beside the tallest bar
    lambda: charts.sweep_figure([(4, 5.2, 900.0), (16, 5.3, 3900.0), (64, 20.0, 4100.0)], "sweep", "ms", "tok/s"),
], ids=["mean-beside-p99", "p99-at-a-bar", "sweep"])
def test_no_label_overlaps_the_data_or_another_label(figure) -> None:
    """Drawn by matplotlib's own renderer: no text's box meets a bar, a marker or another text."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    fig = figure()
    FigureCanvasAgg(fig)
    fig.draw_without_rendering()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    data = [p.get_window_extent(renderer) for p in ax.patches] + \
           [c.get_window_extent(renderer) for c in ax.collections]
    texts = fig.findobj(lambda a: isinstance(a, Text) and a.get_text() and a.get_visible())
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts if t.get_window_extent(renderer).width > 0]
    for name, box in boxes:
        assert not any(_overlaps(box, d) for d in data if d.width > 0), f"label {name!r} covers the data"
    for i, (a, box_a) in enumerate(boxes):
        for b, box_b in boxes[i + 1:]:
            assert not _overlaps(box_a, box_b), f"labels {a!r} and {b!r} overlap"


def test_a_pd_path_verdict_is_rendered_with_its_source() -> None:
    v = Verdict("kv_handoffs", "kv_handoffs", 0.0, 1.0, 1.0, "min", 0.0, "pd", False, "no KV transfer")
    table = html.verdict_table(GateResult("llama-8b-gsm8k", (v,)))
    assert "PD path" in table and "verdict-fail" in table


def test_write_atomic_replaces_the_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "run" / "results.json"
    results.write_atomic(path, {"a": 1})
    results.write_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]
    with pytest.raises(ValueError):
        results.write_atomic(path, {"a": float("nan")})  # JSON has no NaN: refused, old file kept
    assert json.loads(path.read_text()) == {"a": 2} and len(list(path.parent.iterdir())) == 1
    beside = path.parent / "report.html"
    beside.write_text("x")
    assert path.stat().st_mode & 0o777 == beside.stat().st_mode & 0o777  # readable as the run's other files


def test_case_entry_turns_nan_into_null() -> None:
    result = BenchResult("builtin", {"completed": 1.0, "output_throughput": float("nan")}, 1,
                         records=[RequestRecord(True)])
    entry = results.case_entry(case_id="m-t", nodeid="n", model="m", test="t", kind="bench_serving",
                               dataset="random", concurrency=1, bench_client="builtin", result=result, gate=None,
                               outcome="passed", duration_s=1.0, message=None)
    assert entry["metrics"]["output_throughput"] is None


def test_a_baseline_that_is_not_a_results_file_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "results.json"
    bad.write_text(json.dumps({"run_id": "x"}))
    with pytest.raises(results.BaselineError, match="not a results.json of this suite"):
        results.load_baseline(bad)


# ------------------------------------------------------------------ a whole run through the plugin and pytest-html

INFERENCE_TESTS = str(REPO / "pytest_sglang_pd" / "suite" / "test_inference.py")


def _config(tmp_path: Path, mean_tpot_ms: str, **sim: object) -> Path:
    """local-sim.json on free ports, smaller, with a concurrency sweep for bench_serv_random and the given TPOT limit."""
    path = sim_config(tmp_path, sim={"speedup": "20", "accuracy": "0.9", **sim})
    raw = json.loads(path.read_text())
    tests = raw["benchmark_params"]["llama-8b"]["inference_tests"]
    tests["gsm8k"]["num_questions"] = "24"
    tests["bench_serv_random"].update(num_prompts="24", input_length="128", output_length="16",
                                      max_concurrency=["4", "16"])
    tests["bench_serv_random"]["expected_results"]["auto"].update(mean_tpot_ms=mean_tpot_ms, output_throughput_per_sec="50")
    tests["generated_shared_prefix"].update(gsp_num_groups="2", gsp_prompts_per_group="4", gsp_system_prompt_len="256")
    tests["generated_shared_prefix"]["expected_results"]["auto"]["cache_hit_rate"] = "0.2"
    path.write_text(json.dumps(raw))
    return path


def _run(pytester: pytest.Pytester, config: Path, run_id: str, *args: str) -> pytest.RunResult:
    """The REAL suite as users run it: tests/test_inference.py, the installed plugin, the simulated cluster."""
    return pytester.runpytest_subprocess(INFERENCE_TESTS, f"--cluster-config={config}",
                                         f"--results-dir={pytester.path / 'reports'}", f"--run-id={run_id}",
                                         "-p", "no:cacheprovider", "-rf", *args, timeout=300)


def _links(html: str, target: str) -> bool:
    return f'href=\\"{target}\\"' in html or f'href="{target}"' in html  # the HTML sits in pytest-html's JSON


@pytest.mark.integration
def test_a_run_writes_report_html_results_json_and_junit_properties(pytester: pytest.Pytester, tmp_path: Path) -> None:
    run = _run(pytester, _config(tmp_path, mean_tpot_ms="0.01"), "run-one")
    run.assert_outcomes(passed=2, failed=2)
    out = run.stdout.str()
    # an impossible mean TPOT fails exactly the two bench_serv_random cases, with the one-line format
    # the short summary appends " - <message>" when the terminal is wide enough (CI's is)
    failed = {line.split("::", 1)[1].split(" - ", 1)[0] for line in run.outlines if line.startswith("FAILED ")}
    assert failed == {"test_inference[llama-8b-bench_serv_random-c4]", "test_inference[llama-8b-bench_serv_random-c16]"}
    assert "llama-8b-bench_serv_random-c4: 1 of 8 checks failed" in out  # with the two length checks
    assert "> 0.01 (expected 0.01, tolerance 0%)" in out  # e.g. "mean_tpot_ms 0.52 > 0.01 (...)"
    assert "llama-8b-bench_serv_random-c4: 24/24 requests" in out  # live progress
    # the closing table: every gated metric against its limit, then what did not pass, then the files
    assert "sglang-pd: measured against the limits" in out
    row = next(line.split() for line in run.outlines if line.split()[:2] == ["bench_serv_random-c4", "mean_tpot_ms"])
    assert row[-4:-1] == ["0.01", "ms", row[-2]] and row[-1] == "FAIL" and row[-2].startswith("-")
    assert "not passed: llama-8b-bench_serv_random-c4 FAILED: mean_tpot_ms" in out
    assert "  report.html: " in out and "  results.json: " in out

    run_dir = pytester.path / "reports" / "run-one"
    data = json.loads((run_dir / "results.json").read_text())
    results.validate(data)
    assert data["simulated"] is True and data["finished_at"]
    assert data["summary"] == {"passed": 2, "failed": 2, "error": 0, "skipped": 0, "interrupted": 0}
    by_id = {t["id"]: t for t in data["tests"]}
    assert set(by_id) == {"llama-8b-gsm8k", "llama-8b-bench_serv_random-c4", "llama-8b-bench_serv_random-c16",
                          "llama-8b-generated_shared_prefix"}
    assert by_id["llama-8b-generated_shared_prefix"]["metrics"]["cache_hit_rate"] > 0
    assert by_id["llama-8b-gsm8k"]["metrics"]["accuracy"] >= 0.6
    failing = [v for v in by_id["llama-8b-bench_serv_random-c4"]["verdicts"] if not v["passed"]]
    assert [v["metric"] for v in failing] == ["mean_tpot_ms"]
    cluster = data["cluster"]  # the live layer's facts, collected once the cluster was ready
    assert set(cluster["worker_versions"]) == {"prefill", "decode"}  # what the workers' /server_info said
    assert cluster["router"] == "sglang-router 0.3.2" and all(t["router"] == "sglang-router 0.3.2" for t in data["tests"])
    assert {"prefill", "decode", "router"} <= set(cluster["startup_seconds"])
    assert cluster["router_url"].startswith("http://127.0.0.1:")
    assert cluster["runtime"] == "process" and cluster["image"] is None  # plain processes run no image
    assert [(p["key"], p["tp_size"], p["dp_size"], p["base_gpu_id"]) for p in cluster["layout"]["llama-8b"]] == [
        ("prefill_0", 1, 1, 0), ("decode_0", 1, 1, 1)]  # one node: the decode's GPU follows the prefill's
    assert not any(name.startswith(("dp_", "mean_dp_")) for t in data["tests"] for name in t["metrics"])  # no DP: none
    assert not any("dp" in w for t in data["tests"] for w in t["workers"].values())

    html = (run_dir / "report.html").read_text()
    assert "SIMULATED" in html and "Checks" in html and "Concurrency sweeps" in html
    assert "<h3>Layout</h3>" in html and "DP load of" not in html
    assert "<svg" in html and "TTFT distribution" in html and "<?xml" not in html  # inline, one file
    assert "verdict-fail" in html and "verdict-pass" in html
    assert _links(html, "logs/127.0.0.1/router-0.log") and _links(html, "logs/127.0.0.1/decode-0.log")
    assert {p.name: p.stat().st_mode & 0o777 for p in run_dir.glob("*.*")}["results.json"] == \
        (run_dir / "report.html").stat().st_mode & 0o777
    _the_first_screen_shows_the_verdict_and_the_failing_checks(run_dir)

    junit = ET.parse(run_dir / "junit.xml")  # the plugin's default beside report.html
    props = {(case.get("name"), p.get("name")): p.get("value")
             for case in junit.iter("testcase") for p in case.iter("property")}
    assert float(props[("test_inference[llama-8b-gsm8k]", "accuracy")]) >= 0.6
    assert props[("test_inference[llama-8b-bench_serv_random-c4]", "verdict.threshold.mean_tpot_ms")].startswith("fail: ")


def _the_first_screen_shows_the_verdict_and_the_failing_checks(run_dir: Path) -> None:
    """The failing run's report in headless Chromium at 1400 x 900, measured from the rendered page."""
    seen = probe(run_dir / "report.html")
    verdict, failing = seen["verdict"], seen["failing"]
    assert verdict["text"].startswith("FAIL") and "2 failed" in verdict["text"] and verdict["bottom"] <= 900
    assert failing["bottom"] <= 900, f"the failing checks end {failing['bottom']:.0f} px down"
    for case in ("llama-8b-bench_serv_random-c4", "llama-8b-bench_serv_random-c16"):
        assert case in failing["text"]
    assert "> 0.01 (expected 0.01, tolerance 0%)" in failing["text"]
    # every limit shown without expanding anything: the summary's checks table has each test's rows
    summary = seen["checks"][0]
    assert all(f"{case}\t" in summary for case in ("llama-8b-gsm8k", "llama-8b-generated_shared_prefix"))
    assert "<= 0.01 ms" in summary and ">= 50.0 tok/s" in summary
    # per-role logs one click away from each test (the Links column), and no link to a missing file
    shown = {(link["text"], link["href"]) for link in seen["links"] if link["shown"]}
    for role in ("prefill-0", "decode-0", "router-0"):
        assert (role, f"logs/127.0.0.1/{role}.log") in shown
    local = [link["href"] for link in seen["links"] if not re.match(r"[a-z]+:", link["href"])]
    assert local and all((run_dir / href.split("#")[0]).is_file() for href in local), local


@pytest.mark.integration
def test_a_baseline_regression_fails_a_run_whose_thresholds_pass(pytester: pytest.Pytester, tmp_path: Path) -> None:
    # at speedup 1 the modelled time dominates the run, so a 4 times slower model shows in its throughput
    first = _run(pytester, _config(tmp_path / "fast", mean_tpot_ms="60", speedup="1"), "before", "-k", "gsm8k")
    first.assert_outcomes(passed=1)
    baseline = pytester.path / "reports" / "before" / "results.json"
    slow = _config(tmp_path / "slow", mean_tpot_ms="60", speedup="1",
                   faults={"prefill": ["slow=4"], "decode": ["slow=4"]})
    second = _run(pytester, slow, "after", "-k", "gsm8k", f"--baseline={baseline}")
    second.assert_outcomes(failed=1)
    out = second.stdout.str()
    assert "tokens_per_sec" in out and "(baseline " in out and "in run before, -" in out and "tolerance 15%)" in out
    data = json.loads((pytester.path / "reports" / "after" / "results.json").read_text())
    jsonschema.validate(data, json.loads(results.SCHEMA_PATH.read_text()))
    assert data["baseline"] == str(baseline)
    verdicts = data["tests"][0]["verdicts"]
    assert [v["source"] for v in verdicts if not v["passed"]] == ["baseline"]  # the absolute thresholds still pass


@pytest.mark.integration
def test_a_failed_bring_up_is_an_error_in_every_report_with_the_logs_collected(pytester: pytest.Pytester,
                                                                              tmp_path: Path) -> None:
    config = _config(tmp_path, mean_tpot_ms="60")
    raw = json.loads(config.read_text())
    raw["benchmark_params"]["llama-8b"]["prefill_server_args"] = ["--sim-model-profile", "no-such-model"]
    config.write_text(json.dumps(raw))
    run = _run(pytester, config, "broken")
    run.assert_outcomes(errors=4)
    run_dir = pytester.path / "reports" / "broken"
    data = json.loads((run_dir / "results.json").read_text())
    results.validate(data)
    assert data["summary"]["error"] == 4 and {t["outcome"] for t in data["tests"]} == {"error"}
    assert all("prefill prefill_0 on node 127.0.0.1 exited with code" in t["message"] for t in data["tests"])
    assert data["cluster"]["worker_versions"] == {}  # never ready: nobody asked the workers
    html = (run_dir / "report.html").read_text()
    assert "prefill prefill_0 on node 127.0.0.1 exited with code" in html and "SIMULATED" in html
    assert _links(html, "logs/127.0.0.1/prefill-0.log")  # the log collected when the bring-up failed
    assert not _links(html, "logs/127.0.0.1/router-0.log")  # never started: no link to a log that is not there


def _archive(history: Path, data: dict, run_id: str, finished_at: str, **changes) -> Path:
    """An earlier run in a history folder (as a Jenkins job archives them): a real run's results.json, altered."""
    run = json.loads(json.dumps(data))
    run.update(run_id=run_id, finished_at=finished_at, **changes)
    path = history / "archive" / run_id / "results.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(run))
    return path


@pytest.mark.integration
def test_baseline_auto_picks_the_last_green_run_of_the_same_provenance_key(pytester: pytest.Pytester,
                                                                          tmp_path: Path) -> None:
    config = _config(tmp_path, mean_tpot_ms="60")
    history = pytester.path / "reports"
    first = _run(pytester, config, "first", "-k", "generated_shared_prefix", "-q")
    first.assert_outcomes(passed=1)
    assert "bring-up:" not in first.stdout.str() and "sglang-pd: measured against the limits" in first.stdout.str()
    data = json.loads((history / "first" / "results.json").read_text())
    prov, (gsp,) = data["provenance"], data["tests"]
    # the green run of this key to pick: it completed 1/0.6 x the requests (ungated and exact: a 40% drop, a warning)
    # at a quarter of the TTFT (gated: a regression), on another python (what changed, beside the regression)
    better = {**gsp, "metrics": {**gsp["metrics"], "completed": gsp["metrics"]["completed"] / 0.6,
                                 "mean_ttft_ms": gsp["metrics"]["mean_ttft_ms"] / 4}}
    picked = _archive(history, data, "good", "2030-01-01T00:00:00Z", tests=[better],
                      provenance={**prov, "python": "3.10.0"})
    _archive(history, data, "failed-later", "2031-01-01T00:00:00Z",
             summary={**data["summary"], "passed": 0, "failed": 1})  # same key, not green
    _archive(history, data, "other-key", "2032-01-01T00:00:00Z",
             provenance={**prov, "sglang": "prefill 0.4.0", "key": "another"})  # green, latest, another key

    second = _run(pytester, config, "second", "-k", "generated_shared_prefix", "--baseline=auto",
                  f"--history={history}", "-v")
    second.assert_outcomes(failed=1)
    out = second.stdout.str()
    assert "  prefill_0 on 127.0.0.1, pid " in out and "  decode_0 healthy after " in out  # -v: per process
    assert f"--baseline auto: run good ({picked}), the last green run of provenance key {prov['key']}" in out
    assert "WARNING llama-8b-generated_shared_prefix: completed 13.33 -> 8 (-40.0%), worse than the baseline by more " \
           "than 15%" in out
    assert "mean_ttft_ms vs baseline" in out  # the failing check, named in the closing lines

    run_dir = history / "second"
    result = json.loads((run_dir / "results.json").read_text())
    results.validate(result)
    assert result["baseline"] == str(picked) and result["provenance"]["key"] == prov["key"]
    warned = {c["metric"]: c for c in result["tests"][0]["baseline_changes"] if c["warned"]}
    assert warned["completed"]["change_pct"] == pytest.approx(-40.0) and not warned["completed"]["gated"]
    junit = ET.parse(run_dir / "junit.xml")
    props = {p.get("name"): p.get("value") for p in junit.iter("property")}
    assert props["warning.baseline.completed"] == "completed 13.33 -> 8 (-40.0%), worse than the baseline by more than 15%"

    seen = probe(run_dir / "report.html")
    assert "warning(s): ungated metrics worse than the baseline" in seen["warnings"]["text"]  # at the top
    assert "warning: llama-8b-generated_shared_prefix: completed 13.33 -> 8 (-40.0%), worse than the baseline by " \
           "more than 15%" in seen["warnings_listed"]
    # the trend of each gated metric over the runs of this key: first, good, failed-later, this run (not other-key)
    rows = [line.split("\t") for line in seen["trend"][0].splitlines()]
    ttft = next(r for r in rows if r[:2] == ["llama-8b-generated_shared_prefix", "mean_ttft_ms"])
    assert ttft[-1].strip() == "4" and ttft[-2].count("→") == 3
    # beside the regression: what changed between the baseline run's provenance and this run's
    changed = seen["provenance"]
    assert changed["text"].startswith("changed since the baseline run good") and "3.10.0" in changed["text"]
    assert changed["top"] < seen["failing"]["bottom"] + 200
