"""`sglang-pd tune` on a real Slurm (selftests/slurm_cluster.py, here with 6 nodes on 127.0.0.2..7): each deployment
in an allocation of its own, the profiles and then the chosen candidates at once, every allocation released, after an interrupt too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from pytest_sglang_pd import plan as plan_mod
from pytest_sglang_pd import tune
from pytest_sglang_pd.tune import search, sla, store
from selftests.configs import REPO
from selftests.slurm_cluster import SlurmCluster, slurm_config, throwaway_slurm

pytestmark = pytest.mark.slurm

NODES = 6  # two candidates of 1 router + 2 worker nodes each, at once
SEARCH = ["--isl", "128", "--osl", "8", "--sla", "ttft_ms<=5000", "--tp", "1,2", "--batches", "1,4",
          "--prompts-per-user", "1", "--deploy-disaggregated", "1", "--deploy-aggregated", "1"]


@pytest.fixture(scope="module")
def slurm6(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    with throwaway_slurm(tmp_path_factory.mktemp("slurm6"), n_nodes=NODES) as cluster, \
            pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(cluster.conf))
        mp.delenv("SLURM_JOB_ID", raising=False)
        yield cluster


@pytest.fixture(scope="module")
def config(slurm6: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """local-slurm.json (slurm.prefill_nodes 1 + decode_nodes 1: two worker nodes searched) with 2 GPUs a node."""
    return slurm_config(tmp_path_factory.mktemp("tune-slurm"), slurm6, gpus_per_node="2")


def test_two_profiles_then_two_candidates_run_at_once_in_allocations_of_their_own_then_squeue_is_empty(slurm6, config, tmp_path):
    results = tmp_path / "tune"
    out = subprocess.run([sys.executable, "-m", "pytest_sglang_pd.cli", "tune", str(config), *SEARCH,
                          "--results-dir", str(results)], env=slurm6.env, capture_output=True, text=True, cwd=REPO,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "profiling 2 shapes at once, each in an allocation of its own" in out.stdout  # TP1 and TP2
    assert "deploying 2 candidates at once, each in an allocation of its own" in out.stdout
    found = json.loads((results / store.RESULTS_FILE).read_text())
    assert not any(p["error"] for p in found["profiles"].values()), found["profiles"]
    records = list(found["candidates"].values())
    assert sorted(r["mode"] for r in records) == ["aggregated", "disaggregated"]
    assert all(r["done"] and "error" not in r and r["concurrency"] for r in records), records
    assert len({r["slurm_job"] for r in records}) == 2  # an allocation each
    assert len({n for r in records for n in r["slurm_nodes"].split(", ")}) == NODES  # on disjoint nodes
    assert max(r["allocated_at"] for r in records) < min(r["done_at"] for r in records)  # held at the same time
    assert slurm6.settled_jobs() == []
    winner = json.loads((results / "winner.json").read_text())["config"]
    assert winner["transport"] == "slurm" and "prefill_node_list" not in winner  # reusable: sized by counts
    assert "job_id" not in winner["slurm"]


def test_an_interrupted_search_cancels_every_allocation(slurm6, config, tmp_path):
    """Ctrl-C once both candidates are being brought up in their allocations: both allocations cancelled, the
    interrupt raised, squeue empty."""
    cfg = plan_mod.load_config(config)
    plan, raw = tune.prepare(cfg, "llama-8b", sla.Workload(128, 8), sla.parse_sla("ttft_ms<=5000"), tps=(1,),
                             batches=(1, 4), deploy_disaggregated=1, deploy_aggregated=1)
    said = []
    connecting: set[str] = set()

    def say(line: str) -> None:  # called from the candidates' threads too
        said.append(line)
        name = line.strip().split(":")[0]
        if "bring-up: connect" in line and not name.startswith("profile-") and name not in connecting:
            connecting.add(name)
            if len(connecting) == 2:  # once
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: the main thread waits for both

    live = tune.LiveTune(raw, plan.model, tmp_path, prompts_per_user=1, say=say)
    with pytest.raises(KeyboardInterrupt):
        search.search(plan, live, store.Store(tmp_path / store.RESULTS_FILE, plan.key), say=say)
    assert len([line for line in said if "cancelling allocation" in line]) == 2, "\n".join(said)
    assert slurm6.settled_jobs() == []
