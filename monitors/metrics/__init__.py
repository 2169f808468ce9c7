"""Metrics shared by evaluation (pipelines) and production monitoring.

Every value equals what the reference library gives when called directly: ROUGE via `rouge-score`,
BLEU/chrF via `sacrebleu`, F1/accuracy via scikit-learn. Perplexity (torch) lives in
`monitors.metrics.perplexity` so that importing this package stays light.
"""

from tuneloop.monitors.metrics.scoring import METRIC_NAMES, PairScores, score_pairs

__all__ = ["METRIC_NAMES", "PairScores", "score_pairs"]
