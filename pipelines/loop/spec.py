"""Retraining loops (YAML, validated): what the scheduler watches, when it retrains, how it decides.

name: support-loop
model: support-qlora              # the adapter whose champion is retrained
suite: ../evals/support.yaml      # run on challenger and champion, plus the held-out production task
monitors: [{name: support-champion, every: 10m}]
on_alerts: [support-drift]        # retrain when one of these rules opens an incident
cron: "0 3 1 */3 *"               # and quarterly (standard crontab, UTC)
recipe_overrides: ["training.max_steps=40"]   # applied to the champion's own recipe
feedback: {min_rating: 4}         # an output rated this or higher is an approved training answer
holdout: 0.2                      # share of the new labelled production rows kept for evaluation
champion_share: 0.5               # the champion's rows make at least half the training set (repeated)
near_threshold: 0.8               # drop new rows this similar to a held-out, champion or earlier row
promotion: manual                 # `auto`: promote to champion when every gate passes; `after_shadow`:
                                  #   the same, once the challenger has answered live prompts in shadow
shadow: {share: 0.25, min_pairs: 600, max_hours: 24}   # read by `after_shadow`
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from tuneloop.yaml_models import Strict, load_yaml_model


class MonitorSchedule(Strict):
    name: str
    every: str = Field("10m", description="How often the monitor's new windows are judged (e.g. 30s, 10m, 1h)")

    @field_validator("every")
    @classmethod
    def _duration(cls, value: str) -> str:
        from tuneloop.monitors.monitor_spec import parse_duration

        parse_duration(value)
        return value


class FeedbackSettings(Strict):
    min_rating: float = Field(
        4.0, description="Ratings at or above this approve the model's output as a training answer"
    )


class ShadowWait(Strict):
    share: float = Field(0.25, gt=0.0, le=1.0, description="Share of the champion's requests the challenger shadows")
    min_pairs: int = Field(600, ge=1, description="The decision waits for this many (live, shadow) pairs")
    max_hours: float = Field(24.0, gt=0.0, description="...or gives up after this long (shadow gates then fail)")


class LoopSpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    model: str = Field(description="Registered adapter model whose `champion` is retrained")
    suite: Path = Field(description="Eval suite run on challenger and champion")
    monitors: list[MonitorSchedule] = Field(default_factory=list)
    on_alerts: list[str] = Field(default_factory=list, description="Alert rules whose incidents start a retrain")
    cron: str | None = Field(
        None, description="Scheduled retraining, crontab syntax in UTC (e.g. quarterly: `0 3 1 */3 *`)"
    )
    recipe_overrides: list[str] = Field(
        default_factory=list, description="KEY=VALUE overrides of the champion's recipe"
    )
    feedback: FeedbackSettings = Field(default_factory=FeedbackSettings)
    holdout: float = Field(
        0.2, ge=0.0, lt=1.0, description="Share of new labelled production rows held out for evaluation"
    )
    champion_share: float = Field(
        0.5,
        ge=0.0,
        lt=1.0,
        description="At least this share of the challenger's training rows "
        "come from the champion's training set (its rows repeat to reach it), against forgetting",
    )
    near_threshold: float | None = Field(
        0.8,
        gt=0.0,
        le=1.0,
        description="New rows at this Jaccard similarity (word "
        "3-grams) to a held-out, champion or earlier new row are dropped; null: exact only",
    )
    holdout_limit: int | None = Field(
        200,
        ge=1,
        description="Hold out at most this many new rows (the rest train), so "
        "evaluating both models on them stays within minutes; null: no cap",
    )
    holdout_metrics: list[str] = Field(
        default_factory=lambda: ["rouge", "chrf"], description="Metrics of the held-out task"
    )
    promotion: Literal["manual", "auto", "after_shadow"] = Field(
        "manual",
        description="`auto` promotes a challenger that passes every gate; `after_shadow` first shadows the "
        "champion's live requests with it (`shadow`) and decides on the gates, shadow gates included",
    )
    shadow: ShadowWait = Field(default_factory=lambda: ShadowWait(), description="How `after_shadow` waits")

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            from apscheduler.triggers.cron import CronTrigger

            CronTrigger.from_crontab(value)
        return value


def load_loop(path: str | Path) -> LoopSpec:
    from tuneloop.pipelines.evaluation.suites import load_suite

    path = Path(path)
    spec = load_yaml_model(path, LoopSpec, kind="loop", hint="see examples/loops/support.yaml")
    suite = (path.resolve().parent / spec.suite).resolve()
    load_suite(suite)  # a broken suite fails now, not at the first retrain
    return spec.model_copy(update={"suite": suite})
