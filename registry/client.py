"""RegistryClient: the one object the CLI, pipelines and tests use to reach the registry.

It holds the settings, an MLflow client and tuneloop's database engine; the operations live in
`base_models`, `adapters`, `promotion` and `catalog` and take the client as their first argument.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from tuneloop.errors import NotFound
from tuneloop.settings import Settings, load_settings

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion, RegisteredModel

    from tuneloop.registry.resolver import ModelResolver
    from tuneloop.store import Stores


class RegistryClient:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or load_settings()

    @cached_property
    def mlflow(self) -> MlflowClient:
        from tuneloop.registry.tracking import connect

        return connect(self.settings)

    @cached_property
    def models(self) -> ModelResolver:
        """This process's resolver of NAME@ALIAS / NAME:VERSION (one cache; see `registry.resolver`)."""
        from tuneloop.registry.resolver import ModelResolver

        return ModelResolver(self.mlflow, ttl_seconds=self.settings.stores.alias_cache_seconds)

    @cached_property
    def stores(self) -> Stores:
        """tuneloop's own database, one store per aggregate (`tuneloop.store`); migrated or checked on first use."""
        from tuneloop.store import Stores
        from tuneloop.store.engine import get_engine

        return Stores(get_engine(self.settings.database_url, migrate_on_start=self.settings.stores.migrate_on_start))

    @property
    def cache_dir(self) -> Path:
        return self.settings.cache_dir

    def registered_model(self, name: str) -> RegisteredModel:
        from mlflow.exceptions import MlflowException

        try:
            return self.mlflow.get_registered_model(name)
        except MlflowException:
            raise NotFound(
                f"no registered model `{name}`", hint="see `tuneloop models list` for the names that exist"
            ) from None

    def model_version(self, name: str, version: int | str) -> ModelVersion:
        from mlflow.exceptions import MlflowException

        self.registered_model(name)
        try:
            return self.mlflow.get_model_version(name, str(version))
        except MlflowException:
            raise NotFound(
                f"model `{name}` has no version {version}",
                hint=f"see `tuneloop models show {name}` for its versions",
            ) from None
