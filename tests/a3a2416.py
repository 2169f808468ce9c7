"""What commit a3a2416 stored, for tests that check today's code still reads it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).parent / "fixtures" / "a3a2416"
STORED_RECIPE = next((FIXTURES / "sqlite" / "artifacts").rglob("recipe.json"))


def as_stored_by_a3a2416(recipe: dict[str, Any]) -> dict[str, Any]:
    """`recipe` as a3a2416 wrote it: one flat Recipe carrying every method's section, at its default
    where the method does not read it."""
    old = json.loads(STORED_RECIPE.read_text())
    return {key: recipe.get(key, value) for key, value in old.items()} | recipe


def rewrite_recipe_as_a3a2416(rc: Any, run_id: str) -> dict[str, Any]:
    """Replace a training run's recipe.json with the a3a2416 form of the same recipe; returns it."""
    from tuneloop.pipelines.training.run import RECIPE_ARTIFACT

    current = json.loads(Path(rc.mlflow.download_artifacts(run_id, RECIPE_ARTIFACT)).read_text())
    old = as_stored_by_a3a2416(current)
    assert set(old) > set(current), "the rewritten recipe carries sections its method does not read"
    rc.mlflow.log_text(run_id, json.dumps(old, indent=2), RECIPE_ARTIFACT)
    return old
