"""Numbers as a person reads them, per metric: fractions as percent, ms, tok/s, bytes; one place for all reports."""

from __future__ import annotations

from .. import metrics as metrics_mod

FRACTIONS = frozenset({"accuracy", "invalid", "cache_hit_rate", "slo_attainment", "dp_idle_step_fraction"})
_BYTES = (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10))


def plain(x: float | None) -> str:
    """A number without unit: integers with thousands separators, else three or four significant digits."""
    if x is None or x != x:
        return "-"
    if float(x).is_integer() and abs(x) < 1e9:
        return f"{int(x):,}"
    if abs(x) >= 100:
        return f"{x:,.1f}"
    if abs(x) >= 10:
        return f"{x:.2f}"
    return f"{x:.3g}"


def _bytes(x: float, per: str) -> str:
    for name, size in _BYTES:
        if abs(x) >= size:
            return f"{x / size:.2f} {name}{per}"
    return f"{x:.0f} B{per}"


def value(metric: str, x: float | None, *, unit: bool = True) -> str:
    """``metric``'s value formatted for its unit: ``95.3%``, ``294.1 ms``, ``1,970.8 tok/s``, ``1.50 GiB``."""
    if x is None or x != x:
        return "-"
    if metric in FRACTIONS:
        return f"{x * 100:.1f}%" if abs(x) >= 0.01 or x == 0 else f"{x * 100:.2g}%"
    known = metrics_mod.METRICS.get(metric)
    u = known.unit if known else ""
    if u in ("B", "B/s"):
        return _bytes(x, "/s" if u == "B/s" else "")
    if u in ("ms", "tok/s", "tok/s/GPU", "tok/s/user"):
        text = f"{x:,.1f}" if abs(x) >= 10 else f"{x:.2f}"
    elif u in ("req/s", "s"):
        text = f"{x:,.2f}"
    else:
        text = plain(x)
    return f"{text} {u}" if unit and u and u != "req" else text


def pct(x: float | None) -> str:
    """A signed percentage, ``+12.3%``; ``-`` when there is none."""
    return "-" if x is None or x != x else f"{x:+.1f}%"
