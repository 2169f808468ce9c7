"""Which assessments made on a trace in MLflow become a record's feedback (the exchange itself runs
against a real server in tests/serving/test_production.py)."""

from __future__ import annotations


def test_which_assessments_become_feedback() -> None:
    from tuneloop.monitors.ingestion.trace_feedback import feedback_values
    from tuneloop.store.records import FeedbackValues

    assert feedback_values("rating", 4) == FeedbackValues(rating=4.0)
    assert feedback_values("rating", True) == FeedbackValues(rating=1.0)  # the UI's yes/no
    assert feedback_values("label", "refund") == FeedbackValues(label="refund")
    assert feedback_values("expected_response", "in 5 days") == FeedbackValues(reference="in 5 days")
    assert feedback_values("reference", "in 5 days") == FeedbackValues(reference="in 5 days")
    assert feedback_values("rating", "great") is None and feedback_values("relevance", 0.9) is None
