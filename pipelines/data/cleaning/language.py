"""Language identification for the curation filter (py3langid: a naive Bayes model over byte n-grams,
140 languages, bundled with the package — nothing is downloaded).

Short rows ("ok thanks", "Reset password") carry too little evidence: the identifier's confidence is
then low and the row is counted as `unsure` and kept, rather than dropped on a guess.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _identifier() -> Any:
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def known_languages() -> set[str]:
    return set(_identifier().nb_classes)


def detect(text: str, min_confidence: float) -> str | None:
    """ISO 639-1 code of the text's language, or None when the identifier is less sure than `min_confidence`."""
    language, probability = _identifier().classify(text)
    return str(language) if probability >= min_confidence else None
