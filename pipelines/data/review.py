"""`tuneloop data review export|import`: people accept, reject or edit rows, and their decisions are applied.

`export` writes a sample of a data file's rows (by default the synthetic rows nobody has reviewed yet) to a
CSV or JSONL sheet with columns id, prompt, answer, decision, edited_prompt, edited_answer, note. A reviewer
fills `decision` with accept, reject or edit (and the edited text); a blank decision leaves the row
unreviewed. `import` applies a filled sheet to the data file: rejected rows leave, edits replace the text
(the original is kept in the row's `review`), accepted rows are marked. Synthetic rows still unreviewed
afterwards are held back into a `.held.jsonl` file beside the output (policy `hold`, the default), or kept
(policy `keep`). Every sheet problem is reported with its line before anything is written.
"""

from __future__ import annotations

import csv
import hashlib
import json
import random
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuneloop.errors import InvalidInput
from tuneloop.pipelines.data import formats as data_io
from tuneloop.rowfiles import read_rows

COLUMNS = ("id", "prompt", "answer", "decision", "edited_prompt", "edited_answer", "note")
DECISIONS = {"accept": "accepted", "reject": "rejected", "edit": "edited"}
POLICIES = ("hold", "keep")


def row_id(row: dict[str, Any]) -> str:
    """The synthetic id when the row has one, else a digest of its content (stable across runs)."""
    synthetic = row.get("synthetic")
    if isinstance(synthetic, dict) and isinstance(synthetic.get("id"), str):
        return synthetic["id"]
    content = {k: v for k, v in row.items() if k != "review"}
    return "row-" + hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def is_unreviewed_synthetic(row: dict[str, Any]) -> bool:
    return isinstance(row.get("synthetic"), dict) and not isinstance(row.get("review"), dict)


def _read(path: Path) -> tuple[str, list[dict[str, Any]]]:
    """(format, rows as written) of a data file whose every row is valid."""
    scan = data_io.check(path)
    scan.raise_if_any()
    if scan.total == 0:
        raise InvalidInput(f"`{path}` holds no rows", hint="review a data file with rows")
    if scan.format == "preference":
        raise InvalidInput(f"`{path}` holds preference rows", hint="review chat, instruction or completion rows")
    return scan.format, [row for _, row in read_rows(path) if isinstance(row, dict)]


def _text(row: dict[str, Any], fmt: str) -> tuple[str, str]:
    """(prompt, answer) a reviewer reads: the last user turn and the assistant's answer."""
    if fmt == "chat":
        messages = row["messages"]
        return next(m["content"] for m in reversed(messages) if m["role"] == "user"), messages[-1]["content"]
    if fmt == "instruction":
        prompt_key = (
            "instruction" if isinstance(row.get("instruction"), str) and row["instruction"].strip() else "prompt"
        )
        answer_key = "response" if isinstance(row.get("response"), str) and row["response"].strip() else "output"
        return row[prompt_key], row[answer_key]
    return row["prompt"], row["completion"]


def _edited(row: dict[str, Any], fmt: str, prompt: str, answer: str) -> dict[str, Any]:
    row = json.loads(json.dumps(row))
    if fmt == "chat":
        last_user = max(i for i, m in enumerate(row["messages"]) if m["role"] == "user")
        row["messages"][last_user]["content"] = prompt
        row["messages"][-1]["content"] = answer
    elif fmt == "instruction":
        row["instruction" if "instruction" in row else "prompt"] = prompt
        row["response" if "response" in row else "output"] = answer
    else:
        row["prompt"], row["completion"] = prompt, answer
    return row


def export(
    path: Path, out: Path, *, sample: int | None = None, seed: int = 0, everything: bool = False
) -> dict[str, Any]:
    """Write the review sheet; by default only unreviewed synthetic rows (all rows with `everything`)."""
    fmt, rows = _read(path)
    candidates = [r for r in rows if everything or is_unreviewed_synthetic(r)]
    if sample is not None and sample < len(candidates):
        picked = set(random.Random(seed).sample(range(len(candidates)), sample))
        candidates = [r for i, r in enumerate(candidates) if i in picked]
    sheet = []
    for row in candidates:
        prompt, answer = _text(row, fmt)
        sheet.append(
            {
                "id": row_id(row),
                "prompt": prompt,
                "answer": answer,
                "decision": "",
                "edited_prompt": "",
                "edited_answer": "",
                "note": "",
            }
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    if out.suffix.lower() == ".csv":
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, quoting=csv.QUOTE_ALL)
            writer.writeheader()
            writer.writerows(sheet)
    elif out.suffix.lower() == ".jsonl":
        tmp.write_text("".join(json.dumps(s, ensure_ascii=False) + "\n" for s in sheet), encoding="utf-8")
    else:
        raise InvalidInput(f"cannot write a review sheet as `{out.suffix or out.name}`", hint="name it .csv or .jsonl")
    tmp.replace(out)
    return {
        "file": str(path),
        "sheet": str(out),
        "rows": len(rows),
        "exported": len(sheet),
        "unreviewed_synthetic": sum(is_unreviewed_synthetic(r) for r in rows),
    }


def read_sheet(path: Path) -> dict[str, dict[str, str]]:
    """{id: filled sheet row} of the rows with a decision; every problem found is raised at once, with its line."""
    if not path.is_file():
        raise InvalidInput(f"review sheet `{path}` does not exist", hint="check the path")
    entries: list[tuple[int, dict[str, Any]]] = []
    if path.suffix.lower() == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            missing = sorted({"id", "decision"} - set(reader.fieldnames or []))
            if missing:
                raise InvalidInput(
                    f"review sheet `{path}` has no column(s) {', '.join(missing)}",
                    hint="fill the sheet `tuneloop data review export` wrote",
                )
            entries = [(reader.line_num, dict(r)) for r in reader]
    else:
        entries = [(n, r if isinstance(r, dict) else {"_error": r}) for n, r in read_rows(path)]
    decisions: dict[str, dict[str, str]] = {}
    problems = []
    for line, entry in entries:
        if "_error" in entry:
            problems.append(f"line {line}: {entry['_error']}")
            continue
        decision = str(entry.get("decision") or "").strip().lower()
        if not decision:
            continue
        rid = str(entry.get("id") or "").strip()
        if decision not in DECISIONS:
            problems.append(f"line {line}: decision `{decision}` is not one of accept, reject, edit (or blank)")
        elif not rid:
            problems.append(f"line {line}: no id")
        elif decision == "edit" and not (
            str(entry.get("edited_prompt") or "").strip() or str(entry.get("edited_answer") or "").strip()
        ):
            problems.append(f"line {line}: decision `edit` needs `edited_prompt` or `edited_answer`")
        elif rid in decisions and decisions[rid]["decision"] != decision:
            problems.append(f"line {line}: id {rid} has two different decisions")
        else:
            decisions[rid] = {k: str(entry.get(k) or "") for k in COLUMNS} | {"decision": decision}
    if problems:
        raise InvalidInput(
            f"{len(problems)} problem(s) in review sheet `{path}`:\n  " + "\n  ".join(problems[:20]),
            hint="fix these lines and import again; nothing was changed",
        )
    return decisions


def apply(
    path: Path, sheet: Path, out: Path, *, unreviewed: str = "hold", reviewer: str | None = None
) -> dict[str, Any]:
    """Apply a filled sheet to `path`, writing `out` (and `out`.held.jsonl under policy `hold`)."""
    if unreviewed not in POLICIES:
        raise InvalidInput(f"unknown policy `{unreviewed}` for unreviewed synthetic rows", hint="use hold or keep")
    fmt, rows = _read(path)
    decisions = read_sheet(sheet)
    ids = {row_id(r) for r in rows}
    strangers = sorted(set(decisions) - ids)
    if strangers:
        raise InvalidInput(
            f"{len(strangers)} id(s) in `{sheet}` are not rows of `{path}`: {', '.join(strangers[:5])}",
            hint="import the sheet into the file it was exported from; nothing was changed",
        )
    at = datetime.now(UTC).isoformat(timespec="seconds")
    kept, held = [], []
    counts: Counter[str] = Counter()
    for row in rows:
        decision = decisions.get(row_id(row))
        if decision is not None:
            verdict = DECISIONS[decision["decision"]]
            counts[verdict] += 1
            if verdict == "rejected":
                continue
            review: dict[str, Any] = {
                "decision": verdict,
                "at": at,
                **({"reviewer": reviewer} if reviewer else {}),
                **({"note": decision["note"]} if decision["note"].strip() else {}),
            }
            if verdict == "edited":
                prompt, answer = _text(row, fmt)
                review["original"] = {"prompt": prompt, "answer": answer}
                row = _edited(
                    row, fmt, decision["edited_prompt"].strip() or prompt, decision["edited_answer"].strip() or answer
                )
                problem = data_io.row_problem(row, fmt)
                if problem:
                    raise InvalidInput(
                        f"the edit of {row_id(row)} leaves a bad row: {problem}",
                        hint="fix the sheet; nothing was changed",
                    )
            row = {**row, "review": review}
        elif is_unreviewed_synthetic(row) and unreviewed == "hold":
            counts["held_back"] += 1
            held.append(row)
            continue
        kept.append(row)
    held_path = out.with_name(out.stem + ".held.jsonl")
    _write_all({out: kept, **({held_path: held} if held else {})})
    if not held and held_path.exists() and held_path != path:
        held_path.unlink()  # a stale file from an earlier import would hold rows that are now reviewed
    return {
        "file": str(path),
        "sheet": str(sheet),
        "out": str(out),
        "held": str(held_path) if held else None,
        "rows_in": len(rows),
        "rows_out": len(kept),
        "policy": unreviewed,
        "accepted": counts["accepted"],
        "edited": counts["edited"],
        "rejected": counts["rejected"],
        "held_back": counts["held_back"],
        "unreviewed_kept": sum(is_unreviewed_synthetic(r) for r in kept),
    }


def _write_all(files: dict[Path, list[dict[str, Any]]]) -> None:
    """Every file written to a temporary name first, then all renamed: a failure leaves the old files whole."""
    temps = {}
    for path, rows in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        temps[tmp] = path
    for tmp, path in temps.items():
        tmp.replace(path)
