"""The serving instances of each role: their nodes, GPUs and ports."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ..config import ClusterConfig, Layout, ModelConfig, role_nodes


@dataclass(frozen=True)
class Member:
    node: str
    rank: int
    gpus: tuple[int, ...]


@dataclass(frozen=True)
class Instance:
    role: str
    index: int
    members: tuple[Member, ...]
    port: int
    bootstrap_port: int | None
    layout: Layout

    @property
    def head(self) -> str:
        return self.members[0].node


def instances(cfg: ClusterConfig, model: ModelConfig, role: str) -> tuple[Instance, ...]:
    """The serving instances of a role: ``instances_per_node`` on each of its nodes (per_node) or one spanning all
    its nodes (multi_node); each with its own GPUs (a node's GPUs are handed out in order, prefill first) and, on a
    shared node, ports ``port_step`` apart."""
    return instances_by_role(cfg, model)[role]


def instances_by_role(cfg: ClusterConfig, model: ModelConfig) -> dict[str, tuple[Instance, ...]]:
    next_gpu: Counter = Counter()  # node -> its first GPU not handed out yet

    def member(node: str, rank: int, gpus: int) -> Member:
        first = next_gpu[node]
        next_gpu[node] += gpus
        return Member(node, rank, tuple(range(first, first + gpus)))

    out = {}
    for role in model.roles:
        layout = model.layout(role)
        nodes = role_nodes(cfg, role)
        base_port = cfg.decode_port if role == "decode" else cfg.prefill_port
        bootstrap = cfg.kv_transfer.bootstrap_port if role == "prefill" else None
        if cfg.instance_layout == "multi_node":
            members = tuple(member(n, r, layout.gpus) for r, n in enumerate(nodes))
            out[role] = (Instance(role, 0, members, base_port, bootstrap, layout),)
            continue
        insts, seen = [], Counter()
        for node in nodes:
            for _ in range(layout.instances_per_node):
                shift = seen[node] * layout.port_step
                seen[node] += 1
                insts.append(Instance(role, len(insts), (member(node, 0, layout.gpus),), base_port + shift,
                                       None if bootstrap is None else bootstrap + shift, layout))
        out[role] = tuple(insts)
    return out
