"""Rows of JSONL, CSV and Parquet files, with the line each came from (for error messages)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from tuneloop.errors import InvalidInput


def read_rows(path: Path) -> list[tuple[int, Any]]:
    """(line number, row) pairs; JSON errors are returned as rows of type str for reporting."""
    if not path.is_file():
        raise InvalidInput(f"file `{path}` does not exist", hint="check the path")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        rows: list[tuple[int, Any]] = []
        text = _utf8_text(path)
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append((number, json.loads(line)))
            except json.JSONDecodeError as exc:
                rows.append((number, f"not valid JSON ({exc.msg} at column {exc.colno})"))
        return rows
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(_utf8_text(path), newline=""))
        return [(reader.line_num, dict(row)) for row in reader]
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return [(i, row) for i, row in enumerate(pq.read_table(path).to_pylist(), start=1)]
    raise InvalidInput(f"`{path}` has an unsupported extension", hint="use .jsonl, .csv or .parquet")


def _utf8_text(path: Path) -> str:
    """The file as text; bytes that are not UTF-8 are reported with their line and column."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise InvalidInput(
            f"{path}:{line}: byte 0x{raw[exc.start]:02x} at column {column} is not UTF-8",
            hint="re-encode the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)",
        ) from None


def chat_prompt(messages: list[Any]) -> str:
    """A chat's prompt as one text: its user turns, in order, joined by a newline. Monitor references,
    backtests and retraining read training rows this way, so production prompts must be joined alike
    (or windows would drift on formatting alone)."""
    return "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict) and m.get("role") == "user")
