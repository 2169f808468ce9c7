"""The retraining run a worker drives: its row, read once, kept current as each stage records a result."""

from __future__ import annotations

from typing import Any

from tuneloop.pipelines.loop import retrain
from tuneloop.registry.client import RegistryClient


class Run:
    """The retraining run being driven: its row, read once, kept current as each stage records a result."""

    def __init__(self, rc: RegistryClient, run_id: int) -> None:
        self.rc, self.id = rc, run_id
        self.row = retrain.get(rc, run_id)

    @property
    def details(self) -> dict[str, Any]:
        return self.row["details"]

    def record(self, **values: Any) -> None:
        """Store `values` in the run's row (a state, a result) and keep them here."""
        retrain.update(self.rc, self.id, **values)
        self.row.update(values)
