"""The stages of one retraining run. Each records its result before the next starts, and each looks
at what is recorded first, so a resumed run skips what is done (see `pipelines.loop.retrain`).

curating   champion's training set + reviewed production records -> train.jsonl, holdout.jsonl
training   the champion's own recipe on the curated data; resumes from its checkpoint
evaluating the suite (+ the held-out production task) on challenger and champion
registered lineage tags, alias `challenger`, the promotion decision, notifications
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneloop.pipelines.loop import retrain
from tuneloop.registry.client import RegistryClient

from tuneloop.errors import GateFailed, InvalidInput, NotFound
from tuneloop.names import Alias, Tag

HOLDOUT_TASK = "production-holdout"


def drive(rc: RegistryClient, run_id: int) -> None:
    row = retrain.get(rc, run_id)
    spec = retrain.loop(rc, row["loop"])
    details = row["details"]
    if row["champion_version"] is None:
        champion = rc.mlflow.get_model_version_by_alias(spec.model, Alias.CHAMPION) if _has_champion(rc, spec.model) else None
        if champion is None:
            raise NotFound(f"`{spec.model}` has no champion to retrain", hint=f"promote a version: `tuneloop models promote {spec.model}:VERSION --alias champion`")
        retrain.update(rc, run_id, champion_version=int(champion.version))
        row["champion_version"] = int(champion.version)
    champion_version = int(row["champion_version"])
    folder = Path(rc.settings.home) / "retrains" / str(run_id)

    if "data" not in details:
        retrain.update(rc, run_id, state="curating")
        from tuneloop.pipelines.loop.challenger_data import build

        curated = build(rc, spec.model, champion_version, folder, min_rating=spec.feedback.min_rating, holdout=spec.holdout,
                        champion_share=spec.champion_share, near_threshold=spec.near_threshold,
                        holdout_limit=spec.holdout_limit)
        if curated.counts["new_training_rows"] == 0 and row["trigger"] == "alert":
            raise InvalidInput(
                f"nothing new to learn: {curated.counts['reviewed_records']} production record(s) of `{spec.model}` carry "
                "feedback fit for training", hint="collect reference answers, corrected labels or approved ratings first")
        details["data"] = curated.as_dict()
        retrain.update(rc, run_id, details=details)

    version = row["version"]
    if version is None:
        retrain.update(rc, run_id, state="training")
        version = _train(rc, run_id, spec, champion_version, details["data"])
        retrain.update(rc, run_id, version=version)

    evals = details.setdefault("evals", {})
    if "champion" not in evals or "challenger" not in evals:
        retrain.update(rc, run_id, state="evaluating")
        suite = _suite(spec, details["data"].get("holdout"))
        for who, v in (("challenger", version), ("champion", champion_version)):
            if who not in evals:
                from tuneloop.pipelines.evaluation.runner import evaluate

                result = evaluate(rc, suite, f"{spec.model}:{v}", progress=False, on_progress=_reporter(rc, run_id, who, v))
                evals[who] = {"version": v, "run_id": result.run_id, "metrics": result.metrics,
                              "tasks": {t.name: t.metrics for t in result.tasks}}
                retrain.update(rc, run_id, details=details)

    _finish(rc, run_id, spec, version, champion_version, details)


def _reporter(rc: RegistryClient, run_id: int, who: str, version: int) -> Any:
    def report(text: str) -> None:
        retrain.report_progress(rc, run_id, f"evaluating {who} v{version}: {text}")

    return report


def _has_champion(rc: RegistryClient, model: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        rc.mlflow.get_model_version_by_alias(model, Alias.CHAMPION)
        return True
    except MlflowException:
        return False


def _train(rc: RegistryClient, run_id: int, spec: Any, champion_version: int, data: dict[str, Any]) -> int:
    from tuneloop.pipelines.training.recipes import Recipe
    from tuneloop.pipelines.training.run import latest_checkpoint, recipe_of_run, train, version_of_training_run

    from tuneloop.yaml_models import apply_overrides

    row = retrain.get(rc, run_id)
    training_run = row["training_run_id"]
    if training_run:
        done = version_of_training_run(rc, spec.model, training_run)
        if done is not None:
            return done  # registered before the previous owner could record it: never register twice
        if latest_checkpoint(Path(rc.settings.home) / "runs" / training_run) is not None:
            return int(train(recipe_of_run(rc, training_run), rc, resume_run_id=training_run,
                             callbacks=[_record_run(rc, run_id)]).version)  # type: ignore[arg-type]
        rc.mlflow.set_terminated(training_run, "FAILED")  # died before its first checkpoint: start again
    champion = rc.mlflow.get_model_version(spec.model, str(champion_version))
    base = recipe_of_run(rc, champion.tags.get(Tag.TRAINING_RUN_ID) or champion.run_id).model_dump(mode="json")
    base["data"].update({"train": data["train"], "eval": data.get("eval")})
    base.update({"name": spec.model, "alias": None,
                 "description": f"retrain {run_id} of {spec.model}:{champion_version} ({row['trigger']})"})
    recipe = Recipe.model_validate(apply_overrides(base, list(spec.recipe_overrides)))
    result = train(recipe, rc, callbacks=[_record_run(rc, run_id)])
    return int(result.version)  # type: ignore[arg-type]


def _record_run(rc: RegistryClient, run_id: int) -> Any:
    """A TrainerCallback that records the MLflow training run id as soon as training starts."""
    from transformers import TrainerCallback

    class RecordRun(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            import mlflow

            active = mlflow.active_run()
            if active is not None:
                retrain.update(rc, run_id, training_run_id=active.info.run_id)
                mlflow.set_tags({"tuneloop.retrain.id": str(run_id)})

    return RecordRun()


def _suite(spec: Any, holdout: str | None) -> Any:
    from tuneloop.pipelines.evaluation.suites import Task, load_suite

    suite = load_suite(spec.suite)
    if not holdout:
        return suite
    generation = next((t.generation for t in suite.tasks if t.needs_generation), suite.tasks[0].generation)
    task = Task(name=HOLDOUT_TASK, data=Path(holdout), metrics=list(spec.holdout_metrics), generation=generation,
                limit=spec.holdout_limit)
    return suite.model_copy(update={"tasks": [*suite.tasks, task]})


def _finish(rc: RegistryClient, run_id: int, spec: Any, version: int, champion_version: int, details: dict[str, Any]) -> None:
    from tuneloop.registry import gates
    from tuneloop.registry.promotion import promote

    row = retrain.get(rc, run_id)
    lineage = {"tuneloop.retrain.id": str(run_id), "tuneloop.retrain.trigger": row["trigger"],
               "tuneloop.retrain.champion": f"{spec.model}:{champion_version}"}
    if row["alert_id"] is not None:
        from tuneloop.monitors.alerting.alerts import get as get_alert

        alert = get_alert(rc, int(row["alert_id"]))
        lineage |= {"tuneloop.alert.id": str(alert["id"]), "tuneloop.alert.rule": alert["rule"],
                    "tuneloop.alert.run_id": alert["mlflow_run_id"] or ""}
    for key, value in lineage.items():
        rc.mlflow.set_model_version_tag(spec.model, str(version), key, value)

    if "challenger_alias" not in details:
        try:
            promote(rc, spec.model, version, Alias.CHALLENGER, reason=f"retrain {run_id}")
            details["challenger_alias"] = "gates passed"
        except GateFailed:  # `challenger` is a slot for review; the gates decide promotion to champion
            promote(rc, spec.model, version, Alias.CHALLENGER, force=True,
                    reason=f"retrain {run_id}: challenger under review; it failed gates for champion")
            details["challenger_alias"] = "set for review (gates failed)"
        retrain.update(rc, run_id, details=details)

    if "decision" not in details:
        details["decision"] = _decide(rc, spec, version, gates, details["evals"])
        retrain.update(rc, run_id, details=details)
    _mirror(rc, run_id, details)
    if not details.get("notified"):
        _notify(rc, run_id, spec, version, champion_version, details)
        details["notified"] = True
    retrain.update(rc, run_id, state="registered", details=details, error=None)


def _decide(rc: RegistryClient, spec: Any, version: int, gates: Any, evals: dict[str, Any]) -> dict[str, Any]:
    """Promote, keep the champion, or leave it to a person: the model's gates on the overall metrics and
    on every task (old and new data), so a gain on the new data cannot hide a loss on the old."""
    from tuneloop.registry.promotion import promote

    policy = gates.policy_of(rc, spec.model)
    checks = [c.model_dump() for c in gates.evaluate(rc, rc.model_version(spec.model, version), policy)]
    checks += [c.model_dump() for c in gates.evaluate_per_task(
        policy, evals["challenger"]["tasks"], evals["champion"]["tasks"], f"champion@v{evals['champion']['version']}")]
    failed = [c["gate"] for c in checks if c["status"] == "failed"]
    if not policy:
        why = "the model has no gate policy, so nothing may promote it automatically; a release manager decides"
        return {"action": "awaiting review", "gates": checks, "why": why}
    if failed:
        return {"action": "kept champion", "gates": checks, "why": "gates failed: " + "; ".join(failed)}
    if spec.promotion == "auto":
        try:
            promote(rc, spec.model, version, Alias.CHAMPION, reason="auto-promotion by the retraining loop")
            return {"action": "promoted", "gates": checks, "why": "every gate passed, overall and per task; the loop auto-promotes"}
        except GateFailed as exc:  # the champion moved meanwhile and the gates now read differently
            return {"action": "kept champion", "gates": checks, "why": exc.message}
    return {"action": "awaiting review", "gates": checks,
            "why": f"every gate passes; promotion is manual: `tuneloop models promote {spec.model}:{version} --alias champion`"}


def _mirror(rc: RegistryClient, run_id: int, details: dict[str, Any]) -> None:
    """The retrain's record in its MLflow training run: data counts, both evals, the decision."""
    row = retrain.get(rc, run_id)
    if not row["training_run_id"]:
        return
    rc.mlflow.set_tag(row["training_run_id"], "tuneloop.retrain.decision", details["decision"]["action"])
    rc.mlflow.log_text(row["training_run_id"], json.dumps({**row, "details": details}, indent=2, default=str), "retrain.json")


def _notify(rc: RegistryClient, run_id: int, spec: Any, version: int, champion_version: int, details: dict[str, Any]) -> None:
    from tuneloop.monitors.alerting import notify

    row = retrain.get(rc, run_id)
    webhooks = retrain.webhooks_of(rc, row)
    decision = details["decision"]
    message = (f"retrain {run_id}: {spec.model} v{version} is `challenger` (champion v{champion_version}); "
               f"decision: {decision['action']} — {decision['why']}")
    with rc.stores.transaction() as tx:
        notify.enqueue(rc.stores, tx, "challenger.registered", {
            "retrain_id": run_id, "model": spec.model, "version": version, "champion_version": champion_version,
            "decision": decision, "message": message}, webhooks, alert_id=row["alert_id"])
