"""Named counters that several threads add to: what `/health` and a serving run show."""

from __future__ import annotations

import threading


class Counts:
    def __init__(self, *names: str) -> None:
        self._values = dict.fromkeys(names, 0)
        self._lock = threading.Lock()

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                self._values[name] += n  # a name not declared is a KeyError: a typo never counts silently

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)
