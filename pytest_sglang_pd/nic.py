"""The RDMA NICs a PD cluster runs on: where the kernel lists them, and per NIC type what its containers need.

A NIC's verbs provider library lives on the host and must be visible inside the container (AMD Pensando
AINIC: the ``ionic`` provider, mounted file by file as the CVS PD guide lists; Broadcom Thor: the host's
``bnxt_re`` provider, and GID index 3, as AMD's validation suite sets it). ``nic_type`` in the config picks
a profile; ``sglang-pd plan`` shows what it adds.
"""

from __future__ import annotations

from dataclasses import dataclass

from .kv_transfer import IB_SYSFS  # one folder per RDMA device
_LIB = "/usr/lib/x86_64-linux-gnu"


@dataclass(frozen=True)
class NicProfile:
    name: str
    vendor: str
    provider: str  # the libibverbs provider; RDMA devices show as <provider>_<n> (hca_id)
    gid_index: int | None  # the GID index the NIC needs (RoCE v2), None: the config's
    mounts: tuple[str, ...]  # host files mounted at the same path into every worker container


PROFILES = {
    "ainic": NicProfile("ainic", "AMD Pensando Pollara (AINIC)", "ionic", None,
                        (f"{_LIB}/libionic.so.1", f"{_LIB}/libionic.so", f"{_LIB}/libibverbs/libionic-rdmav34.so",
                         "/etc/libibverbs.d/ionic.driver")),
    "bnxt": NicProfile("bnxt", "Broadcom Thor / Thor2", "bnxt_re", 3,
                       (f"{_LIB}/libibverbs/libbnxt_re-rdmav34.so", "/etc/libibverbs.d/bnxt_re.driver")),
    "mlx5": NicProfile("mlx5", "NVIDIA ConnectX", "mlx5", None, ()),
}
ALIASES = {"pensando": "ainic", "pollara": "ainic", "ionic": "ainic", "broadcom": "bnxt", "thor": "bnxt",
           "thor2": "bnxt", "bnxt_re": "bnxt", "mellanox": "mlx5", "connectx": "mlx5", "cx7": "mlx5", "cx8": "mlx5"}


def profile(nic_type: str | None) -> NicProfile | None:
    """The profile of a config's nic_type (None: none set); KeyError for a type the suite does not know."""
    if nic_type is None:
        return None
    name = nic_type.strip().lower()
    return PROFILES[ALIASES.get(name, name)]


def known_types() -> list[str]:
    return sorted({*PROFILES, *ALIASES})
