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


# A node's GPU -> NIC map from its PCIe topology in sysfs, run on the node before the workers start (python3 -c,
# standard library only: the node needs nothing of this package). argv: the JSON file to write, [the sysfs root].
# GPUs (NVIDIA / AMD display, 3D or processing-accelerator functions) are numbered in PCI bus order, as nvidia-smi
# and amd-smi list them; each gets the RDMA NIC(s) nearest to it: the longest shared PCIe path (same switch, then
# same root port), then the same NUMA node. A NIC whose port 1 is known and not ACTIVE is left out.
SYSFS_MAP_PROGRAM = r'''
import json, os, sys
out, root = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "/sys")
def read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""
def parts(device):
    return os.path.realpath(device).split(os.sep)
pci = os.path.join(root, "bus", "pci", "devices")
functions = [os.path.join(pci, d) for d in sorted(os.listdir(pci) if os.path.isdir(pci) else ())]
gpus = [d for d in functions if read(os.path.join(d, "vendor")) in ("0x10de", "0x1002")
        and read(os.path.join(d, "class"))[:6] in ("0x0300", "0x0302", "0x0380", "0x1200")]
ib = os.path.join(root, "class", "infiniband")
nics = {}
for name in sorted(os.listdir(ib)) if os.path.isdir(ib) else ():
    state = read(os.path.join(ib, name, "ports", "1", "state"))
    if state and "ACTIVE" not in state:
        continue
    nics[name] = os.path.join(ib, name, "device")
if not gpus or not nics:
    sys.exit(f"{len(gpus)} GPU(s) under {pci}, {len(nics)} active RDMA NIC(s) under {ib}: no map")
def score(gpu, nic):
    shared = 0
    for a, b in zip(parts(gpu), parts(nic)):
        if a != b:
            break
        shared += 1
    return (shared, read(os.path.join(gpu, "numa_node")) == read(os.path.join(nic, "numa_node")))
mapping = {}
for index, gpu in enumerate(gpus):
    scores = {name: score(gpu, dev) for name, dev in nics.items()}
    best = max(scores.values())
    mapping[str(index)] = ",".join(n for n, s in scores.items() if s == best)
os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
with open(out, "w") as f:
    json.dump(mapping, f)
print(json.dumps(mapping))
'''


def sysfs_map_argv(out_path: str, python: str = "python3") -> tuple[str, ...]:
    """The command that writes a node's GPU -> NIC map (SGLang's per-GPU ``--disaggregation-ib-device`` file)."""
    return (python, "-c", SYSFS_MAP_PROGRAM, out_path)
