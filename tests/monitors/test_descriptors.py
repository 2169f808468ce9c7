"""Text descriptors: each measures what its name says, on odd text too."""

from __future__ import annotations

import pytest

from tuneloop.monitors.drift.descriptors import DESCRIPTORS, Vocabulary, describe


def test_descriptors_measure_what_they_say() -> None:
    vocabulary = Vocabulary.from_texts(["your order ships today", "the refund is on its way"])
    texts = [
        "Your order ships today.",
        "Ihre Bestellung wird heute versandt",
        "I'm sorry, I can't help with that.",
        "order #1234 → 😀😀",
        "",
    ]
    d = describe(texts, vocabulary)
    assert list(d) == list(DESCRIPTORS)
    assert d["length"] == [float(len(t)) for t in texts]
    assert d["word_count"] == [4.0, 5.0, 9.0, 2.0, 0.0]  # "I'm" and "can't" are two words each
    assert d["oov_share"][0] == 0.0 and d["oov_share"][1] == 1.0 and d["oov_share"][3] == pytest.approx(0.5)
    assert d["non_letter_share"][0] == pytest.approx(1 / 20)  # the full stop among 20 visible characters
    assert d["non_letter_share"][3] == pytest.approx(8 / 13)  # "#1234 → 😀😀" against "order"
    assert d["refusal"] == [0.0, 0.0, 1.0, 0.0, 0.0]
    assert describe(["hello " * 1000, "🙂🙂🙂"], vocabulary)["word_count"] == [
        1000.0,
        0.0,
    ]  # odd text: a value, no crash


@pytest.mark.parametrize(
    "text",
    [
        "I apologize for the confusion.",
        "As an AI, I cannot provide that.",
        "I'm unable to answer questions about other customers.",
        "Sorry, I cannot assist with that.",
    ],
)
def test_refusals_and_apologies_are_recognised(text: str) -> None:
    assert describe([text], Vocabulary(frozenset()))["refusal"] == [1.0]


@pytest.mark.parametrize(
    "text",
    ["Sorry for the wait: your parcel left today.", "We can't wait to see you again!", "Your refund is approved."],
)
def test_ordinary_answers_are_not_refusals(text: str) -> None:
    assert describe([text], Vocabulary(frozenset()))["refusal"] == [0.0]
