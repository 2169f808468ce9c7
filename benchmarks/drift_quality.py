"""False alarms and power of tuneloop's drift checks beside Evidently's default `DataDriftPreset`, on the
same windows of synthetic support traffic (`tuneloop/demo/traffic.py`).

Evidently gets the same raw columns (prompt and output as text, prediction and label as categories)
plus its own descriptors of both texts (TextLength, WordCount, NonLetterCharacterPercentage;
OOVWordsPercentage needs the NLTK `words` corpus, a download, so it is left out). Its default decision is
dataset drift: at least half of the columns drifted; "any column" is shown too.

    .venv/bin/python benchmarks/drift_quality.py [--windows 20] [--size 500] [--reference 3000]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tuneloop.demo import traffic as drift_data


def _evidently_dataset(frame):
    from evidently import DataDefinition, Dataset
    from evidently.descriptors import NonLetterCharacterPercentage, TextLength, WordCount

    descriptors = []
    for column in ("prompt", "output"):
        descriptors += [
            TextLength(column, alias=f"{column}.length"),
            WordCount(column, alias=f"{column}.word_count"),
            NonLetterCharacterPercentage(column, alias=f"{column}.non_letter"),
        ]
    definition = DataDefinition(text_columns=["prompt", "output"], categorical_columns=["prediction", "label"])
    return Dataset.from_pandas(frame, data_definition=definition, descriptors=descriptors)


def _evidently_verdict(current, reference) -> tuple[bool, bool]:
    from evidently import Report
    from evidently.presets import DataDriftPreset

    snapshot = Report([DataDriftPreset()]).run(current, reference).dict()
    counted = next(m for m in snapshot["metrics"] if m["metric_name"].startswith("DriftedColumnsCount"))
    share = float(counted["value"]["share"])
    return share >= 0.5, share > 0  # (dataset drift, any column)


def main() -> None:
    import pandas as pd

    from tuneloop.monitors.drift.judge import Record, build_reference, check_window

    parser = argparse.ArgumentParser()
    parser.add_argument("--windows", type=int, default=20)
    parser.add_argument("--size", type=int, default=500)
    parser.add_argument("--reference", type=int, default=3000)
    args = parser.parse_args()
    rng = random.Random(12345)
    reference_rows = [drift_data.record(rng) for _ in range(args.reference)]
    reference = build_reference([Record(**r) for r in reference_rows])
    evidently_reference = _evidently_dataset(pd.DataFrame(reference_rows))
    conditions = [(None, 0.0)] + [(kind, share) for kind in drift_data.KINDS for share in (0.1, 0.2)]
    print(f"{args.windows} windows of {args.size} records per condition; reference {args.reference} records")
    print(f"{'condition':28s} {'tuneloop':>9s} {'Evidently (dataset drift)':>26s} {'Evidently (any column)':>23s}")
    seconds = {"tuneloop": 0.0, "evidently": 0.0}
    for c, (kind, share) in enumerate(conditions):
        rows = drift_data.windows(args.windows, args.size, seed=1000 + c, kind=kind, share=share)
        ours = theirs = theirs_any = 0
        for w in range(args.windows):
            window = rows[w * args.size : (w + 1) * args.size]
            start = time.perf_counter()
            ours += check_window(reference, [Record(**r) for r in window]).status == "drift"
            seconds["tuneloop"] += time.perf_counter() - start
            start = time.perf_counter()
            dataset_drift, any_column = _evidently_verdict(
                _evidently_dataset(pd.DataFrame(window)), evidently_reference
            )
            seconds["evidently"] += time.perf_counter() - start
            theirs, theirs_any = theirs + dataset_drift, theirs_any + any_column
        name = "fresh (false alarms)" if kind is None else f"{kind} {share:.0%}"
        n = args.windows
        print(f"{name:28s} {ours / n:9.0%} {theirs / n:26.0%} {theirs_any / n:23.0%}", flush=True)
    print(
        f"\nseconds per window: tuneloop {seconds['tuneloop'] / (len(conditions) * args.windows):.3f}, "
        f"Evidently {seconds['evidently'] / (len(conditions) * args.windows):.3f}"
    )


if __name__ == "__main__":
    main()
