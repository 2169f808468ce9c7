"""The notification outbox: one row per event and sink, and every delivery attempt.

Producers add rows inside their own transaction (`add(tx, ...)`), so an event is never lost and never
sent for something that was rolled back. Sinks may be webhook URLs holding tokens: they stay here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from tuneloop.store.base import Store, Transaction, entity
from tuneloop.store.tables import delivery_attempts, notifications


@dataclass(frozen=True)
class Notification:
    id: int
    event: str
    alert_id: int | None
    sink: str  # "log" or a webhook URL (may hold a token: never logged)
    payload: dict[str, Any]
    state: NotificationState
    attempts: int


@dataclass(frozen=True)
class DeliveryAttempt:
    attempt: int
    at: datetime
    ok: bool
    detail: str  # HTTP status or the error, never the URL
    seconds: float


class NotificationState(StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


def _notification(row: Any) -> Notification:
    return entity(Notification, row)


class OutboxStore(Store):
    def add(
        self, tx: Transaction, event: str, payload: dict[str, Any], sinks: Sequence[str], *, alert_id: int | None = None
    ) -> None:
        now = datetime.now(UTC)
        fresh = {"state": NotificationState.PENDING, "attempts": 0, "next_attempt_at": now, "created_at": now}
        for sink in sinks:
            tx.execute(
                notifications.insert().values(event=event, alert_id=alert_id, sink=sink, payload=payload, **fresh)
            )

    def claim_due(self, *, hold_s: float, limit: int) -> list[Notification]:
        """Pending notifications that are due, oldest first, pushed `hold_s` out so a second deliverer skips them."""
        now = datetime.now(UTC)
        n = notifications
        with self.engine.begin() as conn:
            due = [
                _notification(r)
                for r in conn.execute(
                    sa.select(n)
                    .where(n.c.state == NotificationState.PENDING, n.c.next_attempt_at <= now)
                    .order_by(n.c.id)
                    .limit(limit)
                )
            ]
            if due:
                conn.execute(
                    n.update()
                    .where(n.c.id.in_([d.id for d in due]))
                    .values(next_attempt_at=now + timedelta(seconds=hold_s))
                )
        return due

    def record_attempt(
        self,
        notification: Notification,
        *,
        ok: bool,
        detail: str,
        seconds: float,
        max_attempts: int,
        retry_after_s: float,
    ) -> NotificationState:
        """Store one attempt and the notification's new state (delivered, failed after `max_attempts`, or pending)."""
        attempt = notification.attempts + 1
        state = (
            NotificationState.DELIVERED
            if ok
            else NotificationState.FAILED
            if attempt >= max_attempts
            else NotificationState.PENDING
        )
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            conn.execute(
                delivery_attempts.insert().values(
                    notification_id=notification.id,
                    attempt=attempt,
                    at=now,
                    ok=ok,
                    detail=detail[:500],
                    seconds=seconds,
                )
            )
            conn.execute(
                notifications.update()
                .where(notifications.c.id == notification.id)
                .values(state=state, attempts=attempt, next_attempt_at=now + timedelta(seconds=retry_after_s))
            )
        return state

    def of_alert(self, alert_id: int) -> list[tuple[Notification, list[DeliveryAttempt]]]:
        n, a = notifications, delivery_attempts
        with self.engine.connect() as conn:
            rows = [
                _notification(r) for r in conn.execute(sa.select(n).where(n.c.alert_id == alert_id).order_by(n.c.id))
            ]
            return [
                (
                    row,
                    [
                        DeliveryAttempt(x.attempt, x.at, x.ok, x.detail, x.seconds)
                        for x in conn.execute(sa.select(a).where(a.c.notification_id == row.id).order_by(a.c.attempt))
                    ],
                )
                for row in rows
            ]
