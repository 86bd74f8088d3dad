"""Side services some deployments need first and stop last: the Mooncake Store behind HiCache (its master and its
etcd or HTTP metadata server, planned as the ``store`` role by ``plan.store_processes``).

``LiveCluster.start_services`` starts them as a bring-up step before any worker (so they are stopped after every
worker) and waits here until each answers on its planned address.
"""

from __future__ import annotations

import requests

from .plan import STORE_ROLE, ProcessSpec

ROLE = STORE_ROLE
# what each service answers while it is up: the HTTP metadata server has no value for plan.STORE_PROBE_KEY (404)
_READY_STATUS = {"store_metadata": 404}
_PROBE_TIMEOUT_S = 2


def answers(spec: ProcessSpec) -> bool:
    """The service answers on its health address as it does once ready."""
    try:
        r = requests.get(spec.url + spec.health_path, timeout=_PROBE_TIMEOUT_S)
    except requests.RequestException:
        return False
    return r.status_code == _READY_STATUS.get(spec.key, 200)


def described(spec: ProcessSpec) -> str:
    """The service, its node and port, as errors name them."""
    return f"{spec.key} on node {spec.node}, port {spec.port} ({spec.url}{spec.health_path})"
