"""The one exception hierarchy of tuneloop.

Every error carries a stable `code`, the process exit code the CLI uses and the HTTP status the
APIs answer with. Messages name what is wrong; `hint` says how to fix it.
"""

from __future__ import annotations

from typing import Any


class TuneloopError(Exception):
    code = "internal_error"
    exit_code = 1
    http_status = 500

    def __init_subclass__(
        cls, *, code: str | None = None, exit_code: int | None = None, http_status: int | None = None, **kwargs: Any
    ) -> None:
        """`class NotFound(TuneloopError, code="not_found", http_status=404)`; what is not given is inherited."""
        super().__init_subclass__(**kwargs)
        cls.code = code or cls.code
        cls.exit_code = exit_code if exit_code is not None else cls.exit_code
        cls.http_status = http_status or cls.http_status

    def __init__(self, message: str, *, hint: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.details = details

    def __str__(self) -> str:
        return f"{self.message}\n  fix: {self.hint}" if self.hint else self.message

    def to_dict(self) -> dict[str, Any]:
        payload: dict[str, Any] = {"error": self.code, "message": self.message}
        if self.hint:
            payload["hint"] = self.hint
        if self.details is not None:
            payload["details"] = self.details
        return payload


class UsageError(TuneloopError, code="usage_error", exit_code=2, http_status=400):
    """The command line or request is malformed (a missing or contradictory option)."""


class ConfigError(TuneloopError, code="invalid_config", exit_code=2, http_status=400):
    """Settings, a recipe or a policy is invalid."""


class InvalidInput(TuneloopError, code="invalid_input", http_status=422):
    """An input file or value is unusable: missing, corrupt, truncated, of the wrong kind."""


class NotFound(TuneloopError, code="not_found", http_status=404):
    """Nothing by that name is stored (a model, version, run, record, alert, ...)."""


class Conflict(TuneloopError, code="conflict", http_status=409):
    """The request contradicts what is stored (an alias on another model's version, ...)."""


class GateFailed(TuneloopError, code="gate_failed", http_status=409):
    """A promotion was refused because at least one gate failed."""


class StoreError(TuneloopError, code="store_error", http_status=503):
    """A store (MLflow, tuneloop's database, the artifact root) is unreachable or inconsistent."""


class Overloaded(TuneloopError, code="overloaded", http_status=429):
    """A server's queue is full: retry after a moment (the HTTP answer says when)."""
