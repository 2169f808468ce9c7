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


class UsageError(TuneloopError):
    """The command line or request is malformed (a missing or contradictory option)."""

    code = "usage_error"
    exit_code = 2
    http_status = 400


class ConfigError(TuneloopError):
    """Settings, a recipe or a policy is invalid."""

    code = "invalid_config"
    exit_code = 2
    http_status = 400


class InvalidInput(TuneloopError):
    """An input file or value is unusable: missing, corrupt, truncated, of the wrong kind."""

    code = "invalid_input"
    exit_code = 1
    http_status = 422


class NotFound(TuneloopError):
    code = "not_found"
    exit_code = 1
    http_status = 404


class Conflict(TuneloopError):
    """The request contradicts what is stored (an alias on another model's version, ...)."""

    code = "conflict"
    exit_code = 1
    http_status = 409


class GateFailed(TuneloopError):
    """A promotion was refused because at least one gate failed."""

    code = "gate_failed"
    exit_code = 1
    http_status = 409


class StoreError(TuneloopError):
    """A store (MLflow, tuneloop's database, the artifact root) is unreachable or inconsistent."""

    code = "store_error"
    exit_code = 1
    http_status = 503
