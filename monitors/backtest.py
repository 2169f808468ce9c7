"""`tuneloop monitor backtest`: run a monitor's checks over every window of a recorded file.

Files are JSONL or CSV rows with `prompt` and `output`, and optionally `prediction` and `label`
(or `feedback.label`), e.g. an export of production records. Users tune thresholds on history with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitors.drift import Record, WindowResult, build_reference, check_window
from monitors.monitor_spec import MonitorSpec
from tuneloop.errors import InvalidInput


def read_records(path: Path) -> list[Record]:
    from tuneloop.rowfiles import read_rows

    rows = read_rows(path)
    out, problems = [], []
    for line, row in rows:
        if not isinstance(row, dict):
            problems.append(f"{path}:{line}: {row if isinstance(row, str) else 'a record must be an object'}")
            continue
        prompt, output = row.get("prompt"), row.get("output")
        if not isinstance(prompt, str) or not isinstance(output, str):
            problems.append(f"{path}:{line}: `prompt` and `output` must be text")
            continue
        feedback = row.get("feedback") if isinstance(row.get("feedback"), dict) else {}
        label = row.get("label", feedback.get("label"))
        prediction = row.get("prediction", output)
        out.append(Record(prompt, output, str(prediction) if prediction not in (None, "") else None,
                          str(label) if label not in (None, "") else None))
    if problems:
        raise InvalidInput(f"{len(problems)} bad row(s):\n  " + "\n  ".join(problems[:20]), hint="every row needs `prompt` and `output`")
    if not out:
        raise InvalidInput(f"`{path}` holds no records", hint="one JSON object per line, or a CSV with a header")
    return out


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


def backtest(spec: MonitorSpec, reference: list[Record], current: list[Record]) -> Backtest:
    if len(reference) < 100:
        raise InvalidInput(f"the reference holds {len(reference)} records; at least 100 are needed",
                           hint="use the training/eval data or a longer production window")
    ref = build_reference(reference)
    size = spec.window.size
    windows = []
    for start in range(0, len(current), size):
        window = current[start : start + size]
        windows.append((start + 1, start + len(window), check_window(ref, window, alpha=spec.alpha, min_size=spec.min_size)))
    return Backtest(monitor=spec.name, reference_size=len(reference), windows=windows)
