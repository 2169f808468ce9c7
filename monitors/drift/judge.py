"""Drift checks of a window of production records against a reference, with calibrated p-values.

Check families (a monitor's `checks`):
  descriptors  per text column (prompt, output) and descriptor (`monitors.drift.descriptors`):
                 ks          two-sample Kolmogorov-Smirnov: any change of the distribution
                 upper_tail  more of the window above the reference's 99th percentile than the reference has
                 lower_tail  the same below the 1st percentile (length and word count)
               and `refusal` (rate of refusals and apologies). Tail and refusal counts are compared with
               the reference's counts by Fisher's exact test, one-sided.
  domain       a classifier telling window from reference texts, per column (`monitors.drift.domain`)
  quality      accuracy, macro F1, rating and ROUGE against reference answers when feedback exists
               (`monitors.drift.quality`)
  embedding    MMD permutation test on all-MiniLM-L6-v2 embeddings, per column (`monitors.drift.embedding`)

Tail tests have power against contamination (10% of a window's records from elsewhere), which moves a
KS statistic by at most 0.1. Every p-value is exact or conservative, and a window drifts when any
p-value is below alpha / number_of_checks (Bonferroni), so the chance of a false alarm per window stays
at or under alpha.

The reference is split in two: the vocabulary comes from one half; in the other half, tail thresholds
come from one quarter and the reference counts beyond them from the other (thresholds chosen on the data
they are counted on would bias the counts). Out-of-vocabulary shares are thus measured the same way for
the reference and for a window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tuneloop.monitors.drift.checks import CheckResult, Record, WindowResult, more_often
from tuneloop.monitors.drift.descriptors import Vocabulary, describe
from tuneloop.monitors.drift.domain import domain_check
from tuneloop.monitors.drift.embedding import Embedder, EmbeddingReference, build_embedding_reference, mmd_check
from tuneloop.monitors.drift.quality import QualityReference, build_quality_reference, quality_checks

__all__ = ["CheckResult", "Record", "Reference", "WindowResult", "build_reference", "check_window"]

COLUMNS = ("prompt", "output")
NUMERIC = ("length", "word_count", "oov_share", "non_letter_share")
LOWER_TAIL = ("length", "word_count")
TAIL_QUANTILE = 0.99
DOMAIN_TEXTS = 4000
DEFAULT_CHECKS = ("descriptors", "domain", "quality")


@dataclass
class Reference:
    vocabulary: dict[str, Vocabulary]
    distributions: dict[str, np.ndarray]  # "column.descriptor" -> sorted values
    upper: dict[str, tuple[float, int]]  # key -> (threshold, reference records above it, of `count_size`)
    lower: dict[str, tuple[float, int]]
    refusals: dict[str, int]  # of `size`
    quality: QualityReference
    texts: dict[str, list[str]]  # a sample per column, for the domain classifier
    embeddings: dict[str, EmbeddingReference] | None
    size: int
    count_size: int


def build_reference(records: Sequence[Record], *, embedder: Embedder | None = None, seed: int = 0) -> Reference:
    """Reference statistics; pass an `embedder` to prepare the embedding check too."""
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
    texts = {c: [getattr(r, c) for r in stats_half[:DOMAIN_TEXTS]] for c in COLUMNS}
    embeddings = None
    if embedder is not None:
        sample = stats_half[:1000]
        embeddings = {
            c: build_embedding_reference(embedder.embed([getattr(r, c) for r in sample]), seed) for c in COLUMNS
        }
    return Reference(
        vocabulary,
        distributions,
        upper,
        lower,
        refusals,
        build_quality_reference(records),
        texts,
        embeddings,
        len(stats_half),
        len(stats_half) - split,
    )


def check_window(
    reference: Reference,
    window: Sequence[Record],
    *,
    alpha: float = 0.05,
    min_size: int = 200,
    checks: Sequence[str] = DEFAULT_CHECKS,
    embedder: Embedder | None = None,
    seed: int = 0,
) -> WindowResult:
    if len(window) < min_size:
        return WindowResult(size=len(window), status="not enough data", threshold=float("nan"))
    results: list[CheckResult] = []
    notes: list[str] = []
    if "descriptors" in checks:
        results += _descriptor_checks(reference, window)
    if "domain" in checks:
        results += [
            domain_check(f"{c}.domain", reference.texts[c], [getattr(r, c) for r in window], seed) for c in COLUMNS
        ]
    threshold_floor = alpha / _most_checks(checks)  # permutation tests size themselves on it
    if "quality" in checks:
        found, notes = quality_checks(
            reference.quality, window, max(1, min_size // 4), threshold=threshold_floor, seed=seed
        )
        results += found
    if "embedding" in checks:
        if reference.embeddings is None or embedder is None:
            raise ValueError("the embedding check needs a reference built with an embedder, and the embedder")
        for c in COLUMNS:
            vectors = embedder.embed([getattr(r, c) for r in window])
            results.append(
                mmd_check(f"{c}.embedding", reference.embeddings[c], vectors, threshold=threshold_floor, seed=seed)
            )
    threshold = alpha / len(results)
    for result in results:
        result.drifted = result.p_value < threshold
    status = "drift" if any(c.drifted for c in results) else "ok"
    times = [r.ts for r in window if r.ts is not None]
    return WindowResult(
        size=len(window),
        status=status,
        threshold=threshold,
        checks=results,
        notes=notes,
        start=min(times).isoformat() if times else None,
        end=max(times).isoformat() if times else None,
    )


def _most_checks(families: Sequence[str]) -> int:
    """How many checks a window can have at most (quality: accuracy, F1, rating, ROUGE)."""
    per_column = {"descriptors": 2 * len(NUMERIC) + len(LOWER_TAIL) + 1, "domain": 1, "embedding": 1}
    return sum(per_column[f] * len(COLUMNS) for f in families if f in per_column) + (4 if "quality" in families else 0)


def _descriptor_checks(reference: Reference, window: Sequence[Record]) -> list[CheckResult]:
    from scipy import stats

    results = []
    n = len(window)
    for column in COLUMNS:
        described = describe([getattr(r, column) for r in window], reference.vocabulary[column])
        for name in NUMERIC:
            key = f"{column}.{name}"
            values = np.asarray(described[name], dtype=float)
            ks = stats.ks_2samp(values, reference.distributions[key], method="asymp")
            results.append(CheckResult(f"{key}.ks", float(ks.statistic), float(ks.pvalue)))
            high, ref_above = reference.upper[key]
            results.append(
                more_often(f"{key}.upper_tail", int(np.sum(values > high)), n, ref_above, reference.count_size)
            )
            if key in reference.lower:
                low, ref_below = reference.lower[key]
                results.append(
                    more_often(f"{key}.lower_tail", int(np.sum(values < low)), n, ref_below, reference.count_size)
                )
        refusals = int(np.sum(described["refusal"]))
        results.append(more_often(f"{column}.refusal", refusals, n, reference.refusals[column], reference.size))
    return results
