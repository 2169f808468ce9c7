"""The stages of one retraining run. Each records its result before the next starts, and each looks
at what is recorded first, so a resumed run skips what is done (see `pipelines.loop.retrain`). The run's
row is read once (`Run`); each stage gets it and what the stages before produced, and every result it
records is kept on it, so no stage reads the row, or the champion alias, again.

curating   champion's training set + reviewed production records -> train.jsonl, holdout.jsonl
training   the champion's own recipe on the curated data; resumes from its checkpoint
evaluating the suite (+ the held-out production task) on challenger and champion
shadowing  (`promotion: after_shadow` only) the challenger answers live prompts unseen (`shadow_stage`)
registered lineage tags, alias `challenger`, the promotion decision, notifications
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneloop.errors import GateFailed, InvalidInput, NotFound
from tuneloop.names import Alias, RunTag, Tag
from tuneloop.pipelines.loop import retrain, shadow_stage
from tuneloop.pipelines.loop.driven_run import Run
from tuneloop.registry.client import RegistryClient

HOLDOUT_TASK = "production-holdout"


def drive(rc: RegistryClient, run_id: int) -> None:
    run = Run(rc, run_id)
    spec = retrain.loop(rc, run.row["loop"])
    champion_version = _champion(run, spec)
    data = _curate(run, spec, champion_version)
    version = _train(run, spec, champion_version, data)
    evals = _evaluate(run, spec, version, champion_version, data)
    _finish(run, spec, version, champion_version, evals)


def _champion(run: Run, spec: Any) -> int:
    """The champion this run retrains: the one recorded, else the alias's holder now (recorded)."""
    if run.row["champion_version"] is None:
        from mlflow.exceptions import MlflowException

        try:
            champion = run.rc.mlflow.get_model_version_by_alias(spec.model, Alias.CHAMPION)
        except MlflowException:
            raise NotFound(
                f"`{spec.model}` has no champion to retrain",
                hint=f"promote a version: `tuneloop models promote {spec.model}:VERSION --alias champion`",
            ) from None
        run.record(champion_version=int(champion.version))
    return int(run.row["champion_version"])


def _curate(run: Run, spec: Any, champion_version: int) -> dict[str, Any]:
    """The challenger's data (`challenger_data.build`), recorded as the run's `data`."""
    if "data" not in run.details:
        run.record(state="curating")
        from tuneloop.pipelines.loop.challenger_data import build

        folder = Path(run.rc.settings.home) / "retrains" / str(run.id)
        curated = build(
            run.rc,
            spec.model,
            champion_version,
            folder,
            min_rating=spec.feedback.min_rating,
            holdout=spec.holdout,
            champion_share=spec.champion_share,
            near_threshold=spec.near_threshold,
            holdout_limit=spec.holdout_limit,
        )
        if curated.counts["new_training_rows"] == 0 and run.row["trigger"] == "alert":
            raise InvalidInput(
                f"nothing new to learn: {curated.counts['reviewed_records']} production record(s) of `{spec.model}` carry "
                "feedback fit for training",
                hint="collect reference answers, corrected labels or approved ratings first",
            )
        run.record(details={**run.details, "data": curated.as_dict()})
    return run.details["data"]


def _evaluate(run: Run, spec: Any, version: int, champion_version: int, data: dict[str, Any]) -> dict[str, Any]:
    """The suite (+ the held-out production task) on challenger and champion, each recorded as it ends."""
    evals = run.details.setdefault("evals", {})
    if "champion" not in evals or "challenger" not in evals:
        run.record(state="evaluating")
        suite = _suite(spec, data.get("holdout"))
        for who, v in (("challenger", version), ("champion", champion_version)):
            if who not in evals:
                from tuneloop.pipelines.evaluation.runner import evaluate

                result = evaluate(
                    run.rc, suite, f"{spec.model}:{v}", progress=False, on_progress=_reporter(run, who, v)
                )
                evals[who] = {
                    "version": v,
                    "run_id": result.run_id,
                    "metrics": result.metrics,
                    "tasks": {t.name: t.metrics for t in result.tasks},
                }
                run.record(details=run.details)
    return evals


def _reporter(run: Run, who: str, version: int) -> Any:
    def report(text: str) -> None:
        retrain.report_progress(run.rc, run.id, f"evaluating {who} v{version}: {text}")

    return report


def _train(run: Run, spec: Any, champion_version: int, data: dict[str, Any]) -> int:
    """The challenger: trained with the champion's own recipe on the curated data (resumed from its checkpoint),
    recorded as the run's `version`."""
    if run.row["version"] is not None:
        return int(run.row["version"])
    run.record(state="training")
    version = _trained(run, spec, champion_version, data)
    run.record(version=version)
    return version


def _trained(run: Run, spec: Any, champion_version: int, data: dict[str, Any]) -> int:
    from tuneloop.pipelines.training.recipes import parse_recipe
    from tuneloop.pipelines.training.run import latest_checkpoint, recipe_of_run, train, version_of_training_run
    from tuneloop.yaml_models import apply_overrides

    rc = run.rc
    training_run = run.row["training_run_id"]
    if training_run:
        done = version_of_training_run(rc, spec.model, training_run)
        if done is not None:
            return done  # registered before the previous owner could record it: never register twice
        if latest_checkpoint(Path(rc.settings.home) / "runs" / training_run) is not None:
            resumed = train(
                recipe_of_run(rc, training_run), rc, resume_run_id=training_run, callbacks=[_record_run(run)]
            )
            assert resumed.version is not None  # a retrain runs in one process: its only rank registers
            return resumed.version
        rc.mlflow.set_terminated(training_run, "FAILED")  # died before its first checkpoint: start again
    champion = rc.mlflow.get_model_version(spec.model, str(champion_version))
    base = recipe_of_run(rc, champion.tags.get(Tag.TRAINING_RUN_ID) or champion.run_id).model_dump(mode="json")
    base["data"].update({"train": data["train"], "eval": data.get("eval")})
    base.update(
        {
            "name": spec.model,
            "alias": None,
            "description": f"retrain {run.id} of {spec.model}:{champion_version} ({_why(run.row)})",
        }
    )
    recipe = parse_recipe(
        apply_overrides(base, list(spec.recipe_overrides)), f"the recipe of {spec.model}:{champion_version}"
    )
    result = train(recipe, rc, callbacks=[_record_run(run)])
    return int(result.version)  # type: ignore[arg-type]


def _why(row: dict[str, Any]) -> str:
    return f"alert {row['alert_id']}" if row.get("alert_id") else str(row["trigger"])


def _record_run(run: Run) -> Any:
    """A TrainerCallback that records the MLflow training run id as soon as training starts."""
    from transformers import TrainerCallback

    class RecordRun(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            import mlflow

            active = mlflow.active_run()
            if active is not None:
                run.record(training_run_id=active.info.run_id)
                mlflow.set_tags({RunTag.RETRAIN_ID: str(run.id)})

    return RecordRun()


def _suite(spec: Any, holdout: str | None) -> Any:
    from tuneloop.pipelines.evaluation.suites import Task, load_suite

    suite = load_suite(spec.suite)
    if not holdout:
        return suite
    generation = next((t.generation for t in suite.tasks if t.needs_generation), suite.tasks[0].generation)
    task = Task(
        name=HOLDOUT_TASK,
        data=Path(holdout),
        metrics=list(spec.holdout_metrics),
        generation=generation,
        limit=spec.holdout_limit,
    )
    return suite.model_copy(update={"tasks": [*suite.tasks, task]})


def _finish(run: Run, spec: Any, version: int, champion_version: int, evals: dict[str, Any]) -> None:
    """Lineage tags, alias `challenger`, the promotion decision, the MLflow record and the notification."""
    from tuneloop.registry import gates
    from tuneloop.registry.promotion import promote

    rc, run_id, row, details = run.rc, run.id, run.row, run.details
    lineage = {
        RunTag.RETRAIN_ID: str(run_id),
        RunTag.RETRAIN_TRIGGER: row["trigger"],
        RunTag.RETRAIN_CHAMPION: f"{spec.model}:{champion_version}",
    }
    if row["alert_id"] is not None:
        from tuneloop.monitors.alerting.alerts import get as get_alert

        alert = get_alert(rc, int(row["alert_id"]))
        lineage |= {
            RunTag.ALERT_ID: str(alert["id"]),
            RunTag.ALERT_RULE: alert["rule"],
            RunTag.ALERT_RUN_ID: alert["mlflow_run_id"] or "",
        }
    for key, value in lineage.items():
        rc.mlflow.set_model_version_tag(spec.model, str(version), key, value)

    if "challenger_alias" not in details:
        try:
            promote(rc, spec.model, version, Alias.CHALLENGER, reason=f"retrain {run_id}")
            details["challenger_alias"] = "gates passed"
        except GateFailed:  # `challenger` is a slot for review; the gates decide promotion to champion
            promote(
                rc,
                spec.model,
                version,
                Alias.CHALLENGER,
                force=True,
                reason=f"retrain {run_id}: challenger under review; it failed gates for champion",
            )
            details["challenger_alias"] = "set for review (gates failed)"
        run.record(details=details)

    if spec.promotion == "after_shadow":
        shadow_stage.await_evidence(run, spec, version, champion_version)
    if "decision" not in details:
        details["decision"] = _decide(rc, spec, version, gates, evals)
        run.record(details=details)
    if spec.promotion == "after_shadow":
        shadow_stage.stop_shadowing(run, spec)
    _mirror(run)
    if not details.get("notified"):
        _notify(run, spec, version, champion_version)
        details["notified"] = True
    run.record(state="registered", details=details, error=None)


def _decide(rc: RegistryClient, spec: Any, version: int, gates: Any, evals: dict[str, Any]) -> dict[str, Any]:
    """Promote, keep the champion, or leave it to a person: the model's gates on the overall metrics and
    on every task (old and new data), so a gain on the new data cannot hide a loss on the old."""
    from tuneloop.registry.promotion import promote

    policy = gates.policy_of(rc, spec.model)
    checks = [c.model_dump() for c in gates.evaluate(rc, rc.model_version(spec.model, version), policy)]
    checks += [
        c.model_dump()
        for c in gates.evaluate_per_task(
            policy,
            evals["challenger"]["tasks"],
            evals["champion"]["tasks"],
            f"champion@v{evals['champion']['version']}",
        )
    ]
    failed = [c["gate"] for c in checks if c["status"] == "failed"]
    if not policy:
        why = "the model has no gate policy, so nothing may promote it automatically; a release manager decides"
        return {"action": "awaiting review", "gates": checks, "why": why}
    if failed:
        return {"action": "kept champion", "gates": checks, "why": "gates failed: " + "; ".join(failed)}
    if spec.promotion in ("auto", "after_shadow"):
        evidence = " and on live prompts in shadow" if spec.promotion == "after_shadow" else ""
        try:
            promote(rc, spec.model, version, Alias.CHAMPION, reason="auto-promotion by the retraining loop")
            return {
                "action": "promoted",
                "gates": checks,
                "why": f"every gate passed, overall and per task{evidence}; the loop auto-promotes",
            }
        except GateFailed as exc:  # the champion moved meanwhile and the gates now read differently
            return {"action": "kept champion", "gates": checks, "why": exc.message}
    return {
        "action": "awaiting review",
        "gates": checks,
        "why": f"every gate passes; promotion is manual: `tuneloop models promote {spec.model}:{version} --alias champion`",
    }


def _mirror(run: Run) -> None:
    """The retrain's record in its MLflow training run: data counts, both evals, the decision."""
    row = run.row
    if not row["training_run_id"]:
        return
    run.rc.mlflow.set_tag(row["training_run_id"], RunTag.RETRAIN_DECISION, run.details["decision"]["action"])
    run.rc.mlflow.log_text(row["training_run_id"], json.dumps(row, indent=2, default=str), "retrain.json")


def _notify(run: Run, spec: Any, version: int, champion_version: int) -> None:
    from tuneloop.monitors.alerting import notify

    rc, run_id, row = run.rc, run.id, run.row
    webhooks = retrain.webhooks_of(rc, row)
    decision = run.details["decision"]
    message = (
        f"retrain {run_id}: {spec.model} v{version} is `challenger` (champion v{champion_version}); "
        f"decision: {decision['action']} — {decision['why']}"
    )
    with rc.stores.transaction() as tx:
        notify.enqueue(
            rc.stores,
            tx,
            "challenger.registered",
            {
                "retrain_id": run_id,
                "model": spec.model,
                "version": version,
                "champion_version": champion_version,
                "decision": decision,
                "message": message,
            },
            webhooks,
            alert_id=row["alert_id"],
        )
