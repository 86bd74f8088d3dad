"""The GPU -> NIC map a node's PCIe topology gives (nic.SYSFS_MAP_PROGRAM), run as the precheck runs it, over a
sysfs tree laid out as the kernel lays it out: devices under their root ports and switches, /sys/bus/pci/devices and
/sys/class/infiniband/*/device as links to them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_sglang_pd import config, nic, plan
from selftests.configs import raw


def _device(root: Path, path: str, vendor: str, cls: str, numa: int) -> Path:
    """A PCI function at ``devices/<path>`` (root complex / switch ports / function), listed in bus/pci/devices."""
    d = root / "devices" / path
    d.mkdir(parents=True)
    (d / "vendor").write_text(vendor + "\n")
    (d / "class").write_text(cls + "\n")
    (d / "numa_node").write_text(f"{numa}\n")
    bus = root / "bus" / "pci" / "devices"
    bus.mkdir(parents=True, exist_ok=True)
    (bus / d.name).symlink_to(d)
    return d


def _nic(root: Path, name: str, path: str, numa: int, state: str = "4: ACTIVE") -> None:
    d = _device(root, path, "0x15b3", "0x020700", numa)
    ib = root / "class" / "infiniband" / name
    (ib / "ports" / "1").mkdir(parents=True)
    (ib / "ports" / "1" / "state").write_text(state + "\n")
    (ib / "device").symlink_to(d)


def sysfs_tree(root: Path) -> Path:
    """Two GPUs under two switches; each switch's NIC is NOT the one whose number follows the GPU's; a down NIC beside
    GPU 0, a BMC's VGA and a GPU whose only NIC is across the host on its own NUMA node."""
    _device(root, "pci0000:00/0000:00:01.0/0000:01:00.0/0000:02:00.0", "0x1002", "0x120000", 0)  # GPU 0 (MI300X)
    _nic(root, "mlx5_3", "pci0000:00/0000:00:01.0/0000:01:00.0/0000:02:01.0", 0)
    _nic(root, "mlx5_9", "pci0000:00/0000:00:01.0/0000:01:00.0/0000:02:02.0", 0, state="1: DOWN")
    _device(root, "pci0000:00/0000:00:1f.0/0000:05:00.0", "0x1a03", "0x030000", 0)  # the BMC's VGA: no GPU
    _device(root, "pci0000:80/0000:80:01.0/0000:81:00.0/0000:82:00.0", "0x1002", "0x120000", 1)  # GPU 1
    _nic(root, "mlx5_0", "pci0000:80/0000:80:01.0/0000:81:00.0/0000:82:01.0", 1)
    _device(root, "pci0000:c0/0000:c0:01.0/0000:c1:00.0", "0x10de", "0x030200", 1)  # GPU 2: no switch of its own
    return root


def run_map(tmp_path: Path, root: Path) -> subprocess.CompletedProcess:
    argv = nic.sysfs_map_argv(str(tmp_path / "out" / "map.json"), python=sys.executable)
    return subprocess.run([*argv, str(root)], capture_output=True, text=True, timeout=60)


@pytest.mark.integration  # each runs the program as a process, as the precheck does
def test_each_gpu_gets_the_nic_of_its_own_pcie_switch_not_the_one_its_number_suggests(tmp_path):
    done = run_map(tmp_path, sysfs_tree(tmp_path / "sys"))
    assert done.returncode == 0, done.stderr
    written = json.loads((tmp_path / "out" / "map.json").read_text())
    # GPU 2 shares no switch with a NIC: the NIC on its NUMA node (mlx5_0) wins over mlx5_3
    assert written == {"0": "mlx5_3", "1": "mlx5_0", "2": "mlx5_0"}


@pytest.mark.integration
def test_a_node_without_gpus_or_active_nics_has_no_map_and_says_what_it_found(tmp_path):
    root = tmp_path / "sys"
    _nic(root, "mlx5_0", "pci0000:00/0000:00:01.0/0000:01:00.0", 0)
    done = run_map(tmp_path, root)
    assert done.returncode == 1
    assert done.stderr.strip() == (f"0 GPU(s) under {root}/bus/pci/devices, 1 active RDMA NIC(s) under "
                                   f"{root}/class/infiniband: no map")


def test_device_map_sysfs_passes_each_nodes_map_file_written_at_precheck():
    data = raw("pd-dp16-example.json")
    data["config"]["kv_transfer"]["mooncake"]["device_map"] = "sysfs"
    cfg = config.from_dict(data, user="sgl")
    dep = plan.plan(cfg, "deepseek-r1", run_id="r")
    for p in dep.role("decode"):
        path = f"/home/sgl/LOGS/sglang/ib-devices-{p.node}.json"
        assert p.argv[p.argv.index("--disaggregation-ib-device") + 1] == path
        (check,) = [c for c in dep.prechecks if c.kind == "nic_map" and c.node == p.node]
        assert check.argv == nic.sysfs_map_argv(path)
    assert [c.node for c in dep.prechecks if c.kind == "nic_map"] == ["dp-node01", "dp-node02", "dp-node03"]


@pytest.mark.integration
def test_the_program_reads_this_machines_sysfs_and_fails_clearly_without_gpus(tmp_path):
    done = run_map(tmp_path, Path("/sys"))
    assert done.returncode == 0 or done.stderr.strip().endswith("active RDMA NIC(s) under /sys/class/infiniband: no map")
