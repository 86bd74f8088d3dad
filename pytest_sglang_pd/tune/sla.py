"""What the search is asked: the workload (ISL / OSL) and the SLA, ``metric op limit`` terms over the canonical
metric names of metrics.py."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .. import metrics as metrics_mod


class TuneError(ValueError):
    """A bad search request (the SLA, the layout space): what is wrong and the value."""


@dataclass(frozen=True)
class Constraint:
    """One term of the SLA: ``metric op limit`` over the canonical metric names of metrics.py."""

    written: str  # the name as the user wrote it (an alias such as user_tok_s)
    metric: str
    op: str  # ">=" or "<="
    limit: float

    def met(self, figures: dict[str, float]) -> bool | None:
        """Whether ``figures`` meet it; None when they hold no value for its metric."""
        value = figures.get(self.metric)
        if value is None or value != value:
            return None
        return value >= self.limit if self.op == ">=" else value <= self.limit

    def __str__(self) -> str:
        return f"{self.written}{self.op}{self.limit:g}"


_TERM = re.compile(r"^\s*([A-Za-z0-9_]+)\s*(>=|<=)\s*([-+0-9.eE]+)\s*$")


def parse_sla(text: str) -> tuple[Constraint, ...]:
    """``"user_tok_s>=50,ttft_ms<=2000"`` -> constraints; the operator must agree with the metric's direction."""
    terms = [t for t in text.split(",") if t.strip()]
    if not terms:
        raise TuneError(f"--sla {text!r}: no term; write e.g. \"user_tok_s>=50,ttft_ms<=2000\"")
    out = []
    for term in terms:
        m = _TERM.match(term)
        if not m:
            raise TuneError(f"--sla term {term.strip()!r}: not of the form NAME>=LIMIT or NAME<=LIMIT")
        name, op, number = m.groups()
        metric = metrics_mod.canonical(name)
        if metric is None:
            raise TuneError(f"--sla term {term.strip()!r}: unknown metric {name!r} (known: ttft_ms, tpot_ms, itl_ms, "
                            "user_tok_s, tok_s_per_gpu, interactivity, and every name of docs/config-keys.md's metrics)")
        try:
            limit = float(number)
        except ValueError:
            raise TuneError(f"--sla term {term.strip()!r}: {number!r} is not a number") from None
        wanted = ">=" if metrics_mod.METRICS[metric].direction == "min" else "<="
        if op != wanted:
            bound = "a lower bound (higher is better)" if wanted == ">=" else "an upper bound (lower is better)"
            raise TuneError(f"--sla term {term.strip()!r}: {name} is {bound}: write {name}{wanted}{number}")
        out.append(Constraint(name, metric, op, limit))
    return tuple(out)


def sla_met(sla: tuple[Constraint, ...], figures: dict[str, float]) -> bool:
    """Every term met; a term whose metric is missing from ``figures`` counts as not met."""
    return all(c.met(figures) for c in sla)


@dataclass(frozen=True)
class Workload:
    isl: int
    osl: int
