"""Reports: results.json (atomic, schema, baseline), SVG charts, and a whole run rendered by pytest-html.

The end-to-end tests run the REAL tests/test_inference.py in a pytester session against the real
router + sim workers; only the cluster bring-up is replaced by selftests/sim_cluster.py.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import pytest

from pytest_sglang_pd.bench.result import BenchResult, RequestRecord
from pytest_sglang_pd.report import charts, results

REPO = Path(__file__).resolve().parent.parent

# ------------------------------------------------------------------ unit


def _svg(text: str) -> ET.Element:
    root = ET.fromstring(text)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    return root


def test_histogram_is_valid_svg_with_one_bar_per_bin_and_markers() -> None:
    root = _svg(charts.histogram([10.0, 12.0, 12.5, 30.0], "TTFT distribution", bins=8))
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(f"{ns}rect")) == 8
    texts = [t.text for t in root.iter(f"{ns}text")]
    assert "TTFT distribution" in texts and any(t.startswith("mean ") for t in texts if t)
    assert "no data" in charts.histogram([], "empty")


def test_sweep_chart_labels_every_concurrency() -> None:
    root = _svg(charts.sweep([(64, 30.0, 900.0), (8, 10.0, 200.0)], "t", "mean TPOT (ms)", "output tok/s"))
    ns = "{http://www.w3.org/2000/svg}"
    assert len(root.findall(f"{ns}circle")) == 2
    assert {"c8", "c64"} <= {t.text for t in root.iter(f"{ns}text")}


def test_write_atomic_replaces_the_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "run" / "results.json"
    results.write_atomic(path, {"a": 1})
    results.write_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]
    with pytest.raises(ValueError):
        results.write_atomic(path, {"a": float("nan")})  # JSON has no NaN: refused, old file kept
    assert json.loads(path.read_text()) == {"a": 2} and len(list(path.parent.iterdir())) == 1


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


# ------------------------------------------------------------------ a whole run through pytest-html

CONFTEST = '''
import json, os, shutil, time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pytest_sglang_pd import config as config_mod, plan as plan_mod, report
from pytest_sglang_pd.plugin import SuiteRun, suite_run_key
from selftests.sim_cluster import sim_cluster


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    cfg = config_mod.load(os.environ["SELFTEST_CONFIG"])
    baseline = os.environ.get("SELFTEST_BASELINE")
    run = SuiteRun(cluster_config=cfg, results_root=Path(os.environ["SELFTEST_RESULTS"]),
                   run_id=os.environ["SELFTEST_RUN_ID"], keep_cluster=False, router_url=None,
                   perf_tolerance_pct=None, baseline=Path(baseline) if baseline else None)
    config.stash[suite_run_key] = run
    config.pluginmanager.register(run, "sglang_pd_run")
    report.configure(config)


@dataclass
class SimTarget:
    router_url: str
    deployment: object
    simulated: bool = True
    worker_urls: dict = field(default_factory=dict)
    log_files: dict = field(default_factory=dict)
    startup_seconds: dict = field(default_factory=dict)


@pytest.fixture(scope="session")
def suite_run(request):
    return request.config.stash[suite_run_key]


@pytest.fixture(scope="session")
def cluster_config(suite_run):
    return suite_run.cluster_config


@pytest.fixture(scope="session")
def model_under_test(request):
    return request.param


@pytest.fixture(scope="session")
def pd_cluster(suite_run, cluster_config, model_under_test):
    if os.environ.get("SELFTEST_BRINGUP_FAILS"):
        pytest.fail("prefill_0 on 127.0.0.1 exited with code 1 during start-up", pytrace=False)
    t0 = time.monotonic()
    extra = os.environ.get("SELFTEST_SIM_ARGS", "").split()
    with sim_cluster(1, 1, backend="mooncake", worker_args=["--sim-accuracy", "0.9", *extra]) as c:
        target = SimTarget(c.router_url, plan_mod.plan(cluster_config, model_under_test, run_id=suite_run.run_id),
                           worker_urls={"prefill": c.prefill_urls, "decode": c.decode_urls},
                           startup_seconds={"cluster": time.monotonic() - t0})
        suite_run.clusters.append(target)
        yield target
        for proc in c.procs:
            dest = suite_run.run_dir / "logs" / f"{proc.name}.log"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(proc.log_path, dest)
            target.log_files[proc.name] = dest
'''


def _config(tmp_path: Path, mean_tpot_ms: str) -> Path:
    """local-sim.json, smaller, with a concurrency sweep for bench_serv_random and the given TPOT limit."""
    raw = json.loads((REPO / "cluster_configs" / "local-sim.json").read_text())
    tests = raw["benchmark_params"]["llama-8b"]["inference_tests"]
    tests["gsm8k"]["num_questions"] = "24"
    tests["bench_serv_random"].update(num_prompts="24", input_length="128", output_length="16",
                                      max_concurrency=["4", "16"])
    tests["bench_serv_random"]["expected_results"]["auto"].update(mean_tpot_ms=mean_tpot_ms, output_throughput_per_sec="50")
    tests["generated_shared_prefix"].update(gsp_num_groups="2", gsp_prompts_per_group="4", gsp_system_prompt_len="256")
    tests["generated_shared_prefix"]["expected_results"]["auto"]["cache_hit_rate"] = "0.2"
    raw["config"]["sim"]["speedup"] = "20"
    path = tmp_path / "selftest-sim.json"
    path.write_text(json.dumps(raw))
    return path


def _run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, config: Path, run_id: str,
         *args: str, **env: str) -> pytest.RunResult:
    monkeypatch.setenv("SELFTEST_CONFIG", str(config))
    monkeypatch.setenv("SELFTEST_RESULTS", str(pytester.path / "reports"))
    monkeypatch.setenv("SELFTEST_RUN_ID", run_id)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    pytester.makeconftest(CONFTEST)
    (pytester.path / "test_inference.py").write_text((REPO / "tests" / "test_inference.py").read_text())
    return pytester.runpytest_subprocess("-p", "no:sglang_pd", "-p", "no:cacheprovider", "-rf",
                                         f"--junitxml={pytester.path / 'junit.xml'}", *args, timeout=300)


@pytest.mark.integration
def test_a_run_writes_report_html_results_json_and_junit_properties(pytester: pytest.Pytester,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    run = _run(pytester, monkeypatch, _config(tmp_path, mean_tpot_ms="0.01"), "run-one")
    run.assert_outcomes(passed=2, failed=2)
    out = run.stdout.str()
    # an impossible mean TPOT fails exactly the two bench_serv_random cases, with the one-line format
    assert "FAILED test_inference.py::test_inference[llama-8b-bench_serv_random-c4]" in out
    assert "FAILED test_inference.py::test_inference[llama-8b-bench_serv_random-c16]" in out
    assert "llama-8b-bench_serv_random-c4: 1 of 6 checks failed" in out
    assert "> 0.01 (expected 0.01, tolerance 0%)" in out  # e.g. "mean_tpot_ms 0.52 > 0.01 (...)"
    assert "llama-8b-bench_serv_random-c4: 24/24 requests" in out  # live progress

    run_dir = pytester.path / "reports" / "run-one"
    data = json.loads((run_dir / "results.json").read_text())
    results.validate(data)
    assert data["simulated"] is True and data["finished_at"]
    assert data["summary"] == {"passed": 2, "failed": 2, "error": 0, "skipped": 0}
    by_id = {t["id"]: t for t in data["tests"]}
    assert set(by_id) == {"llama-8b-gsm8k", "llama-8b-bench_serv_random-c4", "llama-8b-bench_serv_random-c16",
                          "llama-8b-generated_shared_prefix"}
    assert by_id["llama-8b-generated_shared_prefix"]["metrics"]["cache_hit_rate"] > 0
    assert by_id["llama-8b-gsm8k"]["metrics"]["accuracy"] >= 0.6
    failing = [v for v in by_id["llama-8b-bench_serv_random-c4"]["verdicts"] if not v["passed"]]
    assert [v["metric"] for v in failing] == ["mean_tpot_ms"]
    assert data["cluster"]["worker_versions"]  # asked the workers' /server_info

    html = (run_dir / "report.html").read_text()
    assert "SIMULATED" in html and "Inference tests" in html and "Concurrency sweeps" in html
    assert "<svg" in html and "TTFT distribution" in html
    assert "verdict-fail" in html and "verdict-pass" in html
    assert 'href=\\"logs/router.log\\"' in html or 'href="logs/router.log"' in html

    junit = ET.parse(pytester.path / "junit.xml")
    props = {(case.get("name"), p.get("name")): p.get("value")
             for case in junit.iter("testcase") for p in case.iter("property")}
    assert float(props[("test_inference[llama-8b-gsm8k]", "accuracy")]) >= 0.6
    assert props[("test_inference[llama-8b-bench_serv_random-c4]", "verdict.threshold.mean_tpot_ms")].startswith("fail: ")


@pytest.mark.integration
def test_a_baseline_regression_fails_a_run_whose_thresholds_pass(pytester: pytest.Pytester,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    config = _config(tmp_path, mean_tpot_ms="60")
    first = _run(pytester, monkeypatch, config, "before", "-k", "gsm8k")
    first.assert_outcomes(passed=1)
    baseline = pytester.path / "reports" / "before" / "results.json"
    second = _run(pytester, monkeypatch, config, "after", "-k", "gsm8k",
                  SELFTEST_BASELINE=str(baseline), SELFTEST_SIM_ARGS="--sim-fault slow=4")
    second.assert_outcomes(failed=1)
    out = second.stdout.str()
    assert "tokens_per_sec" in out and "(baseline " in out and "in run before, tolerance 0%)" in out
    data = json.loads((pytester.path / "reports" / "after" / "results.json").read_text())
    jsonschema.validate(data, json.loads(results.SCHEMA_PATH.read_text()))
    verdicts = data["tests"][0]["verdicts"]
    assert [v["source"] for v in verdicts if not v["passed"]] == ["baseline"]  # the absolute thresholds still pass


@pytest.mark.integration
def test_a_failed_bring_up_is_an_error_in_every_report(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    run = _run(pytester, monkeypatch, _config(tmp_path, mean_tpot_ms="60"), "broken", SELFTEST_BRINGUP_FAILS="1")
    run.assert_outcomes(errors=4)
    run_dir = pytester.path / "reports" / "broken"
    data = json.loads((run_dir / "results.json").read_text())
    results.validate(data)
    assert data["summary"]["error"] == 4 and {t["outcome"] for t in data["tests"]} == {"error"}
    assert all("prefill_0 on 127.0.0.1 exited with code 1" in t["message"] for t in data["tests"])
    html = (run_dir / "report.html").read_text()
    assert "prefill_0 on 127.0.0.1 exited with code 1 during start-up" in html and "SIMULATED" in html
