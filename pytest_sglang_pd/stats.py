"""Repeated measurements: mean, spread, a 95% confidence interval (Student t) and Welch's t-test of two runs."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

CONFIDENCE = 0.95
SIGNIFICANCE = 0.05  # Welch's p below this: the two runs differ beyond their noise


@dataclass(frozen=True)
class Summary:
    """One metric over ``n`` runs of the same benchmark."""

    n: int
    mean: float
    sd: float  # sample standard deviation (0 for one run)
    cv_pct: float | None  # sd / |mean|, in percent; None when the mean is 0
    ci_low: float  # the 95% confidence interval of the mean (the mean itself for one run)
    ci_high: float

    def contains(self, value: float) -> bool:
        return self.n > 1 and self.ci_low <= value <= self.ci_high

    def as_dict(self) -> dict:
        return {"n": self.n, "mean": self.mean, "sd": self.sd, "cv_pct": self.cv_pct,
                "ci95": [self.ci_low, self.ci_high]}


def summarize(values: Sequence[float]) -> Summary:
    n = len(values)
    if n == 0:
        raise ValueError("no values to summarize")
    mean = math.fsum(values) / n
    if n == 1:
        return Summary(1, mean, 0.0, 0.0 if mean else None, mean, mean)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile((1 + CONFIDENCE) / 2, n - 1) * sd / math.sqrt(n)
    return Summary(n, mean, sd, sd / abs(mean) * 100 if mean else None, mean - half, mean + half)


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """The two-sided p of Welch's t-test (unequal variances); None when either side has fewer than 2 runs.
    Two constant samples: 1.0 when equal, else 0.0 (they differ with no noise at all)."""
    if len(a) < 2 or len(b) < 2:
        return None
    if max(a) == min(a) and max(b) == min(b):
        return 1.0 if a[0] == b[0] else 0.0
    ma, mb = math.fsum(a) / len(a), math.fsum(b) / len(b)
    va = math.fsum((x - ma) ** 2 for x in a) / (len(a) - 1) / len(a)
    vb = math.fsum((x - mb) ** 2 for x in b) / (len(b) - 1) / len(b)
    t = (ma - mb) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return 2 * (1 - t_cdf(abs(t), df))


def t_cdf(t: float, df: float) -> float:
    """Student's t distribution function, through the regularized incomplete beta function."""
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))
    return 1 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The t value below which a fraction ``p`` (0.5 < p < 1) of Student's t distribution lies (bisection)."""
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        low, high = high, high * 2
    for _ in range(100):
        mid = (low + high) / 2
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
    return (low + high) / 2


def _betainc(a: float, b: float, x: float) -> float:
    """I_x(a, b), by its continued fraction (Lentz), on the side where it converges fast."""
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x > (a + 1) / (a + b + 2):
        return 1 - _betainc(b, a, 1 - x)
    tiny = 1e-300
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 300):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1) < 1e-14:
            break
    return front * f / a
