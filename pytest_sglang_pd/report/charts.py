"""Inline SVG charts (no scripts, no network): latency histograms and throughput against latency for a sweep."""

from __future__ import annotations

from html import escape

import numpy as np

WIDTH, HEIGHT = 420, 220
LEFT, RIGHT, TOP, BOTTOM = 52, 16, 28, 40
BAR = "#4e79a7"
MARK = {"mean": "#e15759", "p99": "#f28e2b"}


def _nice(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.3g}"


def _frame(title: str, x_label: str, y_label: str) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="sglang-pd-chart" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}" '
        'style="font-family:sans-serif;font-size:11px;background:#fff">',
        f'<text x="{WIDTH / 2}" y="16" text-anchor="middle" font-weight="bold">{escape(title)}</text>',
        f'<line x1="{LEFT}" y1="{HEIGHT - BOTTOM}" x2="{WIDTH - RIGHT}" y2="{HEIGHT - BOTTOM}" stroke="#333"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{HEIGHT - BOTTOM}" stroke="#333"/>',
        f'<text x="{(LEFT + WIDTH - RIGHT) / 2}" y="{HEIGHT - 6}" text-anchor="middle">{escape(x_label)}</text>',
        f'<text x="12" y="{(TOP + HEIGHT - BOTTOM) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 12 {(TOP + HEIGHT - BOTTOM) / 2})">{escape(y_label)}</text>',
    ]


def _axis_ticks(lo: float, hi: float, axis: str) -> list[str]:
    out = []
    for i in range(5):
        value = lo + (hi - lo) * i / 4
        if axis == "x":
            x = LEFT + (WIDTH - LEFT - RIGHT) * i / 4
            out.append(f'<text x="{x:.1f}" y="{HEIGHT - BOTTOM + 14}" text-anchor="middle">{_nice(value)}</text>')
        else:
            y = HEIGHT - BOTTOM - (HEIGHT - TOP - BOTTOM) * i / 4
            out.append(f'<text x="{LEFT - 4}" y="{y + 4:.1f}" text-anchor="end">{_nice(value)}</text>')
    return out


def histogram(values: list[float], title: str, unit: str = "ms", bins: int = 24) -> str:
    """A histogram of ``values`` with the mean and p99 marked; a note instead of bars when there is no data."""
    parts = _frame(title, unit, "requests")
    if not values:
        parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" fill="#888">no data</text></svg>')
        return "".join(parts)
    data = np.asarray(values, dtype=float)
    lo, hi = float(data.min()), float(data.max())
    if hi <= lo:
        hi = lo + max(abs(lo) * 0.01, 1e-6)
    counts, edges = np.histogram(data, bins=bins, range=(lo, hi))
    top = max(int(counts.max()), 1)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    bar_w = plot_w / bins
    for i, count in enumerate(counts):
        h = plot_h * count / top
        parts.append(f'<rect x="{LEFT + i * bar_w + 0.5:.1f}" y="{HEIGHT - BOTTOM - h:.1f}" width="{max(bar_w - 1, 0.5):.1f}" '
                     f'height="{h:.1f}" fill="{BAR}"><title>{_nice(edges[i])}-{_nice(edges[i + 1])} {unit}: {count}</title></rect>')
    for name, value in (("mean", float(data.mean())), ("p99", float(np.percentile(data, 99)))):
        x = LEFT + plot_w * (value - lo) / (hi - lo)
        parts.append(f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{HEIGHT - BOTTOM}" stroke="{MARK[name]}" stroke-dasharray="4 2"/>')
        parts.append(f'<text x="{min(x + 3, WIDTH - RIGHT - 60):.1f}" y="{TOP + (10 if name == "mean" else 22)}" '
                     f'fill="{MARK[name]}">{name} {_nice(value)}</text>')
    parts += _axis_ticks(lo, hi, "x") + _axis_ticks(0, top, "y")
    parts.append("</svg>")
    return "".join(parts)


def sweep(points: list[tuple[int, float, float]], title: str, x_label: str, y_label: str) -> str:
    """Throughput (y) against latency (x), one labelled point per concurrency, joined in concurrency order."""
    parts = _frame(title, x_label, y_label)
    points = sorted(p for p in points if p[1] == p[1] and p[2] == p[2])
    if not points:
        parts.append(f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" fill="#888">no data</text></svg>')
        return "".join(parts)
    xs, ys = [p[1] for p in points], [p[2] for p in points]
    x_hi, y_hi = max(xs) * 1.1 or 1.0, max(ys) * 1.1 or 1.0
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def at(x: float, y: float) -> tuple[float, float]:
        return LEFT + plot_w * x / x_hi, HEIGHT - BOTTOM - plot_h * y / y_hi

    path = " ".join(f"{'M' if i == 0 else 'L'}{at(x, y)[0]:.1f},{at(x, y)[1]:.1f}" for i, (_, x, y) in enumerate(points))
    parts.append(f'<path d="{path}" fill="none" stroke="{BAR}" stroke-width="1.5"/>')
    for conc, x, y in points:
        px, py = at(x, y)
        parts.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="4" fill="{MARK["mean"]}"><title>c{conc}: '
                     f'{_nice(x)} {escape(x_label)}, {_nice(y)} {escape(y_label)}</title></circle>')
        parts.append(f'<text x="{px + 6:.1f}" y="{py - 6:.1f}">c{conc}</text>')
    parts += _axis_ticks(0, x_hi, "x") + _axis_ticks(0, y_hi, "y")
    parts.append("</svg>")
    return "".join(parts)
