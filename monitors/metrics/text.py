"""Text-overlap metrics: ROUGE (rouge-score) and corpus BLEU / chrF (sacrebleu)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


PARALLEL_MIN_PAIRS = 2000  # below this, worker start-up costs more than it saves


class _CachedStemmer:
    """Porter stemming memoised per word: text repeats words (Zipf), and stemming dominates ROUGE's cost."""

    def __init__(self) -> None:
        from functools import lru_cache

        from nltk.stem import porter

        self.stem = lru_cache(maxsize=200_000)(porter.PorterStemmer().stem)


class CachedDefaultTokenizer:
    """rouge-score's own tokenizer function with a memoised stemmer: identical tokens, less time."""

    def __init__(self, use_stemmer: bool) -> None:
        self._stemmer = _CachedStemmer() if use_stemmer else None

    def tokenize(self, text: str) -> list[str]:
        from rouge_score import tokenize

        return tokenize.tokenize(text, self._stemmer)


class UnicodeTokenizer:
    """Lower-cased `\\w+` words in any script (Porter stemming for words over 3 characters, as rouge-score).
    rouge-score's default tokenizer keeps only [a-z0-9], so text in other scripts scores 0.0."""

    def __init__(self, use_stemmer: bool = True) -> None:
        self._stemmer = _CachedStemmer() if use_stemmer else None

    def tokenize(self, text: str) -> list[str]:
        words = re.findall(r"\w+", text.lower())
        if self._stemmer is None:
            return words
        return [self._stemmer.stem(w) if len(w) > 3 else w for w in words]


def rouge_scorer(use_stemmer: bool = True, tokenizer: str = "default") -> Any:
    from rouge_score import rouge_scorer as rs

    custom = UnicodeTokenizer(use_stemmer) if tokenizer == "unicode" else CachedDefaultTokenizer(use_stemmer)
    return rs.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer, tokenizer=custom)


def rouge_per_pair(
    predictions: Sequence[str], references: Sequence[str], *, use_stemmer: bool = True, tokenizer: str = "default"
) -> dict[str, list[float]]:
    """Each pair's ROUGE F-measure, per ROUGE type. rougeLsum splits summaries on newlines, as rouge-score does.

    Large inputs are split across processes (ROUGE-L's LCS is pure Python in rouge-score)."""
    pairs = list(zip(predictions, references, strict=True))
    workers = min(os.cpu_count() or 1, 8, max(1, len(pairs) // (PARALLEL_MIN_PAIRS // 2)))
    if len(pairs) < PARALLEL_MIN_PAIRS or workers < 2:
        return _rouge_chunk(pairs, use_stemmer, tokenizer)
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    size = -(-len(pairs) // workers)
    chunks = [pairs[i : i + size] for i in range(0, len(pairs), size)]
    out: dict[str, list[float]] = {t: [] for t in ROUGE_TYPES}
    # spawn, not fork: the parent may hold torch/OpenMP threads that a forked child would inherit broken
    with ProcessPoolExecutor(len(chunks), mp_context=multiprocessing.get_context("spawn")) as pool:
        for part in pool.map(_rouge_chunk, chunks, [use_stemmer] * len(chunks), [tokenizer] * len(chunks)):
            for t in ROUGE_TYPES:
                out[t].extend(part[t])
    return out


def _rouge_chunk(pairs: list[tuple[str, str]], use_stemmer: bool, tokenizer: str) -> dict[str, list[float]]:
    scorer = rouge_scorer(use_stemmer, tokenizer)
    out: dict[str, list[float]] = {t: [] for t in ROUGE_TYPES}
    for prediction, reference in pairs:
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
