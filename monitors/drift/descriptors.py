"""Cheap per-text descriptors of prompts and outputs, compared per column by the drift checks.

    length            characters
    word_count        words (`\\w+` runs, any script)
    oov_share         share of words absent from the reference vocabulary (another language, new topics)
    non_letter_share  share of non-space characters that are not letters (code, numbers, emoji, markup)
    refusal           1.0 if the text refuses or apologises ("I'm sorry", "I can't help with", ...)

The reference vocabulary is built once from the reference texts (`Vocabulary.from_texts`) and cached
with the reference statistics, so a check only tokenises the current window.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

DESCRIPTORS = ("length", "word_count", "oov_share", "non_letter_share", "refusal")
_WORD = re.compile(r"\w+", re.UNICODE)
_REFUSAL = re.compile(
    r"\b(i'?m sorry|i am sorry|i apologi[sz]e|my apologies|i can(?:no|')t (?:help|assist|provide|do that|answer)"
    r"|i cannot (?:help|assist|provide|do that|answer)|i'?m (?:not able|unable) to|i am (?:not able|unable) to"
    r"|as an ai\b|i won'?t be able to)",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class Vocabulary:
    words: frozenset[str]

    @classmethod
    def from_texts(cls, texts: Iterable[str], min_count: int = 1) -> Vocabulary:
        counts = Counter(w for text in texts for w in _WORD.findall(text.lower()))
        return cls(frozenset(w for w, c in counts.items() if c >= min_count))


def describe(texts: Sequence[str], vocabulary: Vocabulary) -> dict[str, list[float]]:
    """Each descriptor for each text (lists aligned with `texts`)."""
    out: dict[str, list[float]] = {name: [] for name in DESCRIPTORS}
    known = vocabulary.words.__contains__
    for text in texts:
        words = _WORD.findall(text.lower())
        visible = len(text) - sum(map(str.isspace, text))  # map over builtins: no Python frame per character
        out["length"].append(float(len(text)))
        out["word_count"].append(float(len(words)))
        out["oov_share"].append((len(words) - sum(map(known, words))) / len(words) if words else 0.0)
        out["non_letter_share"].append((visible - sum(map(str.isalpha, text))) / visible if visible else 0.0)
        out["refusal"].append(1.0 if _REFUSAL.search(text) else 0.0)
    return out


# Function words that mark a language; a text's language is the one whose words it uses most (a guess
# for short answers, good enough to tell an English reply to a German ticket from a German one).
_FUNCTION_WORDS = {
    lang: frozenset(words.split())
    for lang, words in {
        "en": "the and is are you your to of it for with this that have be not we my can will on",
        "de": "der die das und ist sie ich nicht mit mein meine ihre ihr wir auf für ein eine zu es wo",
        "fr": "le les et est vous je ne pas mon ma une des pour avec que qui dans",
        "es": "el los las y es usted yo no mi una para con que por en su",
    }.items()
}


def language(text: str) -> str:
    """`en`, `de`, `fr` or `es` by the function words `text` uses most; `unknown` without any, or on a tie."""
    words = _WORD.findall(text.lower())
    counts = {lang: sum(w in marks for w in words) for lang, marks in _FUNCTION_WORDS.items()}
    ranked = sorted(counts.values(), reverse=True)
    if ranked[0] == 0 or ranked[0] == ranked[1]:
        return "unknown"
    return max(counts, key=counts.__getitem__)
