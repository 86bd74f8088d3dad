"""Bring-up, readiness, KV handoff proof and teardown of a Deployment on live nodes.

The order is the one of the role fixtures (README: Bring-up, teardown and failures): nodes -> KV
transfer prechecks -> containers -> prefill and decode (started together, waited on together) ->
router -> /readiness -> each prefill's bootstrap address reached from each decode's node -> a smoke request
through the router that must cross prefill -> decode (``timeouts.smoke_s``) -> a payload through the KV engine
per prefill -> decode pair, inside the workers' containers (GB/s gated by ``kv_transfer.min_gbps``).
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
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import requests

from . import hosts as hosts_mod
from . import plan as plan_mod
from . import kv_transfer, pd_path, redact, releases, services, slurm
from .config import ClusterConfig
from .plan import Deployment, ProcessSpec
from .docker_node import DockerNode
from .image import SOURCE_LABEL, source_digest
from .nic import IB_SYSFS
from .parallel import all_of, on_each
from .runtime import DockerRuntime, RunningProcess, Runtime, runtime_for
from .stages import Say, elapsed, quiet, stage
from .worker_http import body_within, finish_reason, get_ok, handoffs, worker_versions

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


# RDMA port error counters (sysfs, per device and port) that a healthy link keeps at zero.
NIC_ERROR_COUNTERS = ("symbol_error", "link_error_recovery", "link_downed", "port_rcv_errors",
                      "port_rcv_remote_physical_errors", "port_rcv_switch_relay_errors", "port_xmit_discards",
                      "port_xmit_constraint_errors", "port_rcv_constraint_errors", "local_link_integrity_errors",
                      "excessive_buffer_overrun_errors", "VL15_dropped")
_READ_IB_COUNTERS = ('root=$1; shift; for d; do for f in "$root/$d"/ports/*/counters/*; do '
                     '[ -r "$f" ] && printf "%s %s\n" "$f" "$(cat "$f")"; done; done; true')


def _access_settings(cfg: ClusterConfig) -> dict:
    if cfg.transport == "slurm":
        return {"transport": "slurm", "job_id": cfg.slurm.job_id, "slurm_nodes": cfg.slurm.node_names}
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
    """Where a process's log is collected: `<run_dir>/logs/<node>/<role>-<i>.log` (`<key>.log` for a benchmark or a
    store service)."""
    by_key = spec.role in ("bench", services.ROLE)
    return run_dir / "logs" / spec.node / (f"{spec.key}.log" if by_key else log_name(spec))


class LiveCluster:
    """A Deployment carried out on its nodes, as a context manager; also the benchmarks' target.

    Each bring-up step (``connect``, ``precheck``, ``prepare_containers``, ``start`` of a role,
    ``start_router``) first pushes its own undo onto the cluster's ExitStack, so leaving the context
    (or ``close``) undoes every step taken, in reverse, whatever failed; ``undo(step)`` undoes one step
    earlier (a fixture's teardown). Per-node work runs on all nodes at once. With ``keep`` the processes
    and containers stay up: closing then only copies the logs and disconnects. Each step tells ``say`` when it
    starts, what it waits on every few seconds, and when it ends (``stages.stage``).
    """

    def __init__(self, cfg: ClusterConfig, deployment: Deployment, run_dir: Path, *, keep: bool = False,
                 say: Say = quiet):
        self.cfg = cfg
        self.say = say
        self.deployment = deployment
        self.run_dir = run_dir
        self.keep = keep
        self.simulated = cfg.simulated
        self.router_url = deployment.router_url
        self.worker_urls = {role: [p.url for p in deployment.servers(role)] for role in plan_mod.WORKER_ROLES}
        self.hosts: dict[str, hosts_mod.Host] = {}
        self.runtime: Runtime | None = None
        self.procs: dict[str, RunningProcess] = {}
        self.startup_seconds: dict[str, float] = {}
        self.log_files: dict[str, Path] = {}
        self.kv_check: KVTransferCheck | None = None
        self.handoffs: float | None = None  # KV transfers of the smoke requests
        self.broken: str | None = None  # what the cluster watch found broken: the rest of this model's tests end with it
        self.kv_pairs_gbps: dict[str, float | None] = {}  # "prefill_0 -> decode_0": GB/s of the pair check
        self._collected: set[str] = set()
        self._tool_versions: dict[tuple, str | None] = {}
        self.router_version: str | None = None  # "<package> <version>" once the router is up
        self.router_metrics_url = (f"http://{cfg.router_node}:{cfg.router_prometheus_port}/metrics"
                                   if deployment.has_router else None)
        self._stack = ExitStack()
        self._steps: dict[str, ExitStack] = {}
        self._undo_errors: list[str] = []

    @property
    def image_ids(self) -> dict[str, str]:
        """node -> id of the image its containers run (none for plain processes)."""
        return self.runtime.image_ids if self.runtime else {}

    # ---------------------------------------------------------------- the stack of undos
    def __enter__(self) -> LiveCluster:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _step(self, name: str) -> ExitStack:
        """The undo stack of a new step, itself on the cluster's stack."""
        stack = ExitStack()
        self._steps[name] = stack
        self._stack.callback(self._close_step, name)
        return stack

    def _undo_with(self, stack: ExitStack, what: str, fn: Callable[[], object]) -> None:
        """Push an undo that never stops the ones after it: its error is kept and raised once all have run."""
        def run() -> None:
            try:
                fn()
            except Exception as exc:  # keep going: every other undo must still run
                self._undo_errors.append(f"{what}: {exc}")
        stack.callback(run)

    def _close_step(self, name: str) -> None:
        stack = self._steps.pop(name, None)
        if stack is not None:
            stack.close()

    def _raise_undo_errors(self) -> None:
        errors, self._undo_errors = self._undo_errors, []
        if errors:
            raise ClusterError("teardown incomplete:\n" + "\n".join(f"  {e}" for e in errors))

    def undo(self, step: str) -> None:
        """Undo one step now (its processes stopped and logs collected, its containers removed, ...)."""
        self._close_step(step)
        self._raise_undo_errors()

    def close(self) -> None:
        """Undo every step taken, in reverse; errors raised together after all were tried."""
        self._stack.close()
        self._raise_undo_errors()

    def detach(self) -> None:
        """Leave the cluster running from now on (`sglang-pd up`, --keep-cluster): closing only disconnects."""
        self.keep = True

    def bring_up(self, *, smoke: bool = True) -> LiveCluster:
        """Every step in order: what `sglang-pd up`, the self-tests and the benchmarks run (the fixtures take the
        same steps one by one). ``smoke=False`` stops at a ready router (a cluster meant to fail requests)."""
        self.connect()
        self.precheck()
        self.prepare_containers()
        self.start_services()
        for role in self.deployment.worker_roles:
            self.start(role)
        self.wait_healthy(self.deployment.worker_roles)
        self.start_router()
        if smoke:
            self.smoke()
        return self

    def _stage(self, phase: str, name: str, status: Callable[[], str] = lambda: ""):
        return stage(self.say, f"{self.deployment.model.id} {phase}: {name}", status)

    # ---------------------------------------------------------------- bring-up steps
    def connect(self) -> None:
        """Every node connected and answering, in parallel; undone by marking the run stopped and disconnecting."""
        undo = self._step("connect")
        self._undo_with(undo, "state file", lambda: None if self.keep else self._write_state(stopped=True))
        self._undo_with(undo, "disconnect", self.disconnect)
        self._undo_with(undo, "logs", lambda: self.snapshot_logs() if self.keep else None)
        dep = self.deployment
        self._write_state()
        nodes = sorted({*dep.nodes, *(c.node for c in dep.containers)})
        with self._stage("bring-up", f"connect {len(nodes)} node(s) ({self.cfg.transport})"):
            self.hosts = connect_nodes(self.cfg, nodes)
        self.runtime = runtime_of(self.cfg, self.hosts)
        self._write_state()

    def precheck(self) -> KVTransferCheck:
        """The deployment's planned prechecks, all nodes at once: GPU devices, then the KV transfer (RDMA devices
        or the engine loading, side services). Each failure names node, config key and what the node said."""
        by_node: dict[str, list[plan_mod.Precheck]] = {}
        for check in self.deployment.prechecks:
            by_node.setdefault(check.node, []).append(check)
        running = set(by_node)

        def on(node: str) -> list[tuple[plan_mod.Precheck, bool, str]]:
            try:
                return self._run_prechecks(by_node[node])
            finally:
                running.discard(node)

        with self._stage("bring-up", f"prechecks on {len(by_node)} node(s)",
                         lambda: f"{len(by_node) - len(running)}/{len(by_node)} nodes done, waiting on {_some(running)}"):
            outcomes = [outcome for found in all_of(on, sorted(by_node)) for outcome in found]
        titles = {"paths": "Paths unusable", "ports": "Ports in use", "devices": "GPU devices missing",
                  "nic": "NIC verbs provider missing", "hugepages": "Huge pages missing",
                  "nic_map": "GPU -> NIC map not written",
                  "kv_transfer": f"KV transfer ({self.cfg.kv_transfer.backend}) precheck failed"}
        for kind in dict.fromkeys([*titles, *(check.kind for check, _, _ in outcomes)]):  # every kind, these first
            problems = [text for check, ok, text in outcomes if check.kind == kind and not ok]
            if problems:
                raise ClusterError(f"{titles.get(kind, kind + ' precheck failed')}:\n" + "\n".join(problems))
        self.probe_release()
        kv = self.cfg.kv_transfer
        check = KVTransferCheck(kv.backend, kv.ib_devices, plan_mod.kv_env(self.cfg))
        for node in plan_mod.worker_nodes(self.deployment):
            found = [text for c, _, text in outcomes if c.node == node and c.kind == "kv_transfer"]
            check.findings[node] = "; ".join(found) or "checked in the worker container at start"
        self.kv_check = check
        return check

    def probe_release(self) -> str | None:
        """The sglang release in the workers' image or python (engine sglang), asked on the first prefill node
        before any worker starts. The plan is made anew for it when the config names no release; a config that
        names another fails here. None where there is no sglang to ask (the simulator)."""
        if self.simulated:
            return None
        dep = self.deployment
        node = dep.servers(dep.worker_roles[0])[0].node
        if self.cfg.runtime == "docker":
            result = DockerNode(self.hosts[node]).docker("run", "--rm", "--entrypoint", dep.python,
                                                          self.cfg.container_image, *releases.PROBE, timeout=300)
        else:
            result = self.hosts[node].run([dep.python, *releases.PROBE], timeout=60)
        where = f"{self.cfg.container_image} on node {node}" if self.cfg.runtime == "docker" else f"{dep.python} on node {node}"
        found = result.stdout.strip().splitlines()
        if result.exit_status != 0 or not found:
            said = "\n".join(result.stderr.strip().splitlines()[-5:])
            raise ClusterError(f"no sglang package in {where} (exit status {result.exit_status}); "
                               f"the workers run `{dep.python} -m sglang.launch_server`:\n{_indent(said.splitlines())}")
        probed = found[-1].strip()
        if self.cfg.sglang_version and not releases.same_release(probed, self.cfg.sglang_version):
            raise ClusterError(f"$.config.sglang_version is {self.cfg.sglang_version}, but {where} has sglang "
                               f"{probed}: set it to {probed} (or remove it: the suite plans for the release it finds)")
        if not releases.same_release(probed, dep.sglang_version):
            log.info("planning anew for sglang %s (%s)", probed, where)
            self.deployment = plan_mod.plan(self.cfg, dep.model, run_id=dep.run_id, sglang_version=probed)
        return probed

    def confirm_release(self) -> dict[str, str]:
        """The workers' /server_info versions, which must be the release the commands were planned for."""
        versions = worker_versions(self.worker_urls)
        wrong = {role: v for role, v in versions.items() if not releases.same_release(v, self.deployment.sglang_version)}
        if wrong:
            told = ", ".join(f"{role} workers report {v}" for role, v in sorted(wrong.items()))
            raise ClusterError(f"the commands were planned for sglang {self.deployment.sglang_version}, but on "
                               f"/server_info the {told}: set $.config.sglang_version to the release the workers run")
        return versions

    def _run_prechecks(self, checks: list[plan_mod.Precheck]) -> list[tuple[plan_mod.Precheck, bool, str]]:
        """(check, passed, what it found) for one node's checks, in turn."""
        out = []
        for check in checks:
            result = self.hosts[check.node].run(list(check.argv), timeout=60)
            if result.exit_status == 0:
                seen = result.stdout.strip().splitlines()
                out.append((check, True, check.passed + (f": {seen[-1]}" if seen else "")))
            else:
                said = result.stderr.strip().splitlines()[-5:] or ["timed out" if result.exit_status == 124 else
                                                                     f"exit status {result.exit_status}"]
                out.append((check, False, f"  {check.failed}:\n" + _indent(said)))
        return out

    def prepare_containers(self) -> None:
        """One container per logical node (docker runtime); undone by removing them all."""
        undo = self._step("containers")
        self._undo_with(undo, "containers", self._remove_containers)
        if self.simulated and isinstance(self.runtime, DockerRuntime):
            self._check_sim_image()
        if not self.deployment.containers:
            return
        with self._stage("bring-up", f"{len(self.deployment.containers)} container(s)"):
            self.runtime.prepare(self.deployment.containers)

    def start_services(self) -> None:
        """The side services (HiCache's Mooncake Store: metadata service and master) started and answering before
        any worker; as an earlier step, they are stopped after every worker (logs collected like the workers')."""
        specs = self.deployment.role(services.ROLE)
        if not specs:
            return
        t0 = time.monotonic()
        self.start(services.ROLE)
        pending = {s.key: s for s in specs}

        def probe() -> bool:
            for key, spec in list(pending.items()):
                if services.answers(spec):
                    pending.pop(key)
                    self.say(f"  {key} answering on {spec.url}", 1)
            return not pending

        with self._stage("bring-up", f"{len(specs)} store service(s) answering",
                         lambda: f"waiting for {_some(pending)}"):
            try:
                self._wait(probe, self.cfg.timeouts.services_s, "timeouts.services_s",
                           lambda: [(s.key, f"store {services.described(s)}: not answering")
                                    for s in pending.values()])
            except ClusterError as exc:
                waiting = list(pending.values())
                codes = self.runtime.exit_codes([self.procs[s.key] for s in waiting])
                failed = [s for s, code in zip(waiting, codes) if code is not None] or waiting
                raise ClusterError(f"HiCache store service(s) not started: "
                                   f"{', '.join(services.described(s) for s in failed)}; no worker was started\n"
                                   f"{exc}") from None
        self.startup_seconds[services.ROLE] = round(time.monotonic() - t0, 3)

    def _remove_containers(self) -> None:
        if self.keep:
            return
        if not self.deployment.containers:
            self.runtime.teardown()
            return
        with self._stage("teardown", f"remove {len(self.deployment.containers)} container(s)"):
            self.runtime.teardown()

    def nic_error_counters(self, root: str = IB_SYSFS) -> dict[str, int]:
        """`node:device/port/counter` -> value of the error counters of the configured RDMA devices on every
        worker node (real engine; none for the simulator), to compare before and after a benchmark."""
        devices = self.cfg.kv_transfer.ib_devices
        if self.simulated or not devices:
            return {}
        out = {}
        for node in plan_mod.worker_nodes(self.deployment):
            listing = self.hosts[node].run(["sh", "-c", _READ_IB_COUNTERS, "sh", root, *devices], timeout=30)
            for line in listing.stdout.splitlines():
                path, _, value = line.rpartition(" ")
                name = path[len(root):].strip("/").replace("/ports/", "/").replace("/counters/", "/")
                if name.rsplit("/", 1)[-1] in NIC_ERROR_COUNTERS and value.isdigit():
                    out[f"{node}:{name}"] = int(value)
        return out

    def _check_sim_image(self) -> None:
        """The simulated workers in the image must be this suite's: an image built from other sources is stale.
        (A missing image is left to the runtime's own check.)"""
        want = source_digest()
        stale = []
        for node, image in sorted({(c.node, c.image) for c in self.deployment.containers}):
            found = self.runtime.engine(node).image(image)
            if found is None:
                continue
            built_from = found[1].get(SOURCE_LABEL)
            if built_from != want:
                stale.append(f"  image {image} on node {node}: built from sources {built_from or '(unlabelled)'}, "
                             f"this suite is {want}")
        if stale:
            raise ClusterError("the docker-sim image is not built from this suite's sources "
                               "(rebuild it: scripts/build_sim_image.sh):\n" + "\n".join(stale))

    def start(self, role: str) -> list[RunningProcess]:
        """Start every process of a role, all nodes at once; undone by stopping them together (logs collected)."""
        undo = self._step(role)
        self._undo_with(undo, role, lambda: self._stop_role(role))
        specs = self.deployment.role(role)
        t0 = time.monotonic()
        errors = []
        with self._stage("bring-up", f"start {len(specs)} {role} process(es)"):
            started = on_each(self.runtime.start, specs)
        for spec, rp, exc in started:
            if exc is None:
                self.procs[spec.key] = rp
                self.say(f"  {spec.key} on {spec.node}, pid {rp.pid}, log {spec.log_path}", 1)
            else:
                errors.append(f"  {role} {spec.key} on node {spec.node}: {exc}")
        self._write_state()
        if errors:
            raise ClusterError(f"{role}: {len(errors)} of {len(specs)} process(es) failed to start:\n" + "\n".join(errors))
        self.startup_seconds[f"{role}_launch"] = round(time.monotonic() - t0, 3)
        return [self.procs[s.key] for s in specs]

    def _probe(self, host: hosts_mod.Host, python: str, package: str) -> str | None:
        result = host.run([python, *releases.version_probe(package)], timeout=60)
        found = result.stdout.strip().splitlines() if result.exit_status == 0 else []
        return found[-1].strip() if found else None

    def start_router(self) -> dict:
        """The router started and ready on /readiness; undone (with any benchmark process) by stopping it.
        Decode alone: no router, the step only stops the benchmark processes."""
        if not self.deployment.has_router:
            self._undo_with(self._step("router"), "bench", lambda: self._stop_role("bench"))
            return {}
        self.start("router")
        undo = self._steps["router"]
        self._undo_with(undo, "bench", lambda: self._stop_role("bench"))
        ready = self.wait_router_ready()
        spec, package = self.deployment.router, self.cfg.router_package
        host = self.runtime.container_host(spec.container) if spec.container else self.hosts[spec.node]
        self.router_version = f"{package} {self._probe(host, spec.argv[0], package) or '(version unknown)'}"
        return ready

    def wait_healthy(self, roles: Iterable[str], deadline_s: float | None = None) -> None:
        """Poll /health of every instance of the roles until all answer 200; any exit fails at once."""
        deadline_s = deadline_s or self.cfg.timeouts.server_start_s
        specs = [s for role in roles for s in self.deployment.servers(role)]
        t0 = time.monotonic()
        pending = {s.key: s for s in specs}

        def probe() -> bool:
            for key, spec in list(pending.items()):
                if get_ok(spec.url + spec.health_path):
                    pending.pop(key)
                    role_time = round(time.monotonic() - t0, 3)
                    self.startup_seconds[spec.role] = max(self.startup_seconds.get(spec.role, 0.0), role_time)
                    self.say(f"  {key} healthy after {elapsed(role_time)}", 1)
            return not pending

        def status() -> str:
            counts = ", ".join(f"{role} {sum(s.role == role and s.key not in pending for s in specs)}/"
                               f"{sum(s.role == role for s in specs)}" for role in dict.fromkeys(s.role for s in specs))
            waiting = _some(f"{s.key} {s.health_path}" for s in list(pending.values()))
            return f"{counts} healthy, waiting for {waiting} (model loading) of {elapsed(deadline_s)}"

        with self._stage("bring-up", f"{' and '.join(dict.fromkeys(s.role for s in specs))} healthy", status):
            self._wait(probe, deadline_s, "timeouts.server_start_s",
                       lambda: [(s.key, f"{s.role} {s.key} on node {s.node}: {s.url}{s.health_path} not healthy")
                                for s in pending.values()])
        self.confirm_release()

    def wait_router_ready(self) -> dict:
        """Poll the router's /readiness until every instance is healthy there (/health is 200 with zero workers)."""
        spec = self.deployment.router
        expected = sum(len(self.deployment.servers(role)) for role in self.deployment.worker_roles)
        t0 = time.monotonic()
        seen: dict = {}

        def probe() -> bool:
            try:
                r = requests.get(f"{spec.url}/readiness", timeout=2)
                seen.update(r.json() if r.headers.get("content-type", "").startswith("application/json") else {})
            except (requests.RequestException, ValueError):
                return False
            return r.status_code == 200 and seen.get("healthy_workers", 0) >= expected

        with self._stage("bring-up", "router /readiness",
                         lambda: f"{seen.get('healthy_workers', 0)}/{expected} workers healthy at the router "
                                 f"of {elapsed(self.cfg.timeouts.router_ready_s)}"):
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
        procs = list(self.procs.values())
        for rp, code in zip(procs, self.runtime.exit_codes(procs)):
            if code is not None:
                raise ClusterError(f"{rp.spec.role} {rp.spec.key} on node {rp.spec.node} exited with code {code}\n"
                                   f"  command: {shlex.join(redact.argv(rp.spec.argv))}\n" + self._tail_block(rp))

    def _tail_block(self, rp: RunningProcess) -> str:
        """The last lines of a process's log, headed by its path, role and node (also told by the cluster watch)."""
        try:
            tail = self.runtime.log_tail(rp, LOG_TAIL_LINES)
        except hosts_mod.HostError as exc:
            tail = f"(log not readable: {exc})"
        return f"  last {LOG_TAIL_LINES} lines of {rp.spec.log_path} ({rp.spec.role} on {rp.spec.node}):\n" + _indent(
            strip_ansi(tail).rstrip().splitlines(), "    | ")

    def smoke(self) -> float | None:
        """The PD path proven: each prefill's bootstrap address reached from each decode's node, then a non-streamed
        and a streamed /generate through the router that must cross prefill -> decode, then (simulator) a payload
        through the KV engine per pair. Aggregated: the two requests through the router only (no handoff). Decode
        alone: one fake-prefill request straight to each decode worker."""
        dep = self.deployment
        if dep.decode_alone:
            with self._stage("bring-up", "a fake-prefill request to each decode worker (decode alone: no router, "
                                         "bootstrap and KV pair checks skipped)"):
                for url in self.worker_urls["decode"]:
                    self._smoke(url, releases.FAKE_PREFILL, streams=(False,))
            return None
        if dep.aggregated:
            with self._stage("bring-up", "smoke requests through the router (aggregated: no KV handoff, "
                                         "bootstrap and KV pair checks skipped)"):
                self._smoke()
            return None
        with self._stage("bring-up", "bootstrap addresses reachable from the decodes"):
            unreachable = pd_path.unreachable_bootstraps(dep, self._host_of)
        if unreachable:
            raise ClusterError(f"PD handshake cannot start (KV engine {self.cfg.kv_transfer.backend}):\n"
                               + _indent(unreachable, "  ") + "\n" + self._explained())
        with self._stage("bring-up", "smoke requests through the router (KV handoff prefill -> decode)"):
            moved = self._smoke()
        self.check_kv_pairs()
        return moved

    def _host_of(self, spec: ProcessSpec) -> hosts_mod.Host:
        """Where a process runs: its container (docker runtime) or its node."""
        return self.runtime.container_host(spec.container) if spec.container else self.hosts[spec.node]

    def check_kv_pairs(self) -> dict[str, float | None]:
        """Each prefill -> decode pair moves a payload through the configured engine; its GB/s recorded, and a
        pair that moves nothing or less than ``kv_transfer.min_gbps`` fails before any benchmark runs."""
        kv, dep = self.cfg.kv_transfer, self.deployment
        with self._stage("bring-up", f"KV transfer ({kv.backend}) per prefill -> decode pair"):
            all_of(lambda node: self.hosts[node].put(Path(kv_transfer.__file__), pd_path.pair_script(dep)),
                   plan_mod.worker_nodes(dep))
            pairs = pd_path.measure_pairs(dep, kv.backend, self._host_of, kv.ib_devices)
        self.kv_pairs_gbps = {f"{p.prefill.key} -> {p.decode.key}": p.gbps for p in pairs}
        for p in pairs:
            self.say(f"  {p.name}: {'-' if p.gbps is None else f'{p.gbps:g} GB/s'}", 1)
        slow = pd_path.slow_pairs(pairs, kv.backend, kv.min_gbps)
        if slow:
            raise ClusterError(f"KV transfer check failed for {len(slow)} of {len(pairs)} prefill -> decode pair(s) "
                               f"({pd_path.PAIR_BYTES >> 20} MiB each):\n" + _indent(slow, "  "))
        return self.kv_pairs_gbps

    def _explained(self) -> str:
        """The PD path's addresses and, per worker, the log lines that explain a failed handoff (else its tail)."""
        dep = self.deployment
        lines = [] if not dep.moves_kv else [
            f"  KV engine {self.cfg.kv_transfer.backend}; bootstrap "
            + ", ".join(f"{p.key} {pd_path.bootstrap_address(p)}" for p in dep.servers("prefill"))]
        lines += [f"  {held}" for held in pd_path.where_requests_wait(dep)]
        for rp in self.procs.values():
            if rp.spec.role not in plan_mod.WORKER_ROLES:
                continue
            try:
                text = strip_ansi(self.runtime.log_tail(rp, 400))
            except hosts_mod.HostError as exc:
                text = f"(log not readable: {exc})"
            told = pd_path.explaining_lines(text)
            if told:
                lines.append(f"  {rp.spec.role} {rp.spec.key} on node {rp.spec.node} logged ({rp.spec.log_path}):\n"
                             + _indent(told, "    | "))
            else:
                lines.append(self._tail_block(rp))
        return "\n".join(lines)

    def _smoke(self, url: str | None = None, extra: dict | None = None,
               streams: tuple[bool, ...] = (False, True)) -> dict[str, float]:
        """/generate on ``url`` (else through the router), with ``extra`` request fields, once per stream form."""
        url = url or self.router_url
        via = f"through the router {url}" if self.deployment.has_router else f"to the decode worker {url}"
        before = handoffs(self.worker_urls)
        body = {"text": "The capital of France is", "sampling_params": {"max_new_tokens": 8, "temperature": 0},
                **(extra or {})}
        deadline_s = self.cfg.timeouts.smoke_s
        t0 = time.monotonic()
        for stream in streams:
            self.check_alive()
            left = max(deadline_s - (time.monotonic() - t0), 0.1)
            try:
                r = requests.post(f"{url}/generate", json={**body, "stream": stream},
                                  timeout=(min(5.0, left), left), stream=stream)
                text = body_within(r, t0 + deadline_s)
            except requests.Timeout:
                raise ClusterError(f"smoke request (stream={stream}) {via}: no answer "
                                   f"within {deadline_s:g} s ($.config.timeouts.smoke_s)\n" + self._explained()) from None
            except requests.RequestException as exc:
                raise ClusterError(f"smoke request (stream={stream}) {via} failed: "
                                   f"{type(exc).__name__}\n" + self._explained()) from None
            finish = finish_reason(text, stream)
            if r.status_code != 200 or finish.get("type") in ("abort", "unparsable", None):
                raise ClusterError(f"smoke request (stream={stream}) {via} failed: HTTP {r.status_code}, "
                                   f"finish_reason {json.dumps(finish)}\n  response: {text[:500]}\n" + self._explained())
        if not self.deployment.moves_kv:
            return None
        after = handoffs(self.worker_urls)
        self.handoffs = None if after is None else after - (before or 0.0)
        if self.handoffs is not None and self.handoffs < 2:
            raise ClusterError(f"smoke requests completed but the prefill workers' sglang:kv_transfer_latency_ms "
                               f"counted {self.handoffs:g} KV transfers (expected +2): the requests were served "
                               "without a KV transfer prefill -> decode")
        return self.handoffs

    # ---------------------------------------------------------------- benchmarks (BenchTarget)
    def run_bench_command(self, spec: ProcessSpec, timeout_s: float) -> tuple[int, str]:
        rp = self.runtime.start(spec)
        self.procs[spec.key] = rp
        t0 = time.monotonic()
        try:
            while (code := self.runtime.exit_code(rp)) is None:
                if time.monotonic() - t0 > timeout_s or self.broken:
                    self.runtime.stop(rp)
                    why = "stopped: the cluster watch found it broken" if self.broken else f"timed out after {timeout_s:g} s"
                    return 124, self.runtime.log_tail(rp, LOG_TAIL_LINES) + f"\n({why})"
                time.sleep(POLL_S)
            return code, self.runtime.log_tail(rp, LOG_TAIL_LINES)
        finally:
            self.collect(spec.key)

    def _bench_node(self) -> str:
        return next((c.node for c in self.deployment.containers if c.key == "bench"), self.deployment.entry.node)

    def fetch(self, remote_path: str, local: Path) -> None:
        """Copy a file from the benchmark node (container logs are bind mounts at the same path)."""
        self.hosts[self._bench_node()].get(remote_path, local)

    def put(self, local: Path, remote_path: str) -> None:
        """Copy a file to the benchmark node (into the log directory, which containers bind-mount)."""
        self.hosts[self._bench_node()].put(local, remote_path)

    def tool_version(self, spec: ProcessSpec) -> str | None:
        """The sglang version of the python ``spec`` runs, asked where it runs (in its container, if any); cached."""
        key = (spec.container, spec.argv[0])
        if key not in self._tool_versions:
            host = self.runtime.container_host(spec.container) if spec.container else self.hosts[spec.node]
            self._tool_versions[key] = self._probe(host, spec.argv[0], "sglang")
        return self._tool_versions[key]

    # ---------------------------------------------------------------- teardown
    def snapshot_logs(self) -> None:
        """Copy every log as it is now (the processes keep running: --keep-cluster)."""
        on_each(self.collect, list(self.procs))
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

    def _stop_role(self, role: str) -> None:
        """Stop a role's processes together (SIGTERM to all, one grace, SIGKILL), then collect their logs at once."""
        if self.keep:
            return
        procs = [rp for rp in self.procs.values() if rp.spec.role == role]
        if not procs:
            return
        with self._stage("teardown", f"stop {len(procs)} {role} process(es), collect their logs"):
            errors = self.runtime.stop_all(procs)
            on_each(self.collect, [rp.spec.key for rp in procs])
        if errors:
            raise ClusterError("; ".join(errors))

    def disconnect(self) -> None:
        for host in self.hosts.values():
            host.close()
        self.hosts = {}

    def _write_state(self, stopped: bool = False) -> None:
        """What runs where, so `sglang-pd down` can stop a kept cluster later."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "config": self.cfg.source, "run_id": self.deployment.run_id, "model": self.deployment.model.id,
            "runtime": self.cfg.runtime, "transport": self.cfg.transport, "router_url": self.router_url,
            "stopped": stopped, "slurm": slurm.state_of(self.cfg),
            "processes": [{"key": k, "role": rp.spec.role, "node": rp.spec.node, "pid": rp.pid,
                           "container_id": rp.container_id} for k, rp in self.procs.items()],
            "containers": [{"key": c.key, "node": c.node, "name": c.name} for c in self.deployment.containers],
        }
        tmp = self.run_dir / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self.run_dir / STATE_FILE)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    """Without terminal colour codes (the router colours its log even into a file)."""
    return _ANSI.sub("", text)


def _some(names: Iterable[str], most: int = 3) -> str:
    """``a, b, c and 5 more``."""
    names = sorted(names)
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return ", ".join(names[:most]) + more


def _indent(lines: Iterable[str], prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in lines)
