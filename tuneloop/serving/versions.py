"""What a served version is made of, fetched from the registry into the cache and checked by digest:
its base's folder, its adapter's folder, its method and the quantization it was trained on."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.errors import StoreError
from tuneloop.names import AdapterMethod, ModelKind, Tag

LORA_METHODS = frozenset({AdapterMethod.QLORA, AdapterMethod.LORA, AdapterMethod.DPO})  # may share a batch


@dataclass(frozen=True)
class Servable:
    name: str
    version: int
    base_folder: Path
    base_digest: str
    adapter_folder: Path | None = None  # None: a base version, served as it is
    method: str | None = None
    quantization: dict[str, Any] = field(default_factory=dict)

    @property
    def adapter_name(self) -> str:
        """Its name on the shared base (PEFT refuses dots in adapter names)."""
        return re.sub(r"[^A-Za-z0-9_-]", "_", f"{self.name}-v{self.version}")

    @property
    def shares_base(self) -> bool:
        """LoRA versions attach to one loaded base; other versions get a model of their own."""
        return self.adapter_folder is None or self.method in LORA_METHODS

    @property
    def base_key(self) -> str:
        """Versions with the same key are served by the same loaded base."""
        if not self.shares_base:
            return f"{self.name}:v{self.version}"
        return self.base_digest + json.dumps(self.quantization, sort_keys=True)


def fetch(rc: Any, name: str, version: int) -> Servable:
    """Download (once) and check what serving `name` v`version` needs."""
    mv = rc.model_version(name, version)
    root = mv.tags[Tag.ARTIFACT_URI]
    if mv.tags.get(Tag.KIND) == ModelKind.BASE:
        digest = mv.tags[Tag.CONTENT_DIGEST]
        return Servable(name, int(mv.version), _cached(rc, f"{root}/artifacts/hf_model", digest), digest)
    digest = mv.tags[Tag.BASE_DIGEST]
    return Servable(
        name,
        int(mv.version),
        base_folder=_cached(rc, mv.tags[Tag.BASE_ARTIFACT_URI], digest),
        base_digest=digest,
        adapter_folder=_cached(rc, f"{root}/artifacts/adapter", mv.tags[Tag.CONTENT_DIGEST]),
        method=mv.tags.get(Tag.METHOD),
        quantization=_model_config(rc, root).get("quantization") or {},
    )


def _cached(rc: Any, uri: str, digest: str) -> Path:
    """The folder at `uri` in the cache under its digest; a download that does not match is refused."""
    import mlflow

    from tuneloop.digest import folder_sha256

    target = rc.cache_dir / "serving" / digest.replace(":", "-")
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as staging:
        local = Path(
            mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=staging, tracking_uri=rc.settings.mlflow_uri)
        )
        actual = folder_sha256(local)
        if actual != digest:
            raise StoreError(
                f"the folder at {rc.settings.scrub(uri)} has digest {actual}, the registry says {digest}",
                hint="the artifact was changed after registration; register the version again",
            )
        try:
            local.rename(target)  # atomic: a cache entry is whole or absent
        except OSError:  # another server filled it first
            shutil.rmtree(local, ignore_errors=True)
    return target


def _model_config(rc: Any, root: str) -> dict[str, Any]:
    import mlflow
    import yaml

    text = mlflow.artifacts.load_text(f"{root}/MLmodel")
    flavor = (yaml.safe_load(text).get("flavors") or {}).get("python_function") or {}
    return flavor.get("model_config") or {}
