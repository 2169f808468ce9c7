"""Domain classifier check: can a classifier tell a window's texts from the reference's?

A TF-IDF + logistic regression classifier is fitted on half of the window against reference texts,
then scores the other half of the window and reference texts it has not seen. Given the fitted
classifier, held-out window and reference texts are exchangeable when nothing drifted, so a one-sided
Mann-Whitney U test on their scores gives a calibrated p-value (the statistic is the held-out ROC AUC;
Evidently instead flags AUC > 0.55 without a p-value). The words with the largest weights towards the
window and the held-out window texts the classifier finds most typical explain what changed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tuneloop.monitors.drift.checks import CheckResult

TYPICAL_WORDS, TYPICAL_EXAMPLES, MAX_EXAMPLE_CHARS = 10, 3, 200


def domain_check(name: str, reference_texts: Sequence[str], window_texts: Sequence[str], seed: int = 0) -> CheckResult:
    from scipy import stats
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    window = [window_texts[i] for i in rng.permutation(len(window_texts))]
    reference = [reference_texts[i] for i in rng.permutation(len(reference_texts))]
    half = len(window) // 2
    per_side = min(len(reference) // 2, max(2 * half, 200))
    window_fit, window_test = window[:half], window[half:]
    reference_fit, reference_test = reference[:per_side], reference[per_side : 2 * per_side]
    vectorizer = TfidfVectorizer(token_pattern=r"(?u)\b\w+\b", sublinear_tf=True, min_df=2)
    try:
        features = vectorizer.fit_transform(window_fit + reference_fit)
    except ValueError:  # no word occurs twice (emoji only, empty texts): nothing to tell apart by words
        return CheckResult(
            name, 0.5, 1.0, details={"note": "no word occurs twice: the classifier has nothing to learn from"}
        )
    target = np.r_[np.ones(len(window_fit)), np.zeros(len(reference_fit))]
    classifier = LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000, solver="liblinear")
    classifier.fit(features, target)
    window_scores = classifier.decision_function(vectorizer.transform(window_test))
    reference_scores = classifier.decision_function(vectorizer.transform(reference_test))
    test = stats.mannwhitneyu(window_scores, reference_scores, alternative="greater", method="asymptotic")
    auc = float(test.statistic) / (len(window_scores) * len(reference_scores))
    words = np.asarray(vectorizer.get_feature_names_out())
    weights = classifier.coef_[0]
    top = [int(i) for i in np.argsort(-weights)[:TYPICAL_WORDS] if weights[i] > 0]
    examples = [window_test[int(i)][:MAX_EXAMPLE_CHARS] for i in np.argsort(-window_scores)[:TYPICAL_EXAMPLES]]
    return CheckResult(
        name,
        auc,
        float(test.pvalue),
        details={"typical_words": [str(words[i]) for i in top], "typical_examples": examples},
    )
