"""A model in mode decode_alone (seed pd_dp_usage_mooncake.md's benchmark mode): decode workers only, on the `fake`
transfer backend, no prefill, no router; every test sends its requests straight to the first decode worker with the
fake bootstrap host. The plan (golden and rules), the config's rules, the real 0.5.23 parser on its decode argv, and
the shipped local-sim-decode-alone.json run as users run it, its decode batch observed at 1024."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import requests

from pytest_sglang_pd import cli, config, plan
from selftests.configs import REPO, assert_plan_golden, raw, sim_config
from selftests.live import running_batch_peak
from selftests.test_release_commands import parse_with_real_sglang

pytest_plugins = ["pytester"]


def decode_alone_data() -> dict:
    """The reference config (real sglang, docker, mooncake) with every model decode alone: its bench_serving test at
    batch 1024 through SGLang's bench_serving, gsm8k left out (it needs a prefill)."""
    data = raw("mi35x-example.json")
    data["config"]["bench_client"] = "sglang"
    for m in data["benchmark_params"].values():
        m["mode"] = "decode_alone"
        tests = m["inference_tests"]
        tests.pop("gsm8k")
        tests["bench_serv_random"].update(max_concurrency="1024", num_prompts="1024")
    return data


def test_decode_alone_plan_matches_golden():
    assert_plan_golden(config.from_dict(decode_alone_data(), user="sgl"), "decode-alone-mi35x.json")


def test_decode_alone_plans_fake_decodes_only_and_benchmarks_the_first_decode():
    """No prefill, no router, no KV env, NIC flag or transfer precheck; decode on `fake`; bench_serving straight to
    decode_0 with --fake-prefill; the deployment's URL is that decode's."""
    cfg = config.from_dict(decode_alone_data(), user="sgl")
    dep = plan.plan(cfg, "llama-70b", run_id="r")
    assert dep.decode_alone and not dep.moves_kv and not dep.has_router and dep.worker_roles == ("decode",)
    assert {p.role for p in dep.processes} == {"decode"} and dep.kv_backend == "fake"
    for w in dep.role("decode"):
        argv = w.argv
        assert argv[argv.index("--disaggregation-mode") + 1] == "decode"
        assert argv[argv.index("--disaggregation-transfer-backend") + 1] == "fake"
        assert "--disaggregation-ib-device" not in argv and not w.nics and w.bootstrap_port is None
        assert not {"MC_GID_INDEX", "MOONCAKE_PROTOCOL", "MC_FORCE_TCP"} & set(w.env)
    assert not [c for c in dep.prechecks if c.kind in ("kv_transfer", "nic_map", "hugepages", "nic")]
    first = dep.servers("decode")[0]
    assert dep.router_url == first.url and dep.entry == first
    (bench,) = dep.bench
    assert bench.argv[bench.argv.index("--host") + 1] == first.host
    assert bench.argv[bench.argv.index("--port") + 1] == str(first.port)
    assert bench.argv[-1] == "--fake-prefill" and bench.argv[bench.argv.index("--max-concurrency") + 1] == "1024"


def test_plan_and_up_say_requests_go_straight_to_the_decode_and_list_no_router(tmp_path: Path):
    dep = plan.plan(config.from_dict(raw("local-sim-decode-alone.json"), user="u"), "llama-8b", run_id="r")
    assert ("decode alone (kv fake: no prefill, no router), requests straight to http://127.0.0.1:30022"
            in cli.deployment_text(dep))
    up = cli.up_summary("llama-8b", None, {"decode": [dep.router_url]}, {"decode": 1.0}, tmp_path)
    assert "router" not in up and "decode   http://127.0.0.1:30022  ready after 1.0 s" in up


def test_every_test_of_a_decode_alone_model_is_decode_alone_and_gsm8k_or_mode_pd_is_refused():
    data = raw("local-sim-decode-alone.json")
    cfg = config.from_dict(data, user="u")
    assert all(t.decode_alone for t in cfg.model("llama-8b").tests)
    tests = data["benchmark_params"]["llama-8b"]["inference_tests"]
    tests["gsm8k"] = {"num_questions": "8"}
    tests["through_router"] = {"data_set_name": "random", "mode": "pd"}
    with pytest.raises(config.ConfigError) as err:
        config.from_dict(data, user="u")
    told = str(err.value)
    assert ('$.benchmark_params["llama-8b"].inference_tests.gsm8k.mode: decode_alone measures decode throughput'
            in told)
    assert ("$.benchmark_params[\"llama-8b\"].inference_tests.through_router.mode: 'pd': the model's mode "
            "decode_alone ($.benchmark_params[\"llama-8b\"].mode) deploys no prefill and no router") in told


@pytest.mark.integration
def test_the_real_0_5_23_parser_accepts_the_planned_decode_alone_argv():
    """Each planned decode worker and bench_serving command of the decode-alone plan parses with sglang 0.5.23's
    own parsers; a transfer backend it does not know is refused (the check can fail)."""
    dep = plan.plan(config.from_dict(decode_alone_data(), user="sgl"), "llama-70b", run_id="r", sglang_version="0.5.23")
    argvs = [p.argv for p in (*dep.processes, *dep.bench)]
    worker = dep.role("decode")[0].argv
    i = worker.index("--disaggregation-transfer-backend") + 1
    wrong = (*worker[:i], "nonsense", *worker[i + 1:])
    got = parse_with_real_sglang([*argvs, wrong])
    assert [(a[2], g["error"]) for a, g in zip(argvs, got) if g["error"]] == []
    assert len(argvs) == 3 and "nonsense" in got[-1]["error"]


@pytest.mark.integration
def test_the_shipped_decode_alone_config_measures_decode_at_batch_1024_without_prefill_or_router(
        tmp_path: Path, pytester: pytest.Pytester) -> None:
    """local-sim-decode-alone.json run as users run it (free ports): the decode worker on `fake` is the only worker
    process, no router process runs, its running batch (polled in /v1/loads while the suite runs) reaches 1024, and
    results.json says deployment mode decode_alone. The simulator's steps are 10x slower (speedup 0.1) so 2 cores
    keep up with 1024 streams; the whole run takes about 20 s."""
    path = sim_config(tmp_path, base="local-sim-decode-alone.json")
    data = json.loads(path.read_text())
    decode = f"http://127.0.0.1:{data['config']['decode_serv_port']}"
    router_port = int(data["config"]["proxy_router_port"])
    seen_router = [False]

    def router_answers() -> None:
        try:
            requests.get(f"http://127.0.0.1:{router_port}/health", timeout=0.5)
            seen_router[0] = True
        except requests.RequestException:
            pass

    with running_batch_peak(decode, also=router_answers) as peak:
        out = pytester.runpytest_subprocess(str(REPO / "pytest_sglang_pd" / "suite"), f"--cluster-config={path}",
                                            f"--results-dir={tmp_path / 'r'}", "--run-id=run", "-p",
                                            "no:cacheprovider", "-rs", timeout=600)
    assert out.ret == 0, out.stdout.str()
    out.assert_outcomes(passed=4, skipped=2)  # skipped: the router check (no router) and RDMA (simulated)
    out.stdout.fnmatch_lines(["*decode alone: no router is deployed*"])
    results = json.loads((tmp_path / "r" / "run" / "results.json").read_text())
    (test,) = results["tests"]
    assert test["deployment"] == {"mode": "decode_alone", "gpus": {"prefill": 0, "decode": 1, "aggregated": 0,
                                                                     "total": 1}}
    assert {w["role"] for w in test["workers"].values()} == {"decode"} and test["router"] is None
    layout = results["cluster"]["layout"]["llama-8b"]
    assert {p["role"] for p in layout} == {"decode"}, layout
    assert peak[0] >= 1000, f"the decode worker's running batch peaked at {peak[0]}"
    assert not seen_router[0], "something answered on the router port"
    metrics = test["metrics"]
    assert metrics["completed"] == 1024 and "fake prefill" in test["command"]
    assert f"POST {decode}/generate" in test["command"]
    logs = {p.name for p in (tmp_path / "r" / "run").rglob("*.log")}
    assert "decode-0.log" in logs and not {"router.log", "prefill-0.log"} & logs, logs


@pytest.mark.integration
def test_a_decode_that_fails_the_fake_prefill_smoke_is_named_and_nothing_is_left_running(tmp_path: Path) -> None:
    """Bring-up's decode-alone smoke goes to the decode itself: a decode that dies on its first request fails it,
    named with its URL (no router in the message), and every process started is stopped."""
    from pytest_sglang_pd.cluster import ClusterError, LiveCluster

    path = sim_config(tmp_path, base="local-sim-decode-alone.json", sim={"faults": {"decode": ["crash_after=0"]}})
    cfg = plan.load_config(path)
    dep = plan.plan(cfg, "llama-8b", run_id="crash")
    with pytest.raises(ClusterError) as err:
        with LiveCluster(cfg, dep, tmp_path / "run") as cluster:
            cluster.bring_up()
    told = str(err.value)
    assert re.match(rf"smoke request \(stream=False\) to the decode worker {re.escape(dep.router_url)} failed: "
                    "ConnectionError\n", told), told
    assert "sim fault crash_after=0: request 1 arrived, exiting with code 1" in told  # the decode's log tail
    with pytest.raises(requests.ConnectionError):
        requests.get(dep.router_url + "/health", timeout=2)
