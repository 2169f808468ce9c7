"""`tuneloop eval SUITE --model REF`: run a suite against one registered version, all in one MLflow run.

Reads top to bottom: resolve the version and load every task's data (before the model loads), load
the model through `models:/`, then per task generate, score and log (metrics `<task>/<metric>`, a
per-example table for the MLflow UI), and finally attach the results to the version for the gates.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneloop.digest import file_sha256
from tuneloop.errors import InvalidInput, NotFound
from tuneloop.monitors.metrics.scoring import PAIR_METRICS, ScoreOptions, score_pairs
from tuneloop.names import EvalTag, Experiment, Metric, Tag
from tuneloop.pipelines.data import formats as data_io
from tuneloop.pipelines.evaluation.suites import Suite, Task
from tuneloop.registry.client import RegistryClient

TABLE_DIR = "eval"


@dataclass
class TaskData:
    task: Task
    prompts: list[str | list[dict[str, str]]]
    user_prompts: list[str]  # what a person reads: the (templated) last user turn
    references: list[str]
    digest: str


@dataclass
class TaskResult:
    name: str
    metrics: dict[str, float]
    signatures: dict[str, str]
    examples: list[dict[str, Any]]
    data_digest: str


@dataclass
class EvalResult:
    run_id: str
    model: str
    suite: str
    metrics: dict[str, float]
    tasks: list[TaskResult] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            **{name: getattr(self, name) for name in ("run_id", "model", "suite", "metrics")},
            "tasks": {
                t.name: {"metrics": t.metrics, "signatures": t.signatures, "examples": len(t.examples)}
                for t in self.tasks
            },
        }


def load_task_data(task: Task) -> TaskData:
    dataset = data_io.load(task.data)
    if dataset.format == "preference":
        raise InvalidInput(
            f"`{task.data}` holds preference rows; an eval task needs prompt/reference rows",
            hint="use chat, instruction or completion rows",
        )
    rows = dataset.rows[: task.limit] if task.limit else dataset.rows
    prompts: list[str | list[dict[str, str]]] = []
    user_prompts: list[str] = []
    references: list[str] = []
    for row in rows:
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(prompt, str):
            filled = task.prompt_template.format(prompt=prompt)
            prompts.append(filled)
            user_prompts.append(filled)
            references.append(completion)
        else:
            turns = [dict(m) for m in prompt]
            turns[-1]["content"] = task.prompt_template.format(prompt=turns[-1]["content"])
            prompts.append(turns)
            user_prompts.append(turns[-1]["content"])
            references.append(completion[0]["content"])
    return TaskData(task=task, prompts=prompts, user_prompts=user_prompts, references=references, digest=dataset.digest)


def evaluate(
    rc: RegistryClient,
    suite: Suite,
    model_ref: str,
    *,
    suite_path: Path | None = None,
    progress: bool = True,
    on_progress: Callable[[str], None] | None = None,
) -> EvalResult:
    """Run every task of `suite` on one version, log it to MLflow and attach the metrics to the version.

    `progress` draws a bar per task on stderr; `on_progress` gets the same news as text (`answers:
    generating 40/120`), at most once a second, for callers without a terminal (a retrain's worker)."""
    import mlflow
    import pandas as pd

    from tuneloop.registry.catalog import resolve
    from tuneloop.registry.tracking import experiment_id

    mv = resolve(rc, model_ref)
    task_data = [load_task_data(t) for t in suite.tasks]  # bad data fails before the model loads
    model, tokenizer = load_model(rc, mv)
    model_id = f"{mv.name}:{mv.version}"
    suite_digest = "sha256:" + file_sha256(suite_path) if suite_path else json_digest(suite.model_dump(mode="json"))
    exp = experiment_id(rc.mlflow, rc.settings, Experiment.EVALUATION)
    with mlflow.start_run(experiment_id=exp, run_name=f"eval {suite.name} on {model_id}") as run:
        mlflow.set_tags(
            {
                EvalTag.MODEL: model_id,
                EvalTag.SUITE: suite.name,
                EvalTag.SUITE_DIGEST: suite_digest,
                EvalTag.KIND: mv.tags.get(Tag.KIND, ""),
                EvalTag.METHOD: mv.tags.get(Tag.METHOD, ""),
            }
        )
        mlflow.log_params({"model": model_id, "suite": suite.name, "tasks": ",".join(t.name for t in suite.tasks)})
        mlflow.log_text(json.dumps(suite.model_dump(mode="json"), indent=2, default=str), "suite.json")
        results = [_run_task(model, tokenizer, data, progress, on_progress) for data in task_data]
        overall = _overall(results)
        mlflow.log_metrics(overall)
        for r in results:
            mlflow.log_metrics({f"{r.name}/{k}": v for k, v in r.metrics.items()})
            mlflow.set_tag(EvalTag.data_sha256(r.name), r.data_digest)
            if r.signatures:  # sacrebleu signatures: BLEU/chrF are only comparable under the same one
                mlflow.log_params({f"{r.name}.{metric}_signature": sig for metric, sig in r.signatures.items()})
            mlflow.log_table(pd.DataFrame(r.examples), artifact_file=f"{TABLE_DIR}/{r.name}.json")
        run_id = run.info.run_id
    _attach_to_version(rc, mv, overall, run_id, suite.name)
    return EvalResult(run_id=run_id, model=model_id, suite=suite.name, metrics=overall, tasks=results)


def load_model(rc: RegistryClient, mv: Any) -> tuple[Any, Any]:
    """The model and tokenizer of a registered version."""
    from tuneloop.registry.versions import load_pyfunc

    wrapper = load_pyfunc(rc, mv.name, mv.version).unwrap_python_model()
    return wrapper.model.eval(), wrapper.tokenizer


def read_table(rc: RegistryClient, run_id: str, task: str) -> Any:
    """The per-example table an eval run logged for `task` (a pandas DataFrame)."""
    import pandas as pd
    from mlflow.exceptions import MlflowException

    try:
        local = rc.mlflow.download_artifacts(run_id, f"{TABLE_DIR}/{task}.json")
    except (MlflowException, OSError):
        raise NotFound(
            f"eval run `{run_id}` has no table for task `{task}`", hint="check the task name in the suite"
        ) from None
    document = json.loads(Path(local).read_text())
    return pd.DataFrame(document["data"], columns=document["columns"])


def json_digest(value: Any) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


class _Progress:
    """A tqdm bar that also tells `on_progress`, throttled (generation calls it once per batch)."""

    def __init__(self, bar: Any, task: str, total: int, on_progress: Callable[[str], None] | None) -> None:
        self.bar, self.task, self.total, self.on_progress = bar, task, total, on_progress
        self.done, self.told_at = 0, 0.0

    def update(self, n: int) -> None:
        import time

        self.bar.update(n)
        self.done += n
        if self.on_progress is not None and (time.monotonic() - self.told_at >= 1.0 or self.done >= self.total):
            self.told_at = time.monotonic()
            self.on_progress(f"{self.task}: generating {self.done}/{self.total}")


def _run_task(
    model: Any, tokenizer: Any, data: TaskData, progress: bool, on_progress: Callable[[str], None] | None = None
) -> TaskResult:
    from tqdm.auto import tqdm

    from tuneloop.monitors.metrics import perplexity as ppl
    from tuneloop.pipelines.evaluation.generation import generate, render_prompt

    task = data.task
    rendered = [render_prompt(tokenizer, p) for p in data.prompts]
    examples: list[dict[str, Any]] = [
        {"user_prompt": u, "prompt": p, "reference": r}
        for u, p, r in zip(data.user_prompts, rendered, data.references, strict=True)
    ]
    metrics: dict[str, float] = {}
    signatures: dict[str, str] = {}
    if task.needs_generation:
        with tqdm(total=len(rendered), desc=f"{task.name}: generating", unit="ex", disable=not progress) as bar:
            generations = generate(
                model,
                tokenizer,
                rendered,
                max_new_tokens=task.generation.max_new_tokens,
                temperature=task.generation.temperature,
                batch_size=task.generation.batch_size,
                progress=_Progress(bar, task.name, len(rendered), on_progress),
            )
        for example, g in zip(examples, generations, strict=True):
            example.update(
                prediction=g.text, latency_ms=g.latency_ms, prompt_tokens=g.prompt_tokens, output_tokens=g.output_tokens
            )
        pair_metrics = [m for m in task.metrics if m in PAIR_METRICS]
        if pair_metrics:
            scores = score_pairs(
                [g.text for g in generations],
                data.references,
                pair_metrics,
                ScoreOptions(task.rouge.stemming, task.rouge.tokenizer),
            )
            metrics.update(scores.values)
            signatures.update(scores.signatures)
            for name, values in scores.per_example.items():
                for example, value in zip(examples, values, strict=True):
                    example[name] = value
        if "latency_ms" in task.metrics:
            metrics["latency_ms"] = sum(g.latency_ms for g in generations) / len(generations)
        metrics["output_tokens"] = sum(g.output_tokens for g in generations) / len(generations)
    if "perplexity" in task.metrics:
        if on_progress is not None:
            on_progress(f"{task.name}: scoring perplexity of {len(data.references)} references")
        sequences = ppl.encode(tokenizer, data.references, prompts=rendered)
        result = ppl.perplexity(
            model,
            sequences,
            batch_size=task.perplexity.batch_size,
            window=task.perplexity.window,
            stride=task.perplexity.stride,
            pad_token_id=tokenizer.pad_token_id or 0,
        )
        metrics["perplexity"] = result.perplexity
        metrics["perplexity_tokens_per_second"] = result.tokens_per_second
        for example, nll, tokens in zip(examples, result.nll, result.tokens, strict=True):
            example.update(nll=nll, scored_tokens=tokens)
    return TaskResult(
        name=task.name, metrics=metrics, signatures=signatures, examples=examples, data_digest=data.digest
    )


def _overall(results: list[TaskResult]) -> dict[str, float]:
    """Each metric averaged over the tasks that measured it (one task: its value)."""
    collected: dict[str, list[float]] = {}
    for r in results:
        for name, value in r.metrics.items():
            collected.setdefault(name, []).append(value)
    return {name: sum(values) / len(values) for name, values in collected.items()}


def _attach_to_version(rc: RegistryClient, mv: Any, overall: dict[str, float], run_id: str, suite: str) -> None:
    """Gate-readable results on the version (`tuneloop.metric.<name>`) and a link to the eval run."""
    from tuneloop.registry.gates import record_metrics

    known = {k: v for k, v in overall.items() if k in Metric._value2member_map_}
    record_metrics(rc, mv.name, mv.version, known)
    rc.mlflow.set_model_version_tag(mv.name, str(mv.version), EvalTag.RUN_ID, run_id)
    rc.mlflow.set_model_version_tag(mv.name, str(mv.version), EvalTag.SUITE, suite)
