"""Drift checks of a window of production records against a reference, with calibrated p-values.

Checks, per text column (prompt, output) and descriptor (`monitors.descriptors`):
  ks           two-sample Kolmogorov-Smirnov: any change of the distribution
  upper_tail   more of the window above the reference's 99th percentile than the reference has
  lower_tail   the same below the 1st percentile (length and word count)
plus `refusal` (rate of refusals and apologies) and, when both sides carry labels, `quality` (accuracy
of `prediction` against `label`, one-sided: worse only). Tail, refusal and quality counts are compared
with the reference's counts by Fisher's exact test, one-sided, so the reference's own sampling error is
part of the test instead of being treated as a known rate.

Tail tests have power against contamination (10% of a window's records from elsewhere), which moves a
KS statistic by at most 0.1. Every p-value is exact or conservative (KS with ties, Fisher's discreteness),
and a window drifts when any p-value is below alpha / number_of_checks (Bonferroni), so the chance of a
false alarm per window stays at or under alpha.

The reference is split in three: the vocabulary comes from one half; in the other half, tail thresholds
come from one quarter and the reference counts beyond them from the other (thresholds chosen on the data
they are counted on would bias the counts). Out-of-vocabulary shares are thus measured the same way for
the reference and for a window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from monitors.descriptors import Vocabulary, describe
from monitors.metrics.classification import normalise_label

COLUMNS = ("prompt", "output")
NUMERIC = ("length", "word_count", "oov_share", "non_letter_share")
LOWER_TAIL = ("length", "word_count")
TAIL_QUANTILE = 0.99


@dataclass(frozen=True)
class Record:
    prompt: str
    output: str
    prediction: str | None = None
    label: str | None = None


@dataclass
class Reference:
    vocabulary: dict[str, Vocabulary]
    distributions: dict[str, np.ndarray]  # "column.descriptor" -> sorted values
    upper: dict[str, tuple[float, int]]  # key -> (threshold, reference records above it, of `count_size`)
    lower: dict[str, tuple[float, int]]
    refusals: dict[str, int]  # of `size`
    correct: tuple[int, int] | None  # (correct, labelled) in the reference
    size: int
    count_size: int


def build_reference(records: Sequence[Record], seed: int = 0) -> Reference:
    if len(records) < 100:
        raise ValueError(f"a reference needs at least 100 records, got {len(records)}")
    order = np.random.default_rng(seed).permutation(len(records))
    vocab_half = [records[i] for i in order[: len(records) // 2]]
    stats_half = [records[i] for i in order[len(records) // 2 :]]
    vocabulary = {c: Vocabulary.from_texts(getattr(r, c) for r in vocab_half) for c in COLUMNS}
    distributions: dict[str, np.ndarray] = {}
    upper, lower, refusals = {}, {}, {}
    split = len(stats_half) // 2
    for column in COLUMNS:
        described = describe([getattr(r, column) for r in stats_half], vocabulary[column])
        refusals[column] = int(np.sum(described["refusal"]))
        for name in NUMERIC:
            values = np.asarray(described[name], dtype=float)
            key = f"{column}.{name}"
            distributions[key] = np.sort(values)
            pick, count = values[:split], values[split:]
            high = float(np.quantile(pick, TAIL_QUANTILE))
            upper[key] = (high, int(np.sum(count > high)))
            if name in LOWER_TAIL:
                low = float(np.quantile(pick, 1 - TAIL_QUANTILE))
                lower[key] = (low, int(np.sum(count < low)))
    labelled = [r for r in records if r.label is not None and r.prediction is not None]
    correct = (sum(_same(r.prediction, r.label) for r in labelled), len(labelled)) if len(labelled) >= 100 else None
    return Reference(vocabulary, distributions, upper, lower, refusals, correct, len(stats_half), len(stats_half) - split)


@dataclass
class CheckResult:
    check: str
    statistic: float
    p_value: float
    drifted: bool = False


@dataclass
class WindowResult:
    size: int
    status: str  # "ok", "drift" or "not enough data"
    threshold: float  # per-check p-value threshold after the correction
    checks: list[CheckResult] = field(default_factory=list)

    @property
    def drifted_checks(self) -> list[str]:
        return [c.check for c in self.checks if c.drifted]

    def as_dict(self) -> dict[str, Any]:
        return {"size": self.size, "status": self.status, "threshold": self.threshold,
                "drifted_checks": self.drifted_checks, "checks": [asdict(c) for c in self.checks]}


def check_window(reference: Reference, window: Sequence[Record], *, alpha: float = 0.05, min_size: int = 200) -> WindowResult:
    from scipy import stats

    if len(window) < min_size:
        return WindowResult(size=len(window), status="not enough data", threshold=float("nan"))
    checks: list[CheckResult] = []
    n = len(window)
    for column in COLUMNS:
        described = describe([getattr(r, column) for r in window], reference.vocabulary[column])
        for name in NUMERIC:
            key = f"{column}.{name}"
            values = np.asarray(described[name], dtype=float)
            ks = stats.ks_2samp(values, reference.distributions[key], method="asymp")
            checks.append(CheckResult(f"{key}.ks", float(ks.statistic), float(ks.pvalue)))
            high, ref_above = reference.upper[key]
            checks.append(_more_often(f"{key}.upper_tail", int(np.sum(values > high)), n, ref_above, reference.count_size))
            if key in reference.lower:
                low, ref_below = reference.lower[key]
                checks.append(_more_often(f"{key}.lower_tail", int(np.sum(values < low)), n, ref_below, reference.count_size))
        refusals = int(np.sum(described["refusal"]))
        checks.append(_more_often(f"{column}.refusal", refusals, n, reference.refusals[column], reference.size))
    labelled = [r for r in window if r.label is not None and r.prediction is not None]
    if reference.correct is not None and len(labelled) >= min_size // 4:
        wrong = sum(not _same(r.prediction, r.label) for r in labelled)
        ref_correct, ref_labelled = reference.correct
        result = _more_often("quality.accuracy", wrong, len(labelled), ref_labelled - ref_correct, ref_labelled)
        checks.append(CheckResult("quality.accuracy", 1 - wrong / len(labelled), result.p_value))
    threshold = alpha / len(checks)
    for c in checks:
        c.drifted = c.p_value < threshold
    status = "drift" if any(c.drifted for c in checks) else "ok"
    return WindowResult(size=n, status=status, threshold=threshold, checks=checks)


def _more_often(name: str, count: int, n: int, reference_count: int, reference_n: int) -> CheckResult:
    """Fisher's exact test, one-sided: does the window have the event more often than the reference?"""
    from scipy import stats

    if count == 0 or count / n <= reference_count / reference_n:
        return CheckResult(name, count / n, 1.0)
    table = [[count, n - count], [reference_count, reference_n - reference_count]]
    return CheckResult(name, count / n, float(stats.fisher_exact(table, alternative="greater").pvalue))


def _same(prediction: str | None, label: str | None) -> bool:
    return prediction is not None and label is not None and normalise_label(prediction) == normalise_label(label)
