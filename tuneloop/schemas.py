"""Record and result schemas shared across packages and printed by `--json`."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

GateStatus = Literal["passed", "failed", "skipped"]
MoveKind = Literal["promote", "rollback", "unaudited", "traffic"]  # traffic: a policy change, no alias moved


class GateCheck(BaseModel):
    """One gate evaluated against one candidate version."""

    gate: str = Field(description="The gate as written, e.g. `rougeL >= champion - 0.01`")
    status: GateStatus
    value: float | None = Field(None, description="The candidate's metric value")
    threshold: float | None = Field(None, description="The value it was compared with")
    compared_with: str | None = Field(
        None, description="What the threshold came from: `absolute`, `champion@v3`, `base@v1`"
    )
    reason: str = ""


class AliasMove(BaseModel):
    """One entry of the append-only audit trail of alias moves."""

    id: int
    at: datetime
    actor: str
    model: str
    alias: str
    kind: MoveKind
    from_version: int | None
    to_version: int | None
    forced: bool = False
    reason: str = ""
    gates: list[GateCheck] = Field(default_factory=list)


class ModelVersionInfo(BaseModel):
    name: str
    version: int
    kind: str
    aliases: list[str] = Field(default_factory=list)
    digest: str | None = None
    source: str | None = None
    architecture: str | None = None
    parameters: int | None = None
    license: str | None = None
    artifact_uri: str | None = None
    run_id: str | None = None
    lineage: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    existing: bool = Field(False, description="True when an import found this exact content already registered")
