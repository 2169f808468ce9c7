"""Production records: what a deployed model was asked and answered, with optional feedback.

One schema serves the ingest API, `tuneloop monitor ingest FILE` and `tuneloop monitor backtest`: the
same fields are accepted and refused by all three, and feedback may be nested (`feedback: {rating,
label, reference}`) or flat (`rating`, `label`, `reference` or `reference_answer` beside `prompt`; in
CSV `feedback_rating`, `feedback_label`, `feedback_reference`). A batch is stored in one
transaction: every record of it, or none. Record ids make retries harmless (an id already stored is
skipped), and an idempotency key makes a retried request return the first answer.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictStr, ValidationError, field_validator

from tuneloop.errors import InvalidInput, NotFound
from tuneloop.registry.resolver import ModelResolver
from tuneloop.store import Stores
from tuneloop.store.records import BatchResult, FeedbackValues, NewRecord

ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"


def _number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number")  # noqa: TRY004 - pydantic reports ValueError as a field error
    return value


Number = Annotated[float, BeforeValidator(_number)]  # JSON numbers only: no "12", no true
MAX_METADATA_BYTES = 16_384


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rating: Number | None = Field(None, description="A user's rating, e.g. 1-5 or 0/1")
    label: StrictStr | None = Field(None, description="The true label (classification)")
    reference: StrictStr | None = Field(None, description="A reference answer")


class RecordIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: StrictStr | None = Field(None, pattern=ID_PATTERN, description="Your id for the record; a retry reuses it")
    model: StrictStr = Field(description="NAME@ALIAS or NAME:VERSION of the model that answered")
    version: int | None = Field(
        None,
        ge=1,
        description="The version that answered, when your server knows it: it takes precedence over the alias",
    )
    prompt: StrictStr
    output: StrictStr
    prediction: StrictStr | None = Field(None, description="The predicted label (classification); default: the output")
    timestamp: datetime | None = Field(None, description="When the model answered (ISO 8601; default: now)")
    latency_ms: Number | None = Field(None, ge=0)
    metadata: dict[str, Any] = Field(default_factory=dict)
    feedback: Feedback | None = None

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(value, default=str)) > MAX_METADATA_BYTES:
            raise ValueError(f"metadata over {MAX_METADATA_BYTES} bytes as JSON")
        return value


class HistoryRecord(RecordIn):
    """A recorded row replayed by `monitor backtest`: the same fields, but `model` is optional (no registry)."""

    model: StrictStr | None = Field(None, description="NAME@ALIAS or NAME:VERSION (not needed to replay history)")


FLAT_FEEDBACK = {"rating": "rating", "label": "label", "reference": "reference", "reference_answer": "reference"}


def fold_feedback(item: Any) -> tuple[Any, list[str]]:
    """Flat feedback fields moved into `feedback` (nested `reference_answer` read as `reference`), and the
    problems found: a field given both ways with different values."""
    if not isinstance(item, dict):
        return item, []
    out = dict(item)
    nested = out.get("feedback")
    if nested is not None and not isinstance(nested, dict):
        return out, []  # validation names it
    feedback: dict[str, Any] = {}
    problems = []
    sources = [("feedback." + k, k, v) for k, v in (nested or {}).items()]
    for key in list(out):
        name = key.removeprefix("feedback_")
        if (key.startswith("feedback_") or key in FLAT_FEEDBACK) and name in FLAT_FEEDBACK:
            sources.append((key, name, out.pop(key)))
    for where, name, value in sources:
        target = FLAT_FEEDBACK.get(name, name)  # an unknown nested key stays for validation to refuse
        if value in (None, ""):
            continue
        if target in feedback and feedback[target][1] != value:
            problems.append(f"`{where}` and `{feedback[target][0]}` disagree; give the feedback once")
            continue
        feedback[target] = (where, value)
    out.pop("feedback", None)
    if feedback:
        out["feedback"] = {name: value for name, (_, value) in feedback.items()}
    return out, problems


def check_lengths(record: RecordIn, max_chars: int) -> list[str]:
    fields = {"prompt": record.prompt, "output": record.output, "prediction": record.prediction}
    if record.feedback:
        fields |= {"feedback.label": record.feedback.label, "feedback.reference": record.feedback.reference}
    return [
        f"`{name}` is {len(text):,} characters, over the limit of {max_chars:,}"
        for name, text in fields.items()
        if text is not None and len(text) > max_chars
    ]


def parse_records(
    items: Sequence[Any], max_chars: int, where: Sequence[str] | None = None, *, schema: type[RecordIn] = RecordIn
) -> list[RecordIn]:
    """Validate every item; one InvalidInput lists each problem with its place (record index or file:line)."""
    out, problems = [], []
    for i, item in enumerate(items):
        place = where[i] if where else f"records[{i}]"
        item, conflicts = fold_feedback(item)
        if conflicts:
            problems += [f"{place}: {c}" for c in conflicts]
            continue
        try:
            record = schema.model_validate(item)
        except ValidationError as exc:
            for err in exc.errors():
                field = ".".join(str(p) for p in err["loc"]) or "(record)"
                message = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
                problems.append(f"{place}: `{field}`: {message}")
            continue
        problems += [f"{place}: {p}" for p in check_lengths(record, max_chars)]
        out.append(record)
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise InvalidInput("invalid records:\n  " + "\n  ".join(shown), hint="fix these fields; nothing was stored")
    return out


def store(
    stores: Stores, batch: Sequence[RecordIn], resolver: ModelResolver, *, idempotency_key: str | None = None
) -> BatchResult:
    """Resolve models, then write every record (and its feedback) in one transaction."""
    resolved = [_attributed(resolver, r) for r in batch]
    now = datetime.now(UTC)
    rows, feedback_of = [], []
    for record, (name, version, alias) in zip(batch, resolved, strict=True):
        record_id = record.id or uuid.uuid4().hex
        ts = record.timestamp or now
        rows.append(
            NewRecord(
                id=record_id,
                model=name,
                version=version,
                alias=alias,
                prompt=record.prompt,
                output=record.output,
                prediction=record.prediction if record.prediction is not None else record.output,
                ts=ts if ts.tzinfo else ts.replace(tzinfo=UTC),
                latency_ms=record.latency_ms,
                meta=json.loads(json.dumps(record.metadata, default=str)),
                received_at=now,
            )
        )
        if record.feedback is not None:
            feedback_of.append((record_id, FeedbackValues(**record.feedback.model_dump())))
    return stores.records.add_batch(rows, feedback_of, now, idempotency_key=idempotency_key)


def _attributed(resolver: ModelResolver, record: RecordIn) -> tuple[str, int, str | None]:
    """(name, version, alias) of a record: the version it names, else the alias's holder now."""
    name, version, alias = resolver.resolve(record.model)
    if record.version is not None and record.version != version:
        name, version, _ = resolver.resolve(f"{name}:{record.version}")  # NotFound when there is no such version
    return name, version, alias


def add_feedback(stores: Stores, record_id: str, feedback: Feedback) -> None:
    if not stores.records.add_feedback(record_id, FeedbackValues(**feedback.model_dump()), datetime.now(UTC)):
        raise NotFound(f"no record `{record_id}`", hint="send feedback for a record id the API acknowledged")


def records_from_file(path: Any, max_chars: int, *, schema: type[RecordIn] = RecordIn) -> list[RecordIn]:
    """Records from JSONL (objects as the API takes them) or CSV (flat columns; `feedback_label`,
    `feedback_rating`, `feedback_reference`, `metadata` as JSON). Every bad row is reported with its line."""
    from pathlib import Path

    from tuneloop.rowfiles import read_rows

    path = Path(path)
    rows = read_rows(path)
    if not rows:
        raise InvalidInput(f"`{path}` holds no records", hint="one JSON object per line, or a CSV with a header")
    items, where, problems = [], [], []
    for line, row in rows:
        if isinstance(row, str) or not isinstance(row, dict):
            problems.append(f"{path}:{line}: {row if isinstance(row, str) else 'a record must be an object'}")
            continue
        items.append(from_csv_row(row) if path.suffix.lower() == ".csv" else row)
        where.append(f"{path}:{line}")
    if problems:
        raise InvalidInput(
            "invalid records:\n  " + "\n  ".join(problems[:20]), hint="fix these rows; nothing was stored"
        )
    return parse_records(items, max_chars, where, schema=schema)


def from_csv_row(row: dict[str, Any]) -> dict[str, Any]:
    def number(value: Any) -> Any:
        try:
            return float(value)
        except (TypeError, ValueError):
            return value  # left for validation to report

    out: dict[str, Any] = {k: v for k, v in row.items() if v not in ("", None) and not k.startswith("feedback_")}
    if "latency_ms" in out:
        out["latency_ms"] = number(out["latency_ms"])
    if "rating" in out:
        out["rating"] = number(out["rating"])
    if "metadata" in out:
        try:
            out["metadata"] = json.loads(out["metadata"])
        except json.JSONDecodeError:
            pass
    feedback = {
        k.removeprefix("feedback_"): v for k, v in row.items() if k.startswith("feedback_") and v not in ("", None)
    }
    if "rating" in feedback:
        feedback["rating"] = number(feedback["rating"])
    if feedback:
        out["feedback"] = feedback
    out.setdefault("output", "")
    return out


# --- training rows read as records (monitor references, backtest files) ---------------------------
TRAINING_ROW_KEYS = ("messages", "instruction", "completion", "chosen")


def is_training_row(row: dict[str, Any]) -> bool:
    return any(key in row for key in TRAINING_ROW_KEYS)


def record_from_training_row(row: Any) -> Any:
    """prompt = the user turns (joined as the server joins a chat's), output = the answer, for every
    training data format; None when the row has neither."""
    from tuneloop.monitors.drift.checks import Record
    from tuneloop.rowfiles import answer_of, prompt_of

    prompt, answer = prompt_of(row), answer_of(row)
    return Record(prompt, answer) if prompt is not None and answer is not None else None
