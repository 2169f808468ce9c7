"""The evaluation results attached to a model version, as tags: what gates compare and pages show."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tuneloop.names import Tag

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion


def metrics_of(mv: ModelVersion) -> dict[str, float]:
    """The evaluation results attached to a model version (tags `tuneloop.metric.<name>`)."""
    out = {}
    for key, value in (mv.tags or {}).items():
        if key.startswith(Tag.METRIC_PREFIX):
            try:
                out[key.removeprefix(Tag.METRIC_PREFIX)] = float(value)
            except ValueError:
                continue
    return out
