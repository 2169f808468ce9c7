"""Read the registry: list models, show versions and their lineage chain."""

from __future__ import annotations

import json

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from tuneloop.errors import NotFound
from tuneloop.names import REF_HINT, ModelRef, Tag, names_a_version
from tuneloop.registry.client import RegistryClient
from tuneloop.registry.gates import metrics_of
from tuneloop.registry.promotion import reconcile
from tuneloop.schemas import ModelVersionInfo


def version_info(mv: ModelVersion, aliases: dict[str, str] | None = None) -> ModelVersionInfo:
    tags = mv.tags or {}
    lineage = {
        key.removeprefix(Tag.PREFIX): value
        for key, value in tags.items()
        if key.startswith(Tag.BASE_PREFIX) or key in (Tag.METHOD, Tag.DATASET_DIGESTS, Tag.TRAINING_RUN_ID)
    }
    return ModelVersionInfo(
        name=mv.name,
        version=int(mv.version),
        kind=tags.get(Tag.KIND, "unknown"),
        aliases=sorted(a for a, v in (aliases or {}).items() if str(v) == str(mv.version)),
        digest=tags.get(Tag.CONTENT_DIGEST),
        source=tags.get(Tag.SOURCE),
        architecture=tags.get(Tag.ARCHITECTURE),
        parameters=int(tags[Tag.PARAMETERS]) if Tag.PARAMETERS in tags else None,
        license=tags.get(Tag.LICENSE),
        artifact_uri=tags.get(Tag.ARTIFACT_URI),
        run_id=mv.run_id,
        lineage=lineage,
        metrics=metrics_of(mv),
    )


def list_models(rc: RegistryClient) -> list[dict]:
    out = []
    for rm in rc.mlflow.search_registered_models(max_results=1000):
        if Tag.KIND not in rm.tags:
            continue  # not one of ours
        reconcile(rc, rm.name)
        rm = rc.mlflow.get_registered_model(rm.name)
        versions = rc.mlflow.search_model_versions(f"name = '{rm.name}'")
        out.append(
            {
                "name": rm.name,
                "kind": rm.tags[Tag.KIND],
                "versions": len(versions),
                "latest_version": max((int(v.version) for v in versions), default=None),
                "aliases": {a: int(v) for a, v in rm.aliases.items()},
                "gate_policy": json.loads(rm.tags.get(Tag.GATE_POLICY, "[]")),
            }
        )
    return sorted(out, key=lambda m: m["name"])


def resolve(rc: RegistryClient, ref: str) -> ModelVersion:
    """`NAME@ALIAS` or `NAME:VERSION` to a model version."""
    if not names_a_version(ref):
        raise NotFound(f"`{ref}` names no version", hint=REF_HINT)
    parsed = ModelRef.parse(ref)
    if parsed.version is not None:
        return rc.model_version(parsed.name, parsed.version)
    name, alias = parsed.name, parsed.alias
    rc.registered_model(name)
    try:
        return rc.mlflow.get_model_version_by_alias(name, alias)
    except MlflowException:
        raise NotFound(
            f"`{ref}` has no holder: no version of `{name}` holds alias `{alias}` yet",
            hint=f"promote one first: `tuneloop models promote {name}:VERSION --alias {alias}`, "
            f"or name a version: `{name}:VERSION` (see `tuneloop models show {name}`)",
        ) from None


def show(rc: RegistryClient, name: str, version: int | None = None) -> dict:
    reconcile(rc, name)
    rm = rc.registered_model(name)
    if version is not None:
        versions = [rc.model_version(name, version)]
    else:
        versions = sorted(rc.mlflow.search_model_versions(f"name = '{name}'"), key=lambda v: int(v.version))
    infos = [version_info(rc.mlflow.get_model_version(name, v.version), rm.aliases) for v in versions]
    return {
        "name": name,
        "kind": rm.tags.get(Tag.KIND, "unknown"),
        "aliases": {a: int(v) for a, v in rm.aliases.items()},
        "gate_policy": json.loads(rm.tags.get(Tag.GATE_POLICY, "[]")),
        "versions": [i.model_dump() for i in infos],
        "lineage": [lineage_chain(rc, rc.mlflow.get_model_version(name, v.version)) for v in versions],
    }


def lineage_chain(rc: RegistryClient, mv: ModelVersion) -> list[dict]:
    """The version, then its base, ... down to the original source."""
    chain, current, seen = [], mv, set()
    while current is not None and (current.name, current.version) not in seen:
        seen.add((current.name, current.version))
        tags = current.tags or {}
        chain.append(
            {
                "model": f"{current.name}:{current.version}",
                "kind": tags.get(Tag.KIND, "unknown"),
                "method": tags.get(Tag.METHOD),
                "digest": tags.get(Tag.CONTENT_DIGEST),
                "source": tags.get(Tag.SOURCE),
                "training_run_id": tags.get(Tag.TRAINING_RUN_ID) or None,
                "datasets": json.loads(tags[Tag.DATASET_DIGESTS]) if Tag.DATASET_DIGESTS in tags else None,
            }
        )
        if tags.get(Tag.PARENT_ADAPTER):
            parent = ModelRef.parse(tags[Tag.PARENT_ADAPTER], what=Tag.PARENT_ADAPTER)
            parent_name, parent_version = parent.name, str(parent.version)
        elif Tag.BASE_NAME in tags:
            parent_name, parent_version = tags[Tag.BASE_NAME], tags[Tag.BASE_VERSION]
        else:
            break
        try:
            current = rc.mlflow.get_model_version(parent_name, parent_version)
        except MlflowException:
            chain.append({"model": f"{parent_name}:{parent_version}", "kind": "missing"})
            break
    return chain
