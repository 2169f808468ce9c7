"""Every answer becomes a production record, durable before its response leaves: group commit.

Requests answered together finish together; the `Recorder`'s thread takes every set of records waiting
and writes them in one transaction, then releases their responses. No local journal: a response is
sent only after its record committed, so `kill -9` loses no answered request's record, and record ids
are unique, so none is stored twice.
"""

from __future__ import annotations

import hashlib
import logging
import queue
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tuneloop.serving.batcher import Answer
from tuneloop.serving.worker import CLOSE, QueueWorker
from tuneloop.store.records import NewRecord, RecordKind, RecordStore

log = logging.getLogger("tuneloop.serve")


@dataclass(frozen=True)
class Request:
    """What one API request says once for all its answers."""

    model: str
    version: int
    alias: str | None
    sampling: dict[str, Any]
    user: str | None  # in clear: hashed before it is stored
    messages: list[dict[str, Any]] | None  # chat: the full conversation, beside the joined prompt
    kind: RecordKind = RecordKind.LIVE
    asked: str | None = None  # the alias the caller asked for, where the policy sent it elsewhere


def records_of(
    request: Request,
    record_ids: Sequence[str],
    prompts: Sequence[str],
    answers: Sequence[Answer],
    latency_ms: float,
    pairs_of: Sequence[str | None] | None = None,
) -> list[NewRecord]:
    """One record per answer; a shadow answer's `pairs_of` names the live record it shadows."""
    now = datetime.now(UTC)
    shared = {
        "messages": request.messages,
        "sampling": request.sampling,
        "user": hashlib.sha256(request.user.encode()).hexdigest()[:16] if request.user else None,
    } | ({"asked": request.asked} if request.asked else {})
    return [
        NewRecord(
            id=record_id,
            model=request.model,
            version=request.version,
            alias=request.alias,
            prompt=prompt,
            output=answer.text,
            prediction=answer.text,
            ts=now,
            latency_ms=latency_ms,
            meta=shared
            | {
                "usage": {"prompt_tokens": answer.prompt_tokens, "completion_tokens": answer.completion_tokens},
                "finish_reason": answer.finish_reason,
            },
            received_at=now,
            kind=request.kind,
            pair_of=pair_of,
        )
        for record_id, prompt, answer, pair_of in zip(
            record_ids, prompts, answers, pairs_of or [None] * len(answers), strict=True
        )
    ]


class Recorder(QueueWorker):
    """One writer thread: whatever records are waiting when it is free go into one transaction."""

    def __init__(self, store: RecordStore, *, most: int = 512, enabled: bool = True) -> None:
        self._store, self._most, self._enabled = store, most, enabled
        super().__init__("tuneloop-recorder")

    def write(self, records: list[NewRecord]) -> Future[None]:
        """Resolved once `records` are committed (or with the error that stopped them)."""
        done: Future[None] = Future()
        if not self._enabled:  # `serve.capture = false`: benchmarks measuring what capture costs
            done.set_result(None)
            return done
        self._queue.put((records, done))
        return done

    def _handle(self, item: tuple[list[NewRecord], Future[None]]) -> object | None:
        """Commit `item` with every set of records waiting behind it."""
        group, closing = [item], None
        while sum(len(r) for r, _ in group) < self._most:
            try:
                more = self._queue.get_nowait()
            except queue.Empty:
                break
            if more is CLOSE:
                closing = CLOSE
                break
            group.append(more)
        self._commit(group)
        return closing

    def _commit(self, group: list[tuple[list[NewRecord], Future[None]]]) -> None:
        try:
            self._store.add_batch([r for records, _ in group for r in records], [], datetime.now(UTC))
        except Exception as error:  # noqa: BLE001 - each waiting response gets it
            log.error("storing %d record(s) failed: %s", sum(len(r) for r, _ in group), type(error).__name__)
            for _, done in group:
                done.set_exception(error)
            return
        for _, done in group:
            done.set_result(None)
