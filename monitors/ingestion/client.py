"""A Python client for the ingest API that never blocks the caller's request path.

    client = IngestClient("http://127.0.0.1:8765", token=os.environ["TUNELOOP_INGEST_TOKEN"])
    client.log(model="support-qlora@champion", prompt=question, output=answer, latency_ms=42)
    ...
    client.close()   # flushes what is queued (bounded wait)

`log` only puts the record on a bounded queue (when full, the record is dropped and counted in
`stats["dropped"]`: production traffic must not wait for monitoring). A background thread sends
batches; each batch carries an Idempotency-Key and every record an id, so a retry after a timeout or
a dropped connection never stores anything twice. Transient failures (connection errors, 429, 5xx)
are retried with exponential backoff and jitter; a 4xx other than 429 drops that batch and keeps the
reason in `stats["last_error"]`.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from typing import Any

from tuneloop.backoff import Backoff

RETRY_STATUSES = {408, 425, 429, 500, 502, 503, 504}
RETRY_BACKOFF = Backoff(0.2, cap_s=30.0, jitter=True)


class IngestClient:
    def __init__(
        self,
        url: str,
        token: str,
        *,
        batch_size: int = 200,
        flush_interval_s: float = 1.0,
        max_queue: int = 100_000,
        max_retries: int = 8,
        timeout_s: float = 10.0,
    ) -> None:
        import httpx

        self._endpoint = url.rstrip("/") + "/v1/records"
        self._http = httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s)
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=max_queue)
        self._batch_size, self._flush_interval_s, self._max_retries = batch_size, flush_interval_s, max_retries
        self.stats: dict[str, Any] = {"sent": 0, "dropped": 0, "failed": 0, "retries": 0, "last_error": None}
        self._pending = 0  # queued or in flight; flush() waits for 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="tuneloop-ingest", daemon=True)
        self._thread.start()

    def log(self, **record: Any) -> str:
        """Queue one record (fields as the API takes them); returns its id. Never blocks."""
        record.setdefault("id", uuid.uuid4().hex)
        with self._lock:
            try:
                self._queue.put_nowait(record)
                self._pending += 1
            except queue.Full:
                self.stats["dropped"] += 1
        return str(record["id"])

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until everything queued so far is sent (or given up); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._pending == 0:
                return True
            time.sleep(0.02)
        return False

    def close(self, timeout_s: float = 30.0) -> None:
        self.flush(timeout_s)
        self._queue.put(None)
        self._thread.join(timeout_s)
        self._http.close()

    def _run(self) -> None:
        while True:
            batch: list[dict[str, Any]] = []
            first = self._queue.get()
            if first is None:
                return
            batch.append(first)
            deadline = time.monotonic() + self._flush_interval_s
            while len(batch) < self._batch_size:
                try:
                    item = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    self._send(batch)
                    return
                batch.append(item)
            self._send(batch)

    def _send(self, batch: list[dict[str, Any]]) -> None:
        try:
            self._post(batch)
        finally:
            with self._lock:
                self._pending -= len(batch)

    def _post(self, batch: list[dict[str, Any]]) -> None:
        import httpx

        key = uuid.uuid4().hex
        for attempt in range(self._max_retries + 1):
            try:
                response = self._http.post(self._endpoint, json={"records": batch}, headers={"Idempotency-Key": key})
                if response.status_code < 300:
                    self.stats["sent"] += len(batch)
                    return
                if response.status_code not in RETRY_STATUSES:
                    self.stats["failed"] += len(batch)
                    self.stats["last_error"] = f"{response.status_code}: {response.text[:500]}"
                    return
            except httpx.HTTPError as exc:
                self.stats["last_error"] = f"{type(exc).__name__}: {exc}"
            self.stats["retries"] += 1
            time.sleep(RETRY_BACKOFF.delay(attempt))
        self.stats["failed"] += len(batch)
