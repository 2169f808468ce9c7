"""Stored (live, shadow) pairs for the shadow evaluation and loop tests: records as servers write them."""

from __future__ import annotations

import random
from datetime import UTC, datetime

REFUSAL = "I'm sorry, I can't help with that."
ANSWERS = ["Your order ships today.", "The refund is on its way to your card.", "Reset it from the login page."]


def _record(id_: str, prompt: str, version: int, answer: str, pair_of: str | None = None):
    from tuneloop.store.records import NewRecord

    now = datetime.now(UTC)
    kind = "live" if pair_of is None else "shadow"
    return NewRecord(
        id=id_,
        model="support",
        version=version,
        alias="champion",
        prompt=prompt,
        output=answer,
        prediction=answer,
        ts=now,
        latency_ms=None,
        meta={},
        received_at=now,
        kind=kind,
        pair_of=pair_of,
    )


def store_pairs(rc, rows: list[tuple[str, dict[int, str]]], *, feedback: dict[int, dict] | None = None) -> None:
    """One live record of v1 per row, shadowed by each other version in the row's {version: answer} (the
    live answer is under key 1); `feedback` maps a row index to its live record's feedback."""
    from tuneloop.store.records import FeedbackValues

    batch, given = [], []
    for i, (prompt, answers) in enumerate(rows):
        live_id = f"live-{random.random():.12f}-{i}"
        batch.append(_record(live_id, prompt, 1, answers[1]))
        batch += [_record(f"{live_id}-v{v}", prompt, v, a, pair_of=live_id) for v, a in answers.items() if v != 1]
        if feedback and i in feedback:
            given.append((live_id, FeedbackValues(**feedback[i])))
    rc.stores.records.add_batch(batch, given, datetime.now(UTC))
