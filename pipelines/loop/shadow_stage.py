"""The `shadowing` stage of a retrain whose loop says `promotion: after_shadow`.

Once the challenger holds its alias, the model's traffic policy gains a `shadow` section: every server of
the model has the challenger answer a share of the champion's live requests, unseen. The decision waits
until `shadow.min_pairs` (live, shadow) pairs exist, or gives up after `shadow.max_hours` (recorded and
notified: the shadow gates then fail on their pair count, never pass for want of evidence). The pairs are
then compared (`tuneloop eval shadow`), the gates decide with the shadow metrics on the version, and
shadowing stops.

Every step is recorded in the run's `details.shadow` before the next: a worker that dies while waiting
resumes the same wait, with the same deadline, and the run decides once.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from tuneloop.names import Alias
from tuneloop.pipelines.loop import retrain
from tuneloop.pipelines.loop.driven_run import Run
from tuneloop.store.loops import RunState
from tuneloop.traffic import Shadow

if TYPE_CHECKING:
    from tuneloop.pipelines.loop.spec import LoopSpec

POLL_SECONDS = 2.0  # how often the waiting worker counts the pairs (a cheap count query)


def await_evidence(run: Run, spec: LoopSpec, version: int, champion_version: int) -> None:
    """Shadow the champion with `version` until the loop's evidence is in, then compare the pairs."""
    details = run.details
    if "shadow" not in details:
        started = datetime.now(UTC)
        details["shadow"] = {
            "share": spec.shadow.share,
            "min_pairs": spec.shadow.min_pairs,
            "started_at": started.isoformat(),
            "deadline": (started + timedelta(hours=spec.shadow.max_hours)).isoformat(),
        }
        policy = Shadow(alias=Alias.CHALLENGER, share=spec.shadow.share, min_pairs=spec.shadow.min_pairs)
        _set_shadow(run, spec, policy, f"retrain {run.id}: v{version} shadows the champion for live evidence")
        run.record(state=RunState.SHADOWING.value, details=details)
    shadow = details["shadow"]
    if "pairs" not in shadow:
        pairs, ended = _wait(run, spec, version, champion_version, datetime.fromisoformat(shadow["deadline"]))
        shadow |= {"pairs": pairs, "ended": ended}
        run.record(details=details)
        if ended == "timed out":
            _notify_timeout(run, spec, version, pairs)
    if "evaluation" not in shadow and shadow["pairs"] > 0:
        from tuneloop.pipelines.evaluation.shadow import evaluate_shadow

        result = evaluate_shadow(run.rc, spec.model, challenger=version)
        shadow["evaluation"] = {"run_id": result.run_id, "metrics": result.metrics()}
        run.record(details=details)


def stop_shadowing(run: Run, spec: LoopSpec) -> None:
    """The decision is made: the challenger stops shadowing (any canary section stays as it was)."""
    shadow = run.details.get("shadow")
    if shadow is not None and not shadow.get("stopped"):
        _set_shadow(run, spec, None, f"retrain {run.id}: decided, shadowing stops")
        shadow["stopped"] = True
        run.record(details=run.details)


def _wait(run: Run, spec: LoopSpec, version: int, champion_version: int, deadline: datetime) -> tuple[int, str]:
    """(pairs, why the wait ended): `enough pairs` or `timed out`."""
    needed = spec.shadow.min_pairs
    while True:
        pairs = run.rc.stores.records.count_shadow_pairs(spec.model, champion_version, version)
        if pairs >= needed:
            return pairs, "enough pairs"
        if datetime.now(UTC) >= deadline:
            return pairs, "timed out"
        retrain.report_progress(run.rc, run.id, f"shadowing: {pairs} of {needed} live pairs")
        time.sleep(POLL_SECONDS)


def _set_shadow(run: Run, spec: LoopSpec, shadow: Shadow | None, reason: str) -> None:
    from tuneloop.registry.traffic import set_policy

    current = run.rc.stores.traffic.get(spec.model).policy
    set_policy(run.rc, spec.model, current.model_copy(update={"shadow": shadow}), reason=reason)


def _notify_timeout(run: Run, spec: LoopSpec, version: int, pairs: int) -> None:
    from tuneloop.monitors.alerting import notify

    message = (
        f"retrain {run.id}: {spec.model} v{version} gathered {pairs} of {spec.shadow.min_pairs} shadow pairs in "
        f"{spec.shadow.max_hours:g} h; the gates decide without that evidence (shadow gates fail)"
    )
    payload: dict[str, Any] = {"retrain_id": run.id, "model": spec.model, "version": version, "pairs": pairs}
    with run.rc.stores.transaction() as tx:
        notify.enqueue(
            run.rc.stores,
            tx,
            "retrain.shadow_timeout",
            payload | {"message": message},
            retrain.webhooks_of(run.rc, run.row),
            alert_id=run.row["alert_id"],
        )
