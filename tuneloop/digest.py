"""Content digests: sha256 of exact bytes, for files and whole folders."""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def folder_sha256(folder: str | Path) -> str:
    """Digest of a folder: every file's relative path and content digest, in path order.

    Renaming or changing any file changes it; file timestamps and the folder's location do not.
    """
    root = Path(folder)
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        h.update(rel.encode() + b"\0" + file_sha256(path).encode() + b"\n")
    return "sha256:" + h.hexdigest()
