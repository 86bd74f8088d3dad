"""A small layout search on the simulated cluster, through the pytest entry a CI stage runs (`pytest --tune`):
profiles of TP4 and TP8, then the best disaggregated and the best aggregated deployed and bisected; the report,
the winner config (accepted by `sglang-pd validate`), and a rerun that measures nothing again; every point of a
deployment with fresh prompts, and the workers' caches flushed between points."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import requests

from pytest_sglang_pd import plan as plan_mod
from pytest_sglang_pd import tune
from pytest_sglang_pd.tune import candidates, layouts, live, measurement, output, predict, sla, store
from pytest_sglang_pd.worker_http import flush_caches
from selftests.configs import REPO
from selftests.live import alive
from selftests.one_worker import sim_worker

pytestmark = pytest.mark.integration

CONFIG = REPO / "cluster_configs" / "local-sim-tune-h100.json"
SEARCH = ("--isl 512 --osl 16 --sla user_tok_s>=15,ttft_ms<=3000 --tp 4,8 --batches 1,4,16 --prompts-per-user 2 "
          "--deploy-disaggregated 1 --deploy-aggregated 1")


def sim_config(tmp_path: Path) -> Path:
    data = json.loads(CONFIG.read_text())
    data["config"]["sim"]["speedup"] = "10"
    config = tmp_path / "tune.json"
    config.write_text(json.dumps(data))
    return config


def run_pytest(config: Path, results: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", f"--cluster-config={config}",
                           f"--tune={SEARCH} --results-dir {results / 'tune'}", f"--results-dir={results}",
                           "-p", "no:cacheprovider", "-s"],
                          capture_output=True, text=True, cwd=REPO, timeout=900)


def test_small_search_through_pytest_then_resumed(tmp_path):
    config = sim_config(tmp_path)
    out = run_pytest(config, tmp_path)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    found = json.loads((tmp_path / "tune" / store.RESULTS_FILE).read_text())
    assert sorted(found["profiles"]) == ["4", "8"]
    for profile in found["profiles"].values():
        assert not profile["error"] and len(profile["itl_ms"]) == 3 and len(profile["ttft_ms"]) == 2
        assert len(profile["cache_hit_rate"]) == 5 and max(profile["cache_hit_rate"].values()) <= measurement.MAX_CACHE_HIT_RATE
    modes = sorted(r["mode"] for r in found["candidates"].values())
    assert modes == ["aggregated", "disaggregated"]
    for cid, record in found["candidates"].items():
        assert record.get("concurrency"), (cid, record)
        assert record["figures"]["user_output_throughput"] >= 15 and record["figures"]["mean_ttft_ms"] <= 3000
        failed = [int(c) for c, p in record["points"].items() if not p["met"]]
        assert all(p["figures"]["cache_hit_rate"] <= measurement.MAX_CACHE_HIT_RATE for p in record["points"].values())
        assert all(c > record["concurrency"] for c in failed)  # the bisection's answer is below every miss
    html = (tmp_path / "tune" / output.REPORT_FILE).read_text()
    assert 'id="pareto-front"' in html and "best disaggregated:" in html and "best aggregated:" in html
    winner = tmp_path / "tune" / output.WINNER_FILE
    validated = subprocess.run([sys.executable, "-m", "pytest_sglang_pd.cli", "validate", str(winner)],
                               capture_output=True, text=True, cwd=REPO)
    assert validated.returncode == 0, validated.stderr
    assert "winner config" in out.stdout and "cache not flushed" not in out.stdout

    again = run_pytest(config, tmp_path)  # resumed: nothing profiled or deployed again
    assert again.returncode == 0, again.stdout[-4000:]
    assert "profiling TP" not in again.stdout and "deploying " not in again.stdout
    assert json.loads((tmp_path / "tune" / store.RESULTS_FILE).read_text())["candidates"] == found["candidates"]


def test_every_point_of_a_deployment_sends_prompts_no_earlier_point_sent(tmp_path):
    """The same concurrency measured three times on one deployment: with the prompts of one seed the second and third
    would be served from the prefix cache (cache_hit_rate near 1)."""
    raw = json.loads(sim_config(tmp_path).read_text())
    said = []
    tuner = live.LiveTune(raw, "llama-70b", tmp_path / "tune", prompts_per_user=2, say=said.append)
    layout = layouts.Layout("aggregated", aggregated=layouts.Shape(8, 1, 1))
    with tuner.deploy(layout, sla.Workload(512, 4)) as deployed:
        rates = [deployed.measure(4)["cache_hit_rate"] for _ in range(3)]
    assert max(rates) <= measurement.MAX_CACHE_HIT_RATE, rates
    assert not [line for line in said if "cache not flushed" in line]


def test_flushing_empties_a_workers_prefix_cache_and_names_a_worker_that_did_not_answer():
    body = {"text": "hello world " * 200, "sampling_params": {"max_new_tokens": 2}}
    with sim_worker() as (url, _):
        cached = [requests.post(f"{url}/generate", json=body, timeout=30).json()["meta_info"]["cached_tokens"]
                  for _ in range(2)]
        assert cached[0] == 0 and cached[1] > 300  # the same prompt again: served from the cache
        assert flush_caches({"aggregated": [url]}) == []
        assert requests.post(f"{url}/generate", json=body, timeout=30).json()["meta_info"]["cached_tokens"] == 0
    [problem] = flush_caches({"decode": [url]})  # the worker is gone now
    assert problem.startswith(f"decode {url}/flush_cache: ConnectionError")


def test_a_dp_attention_profile_deploys_its_instances_with_dp_attention(tmp_path):
    raw = json.loads(sim_config(tmp_path).read_text())
    tuner = live.LiveTune(raw, "llama-70b", tmp_path / "tune", prompts_per_user=2, say=lambda line: None)
    profile = tuner.profile(layouts.Shape(8, 1, 1, dpa=8), sla.Workload(512, 16), (1, 4))
    assert not profile.error and sorted(profile.itl_ms) == [1, 4] and len(profile.ttft_ms) == 2
    assert (profile.name, predict.Profile.from_dict(asdict(profile)).dpa) == ("TP8 DP-attention 8", 8)
    cfg = plan_mod.load_config(tmp_path / "tune" / "configs" / "profile-tp8dpa8.json")  # what was deployed
    dep = plan_mod.plan(cfg, "llama-70b", run_id="r")
    for role in ("prefill", "decode"):
        assert "--attn-dp-size 8" in " ".join(dep.role(role)[0].argv)


def test_a_search_with_dp_attention_on_part_of_the_prefills_ranks_profiles_deploys_and_writes_its_winner(tmp_path):
    """TP8 with DP attention over 4 of its ranks on the prefill only: its profile measured apart from TP8's, the
    layout predicted from both, deployed and bisected, and the winner config carrying the prefill's DP keys."""
    config = sim_config(tmp_path)
    raw, cfg = json.loads(config.read_text()), plan_mod.load_config(config)
    found, _ = layouts.enumerate_layouts(2, 8, (8,), dp_attention_sizes=(4,))
    [lay] = [lay for lay in found if lay.prefill and lay.prefill.dpa == 4 and lay.decode.dpa == 1]
    assert lay.id == "p1xtp8dpa4-d1xtp8"
    work = sla.Workload(512, 16)
    plan = candidates.Plan("llama-70b", work, sla.parse_sla("user_tok_s>=15,ttft_ms<=3000"), [lay], [],
                           batches=(1, 4), deploy_aggregated=0)
    said = []
    data, winner = tune.run(plan, raw, cfg, tmp_path / "tune", prompts_per_user=2, say=said.append)
    assert sorted(data["profiles"]) == ["8", "8dpa4"] and not any(p["error"] for p in data["profiles"].values())
    [entry] = data["predictions"]
    prefill_ttft = predict.Profile.from_dict(data["profiles"]["8dpa4"]).ttft_at(512)
    assert entry["concurrency"] and entry["predicted"]["mean_ttft_ms"] >= prefill_ttft  # the prefill's own profile
    record = data["candidates"][lay.id]
    assert record.get("concurrency") and record["figures"]["mean_ttft_ms"] <= 3000, record
    deployed = plan_mod.plan(plan_mod.load_config(tmp_path / "tune" / "configs" / f"{lay.id}.json"), "llama-70b",
                             run_id="r")
    assert "--attn-dp-size 4" in " ".join(deployed.role("prefill")[0].argv)
    assert "--attn-dp-size" not in " ".join(deployed.role("decode")[0].argv)
    assert json.loads(winner.read_text())["benchmark_params"]["llama-70b"]["prefill"]["dp_size"] == "4"


def test_sigterm_mid_search_stops_every_process_the_search_started(tmp_path):
    """`kill` or a Jenkins abort of `sglang-pd tune`: the deployment under way is torn down (its processes were in
    groups of their own, which the signal never reached), and the exit status says SIGTERM."""
    results = tmp_path / "tune"
    search = subprocess.Popen([sys.executable, "-m", "pytest_sglang_pd.cli", "tune", str(sim_config(tmp_path)),
                               *SEARCH.split(), "--results-dir", str(results)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    try:
        running: list[int] = []
        deadline = time.monotonic() + 120
        while len(running) < 2 and time.monotonic() < deadline and search.poll() is None:
            time.sleep(0.2)
            running = [p["pid"] for p in recorded_processes(results) if alive(p["pid"])]
        assert len(running) >= 2, f"no deployment came up: {running}\n" + (search.communicate()[0] if search.poll() is not None else "")
        search.send_signal(signal.SIGTERM)
        out, _ = search.communicate(timeout=90)
    finally:
        if search.poll() is None:
            search.kill()
    assert search.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert "sglang-pd tune: interrupted (received signal SIGTERM)" in out
    left = [f"{p['key']} (pid {p['pid']})" for p in recorded_processes(results) if alive(p["pid"])]
    assert not left, f"left running: {left}\n{out[-3000:]}"


def recorded_processes(results: Path) -> list[dict]:
    """Every process the deployments of a search recorded in their run folders."""
    out = []
    for path in results.glob("runs/*/cluster-state.json"):
        try:
            out += json.loads(path.read_text())["processes"]
        except ValueError:  # being replaced this moment
            continue
    return out
