"""`sglang-pd`: validate a cluster config, print its plan, bring a cluster up or down, clean up."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Sequence

from . import config as config_mod
from . import plan as plan_mod
from . import interrupts, nic, redact, slurm
from .hosts import HostError
from .runtime import RuntimeFailure

PLAN_RUN_ID = "RUN_ID"


def deployment_json(dep: plan_mod.Deployment) -> dict:
    """The plan of one model as JSON, secrets masked."""
    return {
        "containers": [{
            "key": c.key, "node": c.node, "name": c.name, "image": c.image, "devices": list(c.devices),
            "volumes": dict(c.volumes), "env": redact.env(c.env), "shm_size": c.shm_size,
            "network_mode": c.network_mode, "ipc_mode": c.ipc_mode, "cap_add": list(c.cap_add),
            "labels": dict(c.labels), "command": list(c.command),
        } for c in dep.containers],
        "processes": [{
            "key": p.key, "role": p.role, "node": p.node, "container": p.container,
            "argv": redact.argv(p.argv), "env": redact.env(p.env),
            "secret_env": {k: f"{redact.MASK} (read on the node from {v})" for k, v in p.secret_env_files.items()},
            "port": p.port, "bootstrap_port": p.bootstrap_port, "log_path": p.log_path,
            **({"gpus": list(p.gpus), "nics": list(p.nics)} if p.role in plan_mod.WORKER_ROLES else {}),
        } for p in (*dep.processes, *dep.bench)],
        "prechecks": [{"node": c.node, "kind": c.kind, "argv": list(c.argv), "passed": c.passed, "failed": c.failed}
                      for c in dep.prechecks],
        "router_url": dep.router_url,
        "sglang_version": dep.sglang_version,
        "tests": {t.name: {"concurrency": list(t.max_concurrency), "unbounded": t.unbounded}
                  for t in dep.model.tests},
    }


def gpu_range(gpus: tuple[int, ...]) -> str:
    """(4, 5, 6, 7) -> "4-7"; a single GPU as its id."""
    return f"{gpus[0]}-{gpus[-1]}" if len(gpus) > 1 else str(gpus[0])


def _transfer_text(dep: plan_mod.Deployment) -> str:
    if dep.aggregated:
        return "aggregated (no KV transfer)"
    if dep.decode_alone:
        return "decode alone (kv fake: no prefill, no router)"
    return f"kv {dep.kv_backend}"


def deployment_text(dep: plan_mod.Deployment) -> str:
    lines = [f"model {dep.model.id} ({dep.model.model}): engine {dep.engine}, runtime {dep.runtime}, "
             f"{_transfer_text(dep)}, {'router' if dep.has_router else 'requests straight to'} {dep.router_url}, "
             f"planned for sglang {dep.sglang_version}"]
    for role in dep.worker_roles:
        procs = dep.role(role)
        spans = any(p.node_rank for p in procs)
        lines.append(f"  layout {role}: {dep.model.layout(role).describe()} on "
                     f"{', '.join(dict.fromkeys(p.node for p in procs))}" + (" (one instance over them)" if spans else ""))
    lines += [f"  test {t.name}: {concurrency_text(t)}" for t in dep.model.tests]
    containers = {c.key: c for c in dep.containers}
    for p in (*dep.processes, *dep.bench):
        lines.append(f"  [{p.key}] role={p.role} node={p.node}" + (f" port={p.port}" if p.port else "")
                     + (f" bootstrap={p.bootstrap_port}" if p.bootstrap_port and p.serves_http else "")
                     + (f" gpus={gpu_range(p.gpus)}" if p.gpus else "") + (f" nics={','.join(p.nics)}" if p.nics else ""))
        c = containers.get(p.container or "")
        if c:
            lines.append(f"    container {c.name} image={c.image} devices={','.join(c.devices) or '-'} "
                         f"shm={c.shm_size or '-'} network={c.network_mode} ipc={c.ipc_mode}")
            for host_path, cont_path in c.volumes.items():
                lines.append(f"      volume {host_path} -> {cont_path}")
        for k, v in sorted(redact.env(p.env).items()):
            lines.append(f"    env {k}={v}")
        for k, v in p.secret_env_files.items():
            lines.append(f"    env {k}={redact.MASK} (read on the node from {v})")
        lines.append(f"    $ {shlex.join(redact.argv(p.argv))}")
        lines.append(f"    log {p.log_path}")
    for c in dep.prechecks:
        lines.append(f"  [precheck {c.kind}] node={c.node}: {c.passed}\n    $ {shlex.join(c.argv)}")
    return "\n".join(lines)


def concurrency_text(test: config_mod.InferenceTest) -> str:
    """The concurrency a test runs at, e.g. ``concurrency 3000 (no --max-concurrency: every prompt at once)``."""
    values = ", ".join(str(c) for c in test.max_concurrency)
    return f"concurrency {values}" + (" (no --max-concurrency: every prompt at once)" if test.unbounded else "")


def _load(path: str) -> config_mod.ClusterConfig:
    """The config with the plan's checks too (as the pytest plugin loads it); every problem, then exit 1.
    Warnings (limits that cannot be met) go to stderr."""
    try:
        cfg = plan_mod.load_config(path)
    except config_mod.ConfigError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(1) from None
    return cfg


def warning_lines(cfg: config_mod.ClusterConfig, models: Sequence[str] | None = None) -> list[str]:
    """The config's warnings; with ``models``, those of the cluster and of these models only."""
    mine = [config_mod.json_path("$.benchmark_params", m) for m in models or ()]
    return [f"warning: {w}" for w in cfg.warnings
            if models is None or not w.path.startswith("$.benchmark_params") or w.path.startswith(tuple(mine))]


def nic_text(cfg: config_mod.ClusterConfig) -> str | None:
    """What the config's nic_type adds to the plan."""
    profile = nic.profile(cfg.nic_type)
    if profile is None:
        return None
    mounts = plan_mod.nic_mounts(cfg)
    return (f"nic_type {cfg.nic_type}: {profile.vendor}, verbs provider {profile.provider}, GID index "
            f"{plan_mod.gid_index(cfg) if plan_mod.gid_index(cfg) is not None else 'unset'}, "
            + (f"{len(mounts)} provider file(s) mounted into each worker container" if mounts
               else "no provider mounts" + (" (simulated workers)" if cfg.simulated and profile.mounts else "")))


def cmd_validate(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    nodes = f"{len(cfg.prefill_nodes)} prefill, {len(cfg.decode_nodes)} decode node(s)"
    if cfg.transport == "slurm":
        nodes = f"{config_mod.slurm_nodes_needed(cfg)} node(s) of a Slurm allocation" + (
            f" ({nodes} named)" if cfg.prefill_nodes or cfg.decode_nodes else "")
    models = ", ".join(m.id if m.mode == config_mod.DISAGGREGATED else f"{m.id} ({m.mode})" for m in cfg.models)
    print(f"{cfg.source}: OK ({nodes}; models: {models}; engine {cfg.engine}, runtime {cfg.runtime}, "
          f"kv {cfg.kv_transfer.backend})")
    for line in warning_lines(cfg):
        print(line, file=sys.stderr)
    return 0


def _unknown_model(cfg: config_mod.ClusterConfig, models: list[str]) -> bool:
    """True (and said on stderr) when a model is not one of the config's."""
    unknown = [m for m in models if m not in cfg.model_ids]
    if unknown:
        print(f"unknown model {unknown[0]!r}; the config has: {', '.join(cfg.model_ids)}", file=sys.stderr)
    return bool(unknown)


def cmd_plan(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    models = [args.model] if args.model else list(cfg.model_ids)
    if _unknown_model(cfg, models):
        return 1
    from .cluster import node_access

    try:
        cfg = slurm.planned(cfg)
    except slurm.SlurmError as exc:
        print(f"{cfg.source}: {exc}", file=sys.stderr)
        return 1
    deps = [plan_mod.plan(cfg, m, run_id=args.run_id) for m in models]
    access = node_access(cfg, [s.node for d in deps for s in (*d.processes, *d.containers, *d.bench)])
    steps = {d.model.id: slurm.steps_text(cfg, d) for d in deps} if cfg.transport == "slurm" else {}
    if args.format == "json":
        models_json = {d.model.id: deployment_json(d) for d in deps}
        for model, text in steps.items():
            models_json[model]["slurm"] = text.splitlines()
        print(json.dumps({"nodes": access, "warnings": [str(w) for w in cfg.warnings], "models": models_json},
                         indent=2))
    else:
        head = "\n".join(filter(None, [access_text(access), nic_text(cfg), *warning_lines(cfg, models)]))
        print("\n\n".join([head, *(deployment_text(d) + ("\n" + steps[d.model.id] if steps else "") for d in deps)]))
    return 0


def access_text(access: list[dict]) -> str:
    """How each node is reached, one line a node."""
    lines = ["nodes (how each is reached):"]
    for a in access:
        if a["transport"] == "local":
            lines.append(f"  {a['node']}: local (this machine)")
        elif a["transport"] == "slurm":
            lines.append(f"  {a['node']}: slurm node {a['slurm_node']} of allocation {a['job_id']} (srun steps)")
        else:
            key = f"key {a['key_file']}" if a["key_file"] else "default keys / ssh-agent"
            lines.append(f"  {a['node']}: ssh {a['user']}@{a['node']}:{a['port']}, {key}, "
                         f"connect timeout {a['connect_timeout_s']:g} s")
    return "\n".join(lines)


def cmd_up(args: argparse.Namespace) -> int:
    from . import cluster

    cfg = _load(args.config)
    model = args.model or cfg.model_ids[0]
    if _unknown_model(cfg, [model]):
        return 1
    run_id = args.run_id if args.run_id != PLAN_RUN_ID else plan_mod.default_run_id()
    run_dir = Path(args.results_dir) / run_id
    try:
        with slurm.allocation(cfg, run_id, say=_say_on_stderr) as alloc:
            dep = plan_mod.plan(alloc.cfg, model, run_id=run_id)
            live = cluster.LiveCluster(alloc.cfg, dep, run_dir, say=_say_on_stderr)
            with live:
                live.bring_up()
                live.detach()  # leaving the context now copies the logs and disconnects; the cluster stays up
            alloc.keep = True  # released by sglang-pd down / cleanup
    except (cluster.ClusterError, HostError, RuntimeFailure, slurm.SlurmError) as exc:
        print(f"bring-up failed (everything started was stopped):\n{exc}", file=sys.stderr)
        return 1
    services = {"store": [s.url for s in live.deployment.role("store")]}
    print(up_summary(model, live.router_url if live.deployment.has_router else None, {**services, **live.worker_urls}, live.startup_seconds, run_dir))
    return 0


def _say_on_stderr(line: str, level: int) -> None:
    if level == 0:
        print(line, file=sys.stderr, flush=True)


def up_summary(model: str, router_url: str | None, worker_urls: dict[str, list[str]], startup_s: dict[str, float],
               run_dir: Path) -> str:
    """What `sglang-pd up` brought up: the router (none: decode alone), each role's URLs (the store's services too) and start-up time, the
    logs, how to stop it."""
    def took(key: str) -> str:
        return f"ready after {startup_s[key]:.1f} s" if key in startup_s else ""

    rows = [("router", router_url, took("router"))] if router_url else []
    rows += [(role, url, took(role) if i == 0 else "") for role in ("store", *plan_mod.WORKER_ROLES)
             for i, url in enumerate(worker_urls.get(role, []))]
    width = max(len(url) for _, url, _ in rows)
    lines = [f"cluster of {model} is up"]
    lines += [f"  {role:<8} {url:<{width}}  {when}".rstrip() for role, url, when in rows]
    lines += [f"  logs     {run_dir / 'logs'} (copied now; each process keeps writing its own on its node)",
              f"  stop it: sglang-pd down {run_dir}"]
    return "\n".join(lines)


def cmd_down(args: argparse.Namespace) -> int:
    from . import cluster, kept_clusters

    path = Path(args.run_dir)
    state = path / cluster.STATE_FILE if path.is_dir() else path
    if not state.is_file():
        print(f"no {cluster.STATE_FILE} in {args.run_dir}: not a run folder of this suite", file=sys.stderr)
        return 1
    for line in kept_clusters.down(state):
        print(f"stopped {line}")
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    """Containers this suite left on the config's nodes, kept runs under the results folder, and (transport slurm)
    every allocation the suite made for this user (jobs named sglang-pd-<run id>)."""
    from . import cluster, kept_clusters
    from .runtime import find_leftover_containers

    cfg = _load(args.config)
    count = 0
    for state in sorted(Path(args.results_dir).glob(f"*/{cluster.STATE_FILE}")) + \
            sorted(Path(args.results_dir).glob(f"*/*/{cluster.STATE_FILE}")):
        data = json.loads(state.read_text())
        if not data.get("stopped") and Path(data["config"]).resolve() == Path(cfg.source).resolve():
            for line in kept_clusters.down(state):
                print(f"stopped {line}")
                count += 1
    if cfg.transport == "slurm":
        released = slurm.leftover_jobs()
        for job, name in released:
            slurm.release(job)
            print(f"released slurm allocation {job} ({name})")
        print(f"cleanup: {len(released)} allocation(s) of the suite released")
    elif cfg.runtime == "docker":
        stores = (plan_mod.store_node(cfg, m) for m in cfg.models if m.hicache.enabled)
        nodes = sorted({*cfg.prefill_nodes, *cfg.decode_nodes, cfg.router_node, cfg.benchmark_node, *stores})
        hosts = cluster.connect_nodes(cfg, nodes)
        docker_rt = cluster.runtime_of(cfg, hosts)
        try:
            for node in nodes:
                engine = docker_rt.engine(node)
                for c in find_leftover_containers(engine, docker_rt.owner):
                    engine.remove(c.id)
                    print(f"removed container {c.name} on {node}")
                    count += 1
        finally:
            docker_rt.teardown()
            for h in hosts.values():
                h.close()
    print(f"cleanup: {count} left-over process(es)/container(s) removed")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    """The search for the best layout under an SLA (docs/tune.md)."""
    from . import tune
    from .tune import output, sla, store

    cfg = _load(args.config)
    if _unknown_model(cfg, [args.model or cfg.model_ids[0]]):
        return 1
    try:
        plan, raw = tune.plan_of(cfg, args)
    except sla.TuneError as exc:
        print(f"sglang-pd tune: {exc}", file=sys.stderr)
        return 1
    print(plan.text(), flush=True)
    if args.dry_run:
        return 0
    results = Path(args.results_dir or "reports/tune")
    data, winner = tune.run(plan, raw, cfg, results, prompts_per_user=args.prompts_per_user,
                            say=lambda line: print(line, flush=True))
    print(output.summary(data))
    print(f"report {results / output.REPORT_FILE}; results {results / store.RESULTS_FILE}")
    if winner is None:
        print("no layout met the SLA: no winner config written", file=sys.stderr)
        return 1
    print(f"winner config {winner} (pytest --cluster-config={winner})")
    return 0


def _tune_arguments(p: argparse.ArgumentParser) -> None:
    from .tune import add_arguments

    add_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sglang-pd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate", help="check a cluster config; list every problem")
    p.add_argument("config")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("schema", help="print the config format's JSON Schema (made from the keys' descriptions)")
    p.set_defaults(func=lambda args: print(json.dumps(config_mod.schema(), indent=2)) or 0)
    p = sub.add_parser("keys", help="print the table of every config key: kind, default, range, where it takes effect")
    p.set_defaults(func=lambda args: print(config_mod.key_table(), end="") or 0)
    p = sub.add_parser("plan", help="print the containers and commands the suite would run on each node")
    p.add_argument("config")
    p.add_argument("--model", help="only this model id")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--run-id", default=PLAN_RUN_ID, help="run id to show in names and paths (default: RUN_ID)")
    p.set_defaults(func=cmd_plan)
    p = sub.add_parser("up", help="bring a cluster up and leave it running (like pytest --keep-cluster)")
    p.add_argument("config")
    p.add_argument("--model", help="model id (default: the first)")
    p.add_argument("--results-dir", default="reports")
    p.add_argument("--run-id", default=PLAN_RUN_ID)
    p.set_defaults(func=cmd_up)
    p = sub.add_parser("down", help="stop a kept cluster from its run folder (RESULTS/RUN_ID)")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_down)
    p = sub.add_parser("cleanup", help="remove what this suite left behind for a config (containers by label, kept runs)")
    p.add_argument("config")
    p.add_argument("--results-dir", default="reports")
    p.set_defaults(func=cmd_cleanup)
    p = sub.add_parser("tune", help="search the layouts that fit the nodes for the best tok/s per GPU under an SLA")
    p.add_argument("config")
    _tune_arguments(p)
    p.set_defaults(func=cmd_tune)
    p = sub.add_parser("sim", help="run one simulated SGLang worker (the flags of sglang.launch_server)", add_help=False)
    p.set_defaults(func=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sim"]:
        from .sim.launch_server import main as sim_main

        return sim_main(argv[1:]) or 0
    args = build_parser().parse_args(argv)
    try:
        with interrupts.sigterm_interrupts():  # `kill`, a Jenkins abort: what `up` or `tune` started is stopped
            return args.func(args)
    except BrokenPipeError:  # `sglang-pd plan ... | head`: the reader has what it wanted
        sys.stderr.close()
        return 0
    except KeyboardInterrupt as exc:
        print(f"sglang-pd {args.command}: interrupted ({str(exc) or 'Ctrl-C'})", file=sys.stderr)
        return interrupts.exit_code(exc)


if __name__ == "__main__":
    sys.exit(main())
