"""Uncertainty: paired bootstrap for metric differences, Wilson intervals for win rates."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Statistic = Callable[[Sequence[int]], float]  # a metric recomputed on resampled example indices


@dataclass(frozen=True)
class Difference:
    a: float
    b: float
    delta: float  # b - a
    low: float
    high: float
    p_value: float
    confidence: float

    @property
    def zero_width(self) -> bool:
        """Every resample gave the same delta: the interval says nothing about uncertainty, so it alone never
        makes a difference significant (the p-value is then an exact sign test over the examples)."""
        return self.high - self.low <= 1e-9 * max(1.0, abs(self.delta))

    @property
    def significant(self) -> bool:
        if self.zero_width:
            return self.delta != 0 and self.p_value < 1 - self.confidence
        return self.low > 0 or self.high < 0


def paired_bootstrap(
    stat_a: Statistic, stat_b: Statistic, n: int, *, resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> Difference:
    """B − A with a percentile interval from resampling the same example indices for both systems."""
    if n < 1:
        raise ValueError("paired bootstrap needs at least one example")
    rng = random.Random(seed)
    everyone = list(range(n))
    a, b = stat_a(everyone), stat_b(everyone)
    deltas = []
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        deltas.append(stat_b(idx) - stat_a(idx))
    deltas.sort()
    tail = (1 - confidence) / 2
    low = deltas[min(resamples - 1, math.floor(tail * resamples))]
    high = deltas[max(0, math.ceil((1 - tail) * resamples) - 1)]
    at_or_below = sum(d <= 0 for d in deltas) / resamples
    at_or_above = sum(d >= 0 for d in deltas) / resamples
    p_value = min(1.0, 2 * min(at_or_below, at_or_above))
    result = Difference(a=a, b=b, delta=b - a, low=low, high=high, p_value=p_value, confidence=confidence)
    if result.zero_width:  # the bootstrap p-value would be 0 however few the examples: test their signs instead
        result = Difference(
            a=a, b=b, delta=b - a, low=low, high=high, p_value=_sign_test(stat_a, stat_b, n), confidence=confidence
        )
    return result


def _sign_test(stat_a: Statistic, stat_b: Statistic, n: int) -> float:
    """Exact two-sided sign test of the per-example differences (ties dropped): 2 · 0.5^n when all n agree."""
    from scipy.stats import binomtest

    signs = [stat_b([i]) - stat_a([i]) for i in range(n)]
    up, down = sum(d > 0 for d in signs), sum(d < 0 for d in signs)
    if up + down == 0:
        return 1.0
    return float(binomtest(up, up + down, 0.5).pvalue)


@dataclass(frozen=True)
class Proportion:
    value: float
    low: float
    high: float
    n: int


def wilson_interval(successes: float, n: int, confidence: float = 0.95) -> Proportion:
    """Wilson score interval; `successes` may be fractional (a tie counts half a win)."""
    if n <= 0:
        return Proportion(value=float("nan"), low=0.0, high=1.0, n=0)
    z = _z(confidence)
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return Proportion(value=p, low=max(0.0, centre - half), high=min(1.0, centre + half), n=n)


def _z(confidence: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(1 - (1 - confidence) / 2)
