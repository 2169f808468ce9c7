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
from typing import Any

from tuneloop.backoff import Backoff
from tuneloop.store import Stores, Transaction

log = logging.getLogger("tuneloop.notify")
LOG_SINK = "log"


def enqueue(
    stores: Stores,
    tx: Transaction,
    event: str,
    payload: dict[str, Any],
    sinks: list[str],
    *,
    alert_id: int | None = None,
) -> None:
    """Queue `event` for the log and every sink, inside the producer's transaction `tx`."""
    document = json.loads(json.dumps({"event": event, **payload}, default=str))
    stores.outbox.add(tx, event, document, list(dict.fromkeys([LOG_SINK, *sinks])), alert_id=alert_id)


def deliver_pending(
    stores: Stores, *, timeout_s: float = 5.0, max_attempts: int = 8, base_delay_s: float = 2.0, limit: int = 100
) -> int:
    """Try every notification that is due once; the number delivered."""
    delivered = 0
    for row in stores.outbox.claim_due(hold_s=4 * timeout_s, limit=limit):
        started = time.monotonic()
        ok, detail = _send(row.sink, row.payload, timeout_s)
        stores.outbox.record_attempt(
            row,
            ok=ok,
            detail=detail,
            seconds=time.monotonic() - started,
            max_attempts=max_attempts,
            retry_after_s=Backoff(base_delay_s).delay(row.attempts),
        )
        delivered += ok
        if not ok:
            log.warning(
                "notification %s to %s failed (attempt %d/%d): %s",
                row.id,
                sink_label(row.sink),
                row.attempts + 1,
                max_attempts,
                detail,
            )
    return delivered


def sink_label(sink: str) -> str:
    """What may be shown of a sink: `log`, or `webhook <host>` (never the path or query, which hold tokens)."""
    if sink == LOG_SINK:
        return sink
    from urllib.parse import urlsplit

    return f"webhook {urlsplit(sink).hostname}"


def _send(sink: str, payload: dict[str, Any], timeout_s: float) -> tuple[bool, str]:
    if sink == LOG_SINK:
        log.warning("%s: %s", payload.get("event"), payload.get("message", json.dumps(payload)))
        return True, "logged"
    import httpx

    try:
        response = httpx.post(
            sink, content=json.dumps(payload), headers={"content-type": "application/json"}, timeout=timeout_s
        )
    except httpx.HTTPError as exc:
        return False, f"{type(exc).__name__}: {str(exc).replace(sink, '<webhook>')}"
    return 200 <= response.status_code < 300, f"HTTP {response.status_code}"


def for_alert(stores: Stores, alert_id: int) -> list[dict[str, Any]]:
    """Every notification of an alert with its attempts (for `tuneloop alerts show`)."""
    return [
        {
            "event": n.event,
            "sink": sink_label(n.sink),
            "state": str(n.state),
            "attempts": [
                {"attempt": x.attempt, "ok": x.ok, "detail": x.detail, "at": x.at.isoformat()} for x in attempts
            ],
        }
        for n, attempts in stores.outbox.of_alert(alert_id)
    ]
