"""Writes support_reference.jsonl and support_records.jsonl: production records of `support-qlora@champion`
as the ingest API takes them (synthetic support-desk traffic from `tuneloop.demo.traffic`).

    .venv/bin/python examples/data/make_support_records.py      (deterministic: the same files every time)

support_reference.jsonl: 300 in-distribution records (a known-good week), the shipped monitor's reference.
support_records.jsonl:   1,500 records — 750 in-distribution, then 750 where a third of the tickets are German
                         and a reviewer answered some of them — one every 10 s, to try `monitor ingest`,
                         `monitor check` and `monitor backtest` on.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tuneloop.demo import traffic

HERE = Path(__file__).resolve().parent
MODEL = "support-qlora@champion"


def production(row: dict, rng: random.Random, at: datetime) -> dict:
    """A traffic row as a production record: the intent model's label arrives as feedback on some records."""
    record = {
        "model": MODEL,
        "prompt": row["prompt"],
        "output": row["output"],
        "prediction": row["prediction"],
        "timestamp": at.isoformat().replace("+00:00", "Z"),
        "latency_ms": round(rng.uniform(180, 900)),
    }
    if row["prompt"].startswith("Wo ist") and rng.random() < 0.4:
        record["feedback"] = {"reference": traffic.reviewed_answer(row, rng)}
    elif rng.random() < 0.3:
        record["feedback"] = {"label": row["label"]}
    elif rng.random() < 0.05:
        record["feedback"] = {"rating": rng.choice([2, 5])}
    return record


def write(path: Path, rows: list[dict], start: datetime, seed: int) -> None:
    rng = random.Random(seed)
    records = [production(row, rng, start + timedelta(seconds=10 * i)) for i, row in enumerate(rows)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def main() -> None:
    start = datetime(2026, 11, 2, 8, 0, tzinfo=UTC)
    write(HERE / "support_reference.jsonl", traffic.windows(1, 300, seed=101), start, seed=1)
    calm = traffic.windows(3, 250, seed=102)
    drifted = traffic.windows(3, 250, seed=103, kind="language", share=1 / 3)
    write(HERE / "support_records.jsonl", calm + drifted, start + timedelta(days=7), seed=2)


if __name__ == "__main__":
    main()
