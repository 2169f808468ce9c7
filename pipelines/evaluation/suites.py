"""Eval suites: YAML listing tasks (data set, prompt template, generation settings, metrics).

    name: support
    tasks:
      - name: answers
        data: ../data/support_eval.jsonl     # chat, instruction or completion rows
        metrics: [rouge, bleu, chrf, perplexity, latency_ms]
      - name: intents
        data: ../data/intents_eval.jsonl
        prompt_template: "{prompt}"           # wraps the last user turn
        generation: {max_new_tokens: 8}
        metrics: [accuracy, f1, exact_match]

Relative data paths are resolved against the suite's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from tuneloop.monitors.metrics.scoring import GROUPS, PAIR_METRICS
from tuneloop.yaml_models import Strict, load_yaml_model

MODEL_METRICS = ("perplexity", "latency_ms")
SUITE_METRICS = (*PAIR_METRICS, *MODEL_METRICS)


class GenerationSettings(Strict):
    max_new_tokens: int = Field(64, ge=1, le=4096)
    temperature: float = Field(0.0, ge=0.0, le=2.0, description="0 = greedy (reproducible)")
    batch_size: int = Field(8, ge=1, le=512)


class RougeSettings(Strict):
    stemming: bool = Field(True, description="Porter stemming, as rouge-score's use_stemmer")
    tokenizer: Literal["default", "unicode"] = Field(
        "default", description="`default` keeps [a-z0-9] only (rouge-score); `unicode` keeps words in any script"
    )


class PerplexitySettings(Strict):
    batch_size: int = Field(8, ge=1, le=512)
    window: int | None = Field(None, ge=8, description="Sliding-window length (default: the model's context, max 1024)")
    stride: int | None = Field(None, ge=1, description="Window step (default: half the window)")


class Task(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Task name, used in metric keys `<task>/<metric>`")
    data: Path = Field(description="Held-out rows: chat, instruction or completion format (.jsonl, .csv, .parquet)")
    prompt_template: str = Field("{prompt}", description="Python format string around the last user turn")
    limit: int | None = Field(None, ge=1, description="Use only the first N rows")
    generation: GenerationSettings = Field(default_factory=GenerationSettings)
    rouge: RougeSettings = Field(default_factory=RougeSettings)
    perplexity: PerplexitySettings = Field(default_factory=PerplexitySettings)
    metrics: list[str] = Field(min_length=1, description="Metrics: " + ", ".join([*GROUPS, *SUITE_METRICS]))

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, value: list[str]) -> list[str]:
        out: list[str] = []
        unknown = []
        for name in value:
            members = GROUPS.get(name, (name,))
            if any(m not in SUITE_METRICS for m in members):
                unknown.append(name)
            out.extend(m for m in members if m not in out)
        if unknown:
            raise ValueError(
                f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join([*GROUPS, *SUITE_METRICS])}"
            )
        return out

    @field_validator("prompt_template")
    @classmethod
    def _has_prompt_field(cls, value: str) -> str:
        if "{prompt}" not in value:
            raise ValueError("must contain `{prompt}`")
        try:
            value.format(prompt="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"is not a format string with only `{{prompt}}`: {exc}") from None
        return value

    @property
    def needs_generation(self) -> bool:
        return any(m != "perplexity" for m in self.metrics)


class Suite(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    tasks: list[Task] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_task_names(self) -> Suite:
        names = [t.name for t in self.tasks]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"task names must be unique; repeated: {', '.join(repeated)}")
        return self


def load_suite(path: str | Path, overrides: list[str] | None = None) -> Suite:
    path = Path(path)
    suite = load_yaml_model(
        path,
        Suite,
        kind="eval suite",
        overrides=overrides,
        hint="fix the keys above; examples/evals/ shows a working suite",
        examples="examples/evals/ has a working suite",
    )
    root = path.resolve().parent
    tasks = [t.model_copy(update={"data": (root / t.data).resolve()}) for t in suite.tasks]
    missing = [
        f"`tasks.{i}.data`: `{task.data}` does not exist"
        + ("" if raw.data.is_absolute() else f" (`{raw.data}` is relative, so it is read from the suite's folder)")
        for i, (raw, task) in enumerate(zip(suite.tasks, tasks, strict=True))
        if not task.data.is_file()
    ]
    if missing:
        from tuneloop.errors import ConfigError

        raise ConfigError(
            f"invalid eval suite `{path}`:\n  " + "\n  ".join(missing),
            hint="fix the path, relative to the suite file, or give an absolute path",
        )
    return suite.model_copy(update={"tasks": tasks})


def cap_tasks(suite: Suite, limit: int) -> Suite:
    """Every task on at most its first `limit` rows (a task's own smaller limit stays)."""
    tasks = [t.model_copy(update={"limit": min(t.limit or limit, limit)}) for t in suite.tasks]
    return suite.model_copy(update={"tasks": tasks})
