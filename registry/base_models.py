"""Import base models into the registry: validate, convert GGUF once, store, dedup by content."""

from __future__ import annotations

from pathlib import Path

from mlflow.entities.model_registry import ModelVersion

from tuneloop.errors import Conflict, UsageError
from tuneloop.names import ModelKind, Tag
from tuneloop.registry import audit, sources
from tuneloop.registry.client import RegistryClient
from tuneloop.registry.versions import log_and_register

_NAME_RULE = "letters, digits, `.`, `_` or `-`, at most 200 characters"


def check_model_name(name: str) -> None:
    import re

    if not re.fullmatch(r"[A-Za-z0-9][\w.\-]{0,199}", name):
        raise UsageError(f"`{name}` is not a valid model name", hint=f"use {_NAME_RULE}")


def find_by_digest(rc: RegistryClient, name: str, digest: str) -> ModelVersion | None:
    found = rc.mlflow.search_model_versions(f"name = '{name}' and tags.`{Tag.CONTENT_DIGEST}` = '{digest}'")
    return min(found, key=lambda mv: int(mv.version)) if found else None


def import_base(rc: RegistryClient, name: str, source: str) -> tuple[ModelVersion, bool]:
    """Register SRC as a version of base model NAME; returns (version, already_existed)."""
    check_model_name(name)
    prepared = sources.prepare(source, rc.cache_dir)  # all validation happens before any store is touched
    return _register_folder(rc, name, prepared, {}, run_name=f"import {name}")


def register_full_model(
    rc: RegistryClient, name: str, folder: Path, lineage: dict[str, str], source: str | None = None
) -> ModelVersion:
    """Register a whole model folder (full fine-tune, merge) as a standalone version with lineage tags."""
    check_model_name(name)
    source = source or f"training run {lineage.get(Tag.TRAINING_RUN_ID, '?')}"
    prepared = sources.inspect_folder(folder, source=source)
    mv, _ = _register_folder(rc, name, prepared, lineage, run_name=f"register {name} (full fine-tune)")
    return mv


def _register_folder(
    rc: RegistryClient, name: str, prepared: sources.PreparedModel, extra_tags: dict[str, str], *, run_name: str
) -> tuple[ModelVersion, bool]:
    from tuneloop.registry.promotion import lock_name

    existing_model = rc.mlflow.search_registered_models(filter_string=f"name = '{name}'")
    if existing_model and existing_model[0].tags.get(Tag.KIND, ModelKind.BASE) != ModelKind.BASE:
        raise Conflict(
            f"`{name}` is a registered {existing_model[0].tags.get(Tag.KIND)} model, not a base model",
            hint="choose another name for the base model",
        )
    with rc.stores.transaction(lock=lock_name(name)) as tx:  # serialises the digest check with the registration
        if existing_model:
            audit.reconcile(rc, tx, name)
            found = find_by_digest(rc, name, prepared.digest)
            if found is not None:
                return found, True
        tags = {
            Tag.KIND: ModelKind.BASE.value,
            Tag.CONTENT_DIGEST: prepared.digest,
            Tag.SOURCE: prepared.source,
            Tag.ARCHITECTURE: prepared.architecture,
            Tag.PARAMETERS: str(prepared.parameters),
            Tag.LICENSE: prepared.license or "unknown",
            **extra_tags,
        }
        if prepared.source_digest:
            tags[Tag.SOURCE_DIGEST] = prepared.source_digest
        mv = log_and_register(
            rc,
            name,
            artifacts={"hf_model": prepared.folder},
            model_config={"kind": ModelKind.BASE.value, "digest": prepared.digest},
            tags=tags,
            run_name=run_name,
        )
        return mv, False


def hf_model_uri(mv: ModelVersion) -> str:
    """Artifact URI of the Hugging Face folder stored with a base version."""
    return f"{mv.tags[Tag.ARTIFACT_URI]}/artifacts/hf_model"
