"""The Evidently page's descriptors on what production really returns, empty answers included."""

from __future__ import annotations

from types import SimpleNamespace


def test_descriptors_of_a_window_with_an_empty_answer() -> None:
    from tuneloop.monitors.reports import _dataset

    records = [
        SimpleNamespace(prompt="Where is my order #12?", output="", prediction=None, label=None),
        SimpleNamespace(prompt="Hi", output="ab 1!", prediction=None, label=None),
    ]
    frame = _dataset(records).as_dataframe()
    # independent count: "ab 1!" has two characters that are neither letters nor spaces, of five
    assert list(frame["output non-letter %"]) == [0.0, 100 * 2 / 5]
    assert list(frame["prompt non-letter %"]) == [
        100 * sum(not c.isalpha() and c != " " for c in "Where is my order #12?") / 22,
        0.0,
    ]
    assert list(frame["output length"]) == [0, 5]
