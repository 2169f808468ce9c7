"""Monitor declarations (YAML), validated like recipes.

    name: support-champion
    model: support-qlora@champion
    window: {kind: count, size: 500}     # tumbling windows of 500 records
    min_size: 200                        # smaller windows report "not enough data"
    alpha: 0.05                          # chance of a false alarm per window (Bonferroni over checks)
    reference: {file: reference.jsonl}   # prompt/output[/prediction/label] rows; relative to this file
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from tuneloop.yaml_models import Strict, load_yaml_model


class WindowSpec(Strict):
    kind: Literal["count"] = Field("count", description="`count`: tumbling windows of `size` records (time windows: to come)")
    size: int = Field(500, ge=10, le=1_000_000)


class ReferenceSpec(Strict):
    file: Path = Field(description="Reference records (JSONL/CSV: prompt, output, optional prediction and label)")


class MonitorSpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    model: str | None = Field(None, description="NAME@ALIAS or NAME:VERSION whose records are watched")
    window: WindowSpec = Field(default_factory=WindowSpec)
    min_size: int = Field(200, ge=10, description="Below this many records a window reports `not enough data`")
    alpha: float = Field(0.05, gt=0.0, lt=0.5, description="False-alarm rate per window, shared by all checks")
    reference: ReferenceSpec | None = Field(None, description="What windows are compared with (needed by `monitor add`)")

    @model_validator(mode="after")
    def _min_size_fits(self) -> MonitorSpec:
        if self.min_size > self.window.size:
            raise ValueError(f"`min_size` ({self.min_size}) is larger than `window.size` ({self.window.size})")
        return self


def load_monitor(path: str | Path) -> MonitorSpec:
    path = Path(path)
    spec = load_yaml_model(path, MonitorSpec, kind="monitor", hint="see examples/monitors/ for a working monitor")
    if spec.reference is not None:
        spec = spec.model_copy(update={"reference": ReferenceSpec(file=(path.resolve().parent / spec.reference.file).resolve())})
    return spec
