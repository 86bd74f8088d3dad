"""Building cluster configs for the self-tests: the shipped files, edited in memory."""

from __future__ import annotations

import copy
import os
import json
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "cluster_configs"
TEMPLATE = CONFIGS / "mi35x.json"  # the shipped real-cluster template: 13 `<changeme>` placeholders left to fill


def raw(name: str) -> dict[str, Any]:
    """A shipped config (cluster_configs/NAME) as a fresh dict."""
    return copy.deepcopy(json.loads((CONFIGS / name).read_text()))


def write(tmp_path: Path, data: dict[str, Any], name: str = "cluster.json") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2))
    return path


def free_port(*addresses: str) -> int:
    """A TCP port free on every given address at the time of asking."""
    import socket

    addresses = addresses or ("127.0.0.1",)
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind((addresses[0], 0))
            port = probe.getsockname()[1]
        try:
            for address in addresses[1:]:
                with socket.socket() as other:
                    other.bind((address, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no port free on all of {addresses}")


def sim_config(tmp_path: Path, *, prefill: tuple[str, ...] = ("127.0.0.1",), decode: tuple[str, ...] = ("127.0.0.1",),
               router: str = "127.0.0.1", tests: tuple[str, ...] | None = None, base: str = "local-sim.json",
               **config_overrides: Any) -> Path:
    """A shipped simulated config (local-sim.json unless ``base`` names another) on free ports (prefill, decode,
    bootstrap, router, prometheus), edited, written to tmp_path."""
    data = raw(base)
    c = data["config"]
    nodes = sorted({*prefill, *decode, router})
    ports = set()

    def port() -> str:
        while (p := free_port(*nodes)) in ports:
            pass
        ports.add(p)
        return str(p)

    c.update({"prefill_node_list": list(prefill), "decode_node_list": list(decode), "proxy_router_node": router,
              "benchmark_serv_node": router, "nnodes": str(len(prefill) + len(decode)),
              "prefill_serv_port": port(), "decode_serv_port": port(), "router_prometheus_port": port(),
              "log_dir": str(tmp_path / "node-logs")})
    c["proxy_router_port"] = c["proxy_router_serv_port"] = port()
    c["kv_transfer"]["bootstrap_port"] = port()
    for key, value in config_overrides.items():
        if isinstance(value, dict) and isinstance(c.get(key), dict):
            c[key].update(value)
        else:
            c[key] = value
    for model in data["benchmark_params"].values() if tests is not None else ():
        model["inference_tests"] = {k: v for k, v in model["inference_tests"].items() if k in tests}
    return write(tmp_path, data)


def _venv(variable: str, default: str) -> Path:
    venv = Path(os.environ.get(variable, default))
    return venv if venv.is_absolute() else REPO / venv


def tools_venv() -> Path:
    """The venv of the real SGLang client tools: $BENCH_TOOLS_VENV, else .bench-tools in the repository."""
    return _venv("BENCH_TOOLS_VENV", ".bench-tools")


def _python_of(venv: Path, what: str, option: str) -> str:
    """The venv's python; the calling test skips, saying how to build it, where there is none (CI builds it)."""
    import pytest

    python = venv / "bin" / "python"
    if not python.exists():
        pytest.skip(f"no {what} venv at {venv}: build it with scripts/setup {option}")
    return str(python)


def tools_python() -> str:
    return _python_of(tools_venv(), "SGLang tools", "--bench-tools")


def smg_python() -> str:
    """The python of the smg router's own venv ($SMG_VENV, else .smg in the repository)."""
    return _python_of(_venv("SMG_VENV", ".smg"), "smg router", "--dev")


GOLDENS = Path(__file__).parent / "goldens"


def assert_golden(name: str, got: str) -> None:
    """``got`` is the golden file ``selftests/goldens/<name>`` (rewritten instead with UPDATE_GOLDENS=1)."""
    path = GOLDENS / name
    if os.environ.get("UPDATE_GOLDENS"):
        path.write_text(got)
    assert got == path.read_text(), f"differs from {path}; rerun with UPDATE_GOLDENS=1 after checking the change"


def assert_plan_golden(cfg, name: str) -> None:
    """Every model's plan of ``cfg`` (as ``sglang-pd plan --format json`` shows it) is the golden ``name``."""
    from pytest_sglang_pd import plan
    from pytest_sglang_pd.cli import deployment_json

    got = {m: deployment_json(plan.plan(cfg, m, run_id="RUN")) for m in cfg.model_ids}
    assert_golden(name, json.dumps(got, indent=2, sort_keys=True) + "\n")
