"""Model references (`NAME@ALIAS`, `NAME:VERSION`) resolved against the registry, through one cache.

`RegistryClient.models` is the process's resolver: an alias is asked of MLflow again once its answer is
older than `stores.alias_cache_seconds`, and a move made through tuneloop forgets the model's answers
at once (`forget`), so what this process promoted is what it resolves next. While MLflow cannot be
reached, an answer already known stands (a server goes on serving what it served) and is asked again
after the same interval.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from tuneloop.errors import NotFound
from tuneloop.names import ModelRef


class ModelResolver:
    """NAME@ALIAS / NAME:VERSION to (name, version, alias), checked against the registry, cached briefly."""

    def __init__(self, mlflow_client: Any, *, ttl_seconds: float = 5.0) -> None:
        self._client = mlflow_client
        self.ttl_seconds = ttl_seconds
        self._cache: dict[str, tuple[float, tuple[str, int, str | None]]] = {}
        self._lock = threading.Lock()  # the ingest server resolves from several threads

    def resolve(self, ref: str) -> tuple[str, int, str | None]:
        with self._lock:
            cached = self._cache.get(ref)
        if cached and time.monotonic() - cached[0] < self.ttl_seconds:
            return cached[1]
        from mlflow.exceptions import MlflowException

        parsed = ModelRef.parse(ref)
        name, alias, version = parsed.name, parsed.alias, parsed.version
        try:
            if alias:
                mv = self._client.get_model_version_by_alias(name, alias)
            else:
                mv = self._client.get_model_version(name, str(version))
        except MlflowException as error:
            if cached and not _is_answer(error):  # MLflow unreachable: the last answer stands, asked again later
                with self._lock:
                    self._cache[ref] = (time.monotonic(), cached[1])
                return cached[1]
            raise self._not_found(ref, name, alias, version) from None
        result = (name, int(mv.version), alias)
        with self._lock:
            self._cache[ref] = (time.monotonic(), result)
        return result

    def forget(self, name: str) -> None:
        """Drop what is cached for model `name` (after this process moved one of its aliases)."""
        with self._lock:
            for ref in [r for r in self._cache if self._cache[r][1][0] == name]:
                del self._cache[ref]

    def _not_found(self, ref: str, name: str, alias: str | None, version: int | None) -> NotFound:
        from mlflow.exceptions import MlflowException

        try:
            self._client.get_registered_model(name)
        except MlflowException:
            return NotFound(
                f"unknown model `{ref}`: no registered model `{name}`",
                hint="see `tuneloop models list`; name a registered version as NAME@ALIAS or NAME:VERSION",
            )
        if alias:
            return NotFound(
                f"`{ref}` has no holder: no version of `{name}` holds alias `{alias}` yet",
                hint=f"promote one first: `tuneloop models promote {name}:VERSION --alias {alias}`, "
                f"or name a version: `{name}:VERSION`",
            )
        return NotFound(
            f"unknown model `{ref}`: `{name}` has no version {version}",
            hint=f"see `tuneloop models show {name}` for its versions",
        )


def _is_answer(error: Exception) -> bool:
    """Whether MLflow answered (the version or alias does not exist) rather than could not be reached."""
    return getattr(error, "error_code", "") in {"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"}
