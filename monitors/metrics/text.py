"""Text-overlap metrics: ROUGE (rouge-score) and corpus BLEU / chrF (sacrebleu)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


class UnicodeTokenizer:
    """Lower-cased `\\w+` words in any script. rouge-score's default tokenizer keeps only [a-z0-9],
    so text in other scripts scores 0.0; pass `tokenizer="unicode"` for such data."""

    def tokenize(self, text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())


def rouge_scorer(use_stemmer: bool = True, tokenizer: str = "default") -> Any:
    from rouge_score import rouge_scorer as rs

    custom = UnicodeTokenizer() if tokenizer == "unicode" else None
    return rs.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer, tokenizer=custom)


def rouge_per_pair(
    predictions: Sequence[str], references: Sequence[str], *, use_stemmer: bool = True, tokenizer: str = "default"
) -> dict[str, list[float]]:
    """Each pair's ROUGE F-measure, per ROUGE type. rougeLsum splits summaries on newlines, as rouge-score does."""
    scorer = rouge_scorer(use_stemmer, tokenizer)
    out: dict[str, list[float]] = {t: [] for t in ROUGE_TYPES}
    for prediction, reference in zip(predictions, references, strict=True):
        scores = scorer.score(reference, prediction)  # rouge-score takes (target, prediction)
        for t in ROUGE_TYPES:
            out[t].append(float(scores[t].fmeasure))
    return out


@dataclass(frozen=True)
class CorpusScore:
    score: float  # sacrebleu's 0-100 scale
    signature: str


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> CorpusScore:
    from sacrebleu.metrics import BLEU

    metric = BLEU()
    result = metric.corpus_score(list(predictions), [list(references)])
    return CorpusScore(float(result.score), str(metric.get_signature()))


def corpus_chrf(predictions: Sequence[str], references: Sequence[str]) -> CorpusScore:
    from sacrebleu.metrics import CHRF

    metric = CHRF()
    result = metric.corpus_score(list(predictions), [list(references)])
    return CorpusScore(float(result.score), str(metric.get_signature()))


def corpus_resampler(name: str, predictions: Sequence[str], references: Sequence[str]) -> Any:
    """A function of example indices giving the corpus BLEU/chrF of those examples, fast.

    Per-segment sufficient statistics are extracted once and summed per resample, as sacrebleu's
    own paired bootstrap does, instead of re-tokenising the corpus for every resample.
    """
    import numpy as np
    from sacrebleu.metrics import BLEU, CHRF

    metric = BLEU() if name == "bleu" else CHRF()
    stats = np.array(metric._extract_corpus_statistics(list(predictions), [list(references)]), dtype=np.float64)

    def value(indices: Sequence[int]) -> float:
        summed = stats[list(indices)].sum(axis=0)
        return float(metric._compute_score_from_stats([int(x) if name == "bleu" else x for x in summed]).score)

    return value
