"""Charts drawn by matplotlib into inline SVG (no scripts, no network: the report stays one file): latency
histograms with the mean and p99 marked, throughput against latency for a concurrency sweep.

Every label sits outside the plotting area (legend below the axes, axis labels and ticks by matplotlib's own
layout), so no label covers a bar or a point.
"""

from __future__ import annotations

import io
import re

import numpy as np
from matplotlib.figure import Figure

SIZE_IN = (4.6, 2.9)
BAR = "#4e79a7"
MARK = {"mean": "#e15759", "p99": "#f28e2b"}
_RC = {"svg.fonttype": "none", "font.size": 8}


def _figure() -> tuple[Figure, object]:
    fig = Figure(figsize=SIZE_IN, layout="constrained")
    return fig, fig.add_subplot()


def _svg(fig: Figure, title: str) -> str:
    """The figure as an inline <svg> element (no XML prolog), labelled for screen readers."""
    import matplotlib

    with matplotlib.rc_context(_RC):
        buf = io.StringIO()
        fig.savefig(buf, format="svg")
    text = re.sub(r"<metadata>.*?</metadata>", "", buf.getvalue(), flags=re.S)
    text = text[text.index("<svg"):]
    return re.sub(r"<svg ", f'<svg class="sglang-pd-chart" role="img" aria-label="{_attr(title)}" ', text, count=1)


def _attr(text: str) -> str:
    return text.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")


def _empty(ax, title: str) -> Figure:
    ax.set_title(title)
    ax.text(0.5, 0.5, "no data", ha="center", va="center", color="#888", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])
    return ax.figure


def _legend_below(ax) -> None:
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.28), ncol=3, frameon=False)


def histogram(values: list[float], title: str, unit: str = "ms", bins: int = 24) -> str:
    """A histogram of ``values``; the mean and p99 as dashed lines, their values in the legend below the axes."""
    return _svg(histogram_figure(values, title, unit, bins), title)


def histogram_figure(values: list[float], title: str, unit: str = "ms", bins: int = 24) -> Figure:
    fig, ax = _figure()
    if not values:
        return _empty(ax, title)
    data = np.asarray(values, dtype=float)
    _, _, patches = ax.hist(data, bins=bins, color=BAR, edgecolor="white", linewidth=0.5)
    for i, patch in enumerate(patches):
        patch.set_gid(f"bar-{i}")
    for name, value in (("mean", float(data.mean())), ("p99", float(np.percentile(data, 99)))):
        line = ax.axvline(value, color=MARK[name], linestyle="--", linewidth=1.2, label=f"{name} {value:.4g} {unit}")
        line.set_gid(name)
    ax.set_title(title)
    ax.set_xlabel(unit)
    ax.set_ylabel("requests")
    _legend_below(ax)
    return fig


def sweep(points: list[tuple[int, float, float]], title: str, x_label: str, y_label: str) -> str:
    """Throughput (y) against latency (x), one marker per concurrency (named in the legend), joined in order."""
    return _svg(sweep_figure(points, title, x_label, y_label), title)


def sweep_figure(points: list[tuple[int, float, float]], title: str, x_label: str, y_label: str) -> Figure:
    fig, ax = _figure()
    points = sorted(p for p in points if p[1] == p[1] and p[2] == p[2])
    if not points:
        return _empty(ax, title)
    ax.plot([p[1] for p in points], [p[2] for p in points], color=BAR, linewidth=1.2, zorder=1)
    markers = "osD^v<>ph"
    for i, (conc, x, y) in enumerate(points):
        dot = ax.scatter([x], [y], s=30, marker=markers[i % len(markers)], zorder=2, label=f"c{conc}")
        dot.set_gid(f"c{conc}")
    return _labelled(fig, ax, title, x_label, y_label, [(p[1], p[2]) for p in points])


def sparkline(values: list[float], title: str = "trend") -> str:
    """A small line of ``values`` (oldest first) with the last one marked, no axes: a trend at a glance."""
    fig = Figure(figsize=(1.6, 0.35))
    ax = fig.add_axes((0.02, 0.1, 0.96, 0.8))
    ax.plot(range(len(values)), values, color=BAR, linewidth=1)
    ax.plot([len(values) - 1], [values[-1]], "o", color=MARK["mean"], markersize=3)
    ax.set_axis_off()
    return _svg(fig, title)


def pareto(series: dict[str, list[tuple[float, float]]], title: str, x_label: str, y_label: str,
           x_floor: float | None = None) -> str:
    """Points of several series (x: per-user rate, y: per-GPU throughput), one marker each, and the Pareto front of
    all of them (no other point better on both axes) as a dashed line; ``x_floor``: the SLA's least x, a dotted line
    with the region left of it shaded."""
    return _svg(pareto_figure(series, title, x_label, y_label, x_floor), title)


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points no other point beats on both axes (higher is better on each), by x."""
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):
        if not front or y > front[-1][1]:
            front.append((x, y))
    return sorted(front)


def pareto_figure(series: dict[str, list[tuple[float, float]]], title: str, x_label: str, y_label: str,
                  x_floor: float | None = None) -> Figure:
    fig, ax = _figure()
    points = [p for pts in series.values() for p in pts]
    if not points:
        return _empty(ax, title)
    markers = "osD^v<>ph"
    for i, (name, pts) in enumerate(series.items()):
        dots = ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=30, marker=markers[i % len(markers)], zorder=2,
                          label=name)
        dots.set_gid(f"series-{name}")
    front = pareto_front(points)
    line, = ax.plot([p[0] for p in front], [p[1] for p in front], color="#888", linestyle="--", linewidth=1, zorder=1)
    line.set_gid("pareto-front")
    if x_floor is not None:
        ax.axvline(x_floor, color="#c00", linestyle=":", linewidth=1, zorder=1,
                   label=f"SLA >= {x_floor:g}").set_gid("sla-floor")
    _labelled(fig, ax, title, x_label, y_label, points + ([(x_floor, points[0][1])] if x_floor is not None else []),
              from_zero=False)
    if x_floor is not None:
        ax.axvspan(ax.get_xlim()[0], x_floor, color="#eee", zorder=0).set_gid("sla-fails")
    return fig


def _span(values: list[float], from_zero: bool, margin: float) -> tuple[float, float]:
    """Axis limits: 0 (or a margin below the smallest value, not below 0) to a margin above the largest."""
    lo, hi = min(values), max(values)
    if from_zero:
        return 0, hi * (1 + margin) or 1
    pad = (hi - lo or abs(hi) or 1) * margin
    return max(0.0, lo - pad), hi + pad


def _labelled(fig: Figure, ax, title: str, x_label: str, y_label: str, xy: list[tuple[float, float]],
              from_zero: bool = True) -> Figure:
    """Title, axis labels, axes over the points (from 0 unless ``from_zero`` is false), the legend below."""
    ax.set_title(title)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_xlim(*_span([x for x, _ in xy], from_zero, 0.1))
    ax.set_ylim(*_span([y for _, y in xy], from_zero, 0.15))
    _legend_below(ax)
    return fig
