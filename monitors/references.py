"""Where a monitor's reference records come from: a file, the monitored version's stored training or
eval data, or a pinned window of its own production records.

`monitor add` materialises the reference once and pins it: the records are written as JSONL and stored
as an artifact of the monitor's MLflow run, keyed by their sha256. Later edits of the source (a file
rewritten, a champion moved, records deleted) do not change what the monitor compares with until
`monitor add --replace` pins a new reference.

Training data carries the gold answers, not the model's own outputs and predictions, so it gives no
quality baseline: its records have prompt and output only.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from tuneloop.monitors.backtest import read_records
from tuneloop.monitors.checks import Record
from tuneloop.monitors.monitor_spec import MonitorSpec
from tuneloop.monitors.records import record_from_training_row

from tuneloop.digest import file_sha256
from tuneloop.errors import InvalidInput
from tuneloop.store.records import ModelSlice, StoredRecord


def materialise(rc: Any, spec: MonitorSpec) -> tuple[list[Record], str]:
    """(reference records, a description of where they came from)."""
    assert spec.reference is not None and spec.model is not None
    ref = spec.reference
    if ref.file is not None:
        if not ref.file.is_file():
            raise InvalidInput(f"reference file `{ref.file}` does not exist", hint="fix `reference.file`")
        return read_records(ref.file), f"file {ref.file} (sha256:{file_sha256(ref.file)[:16]})"
    name, version, alias = rc.models.resolve(spec.model)
    if ref.training_data is not None:
        return _training_data(rc, name, version, ref.training_data)
    assert ref.window is not None
    stored = rc.stores.records.of(ModelSlice(name, version, alias), start=ref.window.start, end=ref.window.end)
    records = [as_record(row) for row in stored]
    return records, f"production records of {spec.model} from {ref.window.start.isoformat()} to {ref.window.end.isoformat()}"


def as_record(row: StoredRecord) -> Record:
    return Record(row.prompt, row.output, row.prediction, row.label, row.rating, row.reference, row.ts)


RUN_CONTEXT = {"train": "training", "eval": "evaluation"}  # how `tuneloop train` names its data in the run


def _training_data(rc: Any, name: str, version: int, context: str) -> tuple[list[Record], str]:
    path, digest = stored_data_file(rc, name, version, context)
    from tuneloop.rowfiles import read_rows

    records = [record_from_training_row(row) for _, row in read_rows(path)]
    return [r for r in records if r is not None], f"`{context}` data of {name}:{version} ({digest[:23]})"


def stored_data_file(rc: Any, name: str, version: int, context: str) -> tuple[Path, str]:
    """(local copy, sha256) of the `train` or `eval` file a version was trained with, verified by digest."""
    mv = rc.mlflow.get_model_version(name, str(version))
    stored = RUN_CONTEXT[context]
    digest = rc.mlflow.get_run(mv.run_id).data.tags.get(f"tuneloop.data.{stored}.sha256") if mv.run_id else None
    if not digest:
        raise InvalidInput(f"{name}:{version} has no stored `{context}` data (it was not trained by `tuneloop train`, "
                           f"or its recipe had no {context} split)", hint="use `reference: {file: ...}` instead")
    folder = Path(rc.mlflow.download_artifacts(mv.run_id, f"data/{stored}/{digest.removeprefix('sha256:')[:16]}"))
    files = [p for p in folder.iterdir() if p.is_file()]
    if len(files) != 1 or "sha256:" + file_sha256(files[0]) != digest:
        raise InvalidInput(f"the stored `{context}` data of {name}:{version} does not match its digest {digest}",
                           hint="the artifact store was changed; pin a reference file instead")
    return files[0], digest


def write_jsonl(records: list[Record], folder: Path) -> Path:
    path = Path(tempfile.mkdtemp(dir=folder)) / "records.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            row = {"prompt": r.prompt, "output": r.output, "prediction": r.prediction, "label": r.label,
                   "rating": r.rating, "reference_answer": r.reference_answer, "timestamp": r.ts.isoformat() if r.ts else None}
            f.write(json.dumps({k: v for k, v in row.items() if v is not None}, ensure_ascii=False) + "\n")
    return path
