"""`sglang-pd`: validate a cluster config, print its plan, bring a cluster up or down, clean up."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Sequence

from . import config as config_mod
from . import plan as plan_mod
from . import redact

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
        } for p in (*dep.processes, *plan_mod.bench_processes(dep))],
        "router_url": dep.router_url,
    }


def deployment_text(dep: plan_mod.Deployment) -> str:
    lines = [f"model {dep.model.id} ({dep.model.model}): engine {dep.engine}, runtime {dep.runtime}, "
             f"kv {dep.kv_backend}, router {dep.router_url}"]
    containers = {c.key: c for c in dep.containers}
    for p in (*dep.processes, *plan_mod.bench_processes(dep)):
        lines.append(f"  [{p.key}] role={p.role} node={p.node}" + (f" port={p.port}" if p.port else ""))
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
    return "\n".join(lines)


def _load(path: str) -> config_mod.ClusterConfig:
    try:
        return config_mod.load(path)
    except config_mod.ConfigError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(1) from None


def cmd_validate(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    print(f"{cfg.source}: OK ({len(cfg.prefill_nodes)} prefill, {len(cfg.decode_nodes)} decode node(s); "
          f"models: {', '.join(cfg.model_ids)}; engine {cfg.engine}, runtime {cfg.runtime}, kv {cfg.kv_transfer.backend})")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    models = [args.model] if args.model else list(cfg.model_ids)
    unknown = [m for m in models if m not in cfg.model_ids]
    if unknown:
        print(f"unknown model {unknown[0]!r}; the config has: {', '.join(cfg.model_ids)}", file=sys.stderr)
        return 1
    deps = [plan_mod.plan(cfg, m, run_id=args.run_id) for m in models]
    if args.format == "json":
        print(json.dumps({"models": {d.model.id: deployment_json(d) for d in deps}}, indent=2))
    else:
        print("\n\n".join(deployment_text(d) for d in deps))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sglang-pd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("validate", help="check a cluster config; list every problem")
    p.add_argument("config")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("plan", help="print the containers and commands the suite would run on each node")
    p.add_argument("config")
    p.add_argument("--model", help="only this model id")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument("--run-id", default=PLAN_RUN_ID, help="run id to show in names and paths (default: RUN_ID)")
    p.set_defaults(func=cmd_plan)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
