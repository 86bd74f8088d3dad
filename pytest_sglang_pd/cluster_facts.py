"""The facts of a cluster for the report (``ClusterFacts``, whose types are in facts.py): its router, start-up
seconds, the versions its workers report, where each log is collected and the planned layout."""

from __future__ import annotations

from .cluster import LiveCluster, log_destination
from .external_cluster import ExternalCluster
from .facts import ClusterFacts, InstanceFacts
from .plan import Deployment
from .worker_http import worker_versions


def facts_of(cluster: LiveCluster | ExternalCluster, *, versions: bool = True) -> ClusterFacts:
    """What the report gets to know of a cluster: its router, start-up seconds, where each process's log is
    collected and (``versions``: once the workers are ready) the version each role's workers report."""
    dep = cluster.deployment
    logs = {} if dep is None else {spec.key: log_destination(cluster.run_dir, spec)
                                   for spec in (*dep.processes, *dep.bench)}
    return ClusterFacts(router_url=cluster.router_url, model=dep.model.id if dep else None, router=cluster.router_version,
                        startup_seconds=dict(cluster.startup_seconds),
                        kv_pairs_gbps=dict(cluster.kv_pairs_gbps), image_ids=dict(cluster.image_ids),
                        worker_versions=worker_versions(cluster.worker_urls) if versions else {}, log_files=logs,
                        started=tuple(cluster.procs), layout=() if dep is None else layout_facts(dep))


def layout_facts(dep: Deployment) -> tuple[InstanceFacts, ...]:
    """Each planned worker process: node, GPUs, NICs, ports, and its instance's TP and DP."""
    out = []
    for role in dep.worker_roles:
        layout, procs = dep.model.layout(role), dep.role(role)
        for p in procs:
            nnodes = sum(1 for q in procs if q.instance == p.instance)
            out.append(InstanceFacts(key=p.key, role=role, instance=p.instance, node=p.node, node_rank=p.node_rank,
                                     nnodes=nnodes, tp_size=layout.tensor_parallelism * nnodes, dp_size=layout.dp_size,
                                     dp_attention=layout.dp_attention, gpus=p.gpus, nics=p.nics, port=p.port,
                                     bootstrap_port=p.bootstrap_port))
    return tuple(out)
