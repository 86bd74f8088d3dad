"""The cluster watch beside every benchmark: each process's exit status, each worker's /health and /metrics, and
progress (tokens streamed to the client, tokens the workers generated, requests the client completed). The first cause found is kept on the
cluster (``cluster.broken``), which stops the running benchmark at once; its text starts with the cause, then the
log tail of the process named, then the metric lines.

Causes, in the order they are looked for every ``POLL_S``:
- a process (store service, prefill, decode, router) exited: role, key, node, exit code;
- a worker stopped answering /health (``timeouts.health_misses`` probes in a row without a 200 within
  ``timeouts.health_s``; during a stall, one probe unanswered for ``SILENT_S``);
- a stall: nothing streamed, nothing generated and no request completed for ``timeouts.stall_s`` while a worker holds requests
  (its PD queues, running or waiting requests) or does not answer /metrics: the side and the queue are named.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import requests

from . import prom, services
from .cluster import LiveCluster
from .external_cluster import ExternalCluster
from .plan import WORKER_ROLES

POLL_S = 0.5
SILENT_S = 2.0
# the queue gauges, most telling first: (short name in prom.WORKER_METRICS, what holding requests there means)
QUEUES = (("prefill_inflight_queue", "inflight queue (KV being sent)"),
          ("decode_transfer_queue", "transfer queue (waiting for KV)"),
          ("decode_prealloc_queue", "prealloc queue (waiting for KV memory)"),
          ("prefill_bootstrap_queue", "bootstrap queue (waiting for the decode's handshake)"),
          ("running", "running requests"), ("waiting", "waiting queue"))
GENERAL = ("running", "waiting")  # not PD queues: named only when no PD queue holds requests
METRIC_LINES = ("requests", "generation_tokens", *(short for short, _ in QUEUES), "kv_transfers", "transfer_failed")


@dataclass
class Worker:
    """One worker as the watch sees it, kept up to date by its probe threads."""

    role: str
    key: str
    node: str
    url: str
    health_path: str = "/health"
    misses: int = 0  # /health probes in a row without a 200
    missed_since: float | None = None  # when the first of them was sent
    said: str = ""  # what the last failed probe got
    probing_since: float | None = None  # when the probe now waiting for its answer was sent
    metrics: dict[str, float] | None = None  # None: /metrics did not answer

    @property
    def name(self) -> str:
        return f"{self.role} {self.key} on node {self.node}"


def workers_of(cluster: LiveCluster | ExternalCluster) -> list[Worker]:
    """The prefill and decode workers of a cluster (by URL behind --router-url)."""
    if cluster.deployment is None:
        return [Worker(role, url, url.split("//")[-1].split(":")[0], url)
                for role, urls in cluster.worker_urls.items() for url in urls]
    return [Worker(s.role, s.key, s.node, s.url, s.health_path)
            for role in cluster.deployment.worker_roles for s in cluster.deployment.servers(role)]


class ClusterWatch:
    """A context manager: watches ``cluster`` while a benchmark (``label``) runs; ``cause`` is what it found."""

    def __init__(self, cluster: LiveCluster | ExternalCluster, label: str, *, stall_s: float, health_s: float = 5.0,
                 health_misses: int = 2):
        self.cluster, self.label, self.stall_s = cluster, label, stall_s
        self.health_s, self.health_misses = health_s, health_misses
        self.workers = workers_of(cluster)
        self.cause: str | None = None
        self.completed = 0  # requests the client finished, told by ``completions``
        self.streamed_tokens = 0  # output tokens the client received, told by ``streamed``
        self._done = threading.Event()
        self._threads: list[threading.Thread] = []
        self._t0 = time.monotonic()
        self._progress = (-1.0, self._t0)  # (progress signal, when it last grew)

    def __enter__(self) -> ClusterWatch:
        targets = [self._watch] + [lambda w=w: self._probe_health(w) for w in self.workers] + [
            lambda w=w: self._probe_metrics(w) for w in self.workers]
        self._threads = [threading.Thread(target=t, name=f"cluster-watch-{i}", daemon=True) for i, t in enumerate(targets)]
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._done.set()
        for thread in self._threads:
            thread.join(timeout=self.health_s + 1)

    def completions(self, done: int, total: int, elapsed_s: float) -> None:
        """A benchmark progress callback (bench.Progress): requests completed count as progress."""
        self.completed = done

    def streamed(self, tokens: int) -> None:
        """A benchmark stream callback (bench.Streamed): output tokens the client received count as progress."""
        self.streamed_tokens += tokens

    def look(self) -> str | None:
        """The cause found so far; at the end of a benchmark also an exit the last poll has not seen yet."""
        if self.cause is None and (found := self._exited()):
            self.cause = self.cluster.broken = found
        return self.cause

    def at(self, when: float | None = None) -> str:
        """``12.3 s into <label>``."""
        return f"{(time.monotonic() if when is None else when) - self._t0:.1f} s into {self.label}"

    # ------------------------------------------------------------------ probes (one thread each)
    def _probe_health(self, w: Worker) -> None:
        while not self._done.is_set():
            sent = w.probing_since = time.monotonic()
            try:
                status = requests.get(w.url + w.health_path, timeout=self.health_s).status_code
                said = "" if status == 200 else f"answered HTTP {status}"
            except requests.Timeout:
                said = f"no answer in {self.health_s:g} s"
            except requests.RequestException as exc:
                said = f"connection failed: {type(exc).__name__}"
            w.probing_since = None
            if said:
                w.missed_since = w.missed_since if w.misses else sent
                w.misses, w.said = w.misses + 1, said
            else:
                w.misses, w.missed_since = 0, None
            self._done.wait(max(0.0, 1.0 - (time.monotonic() - sent)))

    def _probe_metrics(self, w: Worker) -> None:
        while not self._done.is_set():
            sent = time.monotonic()
            samples = prom.fetch(f"{w.url}/metrics")
            w.metrics = None if samples is None else {
                short: v for short, name in prom.WORKER_METRICS.items() if (v := prom.total(samples, name)) is not None}
            self._done.wait(max(0.0, 1.0 - (time.monotonic() - sent)))

    # ------------------------------------------------------------------ the watch itself
    def _watch(self) -> None:
        while not self._done.wait(POLL_S) and self.check() is None:
            pass

    def check(self) -> str | None:
        """One look at what the probes found (every ``POLL_S`` while watching); the first cause is kept."""
        if self.cause is None and (found := self._exited() or self._unhealthy() or self._stalled()):
            self.cause = self.cluster.broken = found
        return self.cause

    def _exited(self) -> str | None:
        if not isinstance(self.cluster, LiveCluster):
            return None
        watched = (services.ROLE, *WORKER_ROLES, "router")
        procs = [rp for rp in list(self.cluster.procs.values()) if rp.spec.role in watched]
        for rp, code in zip(procs, self.cluster.runtime.exit_codes(procs)):
            if code is not None:
                return self._told(f"{rp.spec.role} {rp.spec.key} on node {rp.spec.node} exited with code {code} at "
                                  f"{self.at()}", rp.spec.key)
        return None

    def _unhealthy(self) -> str | None:
        stalled, now = self._stall_for() >= self.stall_s, time.monotonic()
        for w in self.workers:
            if w.misses >= self.health_misses or (w.misses and stalled):
                return self._told(f"{w.name} stopped answering {w.health_path} ({w.said}) from {self.at(w.missed_since)}",
                                  w.key)
            since = w.probing_since
            if stalled and since is not None and now - since >= SILENT_S:
                return self._told(f"{w.name} stopped answering {w.health_path} (no answer for {now - since:.0f} s) "
                                  f"from {self.at(since)}", w.key)
        return None

    def _stall_for(self) -> float:
        """Seconds since the progress signal (tokens streamed + tokens generated + requests completed) last grew."""
        signal = self.completed + self.streamed_tokens + sum((w.metrics or {}).get("generation_tokens", 0.0) for w in self.workers)
        now = time.monotonic()
        if signal > self._progress[0]:
            self._progress = (signal, now)
        return now - self._progress[1]

    def _stalled(self) -> str | None:
        quiet = self._stall_for()
        if quiet < self.stall_s:
            return None
        held = [(w, short, what, int(w.metrics[short])) for short, what in QUEUES for w in self.workers
                if w.metrics and w.metrics.get(short)]
        held = [h for h in held if h[1] not in GENERAL] or held  # a PD queue that holds them says more
        silent = [w for w in self.workers if w.metrics is None]
        if not held and not silent:
            return None  # nothing waits in the cluster: the client is idle, not the cluster stalled
        where = [f"{w.name} holds {n} request(s) in its {what} ({prom.WORKER_METRICS[short]})"
                 for w, short, what, n in held] + [f"{w.name} does not answer /metrics" for w in silent]
        first = (held[0][0] if held else silent[0]).key
        return self._told(f"stall: {'; '.join(where)}; nothing streamed, nothing generated and no request completed for {quiet:.0f} s "
                          f"($.config.timeouts.stall_s = {self.stall_s:g}) from {self.at(self._progress[1])}", first)

    def _told(self, cause: str, key: str) -> str:
        """The cause, the log tail of the process ``key`` and the metric lines."""
        parts = [cause]
        rp = getattr(self.cluster, "procs", {}).get(key)
        if rp is not None:
            parts.append(self.cluster._tail_block(rp))  # the bring-up's own form of a log tail
        parts.append("  the workers' metrics (last read):")
        parts += [f"    {w.name}: " + (", ".join(f"{s} {w.metrics[s]:g}" for s in METRIC_LINES if s in w.metrics)
                                       if w.metrics is not None else "/metrics not answering") for w in self.workers]
        parts.append(f"    client: {self.completed} request(s) completed, {self.streamed_tokens} output token(s) streamed")
        return "\n".join(parts)
