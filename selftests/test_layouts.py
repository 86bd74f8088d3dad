"""The seeds' layouts brought up on the simulated cluster: two TP4 prefill instances on one node beside a TP8 decode,
and one prefill with a decode of DP attention 16 over two nodes. Each worker reports (/server_info) the parallelism,
GPUs and NICs the plan gave it, and a request goes through prefill -> decode (the bring-up's smoke requests)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from pytest_sglang_pd import plan
from pytest_sglang_pd.cluster import LiveCluster
from selftests.configs import free_port, sim_config


def server_info(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/server_info", timeout=10) as answer:
        return json.load(answer)


@pytest.mark.integration
def test_two_tp4_prefills_on_one_node_and_a_tp8_decode_run_with_their_own_gpus_and_nics(tmp_path: Path) -> None:
    cfg = plan.load_config(sim_config(tmp_path, base="local-sim-2tp4-1tp8.json", prefill=("127.0.0.2",),
                                      decode=("127.0.0.3",)))
    with LiveCluster(cfg, plan.plan(cfg, "llama-70b", run_id="r"), tmp_path / "run") as cluster:
        cluster.bring_up()
        got = [(p.key, server_info(p.url)) for p in (*cluster.deployment.servers("prefill"),
                                                        *cluster.deployment.servers("decode"))]
    assert [(key, i["tp_size"], i["base_gpu_id"], i["port"]) for key, i in got] == [
        ("prefill_0", 4, 0, cfg.prefill_port), ("prefill_1", 4, 4, cfg.prefill_port + 1),
        ("decode_0", 8, 0, cfg.decode_port)]
    assert [json.loads(i["disaggregation_ib_device"]) for _, i in got[:2]] == [
        {str(g): f"mlx5_{g}" for g in range(4)}, {str(g): f"mlx5_{g}" for g in range(4, 8)}]
    assert got[1][1]["disaggregation_bootstrap_port"] == cfg.kv_transfer.bootstrap_port + 1


@pytest.mark.integration
def test_a_dp16_attention_decode_over_two_nodes_runs_behind_one_prefill(tmp_path: Path) -> None:
    path = sim_config(tmp_path, base="local-sim-dp16.json", prefill=("127.0.0.2",), decode=("127.0.0.3", "127.0.0.4"),
                      prefill_coordinator_port=str(free_port("127.0.0.2")),
                      decode_coordinator_port=str(free_port("127.0.0.3")))
    cfg = plan.load_config(path)
    with LiveCluster(cfg, plan.plan(cfg, "deepseek-r1", run_id="r"), tmp_path / "run") as cluster:
        cluster.bring_up()
        decode = [p for p in cluster.deployment.role("decode")]
        (head,) = cluster.deployment.servers("decode")
        info = server_info(head.url)
    assert [(p.node, p.node_rank) for p in decode] == [("127.0.0.3", 0), ("127.0.0.4", 1)]
    assert (info["tp_size"], info["nnodes"], info["disaggregation_mode"]) == (16, 2, "decode")
    argv = head.argv
    assert argv[argv.index("--attn-dp-size") + 1] == "16"
