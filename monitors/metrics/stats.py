"""Uncertainty: paired bootstrap for metric differences, Wilson intervals for win rates."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

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


def paired_mean_difference(
    a: Sequence[float], b: Sequence[float], *, resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> Difference:
    """mean(b) − mean(a) over paired values, with `paired_bootstrap`'s percentile interval and p-value,
    vectorised (a mean of per-pair values needs no Python call per resample)."""
    import numpy as np

    if len(a) != len(b) or not a:
        raise ValueError("a paired difference needs two equally long, non-empty lists of values")
    diffs = np.asarray(b, dtype=float) - np.asarray(a, dtype=float)
    n = len(diffs)
    rng = np.random.default_rng(seed)
    deltas = np.sort(diffs[rng.integers(0, n, size=(resamples, n))].mean(axis=1))
    tail = (1 - confidence) / 2
    low = float(deltas[min(resamples - 1, math.floor(tail * resamples))])
    high = float(deltas[max(0, math.ceil((1 - tail) * resamples) - 1)])
    p_value = min(1.0, 2 * min(float(np.mean(deltas <= 0)), float(np.mean(deltas >= 0))))
    mean_a, mean_b = float(np.mean(a)), float(np.mean(b))
    result = Difference(
        a=mean_a, b=mean_b, delta=mean_b - mean_a, low=low, high=high, p_value=p_value, confidence=confidence
    )
    if result.zero_width:  # as in `paired_bootstrap`: the signs of the per-pair differences decide
        up, down = int(np.sum(diffs > 0)), int(np.sum(diffs < 0))
        result = replace(result, p_value=1.0 if up + down == 0 else _binomial_p(up, up + down))
    return result


def _binomial_p(up: int, n: int) -> float:
    from scipy.stats import binomtest

    return float(binomtest(up, n, 0.5).pvalue)


def _sign_test(stat_a: Statistic, stat_b: Statistic, n: int) -> float:
    """Exact two-sided sign test of the per-example differences (ties dropped): 2 · 0.5^n when all n agree."""
    signs = [stat_b([i]) - stat_a([i]) for i in range(n)]
    up, down = sum(d > 0 for d in signs), sum(d < 0 for d in signs)
    return 1.0 if up + down == 0 else _binomial_p(up, up + down)


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
