"""Where a monitor's reference records come from — a file, the monitored version's stored training or
eval data, or a pinned window of its own production records — and how they are pinned and read back.

`monitor add` materialises the reference once and pins it: the records are written as JSONL and stored
as an artifact of the monitor's MLflow run, keyed by their sha256. Later edits of the source (a file
rewritten, a champion moved, records deleted) do not change what the monitor compares with until
`monitor add --replace` pins a new reference.

Training data carries the gold answers, not the model's own outputs and predictions, so it gives no
quality baseline: its records have prompt and output only.
"""

from __future__ import annotations

import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tuneloop.digest import file_sha256
from tuneloop.errors import InvalidInput
from tuneloop.monitors.backtest import read_records
from tuneloop.monitors.drift.checks import Record
from tuneloop.monitors.drift.embedding import Embedder
from tuneloop.monitors.drift.judge import Reference, build_reference
from tuneloop.monitors.ingestion.records import record_from_training_row
from tuneloop.monitors.monitor_spec import MonitorSpec
from tuneloop.names import RunTag
from tuneloop.rowfiles import write_jsonl
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
    return (
        records,
        f"production records of {spec.model} from {ref.window.start.isoformat()} to {ref.window.end.isoformat()}",
    )


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
    digest = rc.mlflow.get_run(mv.run_id).data.tags.get(RunTag.data_sha256(stored)) if mv.run_id else None
    if not digest:
        raise InvalidInput(
            f"{name}:{version} has no stored `{context}` data (it was not trained by `tuneloop train`, "
            f"or its recipe had no {context} split)",
            hint="use `reference: {file: ...}` instead",
        )
    folder = Path(rc.mlflow.download_artifacts(mv.run_id, f"data/{stored}/{digest.removeprefix('sha256:')[:16]}"))
    files = [p for p in folder.iterdir() if p.is_file()]
    if len(files) != 1 or "sha256:" + file_sha256(files[0]) != digest:
        raise InvalidInput(
            f"the stored `{context}` data of {name}:{version} does not match its digest {digest}",
            hint="the artifact store was changed; pin a reference file instead",
        )
    return files[0], digest


def _staged(records: list[Record], folder: Path) -> Path:
    """The records as JSONL in a fresh folder under `folder`, in the one record schema."""
    rows = []
    for r in records:
        row = {
            "prompt": r.prompt,
            "output": r.output,
            "prediction": r.prediction,
            "label": r.label,
            "rating": r.rating,
            "reference_answer": r.reference_answer,
            "timestamp": r.ts.isoformat() if r.ts else None,
        }
        rows.append({k: v for k, v in row.items() if v is not None})
    return write_jsonl(Path(tempfile.mkdtemp(dir=folder)) / "records.jsonl", rows)


MIN_REFERENCE = 100


def pin_records(rc: Any, spec: MonitorSpec, run_id: str, records: list[Record], source: str) -> str:
    """Validate `records` as the reference of monitor `spec`, cache their statistics and store them in the
    monitor's run (`reference/<sha256[:16]>/records.jsonl`); their digest."""
    require_enough(records, source)
    staging = Path(rc.settings.cache_dir).expanduser() / "monitor-references"
    staging.mkdir(parents=True, exist_ok=True)
    pinned = _staged(records, staging)
    try:
        digest = "sha256:" + file_sha256(pinned)
        statistics(rc, spec, digest, pinned)  # validates the records and fills the cache now
        rc.mlflow.log_artifact(run_id, str(pinned), f"reference/{digest.removeprefix('sha256:')[:16]}")
    finally:
        shutil.rmtree(pinned.parent, ignore_errors=True)
    return digest


def require_enough(records: list[Record], source: str) -> None:
    if len(records) < MIN_REFERENCE:
        raise InvalidInput(
            f"the reference ({source}) holds {len(records)} records; at least {MIN_REFERENCE} are needed",
            hint="use a larger file, the eval data or a longer production window",
        )


def pinned_records(rc: Any, spec: MonitorSpec, digest: str, run_id: str | None) -> list[Record]:
    return read_records(pinned_file(rc, spec, digest, run_id))


# Part of the statistics cache's key: raise it whenever what `build_reference` returns, or where its
# classes live, changes (2: the classes moved from `monitors.*` to `tuneloop.monitors.*`; 3: to
# `tuneloop.monitors.drift.judge.*`). A cache written by other code is then never unpickled; it is rebuilt
# from the pinned records.
REFERENCE_CACHE_VERSION = 3


def embedder(rc: Any) -> Embedder:
    return Embedder(Path(rc.settings.cache_dir).expanduser() / "embeddings-minilm.sqlite")


def statistics(rc: Any, spec: MonitorSpec, digest: str, pinned: Path | None, *, run_id: str | None = None) -> Reference:
    """The reference statistics for these records and checks: from the cache, else built from `pinned`
    (or the run's artifact) and cached."""
    wants_embeddings = "embedding" in spec.checks
    key = digest.removeprefix("sha256:") + ("-embedding" if wants_embeddings else "") + f"-v{REFERENCE_CACHE_VERSION}"
    cache = Path(rc.settings.cache_dir).expanduser() / "monitor-references" / f"{key}.pickle"
    if cache.is_file():
        try:
            with open(cache, "rb") as f:
                cached = pickle.load(f)  # our own file, keyed by the content digest and the code version
        except Exception:  # unreadable: a write cut short, a library upgrade  # noqa: BLE001
            cached = None
        if isinstance(cached, Reference):
            return cached
        cache.unlink(missing_ok=True)  # rebuilt below
    if pinned is None:
        pinned = pinned_file(rc, spec, digest, run_id)
    reference = build_reference(read_records(pinned), embedder=embedder(rc) if wants_embeddings else None)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        pickle.dump(reference, f)
    tmp.replace(cache)
    return reference


def pinned_file(rc: Any, spec: MonitorSpec, digest: str, run_id: str | None) -> Path:
    """A local copy of the monitor's pinned reference records, checked against their digest."""
    assert run_id is not None
    pinned = Path(
        rc.mlflow.download_artifacts(run_id, f"reference/{digest.removeprefix('sha256:')[:16]}/records.jsonl")
    )
    if "sha256:" + file_sha256(pinned) != digest:
        raise InvalidInput(
            f"the pinned reference of monitor `{spec.name}` changed in the artifact store",
            hint="pin it again with `tuneloop monitor add --replace`",
        )
    return pinned
