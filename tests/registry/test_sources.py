"""Source validation: safetensors headers, folders, GGUF magic; the folder digest."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from tuneloop.digest import folder_sha256
from tuneloop.errors import InvalidInput
from tuneloop.registry.sources import inspect_folder, prepare, safetensors_parameter_count


def _write_safetensors(path: Path, tensors: dict[str, list[int]], extra_bytes: int = 0) -> None:
    header, offset = {}, 0
    for name, shape in tensors.items():
        size = 4
        for dim in shape:
            size *= dim
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * (offset + extra_bytes))


def test_parameter_count_matches_safetensors_library(tmp_path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"a": torch.zeros(3, 5), "b": torch.zeros(7), "c": torch.zeros(2, 2, 2)}, str(path))
    assert safetensors_parameter_count(path) == 15 + 7 + 8


@pytest.mark.parametrize(
    ("blob", "why"),
    [
        (b"\x01\x02", "shorter than its 8-byte header"),
        (struct.pack("<Q", 10**9) + b"{}", "header length"),
        (struct.pack("<Q", 4) + b"nope", "header is not JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
    ],
)
def test_corrupt_headers_are_named(tmp_path: Path, blob: bytes, why: str) -> None:
    path = tmp_path / "w.safetensors"
    path.write_bytes(blob)
    with pytest.raises(InvalidInput, match=why):
        safetensors_parameter_count(path)


def test_size_mismatch_is_caught_both_ways(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    _write_safetensors(path, {"x": [4, 4]}, extra_bytes=3)
    with pytest.raises(InvalidInput, match="promises 64 bytes"):
        safetensors_parameter_count(path)


def test_folder_checks(tmp_path: Path, tiny_model: Path) -> None:
    with pytest.raises(InvalidInput, match="no config.json"):
        inspect_folder(tmp_path, source="x")
    folder = shutil.copytree(tiny_model, tmp_path / "m")
    (folder / "tokenizer.json").unlink()
    with pytest.raises(InvalidInput, match="no tokenizer"):
        inspect_folder(folder, source="x")
    for weights in folder.glob("*.safetensors"):
        weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(InvalidInput, match="PyTorch .bin weights"):
        inspect_folder(folder, source="x")
    with pytest.raises(InvalidInput, match="not a .gguf file"):
        prepare(str(folder / "config.json"), tmp_path / "cache")
    with pytest.raises(InvalidInput, match="unknown packaged model"):
        prepare("pkg:nonesuch", tmp_path / "cache")


def test_folder_digest_depends_on_names_and_bytes_only(tmp_path: Path) -> None:
    a = tmp_path / "a"
    (a / "sub").mkdir(parents=True)
    (a / "x.txt").write_text("1")
    (a / "sub" / "y.txt").write_text("2")
    b = shutil.copytree(a, tmp_path / "b")
    assert folder_sha256(a) == folder_sha256(b)
    (b / "x.txt").write_text("3")
    assert folder_sha256(a) != folder_sha256(b)
    c = shutil.copytree(a, tmp_path / "c")
    (c / "x.txt").rename(c / "z.txt")
    assert folder_sha256(a) != folder_sha256(c)
