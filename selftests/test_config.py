"""Loading, validating and typing cluster configs: every error class, and what a good config becomes."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import yaml

from pytest_sglang_pd import config
from selftests.configs import REPO, TEMPLATE, raw, write


def problems_of(tmp_path, data, name="cluster.json") -> list[config.Problem]:
    with pytest.raises(config.ConfigError) as info:
        config.load(write(tmp_path, data, name) if not isinstance(data, str) else data)
    return info.value.problems


def paths(problems) -> set[str]:
    return {p.path for p in problems}


def test_template_config_lists_every_placeholder_path():
    with pytest.raises(config.ConfigError) as info:
        config.load(TEMPLATE)
    expected = {"$.config.nccl_ib_hca_list", "$.config.nccl_ib_hca", "$.config.nccl_socket_ifname",
                "$.config.gloo_socket_ifname", "$.config.gloo_tcp_ifname", "$.config.prefill_node_list[0]",
                "$.config.prefill_node_list[1]", "$.config.decode_node_list[0]", "$.config.decode_node_list[1]",
                "$.config.proxy_router_node", "$.config.benchmark_serv_node", "$.config.prefill_coordinator_addr",
                "$.config.decode_coordinator_addr"}
    assert paths(info.value.problems) == expected
    assert all("<changeme>" in p.message for p in info.value.problems)


def test_example_config_is_typed_with_numbers_coerced_and_defaults_filled():
    cfg = config.load("mi35x-example.json")  # a bare name is looked up in cluster_configs/
    assert cfg.nnodes == 4 and cfg.prefill_port == 30001 and cfg.router_port == 8000
    assert cfg.prefill_nodes == ("mi35x-node01", "mi35x-node02")
    assert cfg.nccl_ib_hca == tuple(f"rdma{i}" for i in range(8))
    assert cfg.kv_transfer.ib_devices == cfg.nccl_ib_hca  # default: the nccl_ib_hca list
    assert cfg.kv_transfer.bootstrap_port == 8998 and cfg.kv_transfer.backend == "mooncake"
    assert (cfg.engine, cfg.runtime, cfg.transport, cfg.instance_layout) == ("sglang", "docker", "ssh", "per_node")
    llama = cfg.model("llama-70b")
    assert llama.tensor_parallelism == 8 and llama.memory_fraction == 0.7 and llama.dtype == "auto"
    gsm8k, rnd = llama.tests
    assert (gsm8k.kind, gsm8k.num_questions, gsm8k.max_concurrency) == ("gsm8k", 1000, (100,))
    assert (rnd.kind, rnd.dataset, rnd.input_length, rnd.random_range_ratio) == ("bench_serving", "random", 1024, 0.5)
    assert rnd.request_rate == math.inf
    tpot = next(t for t in rnd.thresholds if t.metric == "mean_tpot_ms")
    assert (tpot.canonical, tpot.value, tpot.direction) == ("mean_tpot_ms", 50.0, "max")
    tps = gsm8k.thresholds[0]
    assert (tps.metric, tps.canonical, tps.direction) == ("tokens_per_sec", "output_throughput", "min")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.nnodes = 5


def test_user_id_placeholder_becomes_the_user(tmp_path):
    data = raw("mi35x-example.json")
    cfg = config.from_dict(data, user="alice")
    assert cfg.hf_token_file == "/home/alice/.hf_token"
    assert cfg.log_dir == "/home/alice/LOGS/sglang"
    assert cfg.container.volume_dict == {"/home/alice": "/home/alice", "/it-share/models": "/root/models"}


def test_yaml_is_accepted(tmp_path):
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(raw("mi35x-example.json"), sort_keys=False))
    assert config.load(path).model_ids == ("llama-70b", "deepseek-r1")


def test_unknown_keys_are_errors_with_a_suggestion(tmp_path):
    data = raw("mi35x-example.json")
    data["config"]["prefil_node_list"] = ["x"]
    data["benchmark_params"]["llama-70b"]["tensor_paralelism"] = "8"
    data["benchmark_params"]["llama-70b"]["inference_tests"]["gsm8k"]["num_question"] = "5"
    problems = problems_of(tmp_path, data)
    by_path = {p.path: p.message for p in problems}
    assert "did you mean 'prefill_node_list'?" in by_path["$.config.prefil_node_list"]
    assert "did you mean 'tensor_parallelism'?" in by_path["$.benchmark_params[\"llama-70b\"].tensor_paralelism"]
    assert "did you mean 'num_questions'?" in by_path["$.benchmark_params[\"llama-70b\"].inference_tests.gsm8k.num_question"]


def test_bad_values_name_path_value_and_expectation(tmp_path):
    data = raw("mi35x-example.json")
    data["config"]["prefill_serv_port"] = "30x01"
    data["config"]["log_level"] = "verbose"
    data["benchmark_params"]["deepseek-r1"]["memory_fraction"] = "lots"
    by_path = {p.path: p.message for p in problems_of(tmp_path, data)}
    assert "TCP port" in by_path["$.config.prefill_serv_port"] and '"30x01"' in by_path["$.config.prefill_serv_port"]
    assert '"verbose" is not one of' in by_path["$.config.log_level"]
    assert "a number" in by_path["$.benchmark_params[\"deepseek-r1\"].memory_fraction"]


def test_missing_required_and_empty_node_lists(tmp_path):
    data = raw("mi35x-example.json")
    del data["config"]["proxy_router_node"]
    data["config"]["decode_node_list"] = []
    by_path = {p.path: p.message for p in problems_of(tmp_path, data)}
    assert by_path["$.config.proxy_router_node"].startswith("is required but missing (only with \"transport\": "
                                                            "\"slurm\" do the nodes come from the allocation)")
    assert by_path["$.config.decode_node_list"] == "must not be empty"


def test_cross_field_checks(tmp_path):
    data = raw("mi35x-example.json")
    c = data["config"]
    c["nnodes"] = "3"
    data["benchmark_params"]["llama-70b"]["tensor_parallelism"] = "16"
    data["benchmark_params"]["llama-70b"]["inference_tests"]["bench_serv_random"]["expected_results"]["auto"]["p42_ttft_ms"] = "1"
    problems = problems_of(tmp_path, data)
    text = "\n".join(map(str, problems))
    assert "$.config.nnodes: 3 does not match the node lists: 2 prefill + 2 decode = 4" in text
    assert "tensor_parallelism: 16 does not fit gpus_per_node 8" in text
    assert "the suite cannot measure 'p42_ttft_ms'" in text


def test_two_prefill_instances_on_one_node_get_distinct_ports_and_gpus(tmp_path):
    data = raw("local-sim.json")
    data["config"]["decode_serv_port"] = "31001"
    data["benchmark_params"]["llama-8b"]["prefill"] = {"instances_per_node": "2"}
    cfg = config.from_dict(data)
    from pytest_sglang_pd.plan import instances

    got = [(i.head, i.port, i.bootstrap_port, i.members[0].gpus) for i in instances(cfg, cfg.models[0], "prefill")]
    assert got == [("127.0.0.1", 30001, 8998, (0,)), ("127.0.0.1", 30002, 8999, (1,))]
    assert instances(cfg, cfg.models[0], "decode")[0].members[0].gpus == (2,)  # the node's GPUs after the prefills'


def test_a_node_listed_twice_in_a_role_points_at_instances_per_node(tmp_path):
    data = raw("local-sim.json")
    data["config"]["prefill_node_list"] = ["127.0.0.1", "127.0.0.1"]
    data["config"]["nnodes"] = "3"
    found = {p.path: p.message for p in problems_of(tmp_path, data)}
    assert found["$.config.prefill_node_list[1]"] == (
        "node 127.0.0.1 is listed again (first at [0]): list it once and set "
        "benchmark_params.<model>.prefill.instances_per_node for several instances on one node")


def test_model_and_test_ids_must_be_usable_in_test_ids(tmp_path):
    data = raw("mi35x-example.json")
    data["benchmark_params"]["llama 70b[x]"] = data["benchmark_params"].pop("llama-70b")
    text = "\n".join(map(str, problems_of(tmp_path, data)))
    assert "model id 'llama 70b[x]' cannot be used in test ids" in text


def test_expected_results_need_the_models_dtype(tmp_path):
    data = raw("mi35x-example.json")
    data["benchmark_params"]["deepseek-r1"]["dtype"] = "fp8"
    text = "\n".join(map(str, problems_of(tmp_path, data)))
    assert "no entry for the model's dtype 'fp8' (have: auto)" in text


def test_explicit_threshold_direction_and_sweep(tmp_path):
    data = raw("local-sim.json")
    t = data["benchmark_params"]["llama-8b"]["inference_tests"]["bench_serv_random"]
    t["max_concurrency"] = ["8", 16]
    t["tolerance"] = "10%"
    t["expected_results"]["auto"]["p99_ttft_ms"] = {"max": "900"}
    t["expected_results"]["auto"]["mean_itl_ms"] = {"min": 1}
    cfg = config.from_dict(data)
    test = cfg.models[0].tests[1]
    assert test.max_concurrency == (8, 16) and test.is_sweep and test.tolerance_pct == 10.0
    th = {t.metric: t for t in test.thresholds}
    assert (th["p99_ttft_ms"].direction, th["p99_ttft_ms"].value, th["p99_ttft_ms"].explicit) == ("max", 900.0, True)
    assert th["mean_itl_ms"].direction == "min"


def test_shared_prefix_test_is_classified_and_unclassifiable_is_an_error(tmp_path):
    cfg = config.load("local-sim.json")
    gsp = cfg.models[0].tests[2]
    assert (gsp.kind, gsp.dataset, gsp.gsp_num_groups, gsp.gsp_system_prompt_len) == (
        "bench_serving", "generated-shared-prefix", 4, 1024)
    data = raw("local-sim.json")
    data["benchmark_params"]["llama-8b"]["inference_tests"]["mystery"] = {"num_prompts": "5"}
    text = "\n".join(map(str, problems_of(tmp_path, data)))
    assert "mystery: cannot tell which benchmark this is" in text


def test_file_errors_are_problems_not_tracebacks(tmp_path):
    assert "no such config file" in str(problems_of(tmp_path, str(tmp_path / "absent.json"))[0])
    (tmp_path / "x.json").mkdir()
    assert "cannot read the config file" in str(problems_of(tmp_path, str(tmp_path / "x.json"))[0])
    bad = tmp_path / "bad.json"
    bad.write_text('{"config": ')
    assert "not valid JSON" in problems_of(tmp_path, str(bad))[0].message
    with pytest.raises(config.ConfigError, match="must be an object"):
        config.from_dict([1, 2])


def test_a_missing_config_names_every_place_looked_in_and_the_nearest_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(config.ConfigError) as info:
        config.load("local-simm.json")
    text = str(info.value)
    assert str(tmp_path / "local-simm.json") in text and str(config.CONFIG_DIR / "local-simm.json") in text
    assert text.endswith(f"did you mean {config.CONFIG_DIR / 'local-sim.json'}?")
    (tmp_path / "my-cluster.json").write_text("{}")
    with pytest.raises(config.ConfigError, match=f"did you mean {tmp_path / 'my-cluster.json'}"):
        config.load("my-clustr.json")  # a file beside the user is found as well


def test_tcp_backend_only_with_the_simulator(tmp_path):
    data = raw("mi35x-example.json")
    data["config"]["kv_transfer"] = {"backend": "tcp"}
    assert "simulator's own socket transfer" in "\n".join(map(str, problems_of(tmp_path, data)))


def test_schema_is_draft_2020_12():
    schema = json.loads(config.SCHEMA_PATH.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_the_cases_of_a_config_are_model_by_model_test_by_test_one_per_concurrency():
    cfg = config.load("local-sim-2p2d.json")
    assert [c.id for c in config.cases(cfg)] == ["llama-8b-gsm8k", "llama-8b-bench_serv_random-c16",
                                                 "llama-8b-bench_serv_random-c64", "llama-8b-generated_shared_prefix"]
    sweep = [c for c in config.cases(cfg) if c.test.is_sweep]
    assert [c.concurrency for c in sweep] == [16, 64] and {c.model.id for c in sweep} == {"llama-8b"}


# ------------------------------------------------------------------ one description per key (keys.py)
GENERATED = "<!-- generated by `sglang-pd keys`: do not edit below -->\n"


def test_the_shipped_schema_and_the_docs_key_table_are_what_the_descriptions_generate():
    assert json.loads(config.SCHEMA_PATH.read_text()) == config.schema(), "run: sglang-pd schema > " \
        "pytest_sglang_pd/schemas/cluster_config.schema.json"
    doc = (config.PACKAGE_DIR.parent / "docs" / "config-keys.md").read_text()
    assert doc.split(GENERATED, 1)[1] == config.key_table(), "regenerate docs/config-keys.md with sglang-pd keys"


def _keyed(cls):
    return [(f, f.metadata["key"]) for f in dataclasses.fields(cls) if "key" in f.metadata]


@pytest.mark.parametrize("cls", [config.ClusterConfig, config.ModelConfig, config.InferenceTest, config.SSHSettings,
                                 config.SlurmSettings, config.KVTransferSettings, config.Timeouts, config.SimSettings])
def test_every_key_is_in_the_schema_with_its_choices_and_a_said_effect(cls):
    sections = {config.ClusterConfig: ("config",), config.SSHSettings: ("config", "ssh"),
                config.SlurmSettings: ("config", "slurm"),
                config.KVTransferSettings: ("config", "kv_transfer"), config.Timeouts: ("config", "timeouts"),
                config.SimSettings: ("config", "sim")}
    node = config.schema()
    if cls is config.ModelConfig or cls is config.InferenceTest:
        node = node["properties"]["benchmark_params"]["additionalProperties"]
        if cls is config.InferenceTest:
            node = node["properties"]["inference_tests"]["additionalProperties"]
    else:
        for part in sections[cls]:
            node = node["properties"][part]
    for f, k in _keyed(cls):
        if k.section is not None:
            continue
        prop = node["properties"][k.key]
        assert k.effect or k.ignored, f"{cls.__name__}.{f.name}: say where {k.key!r} takes effect"
        assert prop.get("enum") == k.kind.schema.get("enum"), k.key


def test_a_config_without_a_key_gets_the_default_its_description_gives(tmp_path):
    data = raw("mi35x-example.json")
    data["config"] = {k: v for k, v in data["config"].items() if k in (
        "prefill_node_list", "decode_node_list", "proxy_router_node", "prefill_serv_port", "decode_serv_port",
        "proxy_router_port", "container_image")}
    model = data["benchmark_params"]["llama-70b"]
    data["benchmark_params"] = {"m": {"model": model["model"], "inference_tests": {"gsm8k": {}}}}
    cfg = config.from_dict(data)
    derived = {"benchmark_node", "bench_client", "ib_devices", "max_concurrency", "container_image",
               "prefill_nodes", "decode_nodes", "router_node"}  # set above or derived
    for section in (cfg, cfg.ssh, cfg.slurm, cfg.kv_transfer, cfg.timeouts, cfg.sim, cfg.models[0],
                    cfg.models[0].tests[0]):
        for f, k in _keyed(type(section)):
            if k.required or k.section is not None or f.name in derived:
                continue
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            assert getattr(section, f.name) == default, f"{type(section).__name__}.{f.name}"
    assert cfg.benchmark_node == cfg.router_node and cfg.models[0].tests[0].max_concurrency == (64,)


@pytest.mark.parametrize("where, value, path, says", [
    (("config", "prefill_serv_port"), 70000, "$.config.prefill_serv_port", "70000 is above the maximum: >= 1 and <= 65535"),
    (("config", "proxy_router_port"), "0", "$.config.proxy_router_port", "0 is below the minimum"),
    (("test", "num_prompts"), -5, '$.benchmark_params["llama-70b"].inference_tests.bench_serv_random.num_prompts',
     "-5 is below the minimum: >= 1"),
    (("test", "input_length"), 0, '$.benchmark_params["llama-70b"].inference_tests.bench_serv_random.input_length',
     "0 is below the minimum: >= 1"),
    (("test", "max_concurrency"), [8, 0], '$.benchmark_params["llama-70b"].inference_tests.bench_serv_random.max_concurrency',
     "0 is below the minimum"),
    (("model", "memory_fraction"), "0", '$.benchmark_params["llama-70b"].memory_fraction', "0 is at or below the minimum: > 0"),
    (("model", "memory_fraction"), 1.5, '$.benchmark_params["llama-70b"].memory_fraction', "1.5 is above the maximum"),
    (("test", "random_range_ratio"), 1.2, '$.benchmark_params["llama-70b"].inference_tests.bench_serv_random.random_range_ratio',
     "1.2 is above the maximum: >= 0 and <= 1"),
    (("sim", "speedup"), 0, "$.config.sim.speedup", "0 is at or below the minimum: > 0"),
])
def test_a_number_out_of_its_range_is_an_error_at_its_json_path(tmp_path, where, value, path, says):
    data = raw("mi35x-example.json")
    section, name = where
    target = {"config": data["config"], "sim": data["config"].setdefault("sim", {}),
              "model": data["benchmark_params"]["llama-70b"],
              "test": data["benchmark_params"]["llama-70b"]["inference_tests"]["bench_serv_random"]}[section]
    target[name] = value
    found = {p.path: p.message for p in problems_of(tmp_path, data)}
    assert says in found[path], found


def test_several_range_and_cross_field_problems_are_listed_in_one_run(tmp_path):
    data = raw("mi35x-example.json")
    data["config"]["decode_serv_port"] = "70000"
    data["config"]["nnodes"] = "5"
    data["benchmark_params"]["llama-70b"]["inference_tests"]["bench_serv_random"]["num_prompts"] = "-1"
    assert {"$.config.decode_serv_port", "$.config.nnodes",
            '$.benchmark_params["llama-70b"].inference_tests.bench_serv_random.num_prompts'} <= paths(problems_of(tmp_path, data))


def test_the_seed_keys_take_effect_or_are_warned_about():
    from pytest_sglang_pd import plan
    cfg = plan.load_config("mi35x-example.json")  # the seed template, filled in
    assert [w.path for w in cfg.warnings] == ['$.benchmark_params["llama-70b"].inference_poll_iterations',
                                              '$.benchmark_params["deepseek-r1"].inference_poll_iterations']
    assert "timeouts.benchmark_s" in cfg.warnings[0].message
    dep = plan.plan(cfg, "llama-70b", run_id="r")
    worker = next(p for p in dep.processes if p.role == "prefill")
    assert worker.argv[worker.argv.index("--tokenizer-mode") + 1] == "auto"
    assert cfg.nic_type == "ainic"
    prefill_box = next(c for c in dep.containers if c.role == "prefill")
    assert prefill_box.volumes["/etc/libibverbs.d/ionic.driver"] == "/etc/libibverbs.d/ionic.driver"
    router_box = next(c for c in dep.containers if c.role == "router")
    assert "/etc/libibverbs.d/ionic.driver" not in router_box.volumes
    assert {c.kind for c in dep.prechecks if c.node == worker.node} >= {"nic", "kv_transfer"}


def test_tokenizer_mode_takes_only_what_sglang_accepts(tmp_path):
    data = raw("mi35x-example.json")
    data["benchmark_params"]["llama-70b"]["tokenizer_mode"] = "fast"
    found = {p.path: p.message for p in problems_of(tmp_path, data)}
    assert found['$.benchmark_params["llama-70b"].tokenizer_mode'] == '"fast" is not one of "auto", "slow"'


def test_a_broadcom_nic_gets_gid_index_3_and_a_different_configured_one_is_warned(tmp_path):
    from pytest_sglang_pd import plan
    data = raw("mi35x-example.json")
    data["config"]["nic_type"] = "thor2"
    data["config"].pop("nccl_ib_gid_index")
    cfg = plan.load_config(write(tmp_path, data))
    env = plan.plan(cfg, "llama-70b", run_id="r").processes[0].env
    assert env["NCCL_IB_GID_INDEX"] == "3" and env["MC_GID_INDEX"] == "3" and not cfg.warnings[2:]
    data["config"]["nccl_ib_gid_index"] = "1"
    cfg = plan.load_config(write(tmp_path, data))
    assert any(w.path == "$.config.nccl_ib_gid_index" and "need GID index 3" in w.message for w in cfg.warnings)
    data["config"]["nic_type"] = "quantum-nic"
    found = {p.path: p.message for p in problems_of(tmp_path, data)}
    assert "unknown NIC type 'quantum-nic'; known: ainic" in found["$.config.nic_type"]


def test_schema_and_cross_field_problems_of_one_file_are_listed_in_one_run(tmp_path):
    data = raw("mi35x-example.json")
    data["config"]["log_level"] = "verbose"  # found by the schema
    data["config"]["nnodes"] = "3"  # found between fields
    data["benchmark_params"]["llama-70b"]["tensor_parallelism"] = "16"  # found against gpus_per_node
    found = {p.path: p.message for p in problems_of(tmp_path, data)}
    assert '"verbose" is not one of' in found["$.config.log_level"]
    assert found["$.config.nnodes"].startswith("3 does not match the node lists")
    assert "does not fit gpus_per_node 8" in found['$.benchmark_params["llama-70b"].tensor_parallelism']


def test_a_node_shared_by_both_roles_needs_the_gpus_of_all_its_instances(tmp_path):
    data = raw("mi35x-example.json")
    data["config"]["decode_node_list"] = ["mi35x-node03", "mi35x-node01"]  # node01 is a prefill node too
    data["config"]["nnodes"] = "4"
    found = {p.path: p.message for p in problems_of(tmp_path, data)}
    assert found["$.config.decode_node_list[1]"] == (
        "node mi35x-node01: the instances there need more GPUs than gpus_per_node 8: llama-70b 16 (prefill 1 x 8 "
        "GPUs + decode 1 x 8 GPUs); deepseek-r1 16 (prefill 1 x 8 GPUs + decode 1 x 8 GPUs)")
    for model in data["benchmark_params"].values():
        model["tensor_parallelism"] = "4"  # two TP4 instances fit one 8-GPU node
    config.from_dict(data)


def test_the_gpu_budget_counts_instances_per_node_and_dp_replicas(tmp_path):
    data = raw("mi35x-example.json")
    model = data["benchmark_params"]["llama-70b"]
    model["prefill"] = {"tensor_parallelism": "4", "instances_per_node": "3"}
    model["decode"] = {"tensor_parallelism": "2", "dp_size": "8"}  # 8 plain DP replicas of TP2: 16 GPUs
    found = {p.path: p.message for p in problems_of(tmp_path, data)}
    assert found["$.config.prefill_node_list[0]"] == ("node mi35x-node01: the instances there need more GPUs than "
                                                      "gpus_per_node 8: llama-70b 12 (prefill 3 x 4 GPUs)")
    assert found['$.benchmark_params["llama-70b"].decode.tensor_parallelism'] == (
        "TP2 x 8 DP replicas = 16 GPUs per decode instance do not fit gpus_per_node 8")


def test_dp_attention_must_split_the_tp_group(tmp_path):
    data = raw("mi35x-example.json")
    data["benchmark_params"]["llama-70b"]["decode"] = {"dp_size": "3", "dp_attention": True}
    data["benchmark_params"]["deepseek-r1"]["dp_attention"] = "true"
    found = {p.path: p.message for p in problems_of(tmp_path, data)}
    assert found['$.benchmark_params["llama-70b"].decode.dp_size'] == (
        "3 does not divide the decode instance's TP size 8: SGLang requires tp_size divisible by attn_dp_size")
    assert found['$.benchmark_params["deepseek-r1"].dp_attention'] == "DP attention needs dp_size >= 2, dp_size is 1"


def test_role_sections_default_to_the_models_keys():
    data = raw("mi35x-example.json")
    model = data["benchmark_params"]["deepseek-r1"]
    model.update(dp_attention="8", load_balance_method="round_robin")
    model["prefill"] = {"tensor_parallelism": "4", "instances_per_node": "2", "dp_size": "2"}
    m = config.from_dict(data).model("deepseek-r1")
    assert m.layout("decode") == config.Layout("decode", 8, 1, 8, True, "round_robin")  # the earlier integer form
    assert m.layout("prefill") == config.Layout("prefill", 4, 2, 2, True, "round_robin")
    assert m.layout("prefill").gpus == 4  # DP attention splits the TP group
    replicas = config.resolve("prefill", config.RoleSettings(tensor_parallelism=2, dp_attention=False), m)
    assert (replicas.dp_size, replicas.dp_attention, replicas.gpus) == (8, False, 16)  # plain DP: 8 replicas of TP2


def test_a_throughput_limit_that_littles_law_rules_out_is_a_warning_naming_both_figures():
    # the seed template's bench_serv_random runs every prompt at once (no max_concurrency of its own): no warning
    assert config.capacity_warnings(config.load("mi35x-example.json")) == []
    data = raw("mi35x-example.json")
    data["benchmark_params"]["llama-70b"]["inference_tests"]["bench_serv_random"]["max_concurrency"] = "64"
    warnings = [str(w) for w in config.capacity_warnings(config.from_dict(data))]
    assert warnings == ['$.benchmark_params["llama-70b"].inference_tests.bench_serv_random.expected_results: '
                        "output throughput limit 21000 tok/s cannot be met at concurrency 64: with the mean TPOT "
                        "limit 50 ms it needs about 1050 requests in flight, and 64 streams make at most 1280 tok/s "
                        "(Little's law)"]


def test_seed_format_bench_tests_run_unbounded_unless_they_set_a_concurrency():
    tests = {t.name: t for t in config.load("mi35x-example.json").model("llama-70b").tests}
    assert tests["bench_serv_random"].unbounded and tests["bench_serv_random"].max_concurrency == (3000,)
    assert not tests["gsm8k"].unbounded and tests["gsm8k"].max_concurrency == (100,)


def test_router_package_python_and_args_and_a_flag_smg_lacks():
    data = raw("local-sim.json")
    data["config"].update(router_args=["--mini-lb"], router={"package": "smg", "python": "/opt/smg/bin/python",
                                                             "args": ["--policy", "random"]})
    with pytest.raises(config.ConfigError) as info:
        config.from_dict(data)
    assert [str(p) for p in info.value.problems] == ["$.config.router_args: smg has no --mini-lb (sglang-router 0.3.2 had it)"]
    data["config"]["router_args"] = []
    cfg = config.from_dict(data)
    assert (cfg.router_package, cfg.router_python, cfg.router_args) == ("smg", "/opt/smg/bin/python", ("--policy", "random"))


def test_the_sim_example_of_the_simulator_doc_is_a_valid_config_sim():
    """docs/simulator.md shows the shape of every `sim` key with an example: that example loads."""
    text = (REPO / "docs" / "simulator.md").read_text()
    block = text.split("### In the cluster config: `config.sim`", 1)[1].split("```json", 1)[1].split("```", 1)[0]
    example = json.loads("{" + block.strip() + "}")["config"]
    data = raw("local-sim.json")
    data["config"].update(example)
    sim = config.from_dict(data).sim
    assert set(example["sim"]) == {f for f in config.SimSettings.__dataclass_fields__}  # every key shown
    assert sim.faults == {"decode": ("slow=2",), "prefill_0": ("crash_after=100",)} and sim.speedup == 20


def test_sim_faults_of_the_wrong_shape_say_the_shape(tmp_path):
    data = raw("local-sim.json")
    data["config"]["sim"] = {"faults": ["slow=2"]}
    found = {p.path: p.message for p in problems_of(tmp_path, data)}
    assert found["$.config.sim.faults"] == ('expected an object of role (prefill, decode) or process (prefill_0) -> '
                                            'list of fault specs, such as {"decode": ["slow=2"]}, got ["slow=2"]')


SEED_MOONCAKE_JSON = {"local_hostname": "10.239.129.9", "metadata_server": "10.239.129.81:2379", "protocol": "tcp",
                      "device_name": "mlx5_0,mlx5_3", "master_server_address": "10.239.129.81:50051"}


def test_a_seed_mooncake_json_is_translated_and_its_servers_reported_as_unused_by_sglangs_pd_path(tmp_path):
    from pytest_sglang_pd import plan

    (tmp_path / "mooncake.json").write_text(json.dumps(SEED_MOONCAKE_JSON))
    data = raw("local-sim.json")
    data["config"]["kv_transfer"]["mooncake"] = {"mooncake_json": "mooncake.json", "gid_index": "3"}
    cfg = config.load(write(tmp_path, data))  # the path is read beside the config file
    assert cfg.kv_transfer.ib_devices == ("mlx5_0", "mlx5_3") and cfg.kv_transfer.mooncake.protocol == "tcp"
    warnings = {w.path: w.message for w in cfg.warnings}
    base = "$.config.kv_transfer.mooncake.mooncake_json"
    for name in ("metadata_server", "master_server_address"):
        assert warnings[f"{base}.{name}"].startswith(f"{SEED_MOONCAKE_JSON[name]!r} is not used by SGLang's PD path: "
                                                     "sglang 0.5.23 initialises its PD Mooncake engine with the "
                                                     "hard-coded P2PHANDSHAKE")
    assert "SGLANG_HOST_IP" in warnings[f"{base}.local_hostname"]
    worker = plan.plan(cfg, "llama-8b", run_id="r").role("prefill")[0]
    assert {k: worker.env[k] for k in ("MOONCAKE_PROTOCOL", "MC_FORCE_TCP", "MC_GID_INDEX")} == {
        "MOONCAKE_PROTOCOL": "tcp", "MC_FORCE_TCP": "1", "MC_GID_INDEX": "3"}
    assert worker.argv[worker.argv.index("--disaggregation-ib-device") + 1] == "mlx5_0,mlx5_3"
    data["config"]["kv_transfer"]["mooncake"] = {"mooncake_json": {**SEED_MOONCAKE_JSON, "protocol": "rdma"},
                                                 "protocol": "tcp"}  # inline; the config's own key wins
    assert config.from_dict(data).kv_transfer.mooncake.protocol == "tcp"
    data["config"]["kv_transfer"]["backend"] = "nixl"
    assert "$.config.kv_transfer.mooncake: is set, but kv_transfer.backend is 'nixl': not used" in map(
        str, config.from_dict(data).warnings)


def test_a_broken_mooncake_json_or_device_map_is_a_problem_at_its_path(tmp_path):
    data = raw("local-sim.json")
    data["config"]["kv_transfer"]["mooncake"] = {"mooncake_json": {"protocol": "efa2"}, "device_map": {"gpu0": "x"}}
    found = {p.path: p.message for p in problems_of(tmp_path, data)}
    assert found["$.config.kv_transfer.mooncake.mooncake_json.protocol"] == '"efa2" is not one of "rdma", "tcp"'
    assert found["$.config.kv_transfer.mooncake.device_map.gpu0"] == "key 'gpu0' is not a GPU id (0, 1, ...)"
    data["config"]["kv_transfer"]["mooncake"] = {"mooncake_json": "no-such-mooncake.json"}
    found = {p.path: p.message for p in problems_of(tmp_path, data)}
    assert found["$.config.kv_transfer.mooncake.mooncake_json"].endswith("no-such-mooncake.json: cannot be read "
                                                                         "(No such file or directory)")
