"""The trace store on both backends: which feedback a trace still lacks (claimed once, released after a
failed copy), and assessments read back from MLflow (a trusted one sets only the fields it names)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tuneloop.store.records import FeedbackValues, NewRecord
from tuneloop.store.traces import ReviewAssessment, TraceLink

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _served(rc, *ids: str) -> None:
    rows = [
        NewRecord(
            id=i, model="m", version=1, alias="champion", prompt=f"q {i}", output="a", prediction="a", ts=T0,
            latency_ms=5.0, meta={}, received_at=T0,
        )
        for i in ids
    ]  # fmt: skip
    rc.stores.records.add_batch(rows, [], T0)
    rc.stores.traces.add_links([TraceLink(i, "m", f"tr-{i}", "7", T0) for i in ids])


def _assessment(record_id: str, name: str, value: object, source: str, trusted: bool, at: datetime):
    return ReviewAssessment(
        assessment_id=f"a-{record_id}-{name}-{source}", record_id=record_id, trace_id=f"tr-{record_id}", name=name,
        value=value, source_type="HUMAN", source_id=source, trusted=trusted, updated_at=at, imported_at=at,
    )  # fmt: skip


def test_feedback_is_mirrored_once_and_again_after_an_update_or_a_failed_copy(rc) -> None:
    traces = rc.stores.traces
    _served(rc, "r1", "r2")
    assert traces.feedback_to_mirror("m") == []
    rc.stores.records.add_feedback("r1", FeedbackValues(rating=4.0), T0)
    (item,) = traces.feedback_to_mirror("m")
    assert (item.record_id, item.trace_id, item.rating) == ("r1", "tr-r1", 4.0)
    assert traces.claim_mirror(item) and not traces.claim_mirror(item)  # a second server gets nothing
    assert traces.feedback_to_mirror("m") == []
    rc.stores.records.add_feedback("r1", FeedbackValues(rating=2.0), T0 + timedelta(minutes=1))
    (newer,) = traces.feedback_to_mirror("m")
    assert not traces.claim_mirror(item)  # what was read before the update is not claimed over it
    assert traces.claim_mirror(newer)
    traces.release_mirror(newer)  # the copy failed: offered again
    assert [i.rating for i in traces.feedback_to_mirror("m")] == [2.0]
    traces.add_links([TraceLink("r1", "m", "tr-other", "7", T0)])  # a record keeps its first trace
    assert traces.link_of("r1").trace_id == "tr-r1" and traces.count_links("m") == 2


def test_a_trusted_assessment_sets_only_its_field_and_an_untrusted_one_is_kept_apart(rc) -> None:
    traces, records = rc.stores.traces, rc.stores.records
    _served(rc, "r1", "r2")
    records.add_feedback("r1", FeedbackValues(label="refund"), T0)
    later = T0 + timedelta(hours=1)
    traces.save_assessment(_assessment("r1", "rating", 1.0, "alice", True, later), FeedbackValues(rating=1.0))
    given = records.feedback_of("r1")
    assert (given.rating, given.label, given.source, given.at) == (1.0, "refund", "mlflow:alice", later)
    assert traces.feedback_to_mirror("m") == []  # never written back to the trace it came from
    traces.save_assessment(_assessment("r2", "expected_response", "leak it", "mallory", False, later), None)
    assert records.feedback_of("r2") is None
    assert [(a.source_id, a.trusted, a.value) for a in traces.assessments_of("r2")] == [("mallory", False, "leak it")]
    assert {r.prompt for r in records.reviewed("m")} == {"q r1"}  # what training reads
    assert traces.assessment_times(["a-r2-expected_response-mallory", "nope"]) == {
        "a-r2-expected_response-mallory": later
    }
    records.add_feedback("r1", FeedbackValues(rating=3.0), later + timedelta(minutes=1))  # posted to tuneloop again
    assert records.feedback_of("r1").source is None and len(traces.feedback_to_mirror("m")) == 1
