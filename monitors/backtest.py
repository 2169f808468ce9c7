"""`tuneloop monitor backtest`: run a monitor's checks over every window of a recorded file.

Files are JSONL or CSV rows of the ingest API's one record schema (`monitors.ingestion.records`: `prompt`,
`output`, and optionally `prediction`, `timestamp` — needed by time windows — and feedback, flat or
nested; `model` is optional here), or training rows (chat, instruction). Users tune thresholds on
history with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tuneloop.errors import InvalidInput
from tuneloop.monitors.drift.checks import Record, WindowResult
from tuneloop.monitors.drift.judge import build_reference, check_window
from tuneloop.monitors.monitor_spec import MonitorSpec
from tuneloop.monitors.windowing import split


def read_records(path: Path, *, need_time: bool = False) -> list[Record]:
    """A file's rows as records: production records in the ingest API's one schema (`model` optional here),
    or training rows (chat, instruction, completion: prompt = the user turns, output = the answer)."""
    from tuneloop.monitors.ingestion.records import (
        HistoryRecord,
        from_csv_row,
        is_training_row,
        parse_records,
        record_from_training_row,
    )
    from tuneloop.rowfiles import read_rows

    rows = read_rows(path)
    if not rows:
        raise InvalidInput(f"`{path}` holds no records", hint="one JSON object per line, or a CSV with a header")
    out: list[Record | None] = []
    produced, where, problems = [], [], []
    for line, row in rows:
        if not isinstance(row, dict):
            problems.append(f"{path}:{line}: {row if isinstance(row, str) else 'a record must be an object'}")
        elif is_training_row(row):
            out.append(record_from_training_row(row))
            if out[-1] is None:
                problems.append(f"{path}:{line}: a training row without a user turn and an answer")
        else:
            out.append(None)  # filled below, in order
            produced.append(from_csv_row(row) if path.suffix.lower() == ".csv" else row)
            where.append(f"{path}:{line}")
    if problems:
        raise InvalidInput(f"{len(problems)} bad row(s):\n  " + "\n  ".join(problems[:20]), hint=ROW_HINT)
    parsed = iter(parse_records(produced, NO_LIMIT, where, schema=HistoryRecord))
    records = [r if r is not None else _as_check_record(next(parsed)) for r in out]
    if need_time:
        places = iter(where)
        missing = []
        for record, from_training in zip(records, out, strict=True):
            place = f"{path} (a training row)" if from_training is not None else next(places)
            if record.ts is None:
                missing.append(f"{place}: `timestamp` is missing")
        if missing:
            raise InvalidInput(
                f"{len(missing)} record(s) without a timestamp; time windows need one per record:\n  "
                + "\n  ".join(missing[:20]),
                hint="add `timestamp` (ISO 8601), or use a count window",
            )
    return records


ROW_HINT = (
    "every row is a record (`prompt`, `output`, optional `prediction`, `timestamp`, feedback) or a training row "
    "(`messages`, or `instruction`/`response`); see examples/data/support_records.jsonl"
)
NO_LIMIT = 10**9  # the ingest API's text limit protects a server; a local replay has none


def _as_check_record(r: Any) -> Record:
    ts = r.timestamp if r.timestamp is None or r.timestamp.tzinfo else r.timestamp.replace(tzinfo=UTC)
    fb = r.feedback
    return Record(
        r.prompt,
        r.output,
        r.prediction if r.prediction is not None else r.output,
        fb.label if fb else None,
        fb.rating if fb else None,
        fb.reference if fb else None,
        ts,
    )


@dataclass
class Backtest:
    monitor: str
    reference_size: int
    windows: list[tuple[int, int, WindowResult]]  # (first row, last row, result)
    complete: list[bool]  # per window: all its records are in the file (count), or it closed before now (time)

    def as_dict(self) -> dict[str, Any]:
        judged = [w for _, _, w in self.windows if w.status != "not enough data"]
        return {
            "monitor": self.monitor,
            "reference_records": self.reference_size,
            "windows": [
                {"index": i, "first": a, "last": b, "complete": done, **w.as_dict()}
                for i, ((a, b, w), done) in enumerate(zip(self.windows, self.complete, strict=True))
            ],
            "summary": {
                "windows": len(self.windows),
                "judged": len(judged),
                "drifted": sum(w.status == "drift" for w in judged),
                "drift_share": sum(w.status == "drift" for w in judged) / len(judged) if judged else None,
            },
        }


def backtest(
    spec: MonitorSpec, reference: list[Record], current: list[Record], *, embedder: Any = None, progress: bool = False
) -> Backtest:
    if len(reference) < 100:
        raise InvalidInput(
            f"the reference holds {len(reference)} records; at least 100 are needed",
            hint="use the training/eval data or a longer production window",
        )
    ref = build_reference(reference, embedder=embedder if "embedding" in spec.checks else None)
    from tqdm import tqdm

    windows, complete = [], []
    for window in tqdm(
        split(current, spec.window, now=datetime.now(UTC)), desc="windows", unit="window", disable=not progress
    ):
        result = check_window(
            ref, window.records, alpha=spec.alpha, min_size=spec.min_size, checks=spec.checks, embedder=embedder
        )
        if window.start is not None:
            result.start, result.end = window.start.isoformat(), window.end.isoformat() if window.end else None
        windows.append((min(window.rows, default=0), max(window.rows, default=0), result))
        complete.append(window.complete)
    return Backtest(monitor=spec.name, reference_size=len(reference), windows=windows, complete=complete)
