"""The deployment plan: goldens for the reference config (both layouts, mooncake and nixl) and its rules."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from sglang_router.launch_router import parse_router_args

from pytest_sglang_pd import config, plan, slurm
from pytest_sglang_pd.cli import deployment_json
from pytest_sglang_pd.textgen.tokenizer import tokenizer_dir
from selftests.configs import CONFIGS, REPO, assert_plan_golden, raw, write

VARIANTS = {
    "per_node-mooncake": {},
    "per_node-nixl": {"kv_transfer": {"backend": "nixl"}},
    "multi_node-mooncake": {"instance_layout": "multi_node"},
    "multi_node-nixl": {"instance_layout": "multi_node", "kv_transfer": {"backend": "nixl", "ib_devices": "mlx5_0,mlx5_1"}},
}


def reference_config(**overrides) -> config.ClusterConfig:
    data = raw("mi35x-example.json")
    data["config"].update(overrides)
    data["config"]["container_config"]["env_dict"] = {"HF_TOKEN": "hf_secret_value_123", "SGLANG_USE_AITER": "1"}
    return config.from_dict(data, user="sgl")


@pytest.mark.parametrize("variant", VARIANTS)
def test_plan_matches_golden(variant):
    cfg = reference_config(**VARIANTS[variant])
    assert_plan_golden(cfg, f"mi35x-{variant}.json")


SEED_LAYOUTS = {"2tp4-1tp8": "local-sim-2tp4-1tp8.json", "pd-dp16": "pd-dp16-example.json"}


@pytest.mark.parametrize("layout", SEED_LAYOUTS)
def test_the_seed_layouts_match_their_goldens(layout):
    """Two TP4 prefill instances on one node with their own GPUs, NICs and ports beside one TP8 decode; one prefill
    and a decode with DP attention 16 over two nodes."""
    data = raw(SEED_LAYOUTS[layout])
    data["config"]["python"] = "python3"  # not this machine's interpreter
    cfg = config.from_dict(data, user="sgl")
    assert_plan_golden(cfg, f"layout-{layout}.json")


def test_two_tp4_instances_on_one_node_get_gpus_0_3_and_4_7_disjoint_nics_and_ports():
    cfg = config.from_dict(raw("local-sim-2tp4-1tp8.json"))
    dep = plan.plan(cfg, "llama-70b", run_id="r")
    flag = lambda a, f: a[a.index(f) + 1]  # noqa: E731
    p0, p1 = dep.role("prefill")
    assert (p0.node, p1.node) == ("127.0.0.2", "127.0.0.2")
    assert (p0.gpus, p1.gpus) == ((0, 1, 2, 3), (4, 5, 6, 7))
    assert (flag(p0.argv, "--base-gpu-id"), flag(p1.argv, "--base-gpu-id")) == ("0", "4")
    assert not set(p0.nics) & set(p1.nics)
    assert json.loads(flag(p1.argv, "--disaggregation-ib-device")) == {str(g): f"mlx5_{g}" for g in range(4, 8)}
    assert (p0.port, p0.bootstrap_port, p1.port, p1.bootstrap_port) == (30001, 8998, 30002, 8999)
    (decode,) = dep.role("decode")
    assert flag(decode.argv, "--tp-size") == "8" and decode.gpus == tuple(range(8))
    assert p0.env["MOONCAKE_PROTOCOL"] == "tcp" and p0.env["MC_FORCE_TCP"] == "1"


def test_dp_attention_instances_on_one_node_keep_clear_of_sglangs_derived_ports():
    data = raw("local-sim-2tp4-1tp8.json")
    data["benchmark_params"]["llama-70b"]["prefill"].update(dp_size="4", dp_attention=True)
    cfg = config.from_dict(data)
    p0, p1 = plan.plan(cfg, "llama-70b", run_id="r").role("prefill")
    assert (p0.port, p1.port, p0.bootstrap_port, p1.bootstrap_port) == (30001, 30011, 8998, 9008)
    assert plan.plan_problems(cfg) == []
    data["config"]["router_prometheus_port"] = "30235"  # inside prefill_0's ports from --port + 233
    data["config"]["proxy_router_node"] = "127.0.0.2"
    assert [str(p) for p in plan.plan_problems(config.from_dict(data))] == [
        "$.config: port 30235 on node 127.0.0.2 is used by 2 services: prefill_0 (DP attention, derived), "
        "router (prometheus)"]


def test_a_device_map_without_a_gpu_of_an_instance_is_a_plan_problem():
    data = raw("local-sim-2tp4-1tp8.json")
    del data["config"]["kv_transfer"]["mooncake"]["device_map"]["6"]
    with pytest.raises(config.ConfigError) as info:
        config.from_dict(data, checks=(plan.plan_problems,))
    assert [str(p) for p in info.value.problems] == [
        "$.config.kv_transfer.mooncake.device_map: no entry for GPU 6 of prefill_1 on node 127.0.0.2 (llama-70b: "
        "GPUs 4-7); SGLang refuses a GPU the map lacks",
        "$.config.kv_transfer.mooncake.device_map: no entry for GPU 6 of decode_0 on node 127.0.0.3 (llama-70b: "
        "GPUs 0-7); SGLang refuses a GPU the map lacks"]


def test_per_node_layout_is_xpyd_with_pd_flags():
    dep = plan.plan(reference_config(), "llama-70b", run_id="r1")
    prefill = dep.servers("prefill")
    assert [p.key for p in dep.processes] == ["prefill_0", "prefill_1", "decode_0", "decode_1", "router"]
    argv = prefill[0].argv
    flag = lambda a, f: a[a.index(f) + 1]  # noqa: E731
    assert argv[:3] == ("python3", "-m", "sglang.launch_server")
    assert flag(argv, "--disaggregation-mode") == "prefill"
    assert flag(argv, "--disaggregation-transfer-backend") == "mooncake"
    assert flag(argv, "--disaggregation-bootstrap-port") == "8998"
    assert flag(argv, "--disaggregation-ib-device") == ",".join(f"rdma{i}" for i in range(8))
    assert flag(argv, "--tp-size") == "8" and flag(argv, "--schedule-policy") == "lpm"
    assert flag(argv, "--mem-fraction-static") == "0.7"
    assert "--disaggregation-bootstrap-port" not in dep.servers("decode")[0].argv
    assert prefill[0].env["MC_GID_INDEX"] == "1" and prefill[0].env["NCCL_IB_HCA"].startswith("rdma0,")
    assert prefill[0].log_path == "/home/sgl/LOGS/sglang/r1/prefill_0.log"
    c = dep.containers[0]
    assert (c.network_mode, c.ipc_mode, c.cap_add, c.shm_size) == ("host", "host", ("IPC_LOCK",), "128G")
    assert c.labels["pytest-sglang-pd.run-id"] == "r1" and c.labels["pytest-sglang-pd.role"] == "prefill"
    assert len({c.name for c in dep.containers}) == len(dep.containers)


def test_multi_node_layout_spans_each_group_with_one_instance():
    dep = plan.plan(reference_config(instance_layout="multi_node"), "deepseek-r1", run_id="r1")
    ranks = [(p.key, p.node, p.node_rank, p.serves_http) for p in dep.role("prefill")]
    assert ranks == [("prefill_0", "mi35x-node01", 0, True), ("prefill_0_rank1", "mi35x-node02", 1, False)]
    argv = dep.role("decode")[1].argv
    assert argv[argv.index("--dist-init-addr") + 1] == "mi35x-node03:40002"
    assert argv[argv.index("--nnodes") + 1] == "2" and argv[argv.index("--node-rank") + 1] == "1"
    assert argv[argv.index("--tp-size") + 1] == "16"
    router = dep.router.argv
    assert router.count("--prefill") == 1 and router.count("--decode") == 1


def test_nixl_gets_ucx_net_devices_not_the_ib_flag():
    dep = plan.plan(reference_config(kv_transfer={"backend": "nixl"}), "llama-70b", run_id="r1")
    p = dep.servers("prefill")[0]
    assert "--disaggregation-ib-device" not in p.argv
    assert p.env["UCX_NET_DEVICES"] == ",".join(f"rdma{i}:1" for i in range(8))


def test_fcfs_policy_maps_to_round_robin_router_and_fcfs_scheduler():
    data = raw("mi35x-example.json")
    data["benchmark_params"]["llama-70b"]["prefill_policy"] = "fcfs"
    dep = plan.plan(config.from_dict(data), "llama-70b", run_id="r")
    router = dep.router.argv
    assert router[router.index("--prefill-policy") + 1] == "round_robin"
    assert router[router.index("--decode-policy") + 1] == "cache_aware"
    assert dep.servers("prefill")[0].argv[dep.servers("prefill")[0].argv.index("--schedule-policy") + 1] == "fcfs"


def test_engine_sim_swaps_only_the_worker_module():
    real = reference_config()
    data = raw("mi35x-example.json")
    data["config"]["engine"] = "sim"
    sim = config.from_dict(data, user="sgl")
    a = plan.plan(real, "llama-70b", run_id="r").servers("decode")[0].argv
    b = plan.plan(sim, "llama-70b", run_id="r").servers("decode")[0].argv
    assert b[2] == "pytest_sglang_pd.sim.launch_server" and a[2] == "sglang.launch_server"
    assert b[3:len(a)] == a[3:]  # every sglang flag identical ...
    assert all(x.startswith("--sim-") for x in b[len(a):] if x.startswith("--"))  # ... then only --sim-* flags


def test_a_calibrated_prefill_share_reaches_every_simulated_worker_and_the_default_adds_no_flag():
    data = raw("local-sim.json")
    shipped = plan.plan(config.from_dict(data), "llama-8b", run_id="r")
    data["config"]["sim"]["prefill_of_matmul"] = "0.35"
    calibrated = plan.plan(config.from_dict(data), "llama-8b", run_id="r")
    assert all("--sim-prefill-of-matmul" not in p.argv for p in shipped.servers("prefill") + shipped.servers("decode"))
    for p in calibrated.servers("prefill") + calibrated.servers("decode"):
        assert p.argv[p.argv.index("--sim-prefill-of-matmul") + 1] == "0.35"


def test_hf_token_comes_from_its_file_on_the_node_and_never_into_argv_or_env():
    dep = plan.plan(reference_config(), "llama-70b", run_id="r")
    p = dep.servers("prefill")[0]
    assert p.secret_env_files == {"HF_TOKEN": "/home/sgl/.hf_token"}
    shown = json.dumps(deployment_json(dep))
    assert "hf_secret_value_123" not in shown and '"HF_TOKEN": "***"' in shown


@pytest.mark.parametrize("name", ["mi35x-example.json", "local-sim.json", "local-sim-2p2d.json", "docker-sim.json"])
@pytest.mark.parametrize("layout", ["per_node", "multi_node"])
def test_every_router_argv_is_accepted_by_the_installed_sglang_router(name, layout):
    data = raw(name)
    data["config"]["instance_layout"] = layout
    if layout == "multi_node":
        for role in ("prefill", "decode"):
            nodes = data["config"][f"{role}_node_list"]
            data["config"][f"{role}_coordinator_addr"] = nodes[0]
    cfg = config.from_dict(data)
    for model in cfg.model_ids:
        argv = plan.plan(cfg, model, run_id="r").router.argv
        assert argv[1:3] == ("-m", "sglang_router.launch_router")
        args = parse_router_args(list(argv[3:]))
        assert args.pd_disaggregation
        prefills = plan.instances(cfg, cfg.model(model), "prefill")
        assert [u for u, _ in args.prefill_urls] == [f"http://{i.head}:{i.port}" for i in prefills]
        assert [p for _, p in args.prefill_urls] == [i.bootstrap_port for i in prefills]
        assert len(args.decode_urls) == len(plan.instances(cfg, cfg.model(model), "decode"))


def test_bench_commands_for_the_sglang_tools():
    dep = plan.plan(reference_config(), "llama-70b", run_id="r")
    bench = {p.key: p for p in dep.bench}
    # the seed format: bench_serv_random sets no max_concurrency of its own, so every prompt goes at once
    rnd = bench["bench_bench_serv_random_c3000"].argv
    assert rnd[:3] == ("python3", "-m", "sglang.benchmark.serving") and "--max-concurrency" not in rnd
    assert rnd[rnd.index("--dataset-name") + 1] == "random-ids"  # random without --dataset-path runs offline
    assert rnd[rnd.index("--output-file") + 1] == "/home/sgl/LOGS/sglang/r/bench/llama-70b-bench_serv_random-c3000.jsonl"
    assert rnd[rnd.index("--random-range-ratio") + 1] == "0.5"
    assert rnd[rnd.index("--tokenizer") + 1] == dep.model.model  # the model path the workers load
    assert "HF_HUB_OFFLINE" not in bench["bench_bench_serv_random_c3000"].env  # a hub id may need a download
    gsm = bench["bench_gsm8k_c100"].argv
    assert gsm[:3] == ("python3", "-m", "sglang.test.few_shot_gsm8k")
    # 0.5.23 adds the scheme itself: --host http://node would become http://http://node
    assert gsm[gsm.index("--parallel") + 1] == "100" and gsm[gsm.index("--host") + 1] == "mi35x-node01"


def test_bench_commands_of_a_0_5_7_image():
    data = raw("mi35x-example.json")
    data["config"]["sglang_version"] = "0.5.7"
    dep = plan.plan(config.from_dict(data), "llama-70b", run_id="r")
    assert dep.sglang_version == "0.5.7"
    bench = {p.key: p.argv for p in dep.bench}
    assert bench["bench_bench_serv_random_c3000"][2] == "sglang.bench_serving"
    gsm = bench["bench_gsm8k_c100"]
    assert gsm[gsm.index("--host") + 1] == "http://mi35x-node01"  # 0.5.7 concatenates f"{host}:{port}"


def test_a_test_that_sets_its_concurrency_passes_it():
    data = raw("mi35x-example.json")
    data["benchmark_params"]["llama-70b"]["inference_tests"]["bench_serv_random"]["max_concurrency"] = "64"
    dep = plan.plan(config.from_dict(data), "llama-70b", run_id="r")
    rnd = next(p.argv for p in dep.bench if p.key == "bench_bench_serv_random_c64")
    assert rnd[rnd.index("--max-concurrency") + 1] == "64"


def test_bench_python_and_local_tokenizer():
    data = raw("local-sim.json")
    data["config"].update(bench_client="sglang", bench_python="/opt/tools/bin/python")
    cfg = config.from_dict(data)
    dep = plan.plan(cfg, "llama-8b", run_id="r")
    bench = {p.key: p for p in dep.bench}
    rnd = bench["bench_bench_serv_random_c32"]
    assert rnd.argv[0] == "/opt/tools/bin/python" and dep.python != "/opt/tools/bin/python"
    assert rnd.argv[rnd.argv.index("--tokenizer") + 1] == str(tokenizer_dir())  # the simulated model's, local
    assert rnd.env == {"HF_HUB_OFFLINE": "1"}
    gsm = bench["bench_gsm8k_c32"].argv
    assert gsm[gsm.index("--data-path") + 1] == f"{dep.log_dir}/bench/llama-8b-gsm8k-questions.jsonl"


def test_all_shipped_configs_plan():
    for path in CONFIGS.glob("*.json"):
        if path.name == "mi35x.json":
            continue
        cfg = slurm.planned(plan.load_config(path))  # a Slurm config's nodes as `sglang-pd plan` shows them
        for m in cfg.model_ids:
            assert plan.plan(cfg, m, run_id="r").processes


PORT_CLASH = "port 30001 on node mi35x-node01 is used by 2 services: prefill_0 (http), router (prometheus)"


def _port_clash(tmp_path):
    data = raw("mi35x-example.json")
    data["config"]["router_prometheus_port"] = "30001"  # the router shares mi35x-node01 with prefill_0
    data["config"]["nnodes"] = "3"  # and a problem of the config alone
    return write(tmp_path, data)


def test_two_services_on_one_port_of_a_node_is_the_plans_config_error_listed_with_the_rest(tmp_path):
    path = _port_clash(tmp_path)
    with pytest.raises(config.ConfigError) as info:
        plan.load_config(path)
    problems = [str(p) for p in info.value.problems]
    assert f"$.config: {PORT_CLASH}" in problems
    assert any(p.startswith("$.config.nnodes: 3 does not match the node lists") for p in problems)
    with pytest.raises(config.ConfigError) as alone:
        config.load(path)  # the config knows nothing of ports per node: that is the plan's
    assert not any(PORT_CLASH in str(p) for p in alone.value.problems)


@pytest.mark.integration  # runs pytest and sglang-pd in subprocesses
def test_both_faces_report_the_plans_problem_as_the_config_error(pytester: pytest.Pytester, tmp_path):
    path = _port_clash(tmp_path)
    validate = subprocess.run(["sglang-pd", "validate", str(path)], capture_output=True, text=True, timeout=60)
    assert validate.returncode == 1 and PORT_CLASH in validate.stderr and "2 problems" in validate.stderr
    run = pytester.runpytest_subprocess(str(REPO / "pytest_sglang_pd" / "suite"), f"--cluster-config={path}", "--collect-only")
    assert run.ret == 4  # a usage error at configure time
    err = run.stderr.str()
    assert PORT_CLASH in err and "2 problems" in err
    assert re.sub(r"\s+", " ", validate.stderr.strip()) in re.sub(r"\s+", " ", err)  # the same ConfigError


def test_the_router_entry_point_follows_the_package():
    data = raw("local-sim.json")
    default = plan.plan(config.from_dict(data), "llama-8b", run_id="r").router.argv
    assert default[1:3] == ("-m", "sglang_router.launch_router")
    data["config"]["router"] = {"package": "smg", "python": "/opt/smg/bin/python"}
    argv = plan.plan(config.from_dict(data), "llama-8b", run_id="r").router.argv
    assert argv[:4] == ("/opt/smg/bin/python", "-m", "smg", "launch")
    for a in (default, argv):  # smg's default retry of 30 s would hold up every bring-up
        assert a[a.index("--worker-startup-check-interval") + 1] == "1"


@pytest.mark.integration
def test_the_hugepages_precheck_reads_this_hosts_meminfo_and_names_value_and_limit():
    have = int(re.search(r"^HugePages_Total:\s+(\d+)", open("/proc/meminfo").read(), re.M).group(1))

    def check(hugepages: int) -> tuple[plan.Precheck, subprocess.CompletedProcess]:
        data = raw("local-sim-2tp4-1tp8.json")
        data["config"]["kv_transfer"]["mooncake"]["hugepages"] = hugepages
        dep = plan.plan(config.from_dict(data), "llama-70b", run_id="r")
        pre = [c for c in dep.prechecks if c.kind == "hugepages"]
        assert [c.node for c in pre] == ["127.0.0.2", "127.0.0.3"]
        return pre[0], subprocess.run(pre[0].argv, capture_output=True, text=True, timeout=30)

    pre, done = check(have + 1)
    assert done.returncode == 1
    assert done.stderr.strip() == f"HugePages_Total is {have}, the config asks for at least {have + 1}"
    assert pre.failed == (f"node 127.0.0.2: fewer huge pages than $.config.kv_transfer.mooncake.hugepages "
                          f"({have + 1}) in /proc/meminfo HugePages_Total")
    if have:
        assert check(have)[1].returncode == 0


def test_a_load_balance_method_is_planned_only_when_configured_and_in_the_planned_releases_choices():
    data = raw("pd-dp16-example.json")
    cfg = config.from_dict(data, user="sgl")
    assert not any("--load-balance-method" in p.argv for p in plan.plan(cfg, "deepseek-r1", run_id="r").processes)
    data["benchmark_params"]["deepseek-r1"]["decode"]["load_balance_method"] = "follow_bootstrap_room"
    dep = plan.plan(config.from_dict(data, user="sgl"), "deepseek-r1", run_id="r")
    assert [p.argv[p.argv.index("--load-balance-method") + 1] for p in dep.role("decode")] == [
        "follow_bootstrap_room"] * 2
    assert "--load-balance-method" not in dep.role("prefill")[0].argv
    data["config"]["sglang_version"] = "0.5.7"
    with pytest.raises(config.ConfigError) as info:
        config.from_dict(data, user="sgl", checks=(plan.plan_problems,))
    assert [str(p) for p in info.value.problems] == [
        "$.benchmark_params[\"deepseek-r1\"].decode.load_balance_method: 'follow_bootstrap_room' is not a "
        "--load-balance-method of sglang 0.5.7 (it has round_robin, decode_round_robin, shortest_queue, minimum_tokens)"]


def aggregated_reference_config() -> config.ClusterConfig:
    """The reference config with every model aggregated: 2 x TP4 per node on its four nodes, real sglang."""
    data = raw("mi35x-example.json")
    for m in data["benchmark_params"].values():
        m.update(mode="aggregated", aggregated={"tensor_parallelism": 4, "instances_per_node": 2})
    return config.from_dict(data, user="sgl")


def test_aggregated_plan_matches_golden():
    cfg = aggregated_reference_config()
    assert_plan_golden(cfg, "aggregated-mi35x.json")


def test_aggregated_workers_are_plain_and_behind_the_routers_regular_mode():
    """No PD flag, no bootstrap port, no KV engine env or precheck; GPUs 0-3 and 4-7 on every node of both lists; the
    installed sglang-router parses the regular mode's argv with every worker URL."""
    cfg = aggregated_reference_config()
    dep = plan.plan(cfg, "llama-70b", run_id="r")
    workers = dep.role("aggregated")
    assert dep.aggregated and dep.worker_roles == ("aggregated",) and not dep.role("prefill") and not dep.role("decode")
    assert [(w.node, w.gpus) for w in workers] == [(n, g) for n in ("mi35x-node01", "mi35x-node02", "mi35x-node03",
                                                                    "mi35x-node04") for g in ((0, 1, 2, 3), (4, 5, 6, 7))]
    for w in workers:
        assert not [a for a in w.argv if a.startswith("--disaggregation")], w.argv
        assert w.bootstrap_port is None and not w.nics
        assert not {"MC_GID_INDEX", "MOONCAKE_PROTOCOL"} & set(w.env)
        assert w.argv[w.argv.index("--tp-size") + 1] == "4"
    assert {w.port for w in workers} == {cfg.prefill_port, cfg.prefill_port + 1}
    assert not [c for c in dep.prechecks if c.kind in ("kv_transfer", "nic_map", "hugepages")]
    argv = dep.router.argv
    args = parse_router_args(list(argv[3:]))
    assert not args.pd_disaggregation and "--pd-disaggregation" not in argv
    assert args.worker_urls == [w.url for w in workers] and args.policy == "cache_aware"


def test_aggregated_layout_problems_name_the_aggregated_keys():
    data = raw("mi35x-example.json")
    data["benchmark_params"]["llama-70b"].update(mode="aggregated", aggregated={"tensor_parallelism": 4,
                                                                                "instances_per_node": 3})
    with pytest.raises(config.ConfigError) as err:
        config.from_dict(data, user="sgl")
    assert "$.config.prefill_node_list[0]" in str(err.value) and "aggregated 3 x 4 GPUs" in str(err.value)
    data["benchmark_params"]["llama-70b"]["aggregated"] = {"tensor_parallelism": 4}
    data["config"]["instance_layout"] = "multi_node"
    data["config"].update(prefill_coordinator_addr="mi35x-node01", decode_coordinator_addr="mi35x-node03")
    with pytest.raises(config.ConfigError) as err:
        config.from_dict(data, user="sgl")
    assert '$.benchmark_params["llama-70b"].mode: aggregated mode runs per_node instances' in str(err.value)


def test_a_models_quantization_and_kv_cache_dtype_reach_every_worker_and_a_bad_kv_dtype_is_a_config_error():
    data = raw("local-sim-2tp4-1tp8.json")
    name = next(iter(data["benchmark_params"]))
    argvs = [p.argv for p in plan.plan(config.from_dict(data, user="sgl"), name, run_id="r").processes]
    assert not any("--quantization" in a or "--kv-cache-dtype" in a for a in argvs)
    data["benchmark_params"][name].update(quantization="fp8", kv_cache_dtype="fp8_e4m3")
    dep = plan.plan(config.from_dict(data, user="sgl"), name, run_id="r")
    workers = [*dep.role("prefill"), *dep.role("decode")]
    assert len(workers) == 3
    for worker in workers:
        assert worker.argv[worker.argv.index("--quantization") + 1] == "fp8"
        assert worker.argv[worker.argv.index("--kv-cache-dtype") + 1] == "fp8_e4m3"
    data["benchmark_params"][name]["kv_cache_dtype"] = "fp8"
    with pytest.raises(config.ConfigError) as info:
        config.from_dict(data, user="sgl")
    assert f'$.benchmark_params["{name}"].kv_cache_dtype: "fp8" is not one of "auto", "fp8_e5m2", "fp8_e4m3"' in str(
        info.value)
