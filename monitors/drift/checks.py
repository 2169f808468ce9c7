"""What drift checks take and give: production records in, one result per check and window out.

Every check yields a calibrated (exact or conservative) p-value, so the Bonferroni correction in
`monitors.drift.judge.check_window` keeps the chance of a false alarm per window at or under `alpha`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

BATCH_PERMUTATIONS = 100
EARLY_STOP_EXCEEDANCES = 10
MAX_PERMUTATIONS = 50_000


@dataclass(frozen=True)
class Record:
    prompt: str
    output: str
    prediction: str | None = None
    label: str | None = None
    rating: float | None = None
    reference_answer: str | None = None
    ts: datetime | None = None


@dataclass
class CheckResult:
    check: str
    statistic: float
    p_value: float
    drifted: bool = False
    details: dict[str, Any] = field(default_factory=dict)  # e.g. the domain classifier's typical words


@dataclass
class WindowResult:
    size: int
    status: str  # "ok", "drift" or "not enough data"
    threshold: float  # per-check p-value threshold after the correction
    checks: list[CheckResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # checks left out, and why
    start: str | None = None  # first and last record time, when records carry timestamps
    end: str | None = None

    @property
    def drifted_checks(self) -> list[str]:
        return [c.check for c in self.checks if c.drifted]

    def as_dict(self) -> dict[str, Any]:
        out = {
            "size": self.size,
            "status": self.status,
            "threshold": self.threshold,
            "drifted_checks": self.drifted_checks,
            "checks": [asdict(c) for c in self.checks],
            "notes": self.notes,
        }
        if self.start is not None:
            out |= {"start": self.start, "end": self.end}
        return out


def more_often(name: str, count: int, n: int, reference_count: int, reference_n: int) -> CheckResult:
    """Fisher's exact test, one-sided: does the window have the event more often than the reference?
    The reference's own sampling error is part of the test instead of being treated as a known rate."""
    from scipy import stats

    if count == 0 or count / n <= reference_count / reference_n:
        return CheckResult(name, count / n, 1.0)
    table = [[count, n - count], [reference_count, reference_n - reference_count]]
    return CheckResult(name, count / n, float(stats.fisher_exact(table, alternative="greater").pvalue))


def permutations_for(threshold: float) -> int:
    """Enough permutations that the smallest reachable p-value is a tenth of the corrected threshold."""
    return min(MAX_PERMUTATIONS, max(1000, math.ceil(10 / threshold)))


def permutation_test(
    statistic: Callable[[np.ndarray], np.ndarray], window_size: int, total: int, *, threshold: float, seed: int = 0
) -> tuple[float, float, int]:
    """(observed statistic, p-value, permutations used) for "the first `window_size` of `total` pooled items
    differ from the rest"; `statistic` maps a (total x B) boolean matrix of window memberships to B values,
    larger meaning more drift. Permuting stops at the 10th permuted statistic reaching the observed one
    (Besag & Clifford's sequential p-value h/L, exact like the full test), so a quiet window costs a few
    hundred permutations; otherwise it runs `permutations_for(threshold)` of them."""
    observed = float(statistic(np.arange(total)[:, None] < window_size)[0])
    rng = np.random.default_rng(seed)
    limit, done, exceed = permutations_for(threshold), 0, 0
    while done < limit:
        batch = min(BATCH_PERMUTATIONS, limit - done)
        members = np.argsort(rng.random((total, batch)), axis=0) < window_size
        running = exceed + np.cumsum(statistic(members) >= observed - 1e-12)
        if running[-1] >= EARLY_STOP_EXCEEDANCES:  # stop at exactly the h-th exceedance
            used = done + int(np.argmax(running >= EARLY_STOP_EXCEEDANCES)) + 1
            return observed, EARLY_STOP_EXCEEDANCES / used, used
        exceed, done = int(running[-1]), done + batch
    return observed, (exceed + 1) / (done + 1), done


def lower_than(name: str, window: Any, reference: Any) -> CheckResult:
    """Mann-Whitney U, one-sided: are the window's values lower than the reference's (ties corrected)?
    The statistic reported is the window's mean."""
    import numpy as np
    from scipy import stats

    window, reference = np.asarray(window, dtype=float), np.asarray(reference, dtype=float)
    if np.all(window == window[0]) and np.all(reference == window[0]):
        return CheckResult(name, float(window.mean()), 1.0)
    p = stats.mannwhitneyu(window, reference, alternative="less", method="asymptotic").pvalue
    return CheckResult(name, float(window.mean()), float(p))
