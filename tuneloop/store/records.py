"""Production records and their feedback, and the answers of acknowledged ingest requests.

A batch is one transaction: every record of it or none. An id already stored is skipped (retries are
harmless); an idempotency key returns the first answer to a retried request and stores nothing again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from tuneloop.store.base import Store, Transaction, entity
from tuneloop.store.tables import feedback, ingest_requests, records


@dataclass(frozen=True)
class NewRecord:
    id: str
    model: str
    version: int
    alias: str | None
    prompt: str
    output: str
    prediction: str
    ts: datetime
    latency_ms: float | None
    meta: dict[str, Any]
    received_at: datetime
    kind: str = "live"  # RecordKind
    pair_of: str | None = None  # a shadow answer: the id of the live record it shadows


class RecordKind(StrEnum):
    LIVE = "live"  # an answer sent to a caller
    CANARY = "canary"  # a challenger's answer sent to a caller
    SHADOW = "shadow"  # a challenger's answer to a live request, sent to nobody


@dataclass(frozen=True)
class FeedbackValues:
    rating: float | None = None
    label: str | None = None
    reference: str | None = None


@dataclass(frozen=True)
class RecordFeedback(FeedbackValues):
    """A record's feedback as stored: when it came, and from where (None: posted to tuneloop;
    `mlflow:<reviewer>`: a trusted reviewer's assessment on the record's trace)."""

    at: datetime | None = None
    source: str | None = None


@dataclass(frozen=True)
class StoredRecord:
    """A record as monitors read it: what was asked and answered, with the latest feedback folded in."""

    seq: int
    prompt: str
    output: str
    prediction: str | None
    ts: datetime
    label: str | None
    rating: float | None
    reference: str | None


@dataclass(frozen=True)
class ReviewedRecord:
    id: str
    prompt: str
    output: str
    reference: str | None
    label: str | None
    rating: float | None


@dataclass(frozen=True)
class ShadowPair:
    """A live answer and the shadow answer of the same request, with the feedback given on the live one."""

    live_id: str
    prompt: str
    live_output: str
    shadow_output: str
    live_prediction: str | None
    shadow_prediction: str | None
    reference: str | None
    label: str | None


@dataclass(frozen=True)
class CapturedRecord(NewRecord):
    """A stored record as written, with its arrival order."""

    seq: int = field(kw_only=True)


@dataclass(frozen=True)
class ModelSlice:
    """The records a monitor watches: those of `version` — sent under `alias`, when it names one (the
    version holding the alias now: records are attributed to the holder when they arrive)."""

    name: str
    version: int
    alias: str | None = None


@dataclass
class BatchResult:
    stored: int
    duplicates: int
    ids: list[str] = field(default_factory=list)
    replayed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class RecordStore(Store):
    def add_batch(
        self,
        batch: Sequence[NewRecord],
        feedback_of: Sequence[tuple[str, FeedbackValues]],
        at: datetime,
        *,
        idempotency_key: str | None = None,
    ) -> BatchResult:
        try:
            return self._add_once(batch, feedback_of, at, idempotency_key)
        except sa.exc.IntegrityError:
            if not idempotency_key:
                raise
            # The same key committed concurrently (PostgreSQL has no BEGIN IMMEDIATE): this try replays it.
            return self._add_once(batch, feedback_of, at, idempotency_key)

    def _add_once(
        self,
        batch: Sequence[NewRecord],
        feedback_of: Sequence[tuple[str, FeedbackValues]],
        at: datetime,
        idempotency_key: str | None,
    ) -> BatchResult:
        with self.engine.begin() as conn:
            if idempotency_key:
                earlier = conn.execute(
                    sa.select(ingest_requests.c.response).where(ingest_requests.c.key == idempotency_key)
                ).scalar()
                if earlier is not None:
                    return BatchResult(**{**earlier, "replayed": True})
            ids = [r.id for r in batch]
            existing = set(conn.execute(sa.select(records.c.id).where(records.c.id.in_(ids))).scalars())
            unique: dict[str, NewRecord] = {}  # an id repeated within the batch is stored once
            for record in batch:
                if record.id not in existing:
                    unique.setdefault(record.id, record)
            if unique:
                conn.execute(records.insert(), [asdict(r) for r in unique.values()])
            for record_id, values in feedback_of:
                _upsert_feedback(conn, record_id, values, at)
            result = BatchResult(stored=len(unique), duplicates=len(batch) - len(unique), ids=ids)
            if idempotency_key:
                conn.execute(ingest_requests.insert().values(key=idempotency_key, response=result.as_dict(), at=at))
            return result

    def add_feedback(self, record_id: str, values: FeedbackValues, at: datetime) -> bool:
        """Feedback for a stored record (the latest wins); False when there is no such record."""
        with self.engine.begin() as conn:
            if conn.execute(sa.select(records.c.id).where(records.c.id == record_id)).scalar() is None:
                return False
            _upsert_feedback(conn, record_id, values, at)
        return True

    def feedback_of(self, record_id: str) -> RecordFeedback | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(feedback).where(feedback.c.record_id == record_id)).first()
        return entity(RecordFeedback, row) if row else None

    def get(self, record_id: str) -> CapturedRecord | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(records).where(records.c.id == record_id)).first()
        return entity(CapturedRecord, row) if row else None

    def recent(self, *, model: str | None = None, kind: str | None = None, limit: int = 20) -> list[CapturedRecord]:
        """The newest `limit` records (of `model`, of `kind`), newest first."""
        query = sa.select(records)
        if model:
            query = query.where(records.c.model == model)
        if kind:
            query = query.where(records.c.kind == kind)
        with self.engine.connect() as conn:
            return [entity(CapturedRecord, r) for r in conn.execute(query.order_by(records.c.seq.desc()).limit(limit))]

    def count(self, model: str | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(records)
        if model:
            query = query.where(records.c.model == model)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    def of(
        self,
        watched: ModelSlice,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        upto_seq: int | None = None,
        after_seq: int | None = None,
        newest: int | None = None,
    ) -> list[StoredRecord]:
        """Records of `watched`, oldest first: within [start, end), past `after_seq` up to `upto_seq`, the
        `newest` N of those."""
        query = _of(watched)
        if after_seq is not None:
            query = query.where(records.c.seq > after_seq)
        if start is not None:
            query = query.where(records.c.ts >= start)
        if end is not None:
            query = query.where(records.c.ts < end)
        if upto_seq is not None:
            query = query.where(records.c.seq <= upto_seq)
        query = query.order_by(records.c.seq.desc())
        if newest is not None:
            query = query.limit(newest)
        with self.engine.connect() as conn:
            rows = [StoredRecord(*row) for row in conn.execute(query)]
        rows.reverse()
        return rows

    def page(
        self,
        watched: ModelSlice,
        *,
        from_seq: int | None = None,
        skip: int = 0,
        limit: int,
        not_before: datetime | None = None,
    ) -> list[StoredRecord]:
        """Up to `limit` records of `watched` in arrival order, from `from_seq` on (the first `skip` of them
        left out), at or after `not_before`: one count window."""
        query = _of(watched)
        if from_seq is not None:
            query = query.where(records.c.seq >= from_seq)
        if not_before is not None:
            query = query.where(records.c.ts >= not_before)
        query = query.order_by(records.c.seq).offset(skip).limit(limit)
        with self.engine.connect() as conn:
            return [StoredRecord(*row) for row in conn.execute(query)]

    def first_time(
        self, watched: ModelSlice, *, not_before: datetime | None = None, after_seq: int | None = None
    ) -> datetime | None:
        """The earliest timestamp of `watched`'s records (at or after `not_before`, past `after_seq`)."""
        query = sa.select(sa.func.min(records.c.ts)).where(in_slice(watched))
        if not_before is not None:
            query = query.where(records.c.ts >= not_before)
        if after_seq is not None:
            query = query.where(records.c.seq > after_seq)
        with self.engine.connect() as conn:
            return conn.execute(query).scalar()  # min() keeps the column's type: an aware UTC datetime

    def last_seq(self) -> int:
        """The newest arrival number of any record (0 when none)."""
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.max(records.c.seq))).scalar() or 0)

    def groups(self, model: str) -> list[tuple[str | None, int, int]]:
        """(alias, version, count) of every way `model`'s records were sent."""
        query = (
            sa.select(records.c.alias, records.c.version, sa.func.count())
            .where(records.c.model == model)
            .group_by(records.c.alias, records.c.version)
        )
        with self.engine.connect() as conn:
            return [(a, int(v), int(n)) for a, v, n in conn.execute(query)]

    def reviewed(self, model: str) -> list[ReviewedRecord]:
        """Records of `model` that have feedback, in arrival order."""
        query = (
            sa.select(
                records.c.id,
                records.c.prompt,
                records.c.output,
                feedback.c.reference,
                feedback.c.label,
                feedback.c.rating,
            )
            .select_from(records.join(feedback, feedback.c.record_id == records.c.id))
            .where(records.c.model == model)
            .order_by(records.c.seq)
        )
        with self.engine.connect() as conn:
            return [ReviewedRecord(*row) for row in conn.execute(query)]

    def shadow_pairs(self, model: str, live_version: int, shadow_version: int) -> list[ShadowPair]:
        """`model`'s requests answered live by `live_version` and shadowed by `shadow_version`, in arrival order."""
        with self.engine.connect() as conn:
            return [ShadowPair(*row) for row in conn.execute(_shadow_pairs(model, live_version, shadow_version))]

    def count_shadow_pairs(self, model: str, live_version: int, shadow_version: int) -> int:
        query = sa.select(sa.func.count()).select_from(_shadow_pairs(model, live_version, shadow_version).subquery())
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)


JUDGED_KINDS = (RecordKind.LIVE, RecordKind.CANARY)  # answers a caller saw; shadow answers are compared, not judged


def in_slice(watched: ModelSlice) -> sa.ColumnElement[bool]:
    """Records of `watched`: answers a caller saw from its version, and of those only the ones sent under
    its alias when it names one."""
    by = sa.and_(records.c.version == watched.version, records.c.kind.in_([k.value for k in JUDGED_KINDS]))
    if watched.alias:
        by = sa.and_(records.c.alias == watched.alias, by)
    return sa.and_(records.c.model == watched.name, by)


def _of(watched: ModelSlice) -> sa.Select[Any]:
    return (
        sa.select(
            records.c.seq,
            records.c.prompt,
            records.c.output,
            records.c.prediction,
            records.c.ts,
            feedback.c.label,
            feedback.c.rating,
            feedback.c.reference,
        )
        .select_from(records.outerjoin(feedback, feedback.c.record_id == records.c.id))
        .where(in_slice(watched))
    )


def _upsert_feedback(conn: Transaction, record_id: str, values: FeedbackValues, at: datetime) -> None:
    updated = conn.execute(
        feedback.update().where(feedback.c.record_id == record_id).values(**asdict(values), at=at, source=None)
    )
    if updated.rowcount == 0:
        conn.execute(feedback.insert().values(record_id=record_id, **asdict(values), at=at))


def _shadow_pairs(model: str, live_version: int, shadow_version: int) -> sa.Select[Any]:
    live, shadow = records.alias("live"), records.alias("shadow")
    return (
        sa.select(
            live.c.id,
            live.c.prompt,
            live.c.output,
            shadow.c.output,
            live.c.prediction,
            shadow.c.prediction,
            feedback.c.reference,
            feedback.c.label,
        )
        .select_from(
            shadow.join(live, live.c.id == shadow.c.pair_of).outerjoin(feedback, feedback.c.record_id == live.c.id)
        )
        .where(
            shadow.c.model == model,
            shadow.c.kind == RecordKind.SHADOW.value,
            shadow.c.version == shadow_version,
            live.c.version == live_version,
        )
        .order_by(shadow.c.seq)
    )
