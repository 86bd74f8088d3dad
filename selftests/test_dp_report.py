"""The DP layout and the per-rank load in the reports: SGLang 0.5.23's DP-attention metrics (labels by dp_rank)
parsed from a Prometheus exposition, the per-rank figures of a benchmark, results.json, JUnit and the HTML."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pytest_sglang_pd import metrics, prom
from pytest_sglang_pd.bench import dp_load
from pytest_sglang_pd.bench.result import BenchResult
from pytest_sglang_pd.cluster_facts import layout_facts
from pytest_sglang_pd.plan import load_config, plan
from pytest_sglang_pd.report import dp_properties, html, results
from selftests.browser import probe
from selftests.configs import CONFIGS, REPO, free_port, sim_config

INFERENCE_TESTS = str(REPO / "pytest_sglang_pd" / "suite" / "test_inference.py")


def exposition(tokens: list[float], idle: list[float], active: list[float], wait_s: list[float],
               ratio_sum: float, ratio_count: float) -> str:
    """A decode worker's DP-attention metrics as prometheus_client writes them (the scheduler labels + dp_rank)."""
    lab = 'engine_type="decode",model_name="m",tp_rank="{tp}",dp_rank="{r}",pp_rank="0",moe_ep_rank="0"'
    lines = ["# HELP sglang:dp_attention_tokens_total Tokens of MLP-sync steps on this DP rank.",
             "# TYPE sglang:dp_attention_tokens_total counter"]
    for r, n in enumerate(tokens):
        lines += [f"sglang:dp_attention_tokens_total{{{lab.format(tp=r * 2, r=r)},kind=\"scheduled\"}} {n}",
                  f"sglang:dp_attention_tokens_total{{{lab.format(tp=r * 2, r=r)},kind=\"imbalance\"}} {max(tokens) - n}"]
    lines += ["# HELP sglang:dp_attention_steps_total MLP-sync steps on this DP rank.",
              "# TYPE sglang:dp_attention_steps_total counter"]
    for r, (i, a) in enumerate(zip(idle, active)):
        lines += [f"sglang:dp_attention_steps_total{{{lab.format(tp=r * 2, r=r)},rank_state=\"idle\"}} {i}",
                  f"sglang:dp_attention_steps_total{{{lab.format(tp=r * 2, r=r)},rank_state=\"active\"}} {a}"]
    lines += ["# HELP sglang:dp_attention_sync_wait_seconds Wall time of the MLP-sync all-gather.",
              "# TYPE sglang:dp_attention_sync_wait_seconds histogram"]
    for r, w in enumerate(wait_s):
        steps = idle[r] + active[r]
        lines += [f"sglang:dp_attention_sync_wait_seconds_bucket{{{lab.format(tp=r * 2, r=r)},le=\"+Inf\"}} {steps}",
                  f"sglang:dp_attention_sync_wait_seconds_count{{{lab.format(tp=r * 2, r=r)}}} {steps}",
                  f"sglang:dp_attention_sync_wait_seconds_sum{{{lab.format(tp=r * 2, r=r)}}} {w}"]
    lines += ["# HELP sglang:dp_attention_token_imbalance_ratio Per step, max over mean tokens.",
              "# TYPE sglang:dp_attention_token_imbalance_ratio histogram",
              f"sglang:dp_attention_token_imbalance_ratio_bucket{{{lab.format(tp=0, r=0)},le=\"+Inf\"}} {ratio_count}",
              f"sglang:dp_attention_token_imbalance_ratio_count{{{lab.format(tp=0, r=0)}}} {ratio_count}",
              f"sglang:dp_attention_token_imbalance_ratio_sum{{{lab.format(tp=0, r=0)}}} {ratio_sum}",
              "# HELP sglang:num_running_reqs The number of running requests.", "# TYPE sglang:num_running_reqs gauge",
              f"sglang:num_running_reqs{{{lab.format(tp=0, r=0)}}} 3.0"]
    return "\n".join(lines) + "\n"


BEFORE = exposition([100, 100, 100, 100], [0, 0, 0, 0], [10, 10, 10, 10], [0.1, 0.1, 0.1, 0.1], 10.0, 10)
AFTER = exposition([400, 200, 100, 100], [10, 10, 30, 30], [40, 40, 20, 20], [0.1, 0.3, 0.6, 0.6], 90.0, 60)
URL = "http://127.0.0.3:30001"


def test_the_dp_attention_metrics_are_read_per_dp_rank_from_a_real_exposition() -> None:
    got = prom.dp_ranks(prom.parse(AFTER))
    assert got["tokens"] == {0: 400, 1: 200, 2: 100, 3: 100}  # kind=scheduled only, not the imbalance tokens
    assert got["idle_steps"] == {0: 10, 1: 10, 2: 30, 3: 30} and got["active_steps"][2] == 20
    assert got["sync_wait_s"] == {0: 0.1, 1: 0.3, 2: 0.6, 3: 0.6}
    assert got["step_imbalance_sum"] == {-1: 90.0} and got["step_imbalance_count"] == {-1: 60}
    assert prom.dp_ranks(prom.parse("# TYPE sglang:num_running_reqs gauge\nsglang:num_running_reqs 1.0\n")) == {}


def test_a_benchmarks_per_rank_load_is_the_growth_of_each_ranks_counters() -> None:
    before, after = ({"decode": {URL: prom.dp_ranks(prom.parse(text))}} for text in (BEFORE, AFTER))
    result = BenchResult(tool="builtin", metrics={}, num_requests=1)
    found = dp_load.dp_metrics(before, after, result)
    dp = result.workers[URL]["dp"]
    assert [(r["rank"], r["tokens"], r["share"]) for r in dp["ranks"]] == [(0, 300, 0.75), (1, 100, 0.25), (2, 0, 0.0),
                                                                          (3, 0, 0.0)]
    assert [r["idle_step_fraction"] for r in dp["ranks"]] == [0.25, 0.25, 0.75, 0.75]  # 40 steps each
    assert dp["ranks"][2]["sync_wait_s"] == pytest.approx(0.5)
    # 300 tokens on the busiest rank over a mean of 100; per step (90 - 10) / (60 - 10); 80 idle of 160 rank steps
    assert found == pytest.approx({"dp_imbalance_ratio": 3.0, "dp_step_imbalance_ratio": 1.6,
                                   "dp_idle_step_fraction": 0.5, "mean_dp_sync_wait_ms": 1.2 / 160 * 1000})
    assert all(metrics.METRICS[name].direction == "max" for name in found)  # lower is better: gated as upper bounds
    assert dp_load.dp_metrics(after, after, BenchResult(tool="builtin", metrics={}, num_requests=1)) == {}  # nothing ran
    assert dp_load.dp_metrics({}, {}, result) == {}  # no worker with DP attention: nothing to show


def test_the_seed_dp16_layout_is_in_the_facts_with_gpus_nics_and_ports() -> None:
    cfg = load_config(CONFIGS / "local-sim-dp16.json")
    rows = layout_facts(plan(cfg, "deepseek-r1", run_id="r"))
    assert [(r.key, r.node, r.node_rank, r.nnodes, r.tp_size, r.dp_size, r.dp_attention, r.base_gpu_id)
            for r in rows] == [("prefill_0", "127.0.0.2", 0, 1, 8, 1, False, 0),
                               ("decode_0", "127.0.0.3", 0, 2, 16, 16, True, 0),
                               ("decode_0_rank1", "127.0.0.4", 1, 2, 16, 16, True, 0)]
    assert rows[0].bootstrap_port == 8998 and rows[1].bootstrap_port is None and rows[1].port == 30001
    assert rows[2].gpus == tuple(range(8)) and rows[2].nics == tuple(f"mlx5_{g}" for g in range(8))


def test_an_aggregated_layout_lists_its_plain_workers() -> None:
    cfg = load_config(CONFIGS / "local-sim-aggregated.json")
    rows = layout_facts(plan(cfg, cfg.model_ids[0], run_id="r"))
    assert [(r.key, r.role, r.tp_size, r.gpus, r.bootstrap_port) for r in rows] == [
        ("aggregated_0", "aggregated", 2, (0, 1), None), ("aggregated_1", "aggregated", 2, (2, 3), None)]


def test_the_report_renders_the_layout_and_the_per_rank_load(tmp_path: Path) -> None:
    before, after = ({"decode": {URL: prom.dp_ranks(prom.parse(text))}} for text in (BEFORE, AFTER))
    result = BenchResult(tool="builtin", metrics={}, num_requests=1)
    dp_load.dp_metrics(before, after, result)
    page = html.case_html(result, None, message=None, log_files={}, base_dir=tmp_path, simulated=True)
    assert "DP load of decode http://127.0.0.3:30001: 4 ranks, imbalance 3.00 (busiest rank / mean), per step 1.60" in page
    assert page.count('class="bar"') == 4 and 'style="width:120px"' in page and 'style="width:40px"' in page
    assert "75.0%" in page and "<td class=\"num\">300</td>" in page
    plain = html.case_html(BenchResult(tool="builtin", metrics={}, num_requests=1), None, message=None, log_files={},
                           base_dir=tmp_path, simulated=True)
    assert "DP load" not in plain  # a deployment without DP shows nothing of it
    props = dict(dp_properties(URL, result.workers[URL]["dp"]))
    assert props[f"dp.{URL}"].startswith("ranks 4 imbalance_ratio 3 step_imbalance_ratio 1.6 idle_step_fraction 0.5")
    assert props[f"dp.{URL}.rank1"] == "tokens 100 share 0.25 idle_step_fraction 0.25 sync_wait_s 0.2"

    cfg = load_config(CONFIGS / "local-sim-dp16.json")
    rows = [{**vars(r), "base_gpu_id": r.base_gpu_id} for r in layout_facts(plan(cfg, "deepseek-r1", run_id="r"))]
    table = html.layout_html({"deepseek-r1": rows})
    assert table.startswith("<p><b>deepseek-r1</b></p>")
    assert "<td>127.0.0.4 (node 2 of 2)</td><td class=\"num\">16</td><td>attention DP 16</td>" in table
    assert "<td>mlx5_0, mlx5_1, mlx5_2, mlx5_3, mlx5_4, mlx5_5, mlx5_6, mlx5_7</td>" in table
    assert "<td>prefill</td><td>prefill_0</td><td>127.0.0.2</td><td class=\"num\">8</td><td>-</td>" in table


@pytest.mark.integration
def test_seed_004s_dp16_run_reports_its_layout_and_the_load_of_the_decodes_16_ranks(pytester: pytest.Pytester,
                                                                                 tmp_path: Path) -> None:
    path = sim_config(tmp_path, base="local-sim-dp16.json", prefill=("127.0.0.2",), decode=("127.0.0.3", "127.0.0.4"),
                      tests=("bench_serv_random",), sim={"speedup": "20"},
                      prefill_coordinator_port=str(free_port("127.0.0.2")),
                      decode_coordinator_port=str(free_port("127.0.0.3")))
    raw = json.loads(path.read_text())
    test = raw["benchmark_params"]["deepseek-r1"]["inference_tests"]["bench_serv_random"]
    test.update(num_prompts="64", input_length="256", output_length="32", max_concurrency="32",
                expected_results={"auto": {"output_throughput_per_sec": "1", "dp_imbalance_ratio": "4"}})
    path.write_text(json.dumps(raw))
    run = pytester.runpytest_subprocess(INFERENCE_TESTS, f"--cluster-config={path}", "--run-id=dp16",
                                        f"--results-dir={pytester.path / 'reports'}", "-p", "no:cacheprovider",
                                        timeout=300)
    run.assert_outcomes(passed=1)
    assert ("sglang-pd: layout deepseek-r1: prefill 1 x TP8 per node on 1 node(s); decode 1 x TP8 per node, "
            "DP attention 16 on 2 node(s)") in run.stdout.str()
    run_dir = pytester.path / "reports" / "dp16"
    data = json.loads((run_dir / "results.json").read_text())
    results.validate(data)
    layout = data["cluster"]["layout"]["deepseek-r1"]
    assert [(p["key"], p["node"], p["tp_size"], p["dp_size"], p["dp_attention"], p["base_gpu_id"], len(p["nics"]))
            for p in layout] == [("prefill_0", "127.0.0.2", 8, 1, False, 0, 8),
                                 ("decode_0", "127.0.0.3", 16, 16, True, 0, 8),
                                 ("decode_0_rank1", "127.0.0.4", 16, 16, True, 0, 8)]
    (entry,) = data["tests"]
    dp = {url: w["dp"] for url, w in entry["workers"].items() if "dp" in w}
    (decode,) = [url for url, w in entry["workers"].items() if w["role"] == "decode"]
    assert list(dp) == [decode]  # the decode's 16 ranks; the prefill runs no DP
    ranks = dp[decode]["ranks"]
    assert [r["rank"] for r in ranks] == list(range(16)) and sum(r["share"] for r in ranks) == pytest.approx(1)
    assert all(r["tokens"] > 0 for r in ranks)  # round robin gives every rank its requests
    m = entry["metrics"]
    assert 1 <= m["dp_imbalance_ratio"] == dp[decode]["imbalance_ratio"] < 4 and 0 <= m["dp_idle_step_fraction"] < 1
    assert any(v["metric"] == "dp_imbalance_ratio" and v["passed"] for v in entry["verdicts"])

    seen = probe(run_dir / "report.html")
    (table,) = seen["layout"]
    assert table[0] == ["role", "instance", "node", "TP", "DP", "base GPU", "GPUs", "NICs", "port", "bootstrap port"]
    assert table[3][:7] == ["decode", "decode_0", "127.0.0.4 (node 2 of 2)", "16", "attention DP 16", "0", "0-7"]
    (load,) = seen["dp_load"]
    assert [row[0] for row in load[1:]] == [str(r) for r in range(16)]
    assert [float(row[2].rstrip("%")) for row in load[1:]] == pytest.approx([r["share"] * 100 for r in ranks], abs=0.06)
    junit = ET.parse(run_dir / "junit.xml")
    props = {p.get("name"): p.get("value") for p in junit.iter("property")}
    assert props[f"dp.{decode}.rank15"].startswith("tokens ") and "dp_imbalance_ratio" in props
