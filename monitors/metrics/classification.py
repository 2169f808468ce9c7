"""Classification done by generation: the generated text is a label.

Labels are normalised before comparison (case, surrounding whitespace and punctuation, inner runs
of whitespace), so "Refund." and "refund" agree. Exact match compares the raw strings, stripped.
F1 is computed over the label set of the references: a prediction outside it is wrong for its
example and counts as no class, as scikit-learn does for `labels=` it was not given.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections.abc import Sequence

_EDGE = re.escape(string.punctuation) + r"\s"


def normalise_label(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(rf"^[{_EDGE}]+|[{_EDGE}]+$", "", text)
    return re.sub(r"\s+", " ", text)


def accuracy(predictions: Sequence[str], references: Sequence[str]) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score([normalise_label(r) for r in references], [normalise_label(p) for p in predictions]))


def exact_match_per_pair(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    return [float(p.strip() == r.strip()) for p, r in zip(predictions, references, strict=True)]


def f1(predictions: Sequence[str], references: Sequence[str], average: str) -> float:
    from sklearn.metrics import f1_score

    truth = [normalise_label(r) for r in references]
    guess = [normalise_label(p) for p in predictions]
    labels = sorted(set(truth))
    return float(f1_score(truth, guess, labels=labels, average=average, zero_division=0.0))
