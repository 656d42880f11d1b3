"""Means with 95% confidence intervals (Student's t): over seeds for ``cat-rl compare``, over
prompts for test-time CaT (``paired``: two answers to the same prompts, compared prompt by
prompt)."""

from __future__ import annotations

import math
from dataclasses import dataclass

# two-sided 95% quantiles of Student's t, t_{0.975, df} for df = 1..30
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    if df < 1:
        raise ValueError("a confidence interval needs at least two values")
    return _T975[df - 1] if df <= len(_T975) else 1.960 + 2.4 / df  # within 0.002 of the exact value above 30


@dataclass(frozen=True)
class Interval:
    mean: float
    half_width: float  # nan with one value: no interval
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    @property
    def excludes_zero(self) -> bool:
        return not math.isnan(self.half_width) and (self.low > 0 or self.high < 0)

    def text(self, spec: str = "+.3f") -> str:
        if math.isnan(self.mean):
            return "n/a"
        if math.isnan(self.half_width):
            return f"{self.mean:{spec}} (one seed: no interval)"
        return f"{self.mean:{spec}} [{self.low:{spec}}, {self.high:{spec}}]"


def mean_ci(values: list[float]) -> Interval:
    """Mean and the half-width of its 95% t-interval (nan for fewer than two values)."""
    values = [v for v in values if not math.isnan(v)]
    n = len(values)
    if n == 0:
        return Interval(float("nan"), float("nan"), 0)
    mean = sum(values) / n
    if n == 1:
        return Interval(mean, float("nan"), 1)
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return Interval(mean, t975(n - 1) * math.sqrt(var / n), n)


def paired(hits: list[float], baseline: list[float]) -> dict:
    """The mean per-prompt difference ``hits - baseline``, its 95% interval, and the verdict:
    ``better`` / ``worse`` when the interval excludes 0, else ``no clear difference``."""
    ci = mean_ci([a - b for a, b in zip(hits, baseline, strict=True)])
    few = ci.n < 5  # an interval of 0 from 2 equal differences says nothing
    verdict = "no clear difference" if few or not ci.excludes_zero else ("better" if ci.mean > 0 else "worse")
    return {"difference": ci.mean, "interval": ci.half_width, "verdict": verdict}
