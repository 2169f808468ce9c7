"""Merge a LoRA adapter into its unquantized base, one tensor at a time, and register the result.

Never merges into a 4-bit copy (the usual QLoRA mistake): the base's stored full-precision
safetensors are read memory-mapped, each weight that has LoRA factors gets W + (alpha / r) * B @ A
(rsLoRA: alpha / sqrt(r)), and is written straight to the output file, so peak memory is about one
tensor, not the model. Modules the adapter trained in full (`modules_to_save`) replace the base's.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any

from tuneloop.errors import Conflict, InvalidInput
from tuneloop.names import ModelKind, Tag
from tuneloop.registry.client import RegistryClient

_PREFIX = "base_model.model."
_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def _adapter_weights(adapter_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    from safetensors.torch import load_file

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if config.get("peft_type") != "LORA":
        raise Conflict(
            f"only LoRA adapters can be merged; this one is {config.get('peft_type')}",
            hint="prompt-tuning adapters have no weights to fold into the base",
        )
    return config, load_file(adapter_dir / "adapter_model.safetensors")


def _scale(config: dict[str, Any], module: str) -> float:
    def lookup(patterns: dict[str, Any] | None, default: Any) -> Any:
        for pattern, value in (patterns or {}).items():
            if module == pattern or module.endswith("." + pattern):
                return value
        return default

    rank = lookup(config.get("rank_pattern"), config["r"])
    alpha = lookup(config.get("alpha_pattern"), config["lora_alpha"])
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def _plan(config: dict[str, Any], weights: dict[str, Any]) -> tuple[dict[str, tuple[Any, Any, float]], dict[str, Any]]:
    """(base tensor name -> (A, B, scale)) for LoRA factors, and (name -> tensor) for full replacements."""
    factors: dict[str, tuple[Any, Any, float]] = {}
    replacements: dict[str, Any] = {}
    for key, tensor in weights.items():
        name = key.removeprefix(_PREFIX)
        if ".lora_A." in name:
            module = name.split(".lora_A.")[0]
            factors[f"{module}.weight"] = (tensor, weights[key.replace(".lora_A.", ".lora_B.")], _scale(config, module))
        elif ".lora_B." not in name:  # a module trained in full (modules_to_save)
            replacements[name.replace(".modules_to_save.default", "")] = tensor
    return factors, replacements


def merge_folder(base_dir: Path, adapter_dir: Path, out_dir: Path) -> None:
    """Write base + adapter into `out_dir` as safetensors, tensor by tensor."""
    import torch
    from safetensors import safe_open

    config, weights = _adapter_weights(adapter_dir)
    if config.get("fan_in_fan_out"):
        raise Conflict(
            "adapters with fan_in_fan_out (GPT-2 style Conv1D) are not supported yet", hint="merge with PEFT"
        )
    factors, replacements = _plan(config, weights)
    out_dir.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    for shard in sorted(base_dir.glob("*.safetensors")):
        with safe_open(shard, framework="pt") as reader:
            names = list(reader.keys())
            header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
            offset, specs = 0, []
            for name in names:
                piece = reader.get_slice(name)
                shape, dtype = piece.get_shape(), piece.get_dtype()
                size = math.prod(shape) * torch.tensor([], dtype=getattr(torch, _DTYPES[dtype])).element_size()
                header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
                specs.append(name)
                offset += size
            raw = json.dumps(header, separators=(",", ":")).encode()
            raw += b" " * (-len(raw) % 8)
            with open(out_dir / shard.name, "wb") as out:
                out.write(struct.pack("<Q", len(raw)) + raw)
                for name in specs:
                    tensor = reader.get_tensor(name)
                    if name in replacements:
                        tensor = replacements[name].to(tensor.dtype)
                        used.add(name)
                    elif name in factors:
                        a, b, scale = factors[name]
                        merged = tensor.float() + scale * (b.float() @ a.float())
                        tensor = merged.to(tensor.dtype)
                        used.add(name)
                    out.write(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    missing = sorted((set(factors) | set(replacements)) - used)
    if missing:
        raise InvalidInput(
            f"the adapter names weights the base does not have: {', '.join(missing[:5])}",
            hint="the adapter was trained on another base model",
        )
    for extra in base_dir.iterdir():
        if extra.is_file() and extra.suffix != ".safetensors":
            shutil.copy2(extra, out_dir / extra.name)


def merge(rc: RegistryClient, name: str, version: int | str, target: str | None = None) -> Any:
    """Merge adapter NAME:VERSION into its base and register the result as a base model version."""
    from mlflow.artifacts import download_artifacts

    from tuneloop.registry.base_models import register_full_model
    from tuneloop.registry.promotion import parse_version

    mv = rc.model_version(name, parse_version(name, version))
    if mv.tags.get(Tag.KIND) != ModelKind.ADAPTER:
        raise Conflict(f"`{name}` v{mv.version} is not an adapter", hint="merge takes an adapter version")
    from tuneloop.pipelines.training.run import base_folder  # verifies the base's digest

    base = rc.model_version(mv.tags[Tag.BASE_NAME], mv.tags[Tag.BASE_VERSION])
    adapter_dir = Path(download_artifacts(mv.tags[Tag.ARTIFACT_URI] + "/artifacts/adapter"))
    with tempfile.TemporaryDirectory(dir=rc.settings.home) as tmp:
        out = Path(tmp) / "merged"
        merge_folder(base_folder(base), adapter_dir, out)
        return register_full_model(
            rc,
            target or f"{name}-merged",
            out,
            source=f"merge of {name}:{mv.version}",
            lineage={
                Tag.METHOD: f"merge:{mv.tags.get(Tag.METHOD, 'lora')}",
                Tag.BASE_NAME: name,
                Tag.BASE_VERSION: str(mv.version),
                Tag.DATASET_DIGESTS: mv.tags.get(Tag.DATASET_DIGESTS, "{}"),
                Tag.TRAINING_RUN_ID: mv.tags.get(Tag.TRAINING_RUN_ID, ""),
            },
        )
