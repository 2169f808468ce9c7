"""Feedback both ways between served records and their MLflow traces.

Push: feedback posted to tuneloop (ingest API, `tuneloop records feedback`) for a record with a trace is
written on the trace as assessments — `rating` and `label` as feedback, `reference` as the expectation
`expected_response` — from the source `tuneloop` (a later post updates them in place).

Pull: MLflow cannot search assessments by the time they were made, so the poll asks for the traces of
the served model's experiment started in the last `feedback.review_days` that carry an assessment of a
name feedback can use (`feedback.rating IS NOT NULL`, ...: one search per name, without spans) and takes
every assessment on them it has not seen at its current update time. All of them are kept and shown
(`tuneloop records show ID`); only one whose source id is in `feedback.trusted_reviewers` also becomes
the record's feedback, so only those are ever trained on: the MLflow UI has no login here, and anyone
can write any source id through it. A record's feedback then says `source: mlflow:<reviewer>`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from tuneloop.names import TraceTag, serve_experiment
from tuneloop.registry.client import RegistryClient
from tuneloop.registry.tracking import existing_experiment_id
from tuneloop.store.records import FeedbackValues
from tuneloop.store.traces import FeedbackToMirror, ReviewAssessment

log = logging.getLogger("tuneloop.feedback")

OUR_SOURCE = "tuneloop"  # the source id of assessments tuneloop writes (never read back as a review)
RATING, LABEL, REFERENCE = "rating", "label", "expected_response"
REFERENCE_NAMES = (REFERENCE, "reference")
PAGE = 200


@dataclass
class SyncResult:
    pushed: int = 0  # records whose feedback was written on their trace
    pulled: int = 0  # assessments read from MLflow that were new or changed
    trusted: int = 0  # of those, the ones that became feedback
    failed: int = 0  # pushes that failed (tried again next time)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def sync(rc: RegistryClient, name: str) -> SyncResult:
    """One exchange for model `name`: push, then pull. Raises when MLflow cannot be reached."""
    result = SyncResult()
    experiment = existing_experiment_id(rc.mlflow, rc.settings, serve_experiment(name))
    if experiment is None:
        return result  # nothing served with tracing yet
    push(rc, name, result)
    pull(rc, name, experiment, result)
    return result


def push(rc: RegistryClient, name: str, result: SyncResult) -> None:
    for item in rc.stores.traces.feedback_to_mirror(name):
        if not rc.stores.traces.claim_mirror(item):
            continue  # another server took it, or newer feedback came in
        try:
            _write_on_trace(item)
        except Exception as error:  # noqa: BLE001 - tried again at the next sync
            rc.stores.traces.release_mirror(item)
            result.failed += 1
            log.warning("copying feedback of %s to its trace failed: %s", item.record_id, type(error).__name__)
            continue
        result.pushed += 1


def _write_on_trace(item: FeedbackToMirror) -> None:
    """Each given value on the trace: tuneloop's earlier assessment of that name updated in place (the trace
    never lacks it, as it would between a delete and a log), or a new one."""
    from mlflow.entities import AssessmentSource, Expectation, Feedback
    from mlflow.tracing.client import TracingClient

    source = AssessmentSource(source_type="HUMAN", source_id=OUR_SOURCE)
    given = {RATING: item.rating, LABEL: item.label, REFERENCE: item.reference}
    client = TracingClient()
    ours: dict[str, list[str]] = {}
    for on_trace in client.get_trace_info(item.trace_id).assessments or []:
        if on_trace.source.source_id == OUR_SOURCE:
            ours.setdefault(on_trace.name, []).append(on_trace.assessment_id)
    for name, value in given.items():
        if value is None:
            continue  # not part of this feedback: what the trace holds stays
        kind = Expectation if name == REFERENCE else Feedback
        assessment = kind(name=name, value=value, source=source)
        earlier = ours.get(name, [])
        if not earlier:
            client.log_assessment(item.trace_id, assessment)
            continue
        client.update_assessment(item.trace_id, earlier[0], assessment)  # the source stays: it cannot change
        for duplicate in earlier[1:]:  # one of a name is kept; a second could only come from outside tuneloop's claim
            client.delete_assessment(item.trace_id, duplicate)


def pull(rc: RegistryClient, name: str, experiment: str, result: SyncResult) -> None:
    trusted_ids = set(rc.settings.feedback.trusted_reviewers)
    reviews = list(_reviewed(rc, experiment))
    seen = rc.stores.traces.assessment_times([a.assessment_id for _, a in reviews])  # one query, not one each
    for info, assessment in reviews:
        updated = _time(assessment.last_update_time_ms or assessment.create_time_ms)
        if seen.get(assessment.assessment_id) == updated:
            continue
        record_id = info.tags.get(TraceTag.RECORD)
        if not record_id or rc.stores.records.get(record_id) is None:
            continue  # a trace of another tuneloop database, or of a record deleted since
        trusted = assessment.source.source_id in trusted_ids
        kept = ReviewAssessment(
            assessment_id=assessment.assessment_id,
            record_id=record_id,
            trace_id=info.trace_id,
            name=assessment.name,
            value=_value(assessment),
            source_type=str(assessment.source.source_type),
            source_id=assessment.source.source_id,
            trusted=trusted,
            updated_at=updated,
            imported_at=datetime.now(UTC),
        )
        values = feedback_values(assessment.name, kept.value) if trusted else None
        rc.stores.traces.save_assessment(kept, values)
        result.pulled += 1
        result.trusted += values is not None


def _reviewed(rc: RegistryClient, experiment: str) -> Iterator[tuple[Any, Any]]:
    """(trace info, assessment) of every reviewer's assessment named as feedback can use, on the traces of the
    last `feedback.review_days`. One search per name (MLflow's filters AND their clauses): only traces that
    carry such an assessment are read, never the whole traffic."""
    from mlflow.tracing.client import TracingClient

    since_ms = int((datetime.now(UTC) - timedelta(days=rc.settings.feedback.review_days)).timestamp() * 1000)
    client, seen = TracingClient(), set()
    for kind, names in (("feedback", (RATING, LABEL)), ("expectation", REFERENCE_NAMES)):
        for assessment_name in names:
            token = None
            while True:
                page = client.search_traces(
                    locations=[experiment],
                    filter_string=f"trace.timestamp_ms > {since_ms} AND {kind}.{assessment_name} IS NOT NULL",
                    max_results=PAGE,
                    page_token=token,
                    include_spans=False,
                )
                for trace in page:
                    for a in trace.info.assessments or []:
                        if a.source.source_id != OUR_SOURCE and a.valid is not False and a.assessment_id not in seen:
                            seen.add(a.assessment_id)
                            yield trace.info, a
                token = page.token
                if not token:
                    break


def feedback_values(name: str, value: Any) -> FeedbackValues | None:
    """What an assessment says as a record's feedback: `rating` (a number or yes/no), `label`, or the reference
    (`expected_response`, `reference`); None for any other assessment."""
    if name == RATING and isinstance(value, bool):
        return FeedbackValues(rating=float(value))
    if name == RATING and isinstance(value, int | float):
        return FeedbackValues(rating=float(value))
    if name == LABEL and isinstance(value, str | int | bool):
        return FeedbackValues(label=str(value))
    if name in REFERENCE_NAMES and isinstance(value, str):
        return FeedbackValues(reference=value)
    return None


def _value(assessment: Any) -> Any:
    if assessment.feedback is not None:
        return assessment.feedback.value
    if assessment.expectation is not None:
        return assessment.expectation.value
    return None


def _time(ms: int | None) -> datetime:
    return datetime.fromtimestamp((ms or 0) / 1000, UTC)
