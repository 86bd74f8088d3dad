"""`sglang-pd validate` and `sglang-pd plan` as a user runs them (the installed console script)."""

from __future__ import annotations

import json
import subprocess

import pytest

from selftests.configs import CONFIGS, TEMPLATE, raw, write

pytestmark = pytest.mark.integration  # the installed `sglang-pd` console script, run as a process


def sglang_pd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["sglang-pd", *args], capture_output=True, text=True, timeout=60)


def test_validate_template_names_every_placeholder_and_exits_1():
    r = sglang_pd("validate", str(TEMPLATE))
    assert r.returncode == 1
    assert r.stderr.count("<changeme>") == 13
    for path in ("$.config.nccl_ib_hca_list", "$.config.proxy_router_node", "$.config.decode_node_list[1]"):
        assert path in r.stderr


def test_validate_example_exits_0():
    r = sglang_pd("validate", str(CONFIGS / "mi35x-example.json"))
    assert r.returncode == 0 and "OK" in r.stdout


def test_plan_json_lists_every_role_and_never_the_token(tmp_path):
    data = raw("mi35x-example.json")
    data["config"]["container_config"]["env_dict"]["HF_TOKEN"] = "hf_abcdefgh12345"
    token_file = tmp_path / "hf_token"
    token_file.write_text("hf_fromfile_987654\n")
    data["config"]["hf_token_file"] = str(token_file)
    r = sglang_pd("plan", str(write(tmp_path, data)), "--format", "json")
    assert r.returncode == 0, r.stderr
    assert "hf_abcdefgh12345" not in r.stdout and "hf_fromfile_987654" not in r.stdout
    plan = json.loads(r.stdout)
    assert set(plan["models"]) == {"llama-70b", "deepseek-r1"}
    procs = plan["models"]["llama-70b"]["processes"]
    assert {p["role"] for p in procs} >= {"prefill", "decode", "router"}
    for p in procs:
        assert {"role", "node", "argv", "env", "port", "log_path"} <= set(p)
    router = next(p for p in procs if p["role"] == "router")
    assert router["argv"][:4] == ["python3", "-m", "sglang_router.launch_router", "--pd-disaggregation"]
    assert plan["models"]["llama-70b"]["containers"][0]["env"]["HF_TOKEN"] == "***"


def test_plan_text_for_one_model_shows_containers_and_commands():
    r = sglang_pd("plan", str(CONFIGS / "mi35x-example.json"), "--model", "deepseek-r1")
    assert r.returncode == 0
    assert "model deepseek-r1" in r.stdout and "llama-70b" not in r.stdout
    assert "$ python3 -m sglang.launch_server" in r.stdout and "container sglang-container-RUN-ID-prefill-0" in r.stdout
    assert "HF_TOKEN=*** (read on the node from" in r.stdout
    assert "planned for sglang 0.5.23" in r.stdout
    assert "test bench_serv_random: concurrency 3000 (no --max-concurrency: every prompt at once)" in r.stdout
    assert "test gsm8k: concurrency 100\n" in r.stdout


def test_validate_warns_of_a_limit_that_cannot_be_met(tmp_path):
    data = raw("mi35x-example.json")
    data["benchmark_params"]["llama-70b"]["inference_tests"]["bench_serv_random"]["max_concurrency"] = "64"
    r = sglang_pd("validate", str(write(tmp_path, data)))
    assert r.returncode == 0 and "warning: " in r.stderr and "21000 tok/s cannot be met at concurrency 64" in r.stderr


def test_plan_unknown_model_and_bad_config_exit_1(tmp_path):
    r = sglang_pd("plan", str(CONFIGS / "mi35x-example.json"), "--model", "gpt-9")
    assert r.returncode == 1 and "unknown model 'gpt-9'" in r.stderr and "llama-70b" in r.stderr
    r = sglang_pd("plan", str(TEMPLATE))
    assert r.returncode == 1 and "13 problems" in r.stderr


def test_validate_warns_of_keys_that_have_no_effect_and_keys_prints_the_table():
    r = sglang_pd("validate", str(CONFIGS / "mi35x-example.json"))
    assert r.returncode == 0
    assert 'warning: $.benchmark_params["llama-70b"].inference_poll_iterations: is read but has no effect' in r.stderr
    r = sglang_pd("plan", str(CONFIGS / "mi35x-example.json"), "--model", "llama-70b")
    assert "nic_type ainic: AMD Pensando Pollara (AINIC), verbs provider ionic, GID index 1" in r.stdout
    assert "[precheck nic] node=mi35x-node01" in r.stdout
    table = sglang_pd("keys").stdout
    assert "| `config.prefill_serv_port` | port | required | >= 1 and <= 65535 | prefill worker argv --port |" in table
    assert json.loads(sglang_pd("schema").stdout)["properties"]["config"]["required"][0] == "prefill_serv_port"


def test_plan_text_shows_each_instances_gpus_nics_and_ports():
    r = sglang_pd("plan", str(CONFIGS / "local-sim-2tp4-1tp8.json"))
    assert r.returncode == 0, r.stderr
    assert "  layout prefill: 2 x TP4 per node on 127.0.0.2\n  layout decode: 1 x TP8 per node on 127.0.0.3\n" in r.stdout
    assert ("[prefill_0] role=prefill node=127.0.0.2 port=30001 bootstrap=8998 gpus=0-3 "
            "nics=mlx5_0,mlx5_1,mlx5_2,mlx5_3\n") in r.stdout
    assert ("[prefill_1] role=prefill node=127.0.0.2 port=30002 bootstrap=8999 gpus=4-7 "
            "nics=mlx5_4,mlx5_5,mlx5_6,mlx5_7\n") in r.stdout
    assert "[decode_0] role=decode node=127.0.0.3 port=30001 gpus=0-7 nics=mlx5_0," in r.stdout
    r = sglang_pd("plan", str(CONFIGS / "pd-dp16-example.json"))
    assert r.returncode == 0, r.stderr
    assert ("  layout decode: 1 x TP8 per node, DP attention 16 on dp-node02, dp-node03 (one instance over them)"
            in r.stdout)
    assert "warning: $.config.kv_transfer.mooncake.mooncake_json.metadata_server: " in r.stdout  # the plan says it
