"""Slurm as the engine that owns the nodes: role assignment, srun argv, and bring-ups through a real Slurm."""

from __future__ import annotations

import socket
import subprocess

import pytest


@pytest.mark.slurm
def test_throwaway_slurm_runs_a_step_on_each_node_at_its_own_address(slurm):
    """The fixture's nodes are idle and each srun step can bind its node's NodeAddr (same port on every node)."""
    assert sorted(slurm.idle()) == ["n1", "n2", "n3"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.2", 0))
        port = probe.getsockname()[1]
    bind = f"import socket; s = socket.socket(); s.bind(('{{}}', {port})); print(s.getsockname()[0])"
    for name, addr in slurm.nodes.items():
        out = subprocess.run(["srun", "-N1", "-n1", "-w", name, "python3", "-c", bind.format(addr)],
                             env=slurm.env, capture_output=True, text=True, timeout=60)
        assert (out.returncode, out.stdout.strip()) == (0, addr), out.stderr
    assert slurm.jobs() == []
