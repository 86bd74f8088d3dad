"""Every planned command is one the planned SGLang release accepts: 0.5.23's forms parsed by the real sglang 0.5.23
parsers (the tools venv of `scripts/setup --bench-tools`), 0.5.7's by 0.5.7's own argument definitions read from
its wheel (selftests/wheel_args.py)."""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import pytest

from pytest_sglang_pd import config, plan
from pytest_sglang_pd.cluster import ClusterError, LiveCluster
from selftests import wheel_args
from selftests.configs import raw, sim_config, tools_python, tools_venv

LAYOUTS = {
    "per_node-mooncake": {},
    "per_node-nixl": {"kv_transfer": {"backend": "nixl"}},
    "multi_node-mooncake": {"instance_layout": "multi_node", "prefill_coordinator_addr": "mi35x-node02",
                            "decode_coordinator_addr": "mi35x-node04"},
    "multi_node-nixl": {"instance_layout": "multi_node", "prefill_coordinator_addr": "mi35x-node02",
                        "decode_coordinator_addr": "mi35x-node04", "kv_transfer": {"backend": "nixl"}},
}


def deployments(release: str | None = None) -> list[plan.Deployment]:
    """mi35x-example.json in every layout, each model with DP attention and a decode-alone test too, planned for
    ``release``."""
    out = []
    for overrides in LAYOUTS.values():
        data = raw("mi35x-example.json")
        data["config"].update(overrides)
        for model in data["benchmark_params"].values():
            model["dp_attention"] = "8"
            model["inference_tests"]["decode_alone"] = {"data_set_name": "random", "mode": "decode_alone",
                                                        "max_concurrency": "1024", "output_length": "1000"}
        cfg = config.from_dict(data, user="sgl")
        out += [plan.plan(cfg, m, run_id="r", sglang_version=release) for m in cfg.model_ids]
    return out


def commands(deps: list[plan.Deployment]) -> list[tuple[str, ...]]:
    return [p.argv for d in deps for p in (*d.processes, *d.bench) if p.role != "router"]


def tool_of(argv: tuple[str, ...]) -> str:
    return {"sglang.launch_server": "worker", "sglang.test.few_shot_gsm8k": "few_shot_gsm8k"}.get(argv[2], "bench_serving")


# ------------------------------------------------------------------ 0.5.7: its own definitions, read from its wheel

@pytest.fixture(scope="module")
def defs_0_5_7() -> dict:
    return json.loads((wheel_args.FIXTURES / "sglang-0.5.7-args.json").read_text())


def errors_0_5_7(defs: dict, argvs: list[tuple[str, ...]]) -> list[str]:
    parsers = {name: wheel_args.parser(defs[name]) for name in wheel_args.SOURCES}
    out = []
    for argv in argvs:
        try:
            _, unknown = parsers[tool_of(argv)].parse_known_args(list(argv[3:]))
        except argparse.ArgumentError as exc:
            out.append(f"{argv[2]}: {exc}")
            continue
        if unknown:
            out.append(f"{argv[2]}: unrecognized arguments {unknown}")
    return out


def test_the_0_5_7_plan_is_accepted_by_0_5_7s_argument_definitions(defs_0_5_7: dict) -> None:
    deps = deployments("0.5.7")
    argvs = commands(deps)
    assert {tool_of(a) for a in argvs} == {"worker", "bench_serving", "few_shot_gsm8k"}
    assert errors_0_5_7(defs_0_5_7, argvs) == []
    assert {a[2] for a in argvs if tool_of(a) == "bench_serving"} == {"sglang.bench_serving"}
    # few_shot_gsm8k 0.5.7 joins f"{host}:{port}": the host must carry the scheme
    assert defs_0_5_7["few_shot_gsm8k_url"] == "joined"
    hosts = {a[a.index("--host") + 1] for a in argvs if tool_of(a) == "few_shot_gsm8k"}
    assert hosts == {"http://mi35x-node01"}
    # decode alone: straight to the first decode worker; 0.5.7's bench_serving has no --fake-prefill
    alone = [a for d in deps for p in d.bench if p.key.startswith("bench_decode_alone") for a in [p.argv]]
    assert alone and all("--fake-prefill" not in a and a[a.index("--host") + 1] == d.servers("decode")[0].host
                         for d, a in zip(deps, alone))
    assert {a[a.index("--extra-request-body") + 1] for a in alone} == {
        '{"bootstrap_host": "2.2.2.2", "bootstrap_room": 0}'}


def test_0_5_23s_forms_are_refused_by_0_5_7(defs_0_5_7: dict) -> None:
    """The check can fail: 0.5.23's DP-attention flag does not exist in 0.5.7."""
    errors = errors_0_5_7(defs_0_5_7, [a for a in commands(deployments("0.5.23")) if tool_of(a) == "worker"])
    assert errors and all("--attn-dp-size" in e for e in errors)


@pytest.mark.integration
def test_the_kept_0_5_7_definitions_are_what_its_wheel_says(defs_0_5_7: dict) -> None:
    defs, source = wheel_args.release_definitions("0.5.7")
    if source != "the sglang 0.5.7 wheel":
        pytest.skip(f"the sglang 0.5.7 wheel could not be downloaded; the kept {source} stood in")
    assert defs == defs_0_5_7


# ------------------------------------------------------------------ 0.5.23: the real parsers, in the tools venv

def parse_with_real_sglang(argvs: list[tuple[str, ...]]) -> list[dict]:
    done = subprocess.run([tools_python(), str(Path(__file__).with_name("parse_with_sglang.py"))],
                          input=json.dumps([list(a) for a in argvs]), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.integration
def test_every_planned_command_is_accepted_by_the_real_0_5_23_parsers() -> None:
    deps = deployments()
    argvs = commands(deps)
    # the check can fail: 0.5.7's host form, given to 0.5.23, makes http://http://...
    wrong = next(a for a in commands(deployments("0.5.7")) if tool_of(a) == "few_shot_gsm8k")
    got = parse_with_real_sglang([*argvs, wrong])
    assert [(a[2], g["error"]) for a, g in zip(argvs, got) if g["error"]] == []
    routers = {d.router.host for d in deps}
    urls = {g["url"] for a, g in zip(argvs, got) if tool_of(a) == "few_shot_gsm8k"}
    assert urls == {f"http://{h}:8000" for h in routers}  # not http://http://...
    assert got[-1]["url"].startswith("http://http://")
    alone = [(d, a) for d in deps for p in d.bench if p.key.startswith("bench_decode_alone") for a in [p.argv]]
    assert alone and all("--fake-prefill" in a and a[a.index("--port") + 1] == str(d.servers("decode")[0].port)
                         for d, a in alone)


@pytest.mark.integration
def test_the_wheel_reader_agrees_with_the_real_0_5_23_parser() -> None:
    """wheel_args reads 0.5.23's bench_serving source (plain add_argument calls, as 0.5.7's files are) as the real
    parser does: it accepts the planned commands and refuses the same wrong flag and wrong choice."""
    tools_python()
    site = next(tools_venv().glob("lib/python*/site-packages"))
    read = wheel_args.parser(wheel_args.definitions((site / "sglang" / "benchmark" / "serving.py").read_text()))
    bench = [a for a in commands(deployments()) if tool_of(a) == "bench_serving"]
    bad = [(*bench[0], "--no-such-flag"), (*bench[0], "--dataset-name", "no-such-dataset")]
    real = parse_with_real_sglang([*bench, *bad])
    assert [g["error"] for g in real[:len(bench)]] == [None] * len(bench)
    assert all(g["error"] for g in real[len(bench):])
    for argv in bench:
        assert read.parse_known_args(list(argv[3:]))[1] == []
    assert read.parse_known_args(list(bad[0][3:]))[1] == ["--no-such-flag"]
    with pytest.raises(argparse.ArgumentError, match="invalid choice"):
        read.parse_known_args(list(bad[1][3:]))


# ------------------------------------------------------------------ the release found before the workers start, confirmed after

@pytest.mark.integration
def test_the_release_is_probed_from_the_workers_python_and_the_plan_follows_it(tmp_path: Path) -> None:
    python = tools_python()  # a python with the real sglang 0.5.23 installed, as an image's
    cfg = plan.load_config(sim_config(tmp_path, engine="sglang", python=python, bench_client="sglang"))
    with LiveCluster(cfg, plan.plan(cfg, "llama-8b", run_id="r", sglang_version="0.5.7"), tmp_path / "run") as cluster:
        cluster.connect()
        assert cluster.probe_release() == "0.5.23"
        gsm8k = next(p.argv for p in cluster.deployment.bench if "few_shot_gsm8k" in p.argv[2])
        assert cluster.deployment.sglang_version == "0.5.23" and gsm8k[gsm8k.index("--host") + 1] == "127.0.0.1"


@pytest.mark.integration
def test_a_config_release_other_than_the_images_is_a_clear_error(tmp_path: Path) -> None:
    python = tools_python()
    cfg = plan.load_config(sim_config(tmp_path, engine="sglang", python=python, sglang_version="0.5.7"))
    with LiveCluster(cfg, plan.plan(cfg, "llama-8b", run_id="r"), tmp_path / "run") as cluster:
        cluster.connect()
        with pytest.raises(ClusterError) as info:
            cluster.probe_release()
    assert str(info.value) == (f"$.config.sglang_version is 0.5.7, but {python} on node 127.0.0.1 has sglang 0.5.23: "
                               "set it to 0.5.23 (or remove it: the suite plans for the release it finds)")


@pytest.mark.integration
def test_workers_that_report_another_release_than_planned_fail_the_bring_up(tmp_path: Path) -> None:
    cfg = plan.load_config(sim_config(tmp_path, sglang_version="0.5.7"))  # the simulator reports 0.5.23
    with pytest.raises(ClusterError, match=r"planned for sglang 0\.5\.7, but on /server_info the decode workers "
                                           r"report 0\.5\.23, prefill workers report 0\.5\.23"):
        with LiveCluster(cfg, plan.plan(cfg, "llama-8b", run_id="r"), tmp_path / "run") as cluster:
            cluster.bring_up(smoke=False)


# ------------------------------------------------------------------ the seeds' layouts, as the real parser reads them

SEED_LAYOUTS = ("local-sim-2tp4-1tp8.json", "pd-dp16-example.json")  # 2 x TP4 + 1 x TP8; 1 prefill + DP16 over 2


def seed_layout_workers(release: str) -> list[plan.ProcessSpec]:
    """The worker processes of the seeds' layouts planned for the real engine and ``release``."""
    out = []
    for name in SEED_LAYOUTS:
        data = raw(name)
        data["config"].update(engine="sglang", runtime="docker", container_image="sglang:placeholder")
        cfg = config.from_dict(data, user="sgl")
        out += [p for m in cfg.model_ids for p in plan.plan(cfg, m, run_id="r", sglang_version=release).processes
                if p.role != "router"]
    return out


def test_the_seed_layouts_in_0_5_7s_form_are_accepted_by_0_5_7s_definitions(defs_0_5_7: dict) -> None:
    workers = seed_layout_workers("0.5.7")
    assert errors_0_5_7(defs_0_5_7, [p.argv for p in workers]) == []
    dp16 = [p.argv for p in workers if "--dp-size" in p.argv]
    assert dp16 and all(a[a.index("--dp-size") + 1] == "16" and "--enable-dp-attention" in a for a in dp16)


# SGLang's own reading of --disaggregation-ib-device: which NICs each GPU of each planned worker gets
_IB_DEVICES_PER_GPU = """
import json, sys
from sglang.srt.distributed.device_communicators.mooncake_transfer_engine import get_ib_devices_for_gpu
print(json.dumps([{str(g): get_ib_devices_for_gpu(value, g) for g in gpus} for value, gpus in json.load(sys.stdin)]))
"""


@pytest.mark.integration
def test_the_seed_layouts_are_accepted_by_the_real_0_5_23_parser_and_its_ib_device_reading() -> None:
    workers = seed_layout_workers("0.5.23")
    got = parse_with_real_sglang([p.argv for p in workers])
    assert [(p.key, g["error"]) for p, g in zip(workers, got) if g["error"]] == []
    values = [(p.argv[p.argv.index("--disaggregation-ib-device") + 1], list(p.gpus)) for p in workers]
    done = subprocess.run([tools_python(), "-c", _IB_DEVICES_PER_GPU], input=json.dumps(values), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    per_gpu = json.loads(done.stdout)
    prefills = [(p, nics) for p, nics in zip(workers, per_gpu) if p.role == "prefill" and p.node == "127.0.0.2"]
    assert [p.gpus for p, _ in prefills] == [(0, 1, 2, 3), (4, 5, 6, 7)]  # the two TP4 instances of one node
    assert [sorted(nics.values()) for _, nics in prefills] == [[f"mlx5_{g}" for g in range(4)],
                                                               [f"mlx5_{g}" for g in range(4, 8)]]
    for p, nics in zip(workers, per_gpu):
        assert sorted(nics.values()) == sorted(p.nics), p.key  # what SGLang reads is what the plan shows
    decode = [p for p in workers if p.role == "decode" and "--attn-dp-size" in p.argv]
    assert [(p.node, p.argv[p.argv.index("--node-rank") + 1]) for p in decode] == [("dp-node02", "0"),
                                                                                   ("dp-node03", "1")]
