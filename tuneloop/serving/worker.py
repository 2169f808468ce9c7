"""A thread that owns a queue: the model thread and the record writer are both one."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

CLOSE = object()  # queued by `close()`: what was queued before it is handled, then the thread stops


class QueueWorker:
    """Subclasses handle each item taken off the queue in `_handle`, which may take more items itself
    and returns `CLOSE` when it took the close marker while doing so. The thread starts in `__init__`:
    call it last in the subclass's."""

    def __init__(self, name: str, *, max_queue: int = 0) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 30) -> None:
        """Handle what is queued, then stop the thread."""
        self._queue.put(CLOSE)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while (item := self._queue.get()) is not CLOSE:
            if self._handle(item) is CLOSE:
                return

    def _handle(self, item: Any) -> object | None:
        raise NotImplementedError


class Periodic:
    """A daemon thread that calls `work` every `every_s` seconds until closed (and once more on close)."""

    def __init__(self, name: str, every_s: float, work: Callable[[], None]) -> None:
        self._work, self._every_s, self._stop = work, every_s, threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 30) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        self._work()

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            self._work()
