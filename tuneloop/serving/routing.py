"""Which version answers a request's `model`, and what happens when an alias moves.

`NAME:VERSION` is that version. `NAME@ALIAS` is the version holding the alias at most
`serve.reload_seconds` ago. When an alias moves, the new holder is loaded beside the old one; requests
resolved before the move finish on the old one, which is released once drained. A new holder that
fails to load (missing artifact, digest mismatch) leaves the old one serving the alias: the failure is
logged, raises a notification, and the load is retried with backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from tuneloop.backoff import Backoff
from tuneloop.errors import NotFound, TuneloopError
from tuneloop.names import Alias, ModelRef
from tuneloop.serving.host import Host
from tuneloop.serving.versions import Servable

log = logging.getLogger("tuneloop.serve")
RETRY = Backoff(base_s=2.0, cap_s=300.0)


class RouteError(TuneloopError, code="model_not_found", http_status=404):
    """A request's `model` that this server cannot answer for."""


class VersionUnavailable(TuneloopError, code="model_unavailable", http_status=503):
    """The version asked for could not be loaded, and nothing else may answer in its place."""


@dataclass
class _Failure:
    attempts: int
    retry_at: float
    reason: str


class Router:
    def __init__(self, name: str, resolver: Any, host: Host, stores: Any, scrub: Any = str) -> None:
        self.name, self._resolver, self._host, self._stores, self._scrub = name, resolver, host, stores, scrub
        self._holders: dict[str, int] = {}  # alias -> the version serving it here
        self._failures: dict[int, _Failure] = {}
        self._lock = threading.Lock()

    def keep(self) -> set[tuple[str, int]]:
        with self._lock:
            return {(self.name, v) for v in self._holders.values()}

    def route(self, ref: str | None) -> tuple[int, str | None, Servable]:
        """(version, alias, servable) that answers `ref`, loaded."""
        version, alias = self._resolve(ref or f"{self.name}@{Alias.CHAMPION}")
        if alias is None:
            return version, None, self._load(version, None)
        with self._lock:
            held = self._holders.get(alias)
            failure = self._failures.get(version)
        if held is None or held == version:
            servable = self._load(version, alias)
            with self._lock:
                self._holders[alias] = version
            return version, alias, servable
        if failure is not None and time.monotonic() < failure.retry_at:
            return held, alias, self._load(held, alias)  # the new holder failed recently: the old one answers
        try:
            servable = self._load(version, alias)
        except VersionUnavailable as error:
            self._failed(alias, version, held, error.message)
            return held, alias, self._load(held, alias)
        with self._lock:
            self._holders[alias] = version
            self._failures.pop(version, None)
            still_held = held in self._holders.values()
        if not still_held:
            self._host.retire(self.name, held)
        log.info("%s@%s moved from v%d to v%d", self.name, alias, held, version)
        return version, alias, servable

    def _resolve(self, ref: str) -> tuple[int, str | None]:
        try:
            parsed = ModelRef.parse(ref)
        except TuneloopError:
            raise RouteError(f"`{ref}` is not NAME@ALIAS or NAME:VERSION") from None
        if parsed.name != self.name:
            raise RouteError(f"this server serves `{self.name}`, not `{parsed.name}`")
        try:
            _, version, alias = self._resolver.resolve(ref)
        except NotFound as exc:
            raise RouteError(exc.message, hint=exc.hint) from None
        return version, alias

    def _load(self, version: int, alias: str | None) -> Servable:
        try:
            return self._host.load(self.name, version, keep=self.keep() | {(self.name, version)})
        except Exception as error:
            reason = self._scrub(getattr(error, "message", None) or f"{type(error).__name__}: {error}")
            raise VersionUnavailable(
                f"`{self.name}:{version}` could not be loaded: {reason}",
                hint="check its artifacts (`tuneloop models show`), or move the alias back",
            ) from error

    def _failed(self, alias: str, version: int, held: int, reason: str) -> None:
        with self._lock:
            attempts = self._failures[version].attempts + 1 if version in self._failures else 1
            self._failures[version] = _Failure(attempts, time.monotonic() + RETRY.delay(attempts - 1), reason)
        wait = RETRY.delay(attempts - 1)
        log.warning(
            "%s@%s now names v%d, which could not be loaded (attempt %d; retry in %.0f s); v%d keeps serving: %s",
            self.name, alias, version, attempts, wait, held, reason,
        )  # fmt: skip
        from tuneloop.monitors.alerting.notify import enqueue

        message = f"{self.name}@{alias} names v{version}, which could not be loaded; v{held} keeps serving it"
        payload = {"model": self.name, "alias": alias, "version": version, "serving": held, "attempt": attempts}
        with self._stores.transaction() as tx:
            enqueue(self._stores, tx, "serve.load_failed", payload | {"reason": reason, "message": message}, [])
