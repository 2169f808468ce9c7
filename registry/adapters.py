"""Register adapter-only artifacts (LoRA, QLoRA, DPO, prompt tuning, hybrid) with their lineage."""

from __future__ import annotations

import json
from pathlib import Path

from mlflow.entities.model_registry import ModelVersion

from tuneloop.digest import folder_sha256
from tuneloop.errors import Conflict, InvalidInput, UsageError
from tuneloop.names import AdapterMethod, ModelKind, Tag
from tuneloop.registry import audit
from tuneloop.registry.base_models import check_model_name, hf_model_uri
from tuneloop.registry.client import RegistryClient
from tuneloop.registry.versions import log_and_register

ADAPTER_CONFIG = "adapter_config.json"


def _check_adapter_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise InvalidInput(
            f"adapter folder `{folder}` does not exist", hint="pass the folder written by save_pretrained()"
        )
    if not (folder / ADAPTER_CONFIG).is_file():
        raise InvalidInput(
            f"`{folder}` has no {ADAPTER_CONFIG}, so it is not a PEFT adapter",
            hint="save the adapter with peft_model.save_pretrained(folder)",
        )
    try:
        json.loads((folder / ADAPTER_CONFIG).read_text())
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"`{folder / ADAPTER_CONFIG}` is not valid JSON: {exc}", hint="save the adapter again"
        ) from None
    if not list(folder.glob("*.safetensors")):
        raise InvalidInput(f"`{folder}` has no adapter weights (*.safetensors)", hint="save the adapter again")


def register_adapter(
    rc: RegistryClient,
    name: str,
    adapter_dir: str | Path,
    *,
    base_name: str,
    base_version: int | str,
    method: str,
    dataset_digests: dict[str, str] | None = None,
    training_run_id: str | None = None,
    quantization: dict[str, object] | None = None,
    parent_adapter: str | None = None,
) -> ModelVersion:
    """Register `adapter_dir` as a new version of adapter model NAME, with lineage to its base.

    `quantization` (e.g. `{"quant_type": "nf4", "double_quant": True}` for QLoRA) makes loaders
    quantize the base the way it was during training, so the adapter is served as it was trained.
    `parent_adapter` (`NAME:VERSION`) records the adapter this one continued from (DPO after SFT).
    """
    from tuneloop.registry.promotion import lock_name

    check_model_name(name)
    if method not in AdapterMethod._value2member_map_:
        allowed = ", ".join(m.value for m in AdapterMethod)
        raise UsageError(f"`method` must be one of {allowed}, not `{method}`", hint="pass the training method used")
    folder = Path(adapter_dir)
    _check_adapter_folder(folder)
    base = rc.model_version(base_name, base_version)
    if base.tags.get(Tag.KIND) != ModelKind.BASE:
        raise Conflict(
            f"`{base_name}` v{base.version} is not a base model", hint="adapters must name a base model version"
        )
    if name == base_name:
        raise Conflict(
            f"adapter `{name}` cannot share its base model's name", hint="give the adapter model its own name"
        )
    existing = rc.mlflow.search_registered_models(filter_string=f"name = '{name}'")
    if existing and existing[0].tags.get(Tag.KIND) != ModelKind.ADAPTER:
        raise Conflict(f"`{name}` is a registered base model, not an adapter model", hint="choose another adapter name")
    base_uri = hf_model_uri(base)
    tags = {
        Tag.KIND: ModelKind.ADAPTER.value,
        Tag.CONTENT_DIGEST: folder_sha256(folder),
        Tag.METHOD: method,
        Tag.BASE_NAME: base_name,
        Tag.BASE_VERSION: str(base.version),
        Tag.BASE_ARTIFACT_URI: base_uri,
        Tag.BASE_DIGEST: base.tags[Tag.CONTENT_DIGEST],
        Tag.DATASET_DIGESTS: json.dumps(dataset_digests or {}, sort_keys=True),
        Tag.TRAINING_RUN_ID: training_run_id or "",
        **({Tag.PARENT_ADAPTER: parent_adapter} if parent_adapter else {}),
    }
    with rc.stores.transaction(lock=lock_name(name)) as tx:
        if existing:
            audit.reconcile(rc, tx, name)
        return log_and_register(
            rc,
            name,
            artifacts={"adapter": folder},
            model_config={
                "kind": ModelKind.ADAPTER.value,
                "base_artifact_uri": base_uri,
                "base_digest": base.tags[Tag.CONTENT_DIGEST],
                "base_name": base_name,
                "base_version": str(base.version),
                "quantization": quantization or {},
            },
            tags=tags,
            run_name=f"register {name} ({method} on {base_name} v{base.version})",
        )
