"""The layouts that fill the worker nodes (prefill and decode shapes, or aggregated instances) and the ones left out,
each with why."""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, replace

from ..config import AGGREGATED, DISAGGREGATED, ROLES


def profile_key(tp: int, dpa: int = 1) -> str:
    """The profile a shape is predicted from: one per TP size, and one per TP size with DP attention."""
    return f"{tp}dpa{dpa}" if dpa > 1 else str(tp)


def profile_name(tp: int, dpa: int = 1) -> str:
    return f"TP{tp}" + (f" DP-attention {dpa}" if dpa > 1 else "")


@dataclass(frozen=True)
class Shape:
    """One role's instances: ``instances_per_node`` x TP (x DP replicas) on each of ``nodes`` nodes; ``dpa``: DP
    attention over that many of an instance's TP ranks (its GPUs unchanged)."""

    tp: int
    instances_per_node: int
    nodes: int
    dp: int = 1
    dpa: int = 1

    @property
    def profile(self) -> str:
        return profile_key(self.tp, self.dpa)

    @property
    def profiled(self) -> Shape:
        """The 1-instance shape its profile is taken with."""
        return Shape(self.tp, 1, 1, dpa=self.dpa)

    @property
    def gpus_per_node(self) -> int:
        return self.tp * self.instances_per_node * self.dp

    @property
    def instances(self) -> int:
        """Serving engines of the role (a DP replica counts as one)."""
        return self.instances_per_node * self.nodes * self.dp

    @property
    def gpus(self) -> int:
        return self.gpus_per_node * self.nodes

    def label(self) -> str:
        dp = f"dp{self.dp}" if self.dp > 1 else f"dpa{self.dpa}" if self.dpa > 1 else ""
        return f"{self.instances_per_node * self.nodes}xtp{self.tp}{dp}"


@dataclass(frozen=True)
class Layout:
    """A candidate: prefill and decode shapes (disaggregated, ``shared``: on the same nodes) or one aggregated."""

    mode: str
    prefill: Shape | None = None
    decode: Shape | None = None
    aggregated: Shape | None = None
    shared: bool = False

    @property
    def id(self) -> str:
        if self.mode == AGGREGATED:
            return f"agg-{self.aggregated.label()}"
        return f"p{self.prefill.label()}-d{self.decode.label()}" + ("-shared" if self.shared else "")

    @property
    def gpus(self) -> int:
        return sum(s.gpus for s in (self.prefill, self.decode, self.aggregated) if s)

    @property
    def tps(self) -> tuple[int, ...]:
        return tuple(sorted({s.tp for s in (self.prefill, self.decode, self.aggregated) if s}))

    @property
    def profiles(self) -> tuple[str, ...]:
        """The profiles its prediction needs (``profile_key``)."""
        return tuple(sorted({s.profile for s in (self.prefill, self.decode, self.aggregated) if s}))

    def as_dict(self) -> dict:
        return {"id": self.id, **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> Layout:
        return cls(mode=d["mode"], shared=d.get("shared", False),
                   **{r: Shape(**d[r]) for r in (*ROLES, AGGREGATED) if d.get(r)})


def profile_layout(shape: Shape, nodes: int) -> Layout:
    """The 1P1D a shape's profile is measured on: both roles with its TP and DP attention, since the profile predicts
    the prefill (TTFT) and the decode (ITL) of instances of that shape; on two nodes, or sharing one."""
    one = shape.profiled
    return Layout(DISAGGREGATED, prefill=one, decode=one, shared=nodes < 2)


@dataclass(frozen=True)
class Exclusion:
    what: str
    why: str


def _per_node_shapes(tps: tuple[int, ...], gpus: int, nodes: int, role: str,
                     excluded: list[Exclusion]) -> list[Shape]:
    """The shapes that fill a node's GPUs exactly; the others named with why they do not fit."""
    out = []
    for tp in tps:
        if tp > gpus:
            excluded.append(Exclusion(f"{role} TP{tp}", f"TP{tp} spans nodes of {gpus} GPUs (the multi_node layout is "
                                      "not searched)"))
            continue
        for ipn in range(1, gpus // tp + 2):
            need = ipn * tp
            if need == gpus:
                out.append(Shape(tp, ipn, nodes))
            elif need > gpus:
                excluded.append(Exclusion(f"{role} {ipn}xTP{tp} per node", f"needs {need} GPUs, gpus_per_node is {gpus}"))
            elif ipn == gpus // tp - 1:  # the largest that leaves GPUs idle (the smaller ones leave more)
                excluded.append(Exclusion(f"{role} {ipn}xTP{tp} per node (and fewer)",
                                          f"leaves {gpus - need} of {gpus} GPUs idle: layouts that do are not searched"))
    return out


def enumerate_layouts(nodes: int, gpus_per_node: int, tps: tuple[int, ...], *, aggregated_dp: bool = False,
                      dp_attention: bool = False, dp_attention_sizes: tuple[int, ...] = ()) -> tuple[list[Layout],
                                                                                                   list[Exclusion]]:
    """Every layout that fills ``nodes`` nodes of ``gpus_per_node`` GPUs: disaggregated with the nodes split between
    the roles (k prefill nodes, the rest decode; on one node both roles share it, GPUs split between them) and
    aggregated (instances x TP per node; with ``aggregated_dp`` one instance of TP x DP replicas per node too); each
    layout also with DP attention on its prefill, decode or both (or its aggregated instances) where their TP has a
    size of ``dp_attention_sizes`` (``dp_attention``: over all their TP ranks)."""
    excluded: list[Exclusion] = []
    layouts: list[Layout] = []
    if nodes >= 2:
        for k in range(1, nodes):
            for p in _per_node_shapes(tps, gpus_per_node, k, "a role's", excluded):
                for d in _per_node_shapes(tps, gpus_per_node, nodes - k, "decode", []):
                    layouts.append(Layout(DISAGGREGATED, prefill=p, decode=d))
    else:
        for tp_p in tps:
            for tp_d in tps:
                for ipn_p in range(1, gpus_per_node // tp_p + 1):
                    rest = gpus_per_node - ipn_p * tp_p
                    if rest and rest % tp_d == 0:
                        layouts.append(Layout(DISAGGREGATED, prefill=Shape(tp_p, ipn_p, 1),
                                              decode=Shape(tp_d, rest // tp_d, 1), shared=True))
        excluded.append(Exclusion("disaggregated on separate nodes", "one worker node: prefill and decode share it"))
    for s in _per_node_shapes(tps, gpus_per_node, nodes, "aggregated", []):
        layouts.append(Layout(AGGREGATED, aggregated=s))
        if aggregated_dp and s.instances_per_node > 1:
            layouts.append(Layout(AGGREGATED, aggregated=Shape(s.tp, 1, nodes, dp=s.instances_per_node)))
    sizes = _dp_attention_sizes(tuple(tp for tp in tps if tp <= gpus_per_node), dp_attention, dp_attention_sizes,
                                excluded)
    layouts += [v for lay in layouts for v in _with_dp_attention(lay, sizes)]
    return layouts, excluded


def _dp_attention_sizes(tps: tuple[int, ...], all_ranks: bool, sizes: tuple[int, ...],
                        excluded: list[Exclusion]) -> dict[int, tuple[int, ...]]:
    """Per TP, the DP attention sizes searched: those of ``sizes`` that divide it (SGLang asserts the TP size is a
    multiple of --attn-dp-size), and the TP itself with ``all_ranks``; the others named with why."""
    out = {}
    for tp in tps:
        fit = {n for n in sizes if tp % n == 0} | ({tp} if all_ranks else set())
        out[tp] = tuple(sorted(n for n in fit if n >= 2))
        excluded += [Exclusion(f"TP{tp} DP-attention {n}", _indivisible(tp, n)) for n in sorted(sizes) if tp % n]
    return out


def _indivisible(tp: int, n: int) -> str:
    if n > tp:
        return f"TP{tp} has {tp} rank{'s' if tp > 1 else ''}, fewer than {n}"
    return (f"{n} does not divide {tp} (DP attention splits an instance's TP ranks into equal groups: SGLang asserts "
            "tp_size % attn_dp_size == 0)")


def _with_dp_attention(layout: Layout, sizes: dict[int, tuple[int, ...]]) -> list[Layout]:
    """The layout with DP attention on its prefill, its decode or both (aggregated: its instances), over each size of
    ``sizes`` their TP has (none for DP replicas)."""
    roles = ("aggregated",) if layout.mode == AGGREGATED else ("prefill", "decode")
    options = [[replace(s, dpa=n) for n in (1, *([] if s.dp > 1 else sizes.get(s.tp, ())))]
               for s in (getattr(layout, r) for r in roles)]
    return [replace(layout, **dict(zip(roles, shapes))) for shapes in itertools.product(*options)
            if any(s.dpa > 1 for s in shapes)]
