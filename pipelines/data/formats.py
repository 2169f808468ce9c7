"""Training data: read JSONL/CSV/Parquet, detect the row format, validate every row with its line.

Formats (each row, after reading):
- chat:        {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}, ending in an assistant turn
- instruction: {"instruction" | "prompt": str, "input"?: str, "response" | "output": str}
- completion:  {"prompt": str, "completion": str}
- preference:  {"prompt": str | messages, "chosen": str, "rejected": str}, chosen != rejected

Rows are normalised for TRL: demonstrations become conversational prompt/completion pairs (loss on
the completion only); preference rows keep prompt/chosen/rejected. The file's exact bytes are
hashed (sha256) so the data a model saw can be identified and fetched again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.digest import file_sha256
from tuneloop.errors import InvalidInput
from tuneloop.rowfiles import read_rows

ROLES = ("system", "user", "assistant")
MAX_REPORTED = 20


@dataclass
class Dataset:
    path: Path
    format: str
    rows: list[dict[str, Any]]
    lines: list[int]
    digest: str

    def __len__(self) -> int:
        return len(self.rows)


@dataclass
class Problem:
    line: int | None
    message: str

    @property
    def kind(self) -> str:
        """The message with row-specific numbers and field values masked, for counting problems by kind."""
        import re

        text = re.sub(r"\[\d+\]", "[i]", self.message)
        text = re.sub(r"\d+", "N", text)
        return re.sub(r"fields \[.*\]", "fields [...]", text)


@dataclass
class Scan:
    """Every row of a file checked: the usable rows and every problem, with its line."""

    path: Path
    format: str
    rows: list[dict[str, Any]]
    lines: list[int]
    problems: list[Problem]
    total: int

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.problems:
            out[p.kind] = out.get(p.kind, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def raise_if_any(self) -> None:
        if not self.problems:
            return
        shown = [f"{self.path}:{p.line}: {p.message}" if p.line else f"{self.path}: {p.message}" for p in self.problems]
        more = f"\n  ... and {len(shown) - MAX_REPORTED} more" if len(shown) > MAX_REPORTED else ""
        raise InvalidInput(
            f"{len(shown)} problem(s) in the data:\n  " + "\n  ".join(shown[:MAX_REPORTED]) + more,
            hint=f"fix or remove these rows (`tuneloop data validate {self.path}` lists them all)",
        )


def detect_format(row: dict[str, Any]) -> str | None:
    keys = set(row)
    if "messages" in keys:
        return "chat"
    if {"chosen", "rejected"} <= keys:
        return "preference"
    if "completion" in keys and "prompt" in keys:
        return "completion"
    if keys & {"instruction", "prompt"} and keys & {"response", "output"}:
        return "instruction"
    return None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _normalise(row: dict[str, Any], fmt: str) -> tuple[dict[str, Any] | None, str | None]:
    """(TRL row, None) or (None, what is wrong)."""
    if fmt == "chat":
        messages = row.get("messages")
        if isinstance(messages, str):
            try:
                messages = json.loads(messages)  # CSV and Parquet carry messages as JSON text
            except json.JSONDecodeError:
                return None, "`messages` is not a list of {role, content}"
        if not isinstance(messages, list) or not messages:
            return None, "`messages` must be a non-empty list of {role, content}"
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                return None, f"`messages[{i}].role` must be one of {', '.join(ROLES)}"
            if not _text(m.get("content")):
                return None, f"`messages[{i}].content` is empty"
        if messages[-1]["role"] != "assistant":
            return None, "the last turn is not an assistant turn: there is nothing to learn from"
        prompt = [{"role": m["role"], "content": m["content"]} for m in messages[:-1]]
        if not prompt:
            return None, "there is no user turn before the assistant turn"
        return {"prompt": prompt, "completion": [{"role": "assistant", "content": messages[-1]["content"]}]}, None
    if fmt == "instruction":
        instruction = _text(row.get("instruction")) or _text(row.get("prompt"))
        response = _text(row.get("response")) or _text(row.get("output"))
        if not instruction:
            return None, "`instruction` is empty"
        if not response:
            return None, "`response` is empty: the row has no assistant turn"
        extra = _text(row.get("input"))
        user = f"{instruction}\n\n{extra}" if extra else instruction
        return {
            "prompt": [{"role": "user", "content": user}],
            "completion": [{"role": "assistant", "content": response}],
        }, None
    if fmt == "completion":
        text, completion = _text(row.get("prompt")), _text(row.get("completion"))
        if not text or not completion:
            return None, "`prompt` and `completion` must both be non-empty text"
        return {"prompt": text, "completion": completion}, None
    # preference
    text, chosen, rejected = _text(row.get("prompt")), _text(row.get("chosen")), _text(row.get("rejected"))
    if not text or not chosen or not rejected:
        return None, "`prompt`, `chosen` and `rejected` must all be non-empty text"
    if chosen.strip() == rejected.strip():
        return None, "`chosen` equals `rejected`: the pair teaches nothing"
    return {
        "prompt": [{"role": "user", "content": text}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }, None


def row_problem(row: dict[str, Any], fmt: str) -> str | None:
    """What is wrong with one row of format `fmt`, or None when it is usable."""
    return _normalise(row, fmt)[1]


def load(path: str | Path, fmt: str = "auto", *, tokenizer: Any = None, max_length: int | None = None) -> Dataset:
    """Read and validate a whole file; raises one InvalidInput listing every bad row by line."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"data file `{path}` does not exist", hint="check `data.train` / `data.eval` in the recipe")
    scan = check(path, fmt, tokenizer=tokenizer, max_length=max_length)
    if scan.total == 0:
        raise InvalidInput(f"`{path}` holds no rows", hint="a data set needs at least one example")
    scan.raise_if_any()
    return Dataset(
        path=path, format=scan.format, rows=scan.rows, lines=scan.lines, digest="sha256:" + file_sha256(path)
    )


def check(
    path: Path, fmt: str = "auto", *, tokenizer: Any = None, max_length: int | None = None, max_chars: int | None = None
) -> Scan:
    """Check every row of `path` (nothing raised for bad rows): what `load` keeps and every problem found.

    Over-long rows are measured in tokens when a tokenizer is given, else in characters with `max_chars`.
    """
    raw = read_rows(path)
    problems: list[Problem] = []
    rows, lines = [], []
    detected = fmt
    for number, row in raw:
        if isinstance(row, str):
            problems.append(Problem(number, row))
            continue
        if not isinstance(row, dict):
            problems.append(Problem(number, "a row must be a JSON object"))
            continue
        if detected == "auto":
            detected = detect_format(row) or "auto"
            if detected == "auto":
                problems.append(Problem(number, f"cannot tell the format from fields {sorted(row)}; see `data.format`"))
                continue
        normalised, why = _normalise(row, detected)
        if why:
            problems.append(Problem(number, why))
            continue
        assert normalised is not None
        if tokenizer is not None and max_length is not None:
            length = _token_length(tokenizer, normalised)
            if length > max_length:
                problems.append(Problem(number, f"{length} tokens, over `data.max_length` = {max_length}"))
                continue
        if max_chars is not None and (chars := len(json.dumps(normalised, ensure_ascii=False))) > max_chars:
            problems.append(Problem(number, f"{chars} characters, over the limit of {max_chars}"))
            continue
        rows.append(normalised)
        lines.append(number)
    return Scan(path=path, format=detected, rows=rows, lines=lines, problems=problems, total=len(raw))


def _token_length(tokenizer: Any, row: dict[str, Any]) -> int:
    if isinstance(row["prompt"], str):
        return len(tokenizer(row["prompt"] + row["completion"])["input_ids"])
    answer = row.get("completion") or row.get("chosen")
    ids = tokenizer.apply_chat_template(row["prompt"] + answer, tokenize=True)
    return len(ids["input_ids"] if isinstance(ids, dict) else ids)
