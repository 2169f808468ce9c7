"""Served records' MLflow traces, and the feedback exchanged with them both ways.

A record's trace is written once it was exported (`record_traces`). Feedback posted to tuneloop is copied
onto the trace as assessments (`feedback.mirrored_at` says which `at` was copied, claimed before the
copy so two servers never copy the same feedback twice). Assessments made in MLflow come back as
`trace_assessments`; a trusted reviewer's also become the record's feedback, field by field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from tuneloop.store.base import Store, entity
from tuneloop.store.records import FeedbackValues
from tuneloop.store.tables import feedback, record_traces, trace_assessments


@dataclass(frozen=True)
class TraceLink:
    record_id: str
    model: str
    trace_id: str
    experiment_id: str
    exported_at: datetime


@dataclass(frozen=True)
class FeedbackToMirror:
    """Feedback posted to tuneloop that its record's trace does not carry yet."""

    record_id: str
    trace_id: str
    rating: float | None
    label: str | None
    reference: str | None
    at: datetime
    mirrored_at: datetime | None


@dataclass(frozen=True)
class ReviewAssessment:
    """An assessment made on a record's trace in MLflow, as tuneloop keeps it."""

    assessment_id: str
    record_id: str
    trace_id: str
    name: str
    value: Any
    source_type: str
    source_id: str
    trusted: bool
    updated_at: datetime
    imported_at: datetime


class TraceStore(Store):
    def add_links(self, links: Sequence[TraceLink]) -> None:
        """Record exported traces; a record already linked keeps its first trace."""
        if not links:
            return
        with self.engine.begin() as conn:
            ids = [link.record_id for link in links]
            known = set(conn.execute(sa.select(record_traces.c.record_id).where(record_traces.c.record_id.in_(ids))))
            fresh = [asdict(link) for link in links if (link.record_id,) not in known]
            if fresh:
                conn.execute(record_traces.insert(), fresh)

    def link_of(self, record_id: str) -> TraceLink | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(record_traces).where(record_traces.c.record_id == record_id)).first()
        return entity(TraceLink, row) if row else None

    def count_links(self, model: str) -> int:
        with self.engine.connect() as conn:
            return conn.execute(
                sa.select(sa.func.count()).select_from(record_traces).where(record_traces.c.model == model)
            ).scalar_one()

    def feedback_to_mirror(self, model: str, *, limit: int = 500) -> list[FeedbackToMirror]:
        """Feedback posted to tuneloop (not imported from MLflow) newer than what its trace carries."""
        query = (
            sa.select(
                feedback.c.record_id,
                record_traces.c.trace_id,
                feedback.c.rating,
                feedback.c.label,
                feedback.c.reference,
                feedback.c.at,
                feedback.c.mirrored_at,
            )
            .select_from(feedback.join(record_traces, record_traces.c.record_id == feedback.c.record_id))
            .where(
                record_traces.c.model == model,
                feedback.c.source.is_(None),
                sa.or_(feedback.c.mirrored_at.is_(None), feedback.c.mirrored_at < feedback.c.at),
            )
            .order_by(feedback.c.at)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [entity(FeedbackToMirror, row) for row in conn.execute(query)]

    def claim_mirror(self, item: FeedbackToMirror) -> bool:
        """Mark `item` as carried by its trace, unless another writer did or newer feedback came meanwhile."""
        with self.engine.begin() as conn:
            claimed = conn.execute(
                feedback.update()
                .where(
                    feedback.c.record_id == item.record_id,
                    feedback.c.at == item.at,
                    feedback.c.source.is_(None),
                    sa.or_(feedback.c.mirrored_at.is_(None), feedback.c.mirrored_at < feedback.c.at),
                )
                .values(mirrored_at=item.at)
            )
        return claimed.rowcount == 1

    def release_mirror(self, item: FeedbackToMirror) -> None:
        """The copy failed: the next sync tries again."""
        with self.engine.begin() as conn:
            conn.execute(
                feedback.update()
                .where(feedback.c.record_id == item.record_id, feedback.c.mirrored_at == item.at)
                .values(mirrored_at=item.mirrored_at)
            )

    def assessment_times(self, ids: Sequence[str]) -> dict[str, datetime]:
        """When each of `ids` already imported was last updated in MLflow."""
        found: dict[str, datetime] = {}
        with self.engine.connect() as conn:
            for start in range(0, len(ids), 500):  # bounded IN lists, whatever the number of assessments
                rows = conn.execute(
                    sa.select(trace_assessments.c.assessment_id, trace_assessments.c.updated_at).where(
                        trace_assessments.c.assessment_id.in_(list(ids[start : start + 500]))
                    )
                )
                found |= {assessment_id: at for assessment_id, at in rows}
        return found

    def save_assessment(self, assessment: ReviewAssessment, values: FeedbackValues | None) -> None:
        """Keep `assessment`; with `values` (a trusted reviewer's), set those fields of the record's feedback."""
        with self.engine.begin() as conn:
            row = asdict(assessment)
            updated = conn.execute(
                trace_assessments.update()
                .where(trace_assessments.c.assessment_id == assessment.assessment_id)
                .values(**row)
            )
            if updated.rowcount == 0:
                conn.execute(trace_assessments.insert().values(**row))
            if values is None:
                return
            given = {k: v for k, v in asdict(values).items() if v is not None}
            source = f"mlflow:{assessment.source_id}"[:300]
            at = assessment.updated_at
            changed = conn.execute(
                feedback.update()
                .where(feedback.c.record_id == assessment.record_id)
                .values(**given, at=at, source=source, mirrored_at=at)
            )
            if changed.rowcount == 0:
                conn.execute(
                    feedback.insert().values(
                        record_id=assessment.record_id, **given, at=at, source=source, mirrored_at=at
                    )
                )

    def assessments_of(self, record_id: str) -> list[ReviewAssessment]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(trace_assessments)
                .where(trace_assessments.c.record_id == record_id)
                .order_by(trace_assessments.c.updated_at)
            )
            return [entity(ReviewAssessment, row) for row in rows]
