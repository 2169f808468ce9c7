"""Human A/B review: a blinded sheet out, ratings in, win rate with a Wilson interval, preference pairs.

`export` pairs the outputs of two eval runs on one task, puts A and B on the left or right at random
(seeded), and writes the sheet (CSV and JSONL) for raters and the key (which side is which) to a
separate file that raters never see; the key is also stored in the MLflow run of the review.
`import_ratings` reads the sheet back with a `rating` per row — `left`, `right` or `tie` (also
L / R / T, 1 / 2 / 0) — unblinds it with the key, and logs B's win rate over A (a tie counts half).
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneloop.errors import InvalidInput, UsageError
from tuneloop.monitors.metrics.stats import wilson_interval
from tuneloop.names import EvalTag, Experiment, ModelRef, RunTag
from tuneloop.pipelines.evaluation.compare import find_eval_run
from tuneloop.pipelines.evaluation.runner import read_table
from tuneloop.registry.client import RegistryClient

SHEET_FIELDS = ("id", "prompt", "left", "right", "rating", "comment")
RATINGS = {
    "left": "left",
    "l": "left",
    "1": "left",
    "right": "right",
    "r": "right",
    "2": "right",
    "tie": "tie",
    "t": "tie",
    "0": "tie",
    "=": "tie",
}


@dataclass
class ExportResult:
    review_id: str  # the MLflow run holding the key
    sheet_csv: Path
    sheet_jsonl: Path
    key: Path
    rows: int

    def as_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in self.__dict__.items()}


def export_sheet(
    rc: RegistryClient, ref_a: str, ref_b: str, task: str, out: Path, *, seed: int = 0, suite: str | None = None
) -> ExportResult:
    import mlflow

    from tuneloop.registry.tracking import experiment_id

    run_a, run_b = find_eval_run(rc, ref_a, suite), find_eval_run(rc, ref_b, suite)
    table_a, table_b = read_table(rc, run_a.info.run_id, task), read_table(rc, run_b.info.run_id, task)
    if "prediction" not in table_a or "prediction" not in table_b:
        raise InvalidInput(
            f"task `{task}` has no generated outputs in both runs", hint="pick a task that generates text"
        )
    if list(table_a["prompt"]) != list(table_b["prompt"]):
        raise InvalidInput(
            f"the two runs evaluated different prompts for `{task}`", hint="compare runs of the same suite"
        )
    rng = random.Random(seed)
    sheet, key = [], {}
    for i, (out_a, out_b) in enumerate(zip(table_a["prediction"], table_b["prediction"], strict=True)):
        row_id = f"{task}-{i:05d}"
        a_left = rng.random() < 0.5
        key[row_id] = {"left": "a" if a_left else "b", "index": i}
        sheet.append(
            {
                "id": row_id,
                "prompt": _user_prompt(table_a, i),
                "left": out_a if a_left else out_b,
                "right": out_b if a_left else out_a,
                "rating": "",
                "comment": "",
            }
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    model_a, model_b = run_a.data.tags[EvalTag.MODEL], run_b.data.tags[EvalTag.MODEL]
    with mlflow.start_run(
        experiment_id=experiment_id(rc.mlflow, rc.settings, Experiment.HUMAN_EVAL),
        run_name=f"A/B {model_a} vs {model_b} ({task})",
    ) as run:
        document = {
            "review_id": run.info.run_id,
            "task": task,
            "a": {"model": model_a, "run_id": run_a.info.run_id},
            "b": {"model": model_b, "run_id": run_b.info.run_id},
            "rows": key,
        }
        mlflow.set_tags({RunTag.REVIEW_A: model_a, RunTag.REVIEW_B: model_b, RunTag.REVIEW_TASK: task})
        mlflow.log_dict(document, "key.json")
    csv_path, jsonl_path, key_path = (out.with_suffix(".csv"), out.with_suffix(".jsonl"), out.with_suffix(".key.json"))
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=SHEET_FIELDS)
        writer.writeheader()
        writer.writerows(sheet)
    jsonl_path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in sheet), encoding="utf-8")
    key_path.write_text(json.dumps(document, indent=2), encoding="utf-8")
    return ExportResult(
        review_id=run.info.run_id, sheet_csv=csv_path, sheet_jsonl=jsonl_path, key=key_path, rows=len(sheet)
    )


@dataclass
class ReviewResult:
    review_id: str
    model_a: str
    model_b: str
    wins: int  # B preferred
    losses: int  # A preferred
    ties: int
    win_rate: float
    low: float
    high: float
    pairs_written: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def read_ratings(path: Path) -> list[tuple[int, str, str]]:
    """(line, id, rating) per rated row; every bad row is reported with its line."""
    from tuneloop.rowfiles import read_rows

    problems, out = [], []
    for line, row in read_rows(path):
        if isinstance(row, str):
            problems.append(f"{path}:{line}: {row}")
            continue
        row_id, raw = str(row.get("id") or "").strip(), str(row.get("rating") or "").strip().lower()
        if not row_id:
            problems.append(f"{path}:{line}: missing `id`")
        elif not raw:
            continue  # not rated yet
        elif raw not in RATINGS:
            problems.append(f"{path}:{line}: rating `{raw}` is not left, right or tie")
        else:
            out.append((line, row_id, RATINGS[raw]))
    if problems:
        raise InvalidInput("bad ratings:\n  " + "\n  ".join(problems[:20]), hint="rate each row left, right or tie")
    if not out:
        raise InvalidInput(f"`{path}` holds no ratings", hint="fill the `rating` column with left, right or tie")
    return out


def import_ratings(
    rc: RegistryClient,
    ratings_path: Path,
    *,
    review_id: str | None = None,
    pairs_out: Path | None = None,
    record_on_version: bool = True,
) -> ReviewResult:
    """Unblind and log the ratings; B's win rate is also recorded on B's version for the gates."""
    import mlflow

    ratings = read_ratings(ratings_path)
    review_id = review_id or _review_of(ratings_path)
    key = json.loads(Path(rc.mlflow.download_artifacts(review_id, "key.json")).read_text())
    wins = losses = ties = 0
    preferred: list[tuple[int, str]] = []  # (example index, "a"|"b")
    for line, row_id, rating in ratings:
        entry = key["rows"].get(row_id)
        if entry is None:
            raise InvalidInput(
                f"{ratings_path}:{line}: id `{row_id}` is not in review {review_id}", hint="rate the exported sheet"
            )
        if rating == "tie":
            ties += 1
            continue
        side = entry["left"] if rating == "left" else ("b" if entry["left"] == "a" else "a")
        wins, losses = (wins + 1, losses) if side == "b" else (wins, losses + 1)
        preferred.append((entry["index"], side))
    n = wins + losses + ties
    interval = wilson_interval(wins + 0.5 * ties, n)
    result = ReviewResult(
        review_id=review_id,
        model_a=key["a"]["model"],
        model_b=key["b"]["model"],
        wins=wins,
        losses=losses,
        ties=ties,
        win_rate=interval.value,
        low=interval.low,
        high=interval.high,
    )
    if pairs_out is not None:
        result.pairs_written = _write_pairs(rc, key, preferred, pairs_out)
    with mlflow.start_run(run_id=review_id):
        mlflow.log_metrics(
            {
                "win_rate": result.win_rate,
                "win_rate_low": result.low,
                "win_rate_high": result.high,
                "wins": wins,
                "losses": losses,
                "ties": ties,
                "ratings": n,
            }
        )
        mlflow.log_artifact(str(ratings_path), artifact_path="ratings")
    if record_on_version:
        from tuneloop.registry.gates import record_metrics

        model_b = ModelRef.parse(result.model_b)  # a review always compares numbered versions
        record_metrics(rc, model_b.name, str(model_b.version), {"win_rate": result.win_rate})
    return result


def _review_of(path: Path) -> str:
    """The review a ratings file belongs to, from the key file exported next to it."""
    stem = path.name.removesuffix(path.suffix)  # sheet.csv / sheet.jsonl -> sheet (dots inside the name kept)
    key_file = path.with_name(stem + ".key.json")
    if key_file.is_file():
        return str(json.loads(key_file.read_text())["review_id"])
    raise UsageError(f"cannot find the key for `{path}` (looked for `{key_file}`)", hint="pass --review REVIEW_ID")


def _write_pairs(rc: RegistryClient, key: dict[str, Any], preferred: list[tuple[int, str]], out: Path) -> int:
    """Preference rows (prompt, chosen, rejected) a `dpo` recipe accepts; ties and equal outputs are left out."""
    table_a = read_table(rc, key["a"]["run_id"], key["task"])
    table_b = read_table(rc, key["b"]["run_id"], key["task"])
    rows = []
    for index, side in preferred:
        chosen_t, rejected_t = (table_b, table_a) if side == "b" else (table_a, table_b)
        chosen, rejected = str(chosen_t["prediction"][index]), str(rejected_t["prediction"][index])
        if chosen.strip() and rejected.strip() and chosen.strip() != rejected.strip():
            rows.append({"prompt": _user_prompt(table_a, index), "chosen": chosen, "rejected": rejected})
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return len(rows)


def _user_prompt(table: Any, index: int) -> str:
    return str(table["user_prompt"][index]) if "user_prompt" in table else str(table["prompt"][index])
