"""`tuneloop monitor backtest`: run a monitor's checks over every window of a recorded file.

Files are JSONL or CSV rows with `prompt` and `output`, and optionally `prediction`, `timestamp`
(ISO 8601; needed by time windows) and feedback: `label`, `rating`, `reference_answer`, either flat
or inside a `feedback` object as the ingest API takes it (`feedback.reference` is the reference answer;
CSV: `feedback_label`, `feedback_rating`, `feedback_reference`). Users tune thresholds on history with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from monitors.checks import Record, WindowResult
from monitors.drift import build_reference, check_window
from monitors.monitor_spec import MonitorSpec
from monitors.windowing import split
from tuneloop.errors import InvalidInput


def read_records(path: Path, *, need_time: bool = False) -> list[Record]:
    from tuneloop.rowfiles import read_rows

    out, problems = [], []
    for line, row in read_rows(path):
        if not isinstance(row, dict):
            problems.append(f"{path}:{line}: {row if isinstance(row, str) else 'a record must be an object'}")
            continue
        try:
            out.append(_record(row, need_time))
        except ValueError as exc:
            problems.append(f"{path}:{line}: {exc}")
    if problems:
        raise InvalidInput(f"{len(problems)} bad row(s):\n  " + "\n  ".join(problems[:20]),
                           hint="every row needs `prompt` and `output` (and `timestamp` for time windows)")
    if not out:
        raise InvalidInput(f"`{path}` holds no records", hint="one JSON object per line, or a CSV with a header")
    return out


def _record(row: dict[str, Any], need_time: bool) -> Record:
    prompt, output = row.get("prompt"), row.get("output")
    if not isinstance(prompt, str) or not isinstance(output, str):
        raise ValueError("`prompt` and `output` must be text")
    feedback = row.get("feedback") if isinstance(row.get("feedback"), dict) else {}
    flat = {k.removeprefix("feedback_"): v for k, v in row.items() if k.startswith("feedback_")}

    def pick(*names: str) -> Any:
        for source in (row, feedback, flat):
            for name in names:
                if source.get(name) not in (None, ""):
                    return source[name]
        return None

    label, answer, rating, prediction = pick("label"), pick("reference_answer", "reference"), pick("rating"), row.get("prediction", output)
    if rating is not None:
        try:
            rating = float(rating)
        except (TypeError, ValueError):
            raise ValueError(f"`rating` must be a number, got {rating!r}") from None
    return Record(prompt, output, str(prediction) if prediction not in (None, "") else None,
                  str(label) if label is not None else None, rating, str(answer) if answer is not None else None,
                  _timestamp(pick("timestamp", "ts"), need_time))


def _timestamp(value: Any, needed: bool) -> datetime | None:
    if value is None:
        if needed:
            raise ValueError("`timestamp` is missing: time windows need one per record")
        return None
    try:
        ts = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"`timestamp` {value!r} is not ISO 8601 (e.g. 2026-11-29T14:00:00Z)") from None
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


@dataclass
class Backtest:
    monitor: str
    reference_size: int
    windows: list[tuple[int, int, WindowResult]]  # (first row, last row, result)

    def as_dict(self) -> dict[str, Any]:
        judged = [w for _, _, w in self.windows if w.status != "not enough data"]
        return {
            "monitor": self.monitor,
            "reference_records": self.reference_size,
            "windows": [{"index": i, "first": a, "last": b, **w.as_dict()} for i, (a, b, w) in enumerate(self.windows)],
            "summary": {"windows": len(self.windows), "judged": len(judged),
                        "drifted": sum(w.status == "drift" for w in judged),
                        "drift_share": sum(w.status == "drift" for w in judged) / len(judged) if judged else None},
        }


def backtest(spec: MonitorSpec, reference: list[Record], current: list[Record], *, embedder: Any = None,
             progress: bool = False) -> Backtest:
    if len(reference) < 100:
        raise InvalidInput(f"the reference holds {len(reference)} records; at least 100 are needed",
                           hint="use the training/eval data or a longer production window")
    ref = build_reference(reference, embedder=embedder if "embedding" in spec.checks else None)
    from tqdm import tqdm

    windows = []
    for window in tqdm(split(current, spec.window), desc="windows", unit="window", disable=not progress):
        result = check_window(ref, window.records, alpha=spec.alpha, min_size=spec.min_size, checks=spec.checks, embedder=embedder)
        if window.start is not None:
            result.start, result.end = window.start.isoformat(), window.end.isoformat() if window.end else None
        windows.append((min(window.rows, default=0), max(window.rows, default=0), result))
    return Backtest(monitor=spec.name, reference_size=len(reference), windows=windows)
