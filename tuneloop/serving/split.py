"""A served model's traffic policy as a server applies it: which champion requests a challenger answers
(canary) and which it answers too, unseen (shadow). The policy is read from the store at most
`serve.reload_seconds` ago, like the aliases.

Canary: with `sticky_by: user`, a request's `user` is hashed to a point in [0, 1); users below the share
get the challenger, so the same user gets the same version while the policy holds (raising the share
only adds users). Requests without a `user` (or with `sticky_by: none`) are drawn at random.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from typing import Any

from tuneloop.serving.counts import Counts
from tuneloop.traffic import OFF, TrafficPolicy


def user_point(model: str, user: str) -> float:
    """Where `user` falls in [0, 1) for `model`: uniform over users, fixed for each."""
    digest = hashlib.sha256(f"{model}\0{user}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def shadow_counts() -> Counts:
    """What happened to the requests shadowing drew: `answered` (generated and stored) or `dropped` (the server
    was saturated, or the challenger could not answer: not generated)."""
    return Counts("sampled", "answered", "dropped")


class TrafficSplit:
    def __init__(self, name: str, read: Any, *, ttl_seconds: float, rng: random.Random | None = None) -> None:
        self.name, self._read, self.ttl_seconds = name, read, ttl_seconds
        self._rng = rng or random.Random()
        self._policy, self._read_at = OFF, float("-inf")
        self._lock = threading.Lock()
        self.shadow_counts = shadow_counts()

    def policy(self) -> TrafficPolicy:
        with self._lock:
            if time.monotonic() - self._read_at >= self.ttl_seconds:
                self._policy, self._read_at = self._read(self.name), time.monotonic()
            return self._policy

    def canary_alias(self, user: str | None) -> str | None:
        """The alias that answers this champion request instead, or None (the champion answers)."""
        canary = self.policy().canary
        if canary is None:
            return None
        if canary.sticky_by == "user" and user:
            point = user_point(self.name, user)
        else:
            with self._lock:
                point = self._rng.random()
        return canary.alias if point < canary.share else None

    def shadow_alias(self) -> str | None:
        """The alias that also answers this champion request, unseen, or None."""
        shadow = self.policy().shadow
        if shadow is None:
            return None
        with self._lock:
            drawn = self._rng.random() < shadow.share
        return shadow.alias if drawn else None
