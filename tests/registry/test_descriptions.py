"""Registry pages a release manager can read: descriptions of versions, models and experiments, kept current."""

from __future__ import annotations

import pytest

from tests.registry_helpers import make_versions
from tuneloop.errors import GateFailed
from tuneloop.names import EXPERIMENT_NOTES, Experiment


def _page(rc, name: str, version: int) -> str:
    return rc.mlflow.get_model_version(name, str(version)).description or ""


def test_version_pages_follow_metrics_verdicts_and_moves(rc) -> None:
    from tuneloop.registry.gates import record_metrics, set_policy
    from tuneloop.registry.promotion import promote

    v1, v2 = make_versions(rc, "support", [{}, {}], kind="adapter", base=("tiny", 1))  # no pages: not registered
    set_policy(rc, "support", ["rougeL >= 0.3"])
    record_metrics(rc, "support", v1, {"rougeL": 0.4})
    assert "**support v1** — adapter on `tiny:1`" in _page(rc, "support", v1)
    assert "| rougeL | 0.4 |" in _page(rc, "support", v1)

    promote(rc, "support", v1, "champion")  # an alias move rewrites every page (v2 was made without one)
    assert "No evaluation recorded yet" in _page(rc, "support", v2)
    page = _page(rc, "support", v1)
    assert "holds `champion`" in page and "for `champion`): **passed**, 1 of 1 gates passed" in page

    record_metrics(rc, "support", v2, {"rougeL": 0.25})
    assert "| rougeL | 0.25 | 0.4 | -0.15 |" in _page(rc, "support", v2)  # beside the champion's
    with pytest.raises(GateFailed):
        promote(rc, "support", v2, "champion")
    assert "**refused**, 0 of 1 gates passed — `rougeL >= 0.3` failed" in _page(rc, "support", v2)

    record_metrics(rc, "support", v1, {"rougeL": 0.5})  # the champion's metrics change: pages comparing to it too
    assert "| rougeL | 0.25 | 0.5 | -0.25 |" in _page(rc, "support", v2)

    promote(rc, "support", v2, "champion", force=True, reason="hotfix")
    assert "**forced**" in _page(rc, "support", v2) and "holds `champion`" in _page(rc, "support", v2)
    assert "holds" not in _page(rc, "support", v1).split("\n")[0]
    model = rc.mlflow.get_registered_model("support").description
    assert "`champion` → v2" in model and "`rougeL >= 0.3`" in model


def test_tuneloop_experiments_carry_their_description(rc) -> None:
    from tuneloop.registry.tracking import NOTE_TAG, experiment_id

    for suffix in (Experiment.TRAINING, Experiment.AUDIT):
        exp = rc.mlflow.get_experiment(experiment_id(rc.mlflow, rc.settings, suffix))
        assert exp.tags[NOTE_TAG] == EXPERIMENT_NOTES[suffix]
    assert set(EXPERIMENT_NOTES) == {v for k, v in vars(Experiment).items() if k.isupper()}


def test_a_page_never_carries_a_password(rc) -> None:
    from tuneloop.names import Tag
    from tuneloop.registry import descriptions

    (v1,) = make_versions(rc, "mirror", [{}])
    rc.mlflow.set_model_version_tag("mirror", str(v1), Tag.SOURCE, "https://reader:s3cret@models.example/m.gguf")
    descriptions.refresh(rc, "mirror")
    page = _page(rc, "mirror", v1)
    assert "base model imported from `https://reader:***@models.example/m.gguf`" in page and "s3cret" not in page
