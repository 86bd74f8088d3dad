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
    assert "proxy_router_node" in by_path["$.config"] and "missing" in by_path["$.config"]
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


def test_two_prefill_instances_on_one_node_get_distinct_ports(tmp_path):
    data = raw("local-sim.json")
    data["config"]["prefill_node_list"] = ["127.0.0.1", "127.0.0.1"]
    data["config"]["decode_serv_port"] = "31001"
    data["config"]["nnodes"] = "3"
    cfg = config.from_dict(data)
    from pytest_sglang_pd.plan import instances

    got = [(i.head, i.port, i.bootstrap_port) for i in instances(cfg, "prefill")]
    assert got == [("127.0.0.1", 30001, 8998), ("127.0.0.1", 30002, 8999)]


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
