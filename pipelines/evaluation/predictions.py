"""`tuneloop eval score`: score a file of prediction/reference pairs without any model.

FILE is JSONL or CSV with fields `prediction` and `reference` (strings; for classification metrics,
labels). Every bad row is reported with file and line before anything is scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tuneloop.errors import InvalidInput
from tuneloop.monitors.metrics.scoring import PairScores, ScoreOptions, expand_metrics, score_pairs

FIELDS = ("prediction", "reference")
MAX_REPORTED = 20


@dataclass
class Pairs:
    path: Path
    predictions: list[str]
    references: list[str]


def read_pairs(path: Path) -> Pairs:
    from tuneloop.rowfiles import read_rows

    if not path.is_file():
        raise InvalidInput(f"predictions file `{path}` does not exist", hint="pass a .jsonl or .csv file")
    if path.suffix.lower() not in (".jsonl", ".json", ".csv"):
        raise InvalidInput(f"`{path}` is neither JSONL nor CSV", hint="use a .jsonl or .csv file")
    problems: list[str] = []
    predictions, references = [], []
    for line, row in read_rows(path):
        if isinstance(row, str):
            problems.append(f"{path}:{line}: {row}")
            continue
        if not isinstance(row, dict):
            problems.append(f"{path}:{line}: a row must be an object with `prediction` and `reference`")
            continue
        missing = [f for f in FIELDS if row.get(f) is None]
        wrong = [f for f in FIELDS if row.get(f) is not None and not isinstance(row[f], str)]
        if missing:
            problems.append(f"{path}:{line}: missing {', '.join(f'`{f}`' for f in missing)}")
        elif wrong:
            problems.append(f"{path}:{line}: {', '.join(f'`{f}`' for f in wrong)} must be text")
        else:
            predictions.append(row["prediction"])
            references.append(row["reference"])
    if problems:
        more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
        raise InvalidInput(
            f"{len(problems)} problem(s) in the predictions:\n  " + "\n  ".join(problems[:MAX_REPORTED]) + more,
            hint="every row needs text fields `prediction` and `reference`",
        )
    if not predictions:
        raise InvalidInput(
            f"`{path}` holds no prediction/reference pairs",
            hint="write one JSON object per line, or a CSV with a header",
        )
    return Pairs(path=path, predictions=predictions, references=references)


def score_file(path: Path, metrics: list[str], options: ScoreOptions | None = None) -> PairScores:
    wanted = expand_metrics(metrics)  # an unknown metric fails before the file is read
    pairs = read_pairs(path)
    return score_pairs(pairs.predictions, pairs.references, wanted, options or ScoreOptions())
