"""Exponential backoff: the one rule for how long to wait before trying something again.

Retries happen in-process (the ingest client re-posting a batch) and across processes (a notification's
next delivery is a time stored in the outbox), so this computes delays and leaves the waiting to them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Retry n (n = 0 for the first retry) waits `base_s * 2**n`, at most `cap_s`; with `jitter` the wait is
    spread over [0.5, 1.5) of that, so clients that failed together do not retry together."""

    base_s: float
    cap_s: float = float("inf")
    jitter: bool = False

    def delay(self, retry: int) -> float:
        wait = min(self.cap_s, self.base_s * 2.0 ** min(retry, 64))
        return wait * (0.5 + random.random()) if self.jitter else wait
