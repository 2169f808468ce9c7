"""Notifications: an outbox in tuneloop's database, delivered to sinks with retries.

Producers (alerts, retraining) add rows inside their own transaction, so an event is never lost and
never sent for something that was rolled back. `deliver_pending` sends what is due — the `log` sink
writes a log line, a webhook gets a JSON POST — and records every attempt. A failed webhook is retried
with exponential backoff (base_delay_s · 2^attempt) up to `max_attempts`, then marked failed. Delivery
runs in its own scheduler job with a short timeout, so a sink that is down never blocks the loop.
Webhook URLs may carry tokens: they stay in the database and never reach logs, MLflow or errors.
"""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from tuneloop.store import tables

log = logging.getLogger("tuneloop.notify")
LOG_SINK = "log"


def enqueue(conn: Connection, event: str, payload: dict[str, Any], sinks: list[str], *, alert_id: int | None = None) -> None:
    now = datetime.now(UTC)
    for sink in dict.fromkeys([LOG_SINK, *sinks]):
        conn.execute(tables.notifications.insert().values(
            event=event, alert_id=alert_id, sink=sink, payload=json.dumps({"event": event, **payload}, default=str),
            state="pending", attempts=0, next_attempt_at=now, created_at=now))


def deliver_pending(engine: Engine, *, timeout_s: float = 5.0, max_attempts: int = 8, base_delay_s: float = 2.0,
                    limit: int = 100) -> int:
    """Try every notification that is due once; the number delivered."""
    n = tables.notifications
    now = datetime.now(UTC)
    with engine.begin() as conn:  # claim: push the due rows' next attempt out so a second deliverer skips them
        due = conn.execute(sa.select(n.c.id, n.c.sink, n.c.payload, n.c.attempts).where(
            n.c.state == "pending", n.c.next_attempt_at <= now).order_by(n.c.id).limit(limit)).all()
        if due:
            conn.execute(n.update().where(n.c.id.in_([d.id for d in due])).values(
                next_attempt_at=now + timedelta(seconds=4 * timeout_s)))
    delivered = 0
    for row in due:
        started = time.monotonic()
        ok, detail = _send(row.sink, row.payload, timeout_s)
        attempt = row.attempts + 1
        with engine.begin() as conn:
            conn.execute(tables.delivery_attempts.insert().values(
                notification_id=row.id, attempt=attempt, at=datetime.now(UTC), ok=ok, detail=detail[:500],
                seconds=time.monotonic() - started))
            state = "delivered" if ok else ("failed" if attempt >= max_attempts else "pending")
            retry_at = datetime.now(UTC) + timedelta(seconds=base_delay_s * 2 ** (attempt - 1))
            conn.execute(n.update().where(n.c.id == row.id).values(state=state, attempts=attempt, next_attempt_at=retry_at))
        delivered += ok
        if not ok:
            log.warning("notification %s to %s failed (attempt %d/%d): %s", row.id, sink_label(row.sink), attempt,
                        max_attempts, detail)
    return delivered


def sink_label(sink: str) -> str:
    """What may be shown of a sink: `log`, or `webhook <host>` (never the path or query, which hold tokens)."""
    if sink == LOG_SINK:
        return sink
    from urllib.parse import urlsplit

    return f"webhook {urlsplit(sink).hostname}"


def _send(sink: str, payload: str, timeout_s: float) -> tuple[bool, str]:
    if sink == LOG_SINK:
        event = json.loads(payload)
        log.warning("%s: %s", event.get("event"), event.get("message", payload))
        return True, "logged"
    import httpx

    try:
        response = httpx.post(sink, content=payload, headers={"content-type": "application/json"}, timeout=timeout_s)
    except httpx.HTTPError as exc:
        return False, f"{type(exc).__name__}: {str(exc).replace(sink, '<webhook>')}"
    return 200 <= response.status_code < 300, f"HTTP {response.status_code}"


def for_alert(engine: Engine, alert_id: int) -> list[dict[str, Any]]:
    """Every notification of an alert with its attempts (for `tuneloop alerts show`)."""
    n, a = tables.notifications, tables.delivery_attempts
    with engine.connect() as conn:
        rows = conn.execute(sa.select(n).where(n.c.alert_id == alert_id).order_by(n.c.id)).mappings().all()
        out = []
        for row in rows:
            attempts = conn.execute(sa.select(a).where(a.c.notification_id == row["id"]).order_by(a.c.attempt)).mappings().all()
            out.append({"event": row["event"], "sink": sink_label(row["sink"]), "state": row["state"],
                        "attempts": [{"attempt": x["attempt"], "ok": x["ok"], "detail": x["detail"],
                                      "at": x["at"].isoformat()} for x in attempts]})
    return out
