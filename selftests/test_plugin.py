"""The plugin as users meet it: ids, -k selection, sweeps, config errors at configure time, no config."""

from __future__ import annotations

import pytest

from selftests.configs import REPO, TEMPLATE, raw, write

pytestmark = pytest.mark.integration  # each test runs the suite in a pytest subprocess

SUITE = str(REPO / "pytest_sglang_pd" / "suite")


def collected(result) -> list[str]:
    return [line.strip() for line in result.outlines if "::" in line]


def test_ids_select_by_model_and_test(pytester: pytest.Pytester):
    result = pytester.runpytest_subprocess(SUITE, "--cluster-config=mi35x-example.json", "--collect-only", "-q")
    assert result.ret == 0, result.stdout.str()
    ids = collected(result)
    for model in ("llama-70b", "deepseek-r1"):
        for test in ("gsm8k", "bench_serv_random"):
            assert f"pytest_sglang_pd/suite/test_inference.py::test_inference[{model}-{test}]" in ids
    only = collected(pytester.runpytest_subprocess(SUITE, "--cluster-config=mi35x-example.json",
                                                   "--collect-only", "-q", "-k", "deepseek-r1"))
    assert only and all("deepseek-r1" in i for i in only)
    both = collected(pytester.runpytest_subprocess(SUITE, "--cluster-config=mi35x-example.json",
                                                   "--collect-only", "-q", "-k", "llama-70b and gsm8k"))
    assert both == ["pytest_sglang_pd/suite/test_inference.py::test_inference[llama-70b-gsm8k]"]


def test_one_models_tests_run_before_the_next_models_deployment(pytester: pytest.Pytester):
    ids = collected(pytester.runpytest_subprocess(SUITE, "--cluster-config=mi35x-example.json", "--collect-only", "-q"))
    models = [("deepseek-r1" if "deepseek-r1" in i else "llama-70b") for i in ids]
    assert models == sorted(models, key=["llama-70b", "deepseek-r1"].index), ids


def test_concurrency_sweep_is_one_case_per_value(pytester: pytest.Pytester, tmp_path):
    data = raw("local-sim.json")
    data["benchmark_params"]["llama-8b"]["inference_tests"]["bench_serv_random"]["max_concurrency"] = ["4", "16"]
    path = write(tmp_path, data)
    ids = collected(pytester.runpytest_subprocess(SUITE, f"--cluster-config={path}", "--collect-only", "-q", "-k", "random"))
    assert ids == ["pytest_sglang_pd/suite/test_inference.py::test_inference[llama-8b-bench_serv_random-c4]",
                   "pytest_sglang_pd/suite/test_inference.py::test_inference[llama-8b-bench_serv_random-c16]"]


def test_config_error_stops_at_configure_with_every_problem_and_exit_4(pytester: pytest.Pytester):
    result = pytester.runpytest_subprocess(SUITE, f"--cluster-config={TEMPLATE}", "--collect-only")
    assert result.ret == 4
    err = result.stderr.str()
    assert "13 problems" in err and "$.config.decode_coordinator_addr" in err and "$.config.prefill_node_list[1]" in err
    assert "Traceback" not in err + result.stdout.str()


def test_ini_option_names_the_config_relative_to_the_rootdir(pytester: pytest.Pytester):
    write(pytester.path, raw("mi35x-example.json"), "my-cluster.json")
    ini = pytester.makeini("[pytest]\ncluster_config = my-cluster.json\n")
    ids = collected(pytester.runpytest_subprocess(SUITE, "-c", str(ini), "--collect-only", "-q", "-k", "gsm8k"))
    assert [i.rsplit("::", 1)[1] for i in ids] == ["test_inference[llama-70b-gsm8k]", "test_inference[deepseek-r1-gsm8k]"]


def test_without_a_config_the_suite_errors_and_names_local_sim(pytester: pytest.Pytester):
    result = pytester.runpytest_subprocess(SUITE, "-q", "-k", "inference or workers")
    assert result.ret == 1
    out = result.stdout.str()
    assert "no-cluster-config" in out and "--cluster-config=local-sim.json" in out
    result.assert_outcomes(errors=2)


def test_collect_only_touches_no_node(pytester: pytest.Pytester, tmp_path):
    data = raw("mi35x-example.json")
    data["config"]["prefill_node_list"] = ["192.0.2.1", "192.0.2.2"]  # TEST-NET: nothing answers there
    path = write(tmp_path, data)
    result = pytester.runpytest_subprocess(SUITE, f"--cluster-config={path}", "--collect-only", "-q", timeout=60)
    assert result.ret == 0 and len(collected(result)) == 14  # 5 cluster + 2 inference tests per model
    assert not (pytester.path / "reports").exists()


def test_bad_perf_tolerance_is_a_usage_error(pytester: pytest.Pytester):
    result = pytester.runpytest_subprocess(SUITE, "--cluster-config=local-sim.json", "--perf-tolerance=lots", "--collect-only")
    assert result.ret == 4 and "--perf-tolerance expects a percentage" in result.stderr.str()


def test_xdist_without_router_url_is_refused(pytester: pytest.Pytester):
    """One cluster per xdist worker would collide on the nodes' ports: a usage error says what to do instead."""
    result = pytester.runpytest_subprocess(SUITE, "--cluster-config=local-sim.json", "-n", "2")
    assert result.ret == 4
    assert "--router-url" in result.stderr.str() and "sglang-pd up" in result.stderr.str()


def test_the_run_header_warns_of_keys_that_have_no_effect(pytester: pytest.Pytester):
    result = pytester.runpytest_subprocess(SUITE, "--cluster-config=mi35x-example.json", "--collect-only")
    header = [line for line in result.outlines if line.startswith("sglang-pd: warning: ")]
    assert header[0].startswith('sglang-pd: warning: $.benchmark_params["llama-70b"].inference_poll_iterations: '
                                "is read but has no effect: ") and "timeouts.benchmark_s" in header[0]


@pytest.mark.parametrize("where", ["/proc/sglang-reports", "below-a-file"])
def test_an_unusable_results_dir_is_a_usage_error_naming_it(pytester: pytest.Pytester, where):
    target = str(pytester.path / "a-file" / "reports") if where == "below-a-file" else where
    (pytester.path / "a-file").write_text("")
    result = pytester.runpytest_subprocess(SUITE, "--cluster-config=local-sim.json", "--results-dir", target,
                                           "--collect-only")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.errlines if line.startswith("ERROR:")]
    assert errors == [f"ERROR: --results-dir {target}: cannot be created or written "
                      f"({'Not a directory' if where == 'below-a-file' else 'No such file or directory'})"]
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


def test_a_selection_that_leaves_no_test_lists_the_configs_models_and_test_ids_and_writes_no_report(
        pytester: pytest.Pytester, tmp_path):
    results = tmp_path / "reports"
    result = pytester.runpytest_subprocess(SUITE, "--cluster-config=local-sim.json", "-k", "qwen-7b",
                                           f"--results-dir={results}", "--run-id=empty")
    assert result.ret == 5  # pytest's "no tests collected"
    out = result.stdout.str()
    assert "the selection left no test" in out and "models: llama-8b" in out
    assert "llama-8b-gsm8k, llama-8b-bench_serv_random, llama-8b-generated_shared_prefix" in out
    assert not (results / "empty").exists()  # no empty report.html, junit.xml or results.json


def test_a_missing_config_names_the_places_looked_in_and_the_nearest_name(pytester: pytest.Pytester):
    result = pytester.runpytest_subprocess(SUITE, "--cluster-config=local-simm.json", "--collect-only")
    assert result.ret == 4
    err = result.stderr.str()
    assert "no such config file; looked for " in err and "cluster_configs/local-simm.json" in err
    assert "did you mean " in err and "cluster_configs/local-sim.json?" in err
