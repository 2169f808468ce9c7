"""Quality drift, when feedback exists: did the model get worse than on the reference?

    quality.accuracy  share of `prediction` equal to the true `label` (Fisher's exact test, one-sided)
    quality.f1        macro F1 of `prediction` against `label` (permutation test, one-sided: catches a
                      class the model now gets wrong that accuracy, dominated by common classes, hides)
    quality.rating    users' ratings (Mann-Whitney U, one-sided: lower in the window)
    quality.rouge     ROUGE-L F of `output` against the reference answer (Mann-Whitney U, one-sided)

Each check runs only when both the reference (>= 100) and the window (>= min_size / 4) carry that kind
of feedback; otherwise the window's notes say why it was left out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tuneloop.monitors.drift.checks import CheckResult, Record, lower_than, more_often, permutation_test
from tuneloop.monitors.metrics.classification import normalise_label

MIN_REFERENCE = 100
F1_REFERENCE_SAMPLE = 2000


@dataclass
class QualityReference:
    correct: tuple[int, int] | None  # (correct, labelled)
    pairs: list[tuple[str, str]] | None  # (prediction, label), normalised, a sample for the F1 test
    ratings: np.ndarray | None
    rouge: np.ndarray | None


def build_quality_reference(records: Sequence[Record]) -> QualityReference:
    labelled = [r for r in records if r.label is not None and r.prediction is not None]
    rated = np.array([r.rating for r in records if r.rating is not None], dtype=float)
    answered = [r for r in records if r.reference_answer]
    enough = len(labelled) >= MIN_REFERENCE
    return QualityReference(
        correct=(sum(_same(r.prediction, r.label) for r in labelled), len(labelled)) if enough else None,
        pairs=[
            (normalise_label(r.prediction or ""), normalise_label(r.label or ""))
            for r in labelled[:F1_REFERENCE_SAMPLE]
        ]
        if enough
        else None,
        ratings=rated if len(rated) >= MIN_REFERENCE else None,
        rouge=_rouge_l(answered) if len(answered) >= MIN_REFERENCE else None,
    )


def quality_checks(
    reference: QualityReference, window: Sequence[Record], min_feedback: int, *, threshold: float = 0.001, seed: int = 0
) -> tuple[list[CheckResult], list[str]]:
    """Quality checks with enough feedback, and notes on those left out; `threshold` (the corrected
    per-check threshold, or a lower bound of it) sets how many permutations the F1 test may need."""
    checks, notes = [], []
    labelled = [r for r in window if r.label is not None and r.prediction is not None]
    rated = [r.rating for r in window if r.rating is not None]
    answered = [r for r in window if r.reference_answer]
    for name, baseline, have in (
        ("accuracy", reference.correct, len(labelled)),
        ("rating", reference.ratings, len(rated)),
        ("rouge", reference.rouge, len(answered)),
    ):
        if baseline is None:
            if have:
                notes.append(f"quality.{name}: the reference has fewer than {MIN_REFERENCE} records with this feedback")
            continue
        if have < min_feedback:
            notes.append(f"quality.{name}: {have} record(s) with feedback in the window, {min_feedback} needed")
            continue
        if name == "accuracy":
            assert reference.correct is not None
            wrong = sum(not _same(r.prediction, r.label) for r in labelled)
            ref_correct, ref_labelled = reference.correct
            result = more_often("quality.accuracy", wrong, len(labelled), ref_labelled - ref_correct, ref_labelled)
            checks.append(CheckResult("quality.accuracy", 1 - wrong / len(labelled), result.p_value))
            assert reference.pairs is not None
            window_pairs = [(normalise_label(r.prediction or ""), normalise_label(r.label or "")) for r in labelled]
            checks.append(_f1_check(window_pairs, reference.pairs, threshold, seed))
        elif name == "rating":
            checks.append(lower_than("quality.rating", rated, reference.ratings))
        else:
            checks.append(lower_than("quality.rouge", _rouge_l(answered), reference.rouge))
    return checks, notes


def _f1_check(
    window: list[tuple[str, str]], reference: list[tuple[str, str]], threshold: float, seed: int
) -> CheckResult:
    """Macro F1 of the window vs the reference, permutation test on the pooled pairs. Per-class true
    positive, false positive and false negative indicators make every permuted F1 a matrix product."""
    pooled = window + reference
    classes = sorted({p for p, _ in pooled} | {t for _, t in pooled})
    predicted = np.array([[p == c for c in classes] for p, _ in pooled], dtype=np.float32)
    actual = np.array([[t == c for c in classes] for _, t in pooled], dtype=np.float32)
    tp, fp, fn = predicted * actual, predicted * (1 - actual), (1 - predicted) * actual

    def macro_f1(members: np.ndarray) -> np.ndarray:  # (total x B) -> (B,) F1 of the members
        t, f_p, f_n = members.T @ tp, members.T @ fp, members.T @ fn
        denominator = 2 * t + f_p + f_n
        present = denominator > 0  # sklearn's macro average: labels seen in either y_true or y_pred
        per_class = np.divide(2 * t, denominator, out=np.zeros_like(t), where=present)
        return per_class.sum(axis=1) / np.maximum(present.sum(axis=1), 1)

    def worse_in_window(members: np.ndarray) -> np.ndarray:
        return macro_f1(~members) - macro_f1(members)

    window_f1 = float(macro_f1(np.arange(len(pooled))[:, None] < len(window))[0])
    _, p_value, used = permutation_test(worse_in_window, len(window), len(pooled), threshold=threshold, seed=seed)
    return CheckResult("quality.f1", window_f1, p_value, details={"permutations": used})


def _rouge_l(records: Sequence[Record]) -> np.ndarray:
    from tuneloop.monitors.metrics.text import rouge_per_pair

    scores = rouge_per_pair(
        [r.output for r in records], [r.reference_answer or "" for r in records], tokenizer="unicode"
    )
    return np.asarray(scores["rougeL"], dtype=float)


def _same(prediction: str | None, label: str | None) -> bool:
    return prediction is not None and label is not None and normalise_label(prediction) == normalise_label(label)
