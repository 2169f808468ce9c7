"""Rows of JSONL, CSV and Parquet files, with the line each came from (for error messages); what a
training row asks and answers, in every format (chat, instruction, completion, preference); and
writing rows atomically. Monitors, cleaning and retraining all read rows through these functions.
"""

from __future__ import annotations

import csv
import io
import json
import os
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


TEXT_FIELDS = ("instruction", "input", "response", "output", "prompt", "completion", "chosen", "rejected")


def _messages(row: Any) -> list[Any] | None:
    messages = row.get("messages") if isinstance(row, dict) else None
    if isinstance(messages, str):  # a CSV cell
        try:
            messages = json.loads(messages)
        except ValueError:
            return None
    return messages if isinstance(messages, list) else None


def _field(row: Any, *keys: str) -> str | None:
    """The first of `keys` that holds a non-empty text."""
    if not isinstance(row, dict):
        return None
    return next((row[k] for k in keys if isinstance(row.get(k), str) and row[k]), None)


def prompt_of(row: Any) -> str | None:
    """What a training row asks: a chat's user turns (`chat_prompt`), or the instruction (with its input)
    or prompt; None when it has none."""
    messages = _messages(row)
    if messages:
        return chat_prompt(messages)
    prompt, extra = _field(row, "instruction", "prompt"), _field(row, "input")
    return f"{prompt}\n\n{extra}" if prompt is not None and extra else prompt


def answer_of(row: Any) -> str | None:
    """What a training row answers: a chat's final assistant turn, or the response, output, completion or
    chosen answer; None when it has none."""
    messages = _messages(row)
    if messages:
        last = messages[-1]
        return str(last.get("content", "")) if isinstance(last, dict) and last.get("role") == "assistant" else None
    return _field(row, "response", "output", "completion", "chosen")


def text_of(row: dict[str, Any]) -> str:
    """All of a row's text, for length limits, language identification and near-duplicate detection."""
    messages = _messages(row)
    if messages is not None:
        return "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
    return "\n".join(str(row[k]) for k in TEXT_FIELDS if isinstance(row.get(k), str))


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows as JSONL atomically: a reader sees the old file or the whole new one, never a part."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    tmp.replace(path)
    return path
