"""`tuneloop eval compare A B`: metric deltas (B − A) with paired bootstrap confidence intervals.

A and B are eval run ids, or model versions (NAME@ALIAS, NAME:VERSION) whose latest eval run is used.
Only tasks both runs share, on the same data (same sha256), are compared: pairing needs the same examples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tuneloop.errors import InvalidInput, NotFound
from tuneloop.monitors.metrics import classification, text
from tuneloop.monitors.metrics.perplexity import from_nll
from tuneloop.monitors.metrics.stats import paired_bootstrap
from tuneloop.names import LOWER_IS_BETTER, EvalTag, Experiment, names_a_version
from tuneloop.pipelines.evaluation.runner import read_table
from tuneloop.registry.client import RegistryClient

MEAN_METRICS = (*text.ROUGE_TYPES, "accuracy", "exact_match", "latency_ms")


@dataclass(frozen=True)
class MetricComparison:
    task: str
    metric: str
    a: float
    b: float
    delta: float
    low: float
    high: float
    p_value: float
    significant: bool
    better: str  # "a", "b" or "neither" (not significant)
    zero_width: bool = False  # every resample gave the same delta: significance comes from a sign test
    note: str = ""  # why a difference is not tested, when it is not


DIFFERENCE_FIELDS = ("a", "b", "delta", "low", "high", "p_value", "zero_width")  # taken from its `Difference`


@dataclass
class Comparison:
    run_a: str
    run_b: str
    model_a: str
    model_b: str
    confidence: float
    rows: list[MetricComparison]
    skipped: list[str]

    def as_dict(self) -> dict[str, Any]:
        return {
            "a": {"run_id": self.run_a, "model": self.model_a},
            "b": {"run_id": self.run_b, "model": self.model_b},
            "confidence": self.confidence,
            "metrics": [asdict(r) for r in self.rows],
            "skipped": self.skipped,
        }


def find_eval_run(rc: RegistryClient, ref: str, suite: str | None = None) -> Any:
    """An eval run id, or the latest eval run of a model version (optionally of one suite)."""
    from mlflow.exceptions import MlflowException

    if not names_a_version(ref):
        try:
            run = rc.mlflow.get_run(ref)
        except MlflowException:
            raise NotFound(
                f"`{ref}` is neither an eval run id nor NAME@ALIAS / NAME:VERSION",
                hint="pass what `tuneloop eval` printed, or a model version",
            ) from None
        if EvalTag.MODEL not in run.data.tags:
            raise InvalidInput(
                f"run `{ref}` is not a tuneloop eval run", hint="pass the run id `tuneloop eval` printed"
            )
        return run
    from tuneloop.registry.catalog import resolve

    mv = resolve(rc, ref)
    query = f"tags.`{EvalTag.MODEL}` = '{mv.name}:{mv.version}'" + (
        f" and tags.`{EvalTag.SUITE}` = '{suite}'" if suite else ""
    )
    runs = rc.mlflow.search_runs(
        _eval_experiments(rc), filter_string=query, order_by=["attributes.start_time DESC"], max_results=1
    )
    if not runs:
        raise NotFound(
            f"`{mv.name}:{mv.version}` has no eval run" + (f" for suite `{suite}`" if suite else ""),
            hint=f"run `tuneloop eval SUITE --model {mv.name}:{mv.version}` first",
        )
    return runs[0]


def _eval_experiments(rc: RegistryClient) -> list[str]:
    from tuneloop.registry.tracking import experiment_id

    return [experiment_id(rc.mlflow, rc.settings, Experiment.EVALUATION)]


def compare(
    rc: RegistryClient,
    ref_a: str,
    ref_b: str,
    *,
    suite: str | None = None,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Comparison:
    run_a, run_b = find_eval_run(rc, ref_a, suite), find_eval_run(rc, ref_b, suite)
    rows: list[MetricComparison] = []
    skipped: list[str] = []
    tasks_a, tasks_b = _tasks(run_a), _tasks(run_b)
    for task in sorted(set(tasks_a) | set(tasks_b)):
        if task not in tasks_a or task not in tasks_b:
            skipped.append(f"{task}: only in {'A' if task in tasks_a else 'B'}")
            continue
        if tasks_a[task] != tasks_b[task]:
            skipped.append(f"{task}: evaluated on different data (sha256 differs)")
            continue
        table_a, table_b = read_table(rc, run_a.info.run_id, task), read_table(rc, run_b.info.run_id, task)
        if len(table_a) != len(table_b) or list(table_a["reference"]) != list(table_b["reference"]):
            skipped.append(f"{task}: the examples differ")
            continue
        for metric in _metrics_of(run_a, task) & _metrics_of(run_b, task):
            stat_a, stat_b = _statistic(metric, table_a), _statistic(metric, table_b)
            if stat_a is None or stat_b is None:
                continue
            diff = paired_bootstrap(stat_a, stat_b, len(table_a), resamples=resamples, confidence=confidence, seed=seed)
            lower = metric in LOWER_IS_BETTER
            # Latency is measured once per generation batch and copied to its examples: they are not
            # independent observations (and two runs may have seen different machine load).
            note = "per-batch timing, not tested" if metric == "latency_ms" else ""
            significant = diff.significant and not note
            better = "neither" if not significant else ("b" if (diff.delta < 0) == lower else "a")
            rows.append(
                MetricComparison(
                    task=task,
                    metric=metric,
                    significant=significant,
                    better=better,
                    note=note,
                    **{name: getattr(diff, name) for name in DIFFERENCE_FIELDS},
                )
            )
    rows.sort(key=lambda r: (r.task, r.metric))
    return Comparison(
        run_a=run_a.info.run_id,
        run_b=run_b.info.run_id,
        model_a=run_a.data.tags[EvalTag.MODEL],
        model_b=run_b.data.tags[EvalTag.MODEL],
        confidence=confidence,
        rows=rows,
        skipped=skipped,
    )


def _tasks(run: Any) -> dict[str, str]:
    prefix = EvalTag.DATA_PREFIX
    return {k.removeprefix(prefix).removesuffix(".sha256"): v for k, v in run.data.tags.items() if k.startswith(prefix)}


def _metrics_of(run: Any, task: str) -> set[str]:
    return {k.split("/", 1)[1] for k in run.data.metrics if k.startswith(f"{task}/")}


def _statistic(metric: str, table: Any) -> Any:
    """The metric as a function of example indices, or None when the table cannot recompute it."""
    if metric in MEAN_METRICS and metric in table:
        values = [float(v) for v in table[metric]]
        return lambda idx: sum(values[i] for i in idx) / len(idx)
    if metric == "perplexity" and "nll" in table:
        nll, tokens = [float(v) for v in table["nll"]], [int(v) for v in table["scored_tokens"]]
        return lambda idx: from_nll([nll[i] for i in idx], [tokens[i] for i in idx])
    if "prediction" not in table:
        return None
    predictions, references = [str(v) for v in table["prediction"]], [str(v) for v in table["reference"]]
    if metric in ("bleu", "chrf"):
        return text.corpus_resampler(metric, predictions, references)
    if metric in ("f1_macro", "f1_micro"):
        average = metric.removeprefix("f1_")
        return lambda idx: classification.f1(_pick(predictions, idx), _pick(references, idx), average)
    return None


def _pick(values: Sequence[str], idx: Sequence[int]) -> list[str]:
    return [values[i] for i in idx]
