"""Bring-up, readiness, KV handoff proof and teardown of a Deployment on live nodes.

The order is the one of the role fixtures (README: Bring-up, teardown and failures): nodes -> KV
transfer prechecks -> containers -> prefill and decode (started together, waited on together) ->
router -> /readiness -> a smoke request through the router that must cross prefill -> decode.
Every wait watches every process started so far: one that exits fails the wait at once with its
role, node, exit code and log tail. Teardown stops in reverse order and collects every log into
``<run_dir>/logs/<node>/<role>-<i>.log`` first.
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import requests

from . import hosts as hosts_mod
from . import plan as plan_mod
from . import prom, redact
from .config import ClusterConfig
from .facts import ClusterFacts
from .plan import Deployment, ProcessSpec
from .image import SOURCE_LABEL, source_digest
from .runtime import DockerRuntime, RunningProcess, Runtime, runtime_for

log = logging.getLogger(__name__)

POLL_S = 0.5
LOG_TAIL_LINES = 50
STATE_FILE = "cluster-state.json"


class ClusterError(RuntimeError):
    """Bring-up failed: what, where (role, node, config key) and the log tail."""


@dataclass
class KVTransferCheck:
    """What the kv_transfer precheck found, per node."""

    backend: str
    ib_devices: tuple[str, ...]
    env: dict[str, str]
    findings: dict[str, str] = field(default_factory=dict)  # node -> what was checked and seen


# Side services a transfer backend can be configured to use (Mooncake's master / metadata server, etcd).
SIDE_SERVICE_ENV = ("MOONCAKE_MASTER", "MOONCAKE_TE_META_DATA_SERVER", "MOONCAKE_METADATA_SERVER", "ETCD_ENDPOINTS")
_ADDRESS = re.compile(r"^(?:[a-z0-9+]+://)?([A-Za-z0-9.-]+):(\d{1,5})(?:/.*)?$")


def side_services(env: dict[str, str]) -> list[tuple[str, str]]:
    """(env key, host:port) of every side service the transfer's env names (P2P handshake needs none)."""
    out = []
    for key in SIDE_SERVICE_ENV:
        for value in filter(None, (v.strip() for v in env.get(key, "").split(","))):
            m = _ADDRESS.match(value)
            if m:
                out.append((key, f"{m.group(1)}:{m.group(2)}"))
    return out


# RDMA port error counters (sysfs, per device and port) that a healthy link keeps at zero.
IB_SYSFS = "/sys/class/infiniband"
NIC_ERROR_COUNTERS = ("symbol_error", "link_error_recovery", "link_downed", "port_rcv_errors",
                      "port_rcv_remote_physical_errors", "port_rcv_switch_relay_errors", "port_xmit_discards",
                      "port_xmit_constraint_errors", "port_rcv_constraint_errors", "local_link_integrity_errors",
                      "excessive_buffer_overrun_errors", "VL15_dropped")
_READ_IB_COUNTERS = ('root=$1; shift; for d; do for f in "$root/$d"/ports/*/counters/*; do '
                     '[ -r "$f" ] && printf "%s %s\n" "$f" "$(cat "$f")"; done; done; true')


def _access_settings(cfg: ClusterConfig) -> dict:
    ssh = cfg.ssh
    return {"transport": cfg.transport, "user": ssh.user, "key_file": ssh.key_file, "port": ssh.port,
            "connect_timeout": ssh.connect_timeout}


def connect_nodes(cfg: ClusterConfig, nodes: Iterable[str]) -> dict[str, hosts_mod.Host]:
    """Every node connected and answering, in parallel, with the config's transport and SSH settings."""
    return hosts_mod.connect_all(sorted(set(nodes)), **_access_settings(cfg))


def node_access(cfg: ClusterConfig, nodes: Iterable[str]) -> list[dict]:
    """How each node will be reached (the settings connect_nodes uses, resolved with ~/.ssh/config; no connection)."""
    return [hosts_mod.host_for(node, **_access_settings(cfg)).access for node in sorted(set(nodes))]


def runtime_of(cfg: ClusterConfig, hosts: dict[str, hosts_mod.Host]) -> Runtime:
    """The config's runtime (process | docker) on connected hosts."""
    return runtime_for(cfg.runtime, hosts)


def log_name(spec: ProcessSpec) -> str:
    """`<role>-<i>.log`, with `-rank<r>` for the further nodes of a multi-node instance."""
    rank = f"-rank{spec.node_rank}" if spec.node_rank else ""
    return f"{spec.role}-{spec.instance}{rank}.log"


def log_destination(run_dir: Path, spec: ProcessSpec) -> Path:
    """Where a process's log is collected: `<run_dir>/logs/<node>/<role>-<i>.log` (`<key>.log` for a benchmark)."""
    return run_dir / "logs" / spec.node / (log_name(spec) if spec.role != "bench" else f"{spec.key}.log")


class LiveCluster:
    """A Deployment carried out on its nodes; also the benchmarks' target (router URL, bench node)."""

    def __init__(self, cfg: ClusterConfig, deployment: Deployment, run_dir: Path):
        self.cfg = cfg
        self.deployment = deployment
        self.run_dir = run_dir
        self.simulated = cfg.simulated
        self.router_url = deployment.router_url
        self.worker_urls = {role: [p.url for p in deployment.servers(role)] for role in ("prefill", "decode")}
        self.hosts: dict[str, hosts_mod.Host] = {}
        self.runtime: Runtime | None = None
        self.procs: dict[str, RunningProcess] = {}
        self.startup_seconds: dict[str, float] = {}
        self.log_files: dict[str, Path] = {}
        self.kv_check: KVTransferCheck | None = None
        self.handoffs: dict[str, float] = {}
        self._collected: set[str] = set()

    # ---------------------------------------------------------------- bring-up steps
    def connect(self) -> None:
        self.hosts = connect_nodes(self.cfg, [*self.deployment.nodes, *(c.node for c in self.deployment.containers)])
        self.runtime = runtime_of(self.cfg, self.hosts)
        self._write_state()
        self._precheck_devices()

    def _precheck_devices(self) -> None:
        """The GPU devices the containers get exist on their nodes (real engine; the simulator needs none)."""
        if self.simulated:
            return
        missing = [f"  node {c.node} ({c.role}): {d} does not exist ($.config.container_config.device_list)"
                   for c in self.deployment.containers for d in c.devices
                   if self.hosts[c.node].run(["test", "-e", d], timeout=30).exit_status != 0]
        if missing:
            raise ClusterError("GPU devices missing:\n" + "\n".join(dict.fromkeys(missing)))

    def nic_error_counters(self, root: str = IB_SYSFS) -> dict[str, int]:
        """`node:device/port/counter` -> value of the error counters of the configured RDMA devices on every
        worker node (real engine; none for the simulator), to compare before and after a benchmark."""
        devices = self.cfg.kv_transfer.ib_devices
        if self.simulated or not devices:
            return {}
        out = {}
        for node in sorted({p.node for p in self.deployment.processes if p.role in ("prefill", "decode")}):
            listing = self.hosts[node].run(["sh", "-c", _READ_IB_COUNTERS, "sh", root, *devices], timeout=30)
            for line in listing.stdout.splitlines():
                path, _, value = line.rpartition(" ")
                name = path[len(root):].strip("/").replace("/ports/", "/").replace("/counters/", "/")
                if name.rsplit("/", 1)[-1] in NIC_ERROR_COUNTERS and value.isdigit():
                    out[f"{node}:{name}"] = int(value)
        return out

    def precheck_kv_transfer(self) -> KVTransferCheck:
        """The engine can work on every worker node: IB devices present (real engine), the engine loads (sim)."""
        kv = self.cfg.kv_transfer
        check = KVTransferCheck(kv.backend, kv.ib_devices, plan_mod.kv_env(self.cfg))
        workers = sorted({p.node for p in self.deployment.processes if p.role in ("prefill", "decode")})
        problems = []
        for node in workers:
            host = self.hosts[node]
            if not self.simulated and kv.backend in ("mooncake", "nixl", "mori") and kv.ib_devices:
                missing = [d for d in kv.ib_devices
                           if host.run(["test", "-e", f"/sys/class/infiniband/{d}"], timeout=30).exit_status != 0]
                if missing:
                    problems.append(f"  node {node}: RDMA device(s) {', '.join(missing)} not in /sys/class/infiniband "
                                    f"($.config.kv_transfer.ib_devices, default $.config.nccl_ib_hca)")
                    continue
                check.findings[node] = f"RDMA devices present: {', '.join(kv.ib_devices)}"
            elif self.simulated and self.cfg.runtime == "process":
                probe = (f"from pytest_sglang_pd.kv_transfer import open_engine\n"
                         f"e = open_engine({kv.backend!r}, hostname={plan_mod.bind_host(node)!r})\n"
                         f"print(e.name, e.protocol); e.close()\n")
                python = self.deployment.processes[0].argv[0]
                result = host.run([python, "-c", probe], timeout=60)
                if result.exit_status != 0:
                    problems.append(f"  node {node}: the {kv.backend} transfer engine does not load:\n"
                                    + _indent(result.stderr.strip().splitlines()[-5:]))
                    continue
                check.findings[node] = f"engine loads: {result.stdout.strip().splitlines()[-1]}"
            else:
                check.findings[node] = "checked in the worker container at start"
        for node in workers:
            for key, address in side_services(check.env):
                reached = self.hosts[node].run(["timeout", "5", "bash", "-c", 'exec 3<>"/dev/tcp/$1/$2"', "bash",
                                                *address.rsplit(":", 1)], timeout=30)
                if reached.exit_status != 0:
                    problems.append(f"  node {node}: {key} service at {address} not reachable "
                                    f"($.config.kv_transfer.env.{key}): {reached.stderr.strip() or 'timed out'}")
                else:
                    check.findings[node] += f"; {key} {address} reachable"
        if problems:
            raise ClusterError(f"KV transfer ({kv.backend}) precheck failed:\n" + "\n".join(problems))
        self.kv_check = check
        return check

    def prepare_containers(self) -> None:
        if self.simulated and isinstance(self.runtime, DockerRuntime):
            self._check_sim_image()
        self.runtime.prepare(self.deployment.containers)

    def _check_sim_image(self) -> None:
        """The simulated workers in the image must be this suite's: an image built from other sources is stale.
        (A missing image is left to the runtime's own check.)"""
        want = source_digest()
        stale = []
        for node, image in sorted({(c.node, c.image) for c in self.deployment.containers}):
            labels = self.runtime.engine(node).image_labels(image)
            if labels is None:
                continue
            built_from = labels.get(SOURCE_LABEL)
            if built_from != want:
                stale.append(f"  image {image} on node {node}: built from sources {built_from or '(unlabelled)'}, "
                             f"this suite is {want}")
        if stale:
            raise ClusterError("the docker-sim image is not built from this suite's sources "
                               "(rebuild it: scripts/build_sim_image.sh):\n" + "\n".join(stale))

    def start(self, role: str) -> list[RunningProcess]:
        """Start every process of a role, in parallel across nodes; roll back this role's processes on failure."""
        specs = self.deployment.role(role)
        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=max(1, min(len(specs), 16))) as pool:
            futures = [(s, pool.submit(self.runtime.start, s)) for s in specs]
        errors = []
        for spec, fut in futures:
            if fut.exception() is None:
                self.procs[spec.key] = fut.result()
            else:
                errors.append(f"  {role} {spec.key} on node {spec.node}: {fut.exception()}")
        self._write_state()
        if errors:
            self.stop(role)
            raise ClusterError(f"{role}: {len(errors)} of {len(specs)} process(es) failed to start:\n" + "\n".join(errors))
        self.startup_seconds[f"{role}_launch"] = round(time.monotonic() - t0, 3)
        return [self.procs[s.key] for s in specs]

    def wait_healthy(self, roles: Iterable[str], deadline_s: float | None = None) -> None:
        """Poll /health of every instance of the roles until all answer 200; any exit fails at once."""
        deadline_s = deadline_s or self.cfg.timeouts.server_start_s
        specs = [s for role in roles for s in self.deployment.servers(role)]
        t0 = time.monotonic()
        pending = {s.key: s for s in specs}

        def probe() -> bool:
            for key, spec in list(pending.items()):
                if _get_ok(spec.url + spec.health_path):
                    pending.pop(key)
                    role_time = round(time.monotonic() - t0, 3)
                    self.startup_seconds[spec.role] = max(self.startup_seconds.get(spec.role, 0.0), role_time)
            return not pending

        self._wait(probe, deadline_s, "timeouts.server_start_s",
                   lambda: [(s.key, f"{s.role} {s.key} on node {s.node}: {s.url}{s.health_path} not healthy")
                            for s in pending.values()])

    def wait_router_ready(self) -> dict:
        """Poll the router's /readiness until every instance is healthy there (/health is 200 with zero workers)."""
        spec = self.deployment.router
        expected = len(self.deployment.servers("prefill")) + len(self.deployment.servers("decode"))
        t0 = time.monotonic()
        seen: dict = {}

        def probe() -> bool:
            try:
                r = requests.get(f"{spec.url}/readiness", timeout=2)
                seen.update(r.json() if r.headers.get("content-type", "").startswith("application/json") else {})
            except (requests.RequestException, ValueError):
                return False
            return r.status_code == 200 and seen.get("healthy_workers", 0) >= expected

        self._wait(probe, self.cfg.timeouts.router_ready_s, "timeouts.router_ready_s",
                   lambda: [(spec.key, f"router on node {spec.node}: /readiness {json.dumps(seen) if seen else 'not answering'} "
                                       f"(expected {expected} healthy workers)")])
        self.startup_seconds["router"] = round(time.monotonic() - t0, 3)
        return seen

    def _wait(self, probe: Callable[[], bool], deadline_s: float, key: str,
              pending: Callable[[], list[tuple[str, str]]]) -> None:
        """Probe until true; any exited process fails at once; past the deadline, name what is pending."""
        t0 = time.monotonic()
        while True:
            self.check_alive()
            if probe():
                return
            if time.monotonic() - t0 > deadline_s:
                waiting = pending()
                raise ClusterError(f"still not ready after {deadline_s:g} s ($.config.{key}):\n"
                                   + "\n".join(f"  {what}" for _, what in waiting) + "\n"
                                   + "\n".join(self._tail_block(self.procs[k]) for k, _ in waiting if k in self.procs))
            time.sleep(POLL_S)

    def check_alive(self) -> None:
        """Fail at once when any started process has exited, naming its role and node, with its log tail."""
        for rp in self.procs.values():
            code = self.runtime.exit_code(rp)
            if code is not None:
                raise ClusterError(f"{rp.spec.role} {rp.spec.key} on node {rp.spec.node} exited with code {code}\n"
                                   f"  command: {shlex.join(redact.argv(rp.spec.argv))}\n" + self._tail_block(rp))

    def _tail_block(self, rp: RunningProcess) -> str:
        try:
            tail = self.runtime.log_tail(rp, LOG_TAIL_LINES)
        except hosts_mod.HostError as exc:
            tail = f"(log not readable: {exc})"
        return f"  last {LOG_TAIL_LINES} lines of {rp.spec.log_path} ({rp.spec.role} on {rp.spec.node}):\n" + _indent(
            strip_ansi(tail).rstrip().splitlines(), "    | ")

    def smoke(self) -> dict[str, float]:
        """A non-streamed and a streamed /generate through the router that must cross prefill -> decode."""
        before = handoffs(self.worker_urls)
        body = {"text": "The capital of France is", "sampling_params": {"max_new_tokens": 8, "temperature": 0}}
        for stream in (False, True):
            self.check_alive()
            try:
                r = requests.post(f"{self.router_url}/generate", json={**body, "stream": stream},
                                  timeout=self.cfg.timeouts.router_ready_s, stream=stream)
                text = r.text
            except requests.RequestException as exc:
                raise ClusterError(f"smoke request through the router {self.router_url} failed: {exc}") from None
            finish = _finish_reason(text, stream)
            if r.status_code != 200 or finish.get("type") in ("abort", "unparsable", None):
                raise ClusterError(f"smoke request (stream={stream}) through the router failed: HTTP {r.status_code}, "
                                   f"finish_reason {json.dumps(finish)}\n  response: {text[:500]}\n"
                                   + "\n".join(self._tail_block(rp) for rp in self.procs.values()
                                               if rp.spec.role in ("prefill", "decode")))
        after = handoffs(self.worker_urls)
        self.handoffs = {role: after.get(role, 0) - before.get(role, 0) for role in ("prefill", "decode")}
        if self.simulated and min(self.handoffs.values()) < 2:
            raise ClusterError(f"smoke requests completed but the KV handoff was not seen in the workers' "
                               f"sglang:kv_transfer_handoffs_total: prefill +{self.handoffs['prefill']:g}, decode +{self.handoffs['decode']:g} "
                               "(expected +2 on each side)")
        return self.handoffs

    # ---------------------------------------------------------------- benchmarks (BenchTarget)
    def run_bench_command(self, spec: ProcessSpec, timeout_s: float) -> tuple[int, str]:
        rp = self.runtime.start(spec)
        self.procs[spec.key] = rp
        t0 = time.monotonic()
        try:
            while (code := self.runtime.exit_code(rp)) is None:
                if time.monotonic() - t0 > timeout_s:
                    self.runtime.stop(rp)
                    return 124, self.runtime.log_tail(rp, LOG_TAIL_LINES) + f"\n(timed out after {timeout_s:g} s)"
                time.sleep(POLL_S)
            return code, self.runtime.log_tail(rp, LOG_TAIL_LINES)
        finally:
            self.collect(spec.key)

    def fetch(self, remote_path: str, local: Path) -> None:
        """Copy a file from the benchmark node (container logs are bind mounts at the same path)."""
        node = next((c.node for c in self.deployment.containers if c.key == "bench"), self.deployment.router.node)
        self.hosts[node].get(remote_path, local)

    # ---------------------------------------------------------------- teardown
    def snapshot_logs(self) -> None:
        """Copy every log as it is now (the processes keep running: --keep-cluster)."""
        for key in self.procs:
            self.collect(key)
        self._collected.clear()

    def collect(self, key: str) -> None:
        rp = self.procs.get(key)
        if rp is None or key in self._collected:
            return
        dest = log_destination(self.run_dir, rp.spec)
        try:
            self.runtime.collect_log(rp, dest)
            dest.write_bytes(strip_ansi(dest.read_bytes().decode(errors="replace")).encode())
            self.log_files[key] = dest
            self._collected.add(key)
        except (hosts_mod.HostError, OSError) as exc:
            log.warning("could not collect the log of %s on %s: %s", key, rp.spec.node, exc)

    def stop(self, role: str) -> list[str]:
        """Collect the logs of a role's processes, then stop them (SIGTERM, grace, SIGKILL). Returns errors."""
        errors = []
        for key, rp in list(self.procs.items()):
            if rp.spec.role != role:
                continue
            try:
                self.runtime.stop(rp)
            except Exception as exc:  # keep going: every other process must still be stopped
                errors.append(f"{role} {key} on {rp.spec.node}: {exc}")
            self.collect(key)
        return errors

    def remove_containers(self) -> None:
        if self.runtime is not None:
            self.runtime.teardown()

    def mark_stopped(self) -> None:
        self._write_state(stopped=True)

    def disconnect(self) -> None:
        for host in self.hosts.values():
            host.close()
        self.hosts = {}

    def teardown(self) -> None:
        """Everything in reverse order; every step is tried, errors are raised together at the end."""
        errors = []
        for role in ("bench", "router", "decode", "prefill"):
            errors += self.stop(role)
        for step in (self.remove_containers, self.disconnect):
            try:
                step()
            except Exception as exc:
                errors.append(str(exc))
        self._write_state(stopped=True)
        if errors:
            raise ClusterError("teardown incomplete:\n" + "\n".join(f"  {e}" for e in errors))

    def _write_state(self, stopped: bool = False) -> None:
        """What runs where, so `sglang-pd down` can stop a kept cluster later."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "config": self.cfg.source, "run_id": self.deployment.run_id, "model": self.deployment.model.id,
            "runtime": self.cfg.runtime, "transport": self.cfg.transport, "router_url": self.router_url,
            "stopped": stopped,
            "processes": [{"key": k, "role": rp.spec.role, "node": rp.spec.node, "pid": rp.pid,
                           "container_id": rp.container_id} for k, rp in self.procs.items()],
            "containers": [{"key": c.key, "node": c.node, "name": c.name} for c in self.deployment.containers],
        }
        tmp = self.run_dir / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.run_dir / STATE_FILE)


@dataclass
class ExternalCluster:
    """An already running cluster behind its router (--router-url): nothing started, nothing stopped."""

    router_url: str
    simulated: bool
    deployment: None = None
    worker_urls: dict = field(default_factory=lambda: {"prefill": [], "decode": []})
    log_files: dict = field(default_factory=dict)
    startup_seconds: dict = field(default_factory=dict)

    @classmethod
    def behind(cls, router_url: str, simulated: bool) -> "ExternalCluster":
        """The cluster with its workers as the router lists them (GET /workers)."""
        cluster = cls(router_url=router_url.rstrip("/"), simulated=simulated)
        try:
            listed = requests.get(f"{cluster.router_url}/workers", timeout=10).json()
        except (requests.RequestException, ValueError) as exc:
            raise ClusterError(f"--router-url {router_url}: GET /workers failed: {exc}") from None
        for worker in listed.get("workers", []) if isinstance(listed, dict) else listed:
            cluster.worker_urls.setdefault(worker.get("worker_type", ""), []).append(worker["url"])
        return cluster

    def run_bench_command(self, spec: ProcessSpec, timeout_s: float) -> tuple[int, str]:
        raise ClusterError("with --router-url the suite starts nothing on the nodes: "
                           "use the builtin benchmark client (\"bench_client\": \"builtin\")")

    def fetch(self, remote_path: str, local: Path) -> None:
        raise ClusterError("with --router-url the suite reaches no node")


def facts_of(cluster: LiveCluster | ExternalCluster, *, versions: bool = True) -> ClusterFacts:
    """What the report gets to know of a cluster: its router, start-up seconds, where each process's log is
    collected and (``versions``: once the workers are ready) the version each role's workers report."""
    dep = cluster.deployment
    logs = {} if dep is None else {spec.key: log_destination(cluster.run_dir, spec)
                                   for spec in (*dep.processes, *plan_mod.bench_processes(dep))}
    return ClusterFacts(router_url=cluster.router_url, model=dep.model.id if dep else None,
                        startup_seconds=dict(cluster.startup_seconds),
                        worker_versions=worker_versions(cluster.worker_urls) if versions else {}, log_files=logs)


def worker_versions(worker_urls: dict[str, list[str]]) -> dict[str, str]:
    """role -> the version its first worker reports on /server_info (/get_server_info on older sglang)."""
    out = {}
    for role, urls in worker_urls.items():
        for path in ("/server_info", "/get_server_info") if urls else ():
            try:
                resp = requests.get(f"{urls[0]}{path}", timeout=3)
                if resp.ok and resp.json().get("version"):
                    out[role] = str(resp.json()["version"])
                    break
            except (requests.RequestException, ValueError):
                continue
    return out


def handoffs(worker_urls: dict[str, list[str]]) -> dict[str, float]:
    """KV handoffs counted so far on each side (0 where the workers expose no counter: real sglang)."""
    return {role: sums.get("handoffs", 0.0) for role, sums in prom.kv_counters(worker_urls).items()}


def _get_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _finish_reason(text: str, stream: bool) -> dict:
    try:
        if stream:
            chunks = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
            chunks = [c for c in chunks if c and c != "[DONE]"]
            last = json.loads(chunks[-1]) if chunks else {}
        else:
            last = json.loads(text)
    except ValueError:
        return {"type": "unparsable"}
    if "error" in last:
        return {"type": "abort", "message": str(last["error"])}
    return (last.get("meta_info") or {}).get("finish_reason") or {}


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    """Without terminal colour codes (the router colours its log even into a file)."""
    return _ANSI.sub("", text)


def _indent(lines: Iterable[str], prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in lines)


def bring_up(cfg: ClusterConfig, deployment: Deployment, run_dir: Path) -> LiveCluster:
    """Every step at once, for the CLI (`sglang-pd up`); on any failure everything started is torn down."""
    cluster = LiveCluster(cfg, deployment, run_dir)
    try:
        cluster.connect()
        cluster.precheck_kv_transfer()
        cluster.prepare_containers()
        cluster.start("prefill")
        cluster.start("decode")
        cluster.wait_healthy(("prefill", "decode"))
        cluster.start("router")
        cluster.wait_router_ready()
        cluster.smoke()
    except BaseException:
        cluster.teardown()
        raise
    return cluster


def down(state_path: Path) -> list[str]:
    """Stop what a kept run left running, from its cluster-state.json; returns what was stopped."""
    from . import config as config_mod

    state = json.loads(state_path.read_text())
    cfg = config_mod.load(state["config"])
    hosts = connect_nodes(cfg, [*(p["node"] for p in state["processes"]), *(c["node"] for c in state["containers"])])
    runtime = runtime_of(cfg, hosts)
    stopped = []
    try:
        if state["runtime"] == "docker":
            for c in state["containers"]:
                engine = runtime.engine(c["node"])
                for found in engine.containers(name=c["name"]):
                    engine.remove(found.id)
                    stopped.append(f"container {found.name} on {c['node']}")
        else:
            dep = plan_mod.plan(cfg, state["model"], run_id=state["run_id"])
            specs = {s.key: s for s in (*dep.processes, *plan_mod.bench_processes(dep))}
            for p in reversed(state["processes"]):
                host = hosts[p["node"]]
                if p["pid"] and host.group_alive(p["pid"]):
                    runtime.stop(RunningProcess(specs[p["key"]], host, p["pid"], None, None, 0.0))
                    stopped.append(f"{p['role']} {p['key']} on {p['node']} (pid {p['pid']})")
    finally:
        runtime.teardown()
        for h in hosts.values():
            h.close()
    state["stopped"] = True
    state_path.write_text(json.dumps(state, indent=2))
    return stopped
