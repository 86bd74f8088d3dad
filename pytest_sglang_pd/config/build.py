"""The typed config from the raw JSON: the defaults that depend on other keys filled in (bench_client,
kv_transfer.ib_devices, a mooncake_json translated), each inference test told apart and its thresholds read from
expected_results; with every problem found on the way and the warnings the config loads with."""

from __future__ import annotations

import dataclasses
import difflib
import os
from pathlib import Path
from typing import Mapping

from .. import metrics
from .checks import capacity_warnings, ignored_keys, nic_warnings
from .cluster import ClusterConfig, KVTransferSettings
from .keys import Problem, json_path, read, to_float
from .layout import DECODE_ALONE, device_map_problems, read_mooncake_json, translate_mooncake_json
from .model import InferenceTest, ModelConfig, Threshold


def build_config(raw: dict, source: str) -> tuple[ClusterConfig, list[Problem]]:
    c = raw["config"]
    problems: list[Problem] = []
    values = read(ClusterConfig, c, "$.config", problems)
    bench_client = values["bench_client"] if c.get("bench_client") else (
        "builtin" if values["engine"] == "sim" else "sglang")
    kv, mooncake_warnings = _kv_transfer(values, c, source, problems)
    ssh = values["ssh"]
    if ssh.key_file:
        ssh = dataclasses.replace(ssh, key_file=os.path.expanduser(ssh.key_file))
    serv_port = values.pop("proxy_router_serv_port")
    models = []
    for model_id, m in raw["benchmark_params"].items():
        model, model_problems = _build_model(model_id, m, bench_client)
        models.append(model)
        problems += model_problems
    values["router_args"] = (*values["router_args"], *values["router"].args)
    cfg = ClusterConfig(**{**values, "source": source, "bench_client": bench_client, "kv_transfer": kv, "ssh": ssh,
                           "benchmark_node": values["benchmark_node"] or values["router_node"],
                           "models": tuple(models)})
    cfg = dataclasses.replace(cfg, warnings=tuple(ignored_keys(raw) + nic_warnings(cfg) + capacity_warnings(cfg)
                                                  + mooncake_warnings))
    if serv_port is not None and serv_port != cfg.router_port:
        problems.append(Problem("$.config.proxy_router_serv_port",
                                f"{serv_port} differs from proxy_router_port {cfg.router_port}: "
                                "both name the one port the router serves on"))
    return cfg, problems


def _kv_transfer(values: dict, c: Mapping, source: str,
                 problems: list[Problem]) -> tuple[KVTransferSettings, list[Problem]]:
    """kv_transfer with its defaults filled in: ib_devices from nccl_ib_hca; a mooncake_json translated into the
    keys SGLang's PD path reads (what it sets explicitly wins). Returns the warnings of that translation."""
    kv = values["kv_transfer"]
    raw_kv = c.get("kv_transfer") or {}
    path = "$.config.kv_transfer.mooncake"
    problems += device_map_problems(kv.mooncake.device_map, f"{path}.device_map")
    warnings: list[Problem] = []
    if raw_kv.get("mooncake") and kv.backend not in ("mooncake", "mooncake_tcp"):
        warnings.append(Problem(path, f"is set, but kv_transfer.backend is {kv.backend!r}: not used"))
    ib_devices = kv.ib_devices if raw_kv.get("ib_devices") else ()
    if kv.mooncake.mooncake_json is not None:
        data, read_problems = read_mooncake_json(kv.mooncake.mooncake_json, Path(source).resolve().parent,
                                                 f"{path}.mooncake_json")
        translated, more, said = translate_mooncake_json(data, f"{path}.mooncake_json")
        problems += read_problems + more
        warnings += said
        ib_devices = ib_devices or translated.get("ib_devices", ())
        if kv.mooncake.protocol is None and "protocol" in translated:
            kv = dataclasses.replace(kv, mooncake=dataclasses.replace(kv.mooncake, protocol=translated["protocol"]))
    return dataclasses.replace(kv, ib_devices=ib_devices or values["nccl_ib_hca"] or values["nccl_ib_hca_list"]), warnings


def _classify(name: str, t: Mapping) -> tuple[str, str | None, str | None]:
    """(kind, dataset, problem) of an inference test from its name and keys."""
    if t.get("type") == "gsm8k" or (name.lower().startswith("gsm8k") and t.get("type") is None):
        return "gsm8k", None, None
    dataset = t.get("data_set_name")
    if any(k.startswith("gsp_") for k in t) or "shared_prefix" in name.lower():
        if dataset not in (None, "generated-shared-prefix"):
            return "bench_serving", dataset, f"has gsp_* parameters but data_set_name {dataset!r}"
        return "bench_serving", "generated-shared-prefix", None
    if dataset == "synthetic":
        dataset = "random"
    if dataset is None:
        return "bench_serving", None, ("cannot tell which benchmark this is: set \"data_set_name\" "
                                      "(random, random-ids, generated-shared-prefix, sharegpt) or \"type\": \"gsm8k\"")
    return "bench_serving", dataset, None


def _build_model(model_id: str, m: Mapping, bench_client: str) -> tuple[ModelConfig, list[Problem]]:
    base = json_path("$.benchmark_params", model_id)
    problems: list[Problem] = []
    values = read(ModelConfig, m, base, problems)
    values.pop("inference_tests")
    tests = []
    for name, t in m["inference_tests"].items():
        tpath = json_path(json_path(base, "inference_tests"), name)
        kind, dataset, problem = _classify(name, t)
        if problem:
            problems.append(Problem(tpath, problem))
        implied = {"mode": DECODE_ALONE} if values["mode"] == DECODE_ALONE else {}
        if implied and t.get("mode", DECODE_ALONE) != DECODE_ALONE:
            problems.append(Problem(json_path(tpath, "mode"), f"{t['mode']!r}: the model's mode decode_alone "
                                    f"({json_path(base, 'mode')}) deploys no prefill and no router"))
        tv = read(InferenceTest, t, tpath, problems,
                  defaults={"max_concurrency": (values["max_concurrency"],), "bench_client": bench_client, **implied})
        if t.get("num_prompts") is None and dataset == "generated-shared-prefix":  # every group's prompts
            tv["num_prompts"] = tv["gsp_num_groups"] * tv["gsp_prompts_per_group"]
        if kind == "bench_serving" and t.get("max_concurrency") is None:  # the seed suite: every prompt at once
            tv.update(unbounded=True, max_concurrency=(tv["num_prompts"],))
        for extra in ("type", "data_set_name"):
            tv.pop(extra)
        thresholds, tproblems = _thresholds(tv.pop("expected_results") or {}, values["dtype"],
                                            json_path(tpath, "expected_results"))
        problems += tproblems
        if tv.get("window") == "steady":
            thresholds = _steady(thresholds, json_path(tpath, "window"), problems)
        tests.append(InferenceTest(name=name, kind=kind, dataset=dataset, thresholds=thresholds, **tv))
    return ModelConfig(id=model_id, tests=tuple(tests), **values), problems


def _steady(thresholds: tuple[Threshold, ...], path: str, problems: list[Problem]) -> tuple[Threshold, ...]:
    """``window: steady``: each limit gates the metric's figure over the steady-state window (``steady_<name>``)."""
    out = []
    for t in thresholds:
        steady = f"steady_{t.canonical}"
        if steady not in metrics.METRICS:
            have = ", ".join(sorted(m[len("steady_"):] for m in metrics.METRICS if m.startswith("steady_")
                                    and metrics.METRICS[m].unit in ("tok/s", "req/s", "ms")))
            problems.append(Problem(path, f"{t.metric} has no steady-state figure (window steady gates: {have})"))
            continue
        out.append(dataclasses.replace(t, canonical=steady))
    return tuple(out)


def _thresholds(expected: Mapping, dtype: str, path: str) -> tuple[tuple[Threshold, ...], list[Problem]]:
    problems = []
    for dtype_key, table in expected.items():
        for metric in table:
            if metrics.canonical(metric) is None:
                hint = difflib.get_close_matches(metric, metrics.known_names(), n=1, cutoff=0.6)
                more = f"; did you mean {hint[0]!r}?" if hint else ""
                problems.append(Problem(json_path(json_path(path, dtype_key), metric),
                                        f"the suite cannot measure {metric!r}{more}"))
    if not expected:
        return (), problems
    if dtype not in expected:
        problems.append(Problem(path, f"no entry for the model's dtype {dtype!r} (have: {', '.join(expected)}); "
                                      "set the model's \"dtype\" or add that key"))
        return (), problems
    out = []
    for metric, spec in expected[dtype].items():
        canon = metrics.canonical(metric)
        if canon is None:
            continue
        if isinstance(spec, dict):
            (direction, value), = spec.items()
            out.append(Threshold(metric, canon, to_float(value), direction, True))
        else:
            out.append(Threshold(metric, canon, to_float(spec), metrics.METRICS[canon].direction, False))
    return tuple(out), problems
