"""Monitor declarations (YAML), validated like recipes.

name: support-champion
model: support-qlora@champion
window: {kind: count, size: 500}        # tumbling windows of 500 records
# window: {kind: count, size: 500, step: 100}   sliding: a window every 100 records
# window: {kind: time, duration: 1h, step: 15m} sliding by time (tumbling without `step`); windows
#   align to the epoch in UTC and are judged `grace` (default 1m) after they end
min_size: 200                           # smaller windows report "not enough data"
alpha: 0.05                             # chance of a false alarm per window (Bonferroni over checks)
checks: [descriptors, domain, quality]  # + embedding (all-MiniLM-L6-v2, MMD permutation test)
reference: {file: reference.jsonl}      # prompt/output[/prediction/label/rating/reference_answer] rows
# reference: {training_data: eval}     the model version's own stored training (`train`) or eval data
# reference: {window: {start: 2026-11-01T00:00:00Z, end: 2026-11-08T00:00:00Z}}  pinned production records
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tuneloop.yaml_models import Strict, load_yaml_model

CHECKS = ("descriptors", "domain", "quality", "embedding")
DEFAULT_CHECKS = ["descriptors", "domain", "quality"]
_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"`{text}` is not a duration: write a number and a unit, e.g. 30m, 1h, 7d (units s, m, h, d)")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return timedelta(seconds=seconds)


class WindowSpec(Strict):
    kind: Literal["count", "time"] = Field(
        "count", description="`count`: by number of records; `time`: by record timestamp"
    )
    size: int = Field(500, ge=10, le=1_000_000, description="Records per window (count windows)")
    duration: str | None = Field(None, description="Length of a time window, e.g. 1h, 30m, 7d (time windows)")
    step: int | str | None = Field(
        None,
        description="Sliding windows: records (count) or a duration (time) between "
        "window starts; omitted = tumbling (step = the window's length)",
    )
    grace: str | None = Field(
        None,
        description="Time windows: how long after its end a window waits for late records "
        "before it is judged (default 1m); records arriving later are counted as late",
    )

    @field_validator("duration", "grace")
    @classmethod
    def _duration_parses(cls, value: str | None) -> str | None:
        if value is not None:
            parse_duration(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> WindowSpec:
        if self.kind == "time":
            if self.duration is None:
                raise ValueError("a `time` window needs `duration`, e.g. `duration: 1h`")
            if self.step is not None and parse_duration(str(self.step)) > parse_duration(self.duration):
                raise ValueError(
                    f"`step` ({self.step}) is longer than `duration` ({self.duration}): windows would skip records"
                )
        else:
            if self.duration is not None:
                raise ValueError("`duration` is for `kind: time`; a `count` window has `size`")
            if self.grace is not None:
                raise ValueError("`grace` is for `kind: time`: a count window is complete when its last record arrives")
            if self.step is not None and (not isinstance(self.step, int) or not 1 <= self.step <= self.size):
                raise ValueError(f"`step` must be a number of records between 1 and `size` ({self.size})")
        return self

    @property
    def length(self) -> timedelta:
        assert self.duration is not None
        return parse_duration(self.duration)

    @property
    def grace_length(self) -> timedelta:
        return parse_duration(self.grace) if self.grace is not None else timedelta(minutes=1)

    @property
    def stride(self) -> int | timedelta:
        if self.kind == "time":
            return parse_duration(str(self.step)) if self.step is not None else self.length
        return int(self.step) if self.step is not None else self.size

    @property
    def count_stride(self) -> int:
        """Records between the starts of two count windows."""
        stride = self.stride
        assert isinstance(stride, int), "a time window has no count stride"
        return stride

    @property
    def sliding(self) -> bool:
        return self.stride != (self.length if self.kind == "time" else self.size)


class PinnedWindow(Strict):
    start: datetime = Field(description="First record timestamp included (ISO 8601 with a zone)")
    end: datetime = Field(description="Records strictly before this time")

    @model_validator(mode="after")
    def _ordered(self) -> PinnedWindow:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("give `start` and `end` with a time zone, e.g. 2026-11-01T00:00:00Z")
        if self.end <= self.start:
            raise ValueError("`end` must be after `start`")
        return self


class ReferenceSpec(Strict):
    file: Path | None = Field(
        None,
        description="Reference records (JSONL/CSV: prompt, output, optional prediction, label, "
        "rating, reference_answer)",
    )
    training_data: Literal["train", "eval"] | None = Field(
        None, description="The monitored version's stored training or eval data"
    )
    window: PinnedWindow | None = Field(
        None, description="The monitored model's own production records in a time range"
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> ReferenceSpec:
        given = [k for k in ("file", "training_data", "window") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of `file`, `training_data`, `window` (got {', '.join(given) or 'none'})"
            )
        return self


class MonitorSpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    model: str | None = Field(None, description="NAME@ALIAS or NAME:VERSION whose records are watched")
    window: WindowSpec = Field(default_factory=WindowSpec)
    min_size: int = Field(200, ge=10, description="Below this many records a window reports `not enough data`")
    alpha: float = Field(0.05, gt=0.0, lt=0.5, description="False-alarm rate per window, shared by all checks")
    checks: list[Literal["descriptors", "domain", "quality", "embedding"]] = Field(
        default_factory=lambda: list(DEFAULT_CHECKS),
        min_length=1,
        description="descriptors (text statistics), domain (a classifier telling window from reference), quality "
        "(accuracy, rating, ROUGE when feedback exists), embedding (all-MiniLM-L6-v2 + MMD; slower)",
    )
    reference: ReferenceSpec | None = Field(
        None, description="What windows are compared with (needed by `monitor add`)"
    )

    @field_validator("checks")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("a check is listed twice")
        return value

    @model_validator(mode="after")
    def _min_size_fits(self) -> MonitorSpec:
        if self.window.kind == "count" and self.min_size > self.window.size:
            raise ValueError(f"`min_size` ({self.min_size}) is larger than `window.size` ({self.window.size})")
        return self


def load_monitor(path: str | Path) -> MonitorSpec:
    path = Path(path)
    spec = load_yaml_model(path, MonitorSpec, kind="monitor", hint="see examples/monitors/ for a working monitor")
    if spec.reference is not None and spec.reference.file is not None:
        spec = spec.model_copy(
            update={"reference": ReferenceSpec(file=(path.resolve().parent / spec.reference.file).resolve())}
        )
    return spec
