"""`tuneloop eval`: run suites against registered versions, score files, compare runs, human A/B review.

tuneloop eval SUITE --model NAME@ALIAS|NAME:VERSION [--json]
tuneloop eval score --predictions FILE --metrics rouge,bleu,chrf [--json]
tuneloop eval compare A B [--json]
tuneloop eval shadow NAME [--champion VERSION] [--challenger VERSION] [--json]
tuneloop eval human export A B --task TASK --out SHEET
tuneloop eval human import RATINGS [--pairs OUT.jsonl]
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from tuneloop.cli import output
from tuneloop.cli.context import AppContext, pass_app
from tuneloop.cli.options import FILE, file_option


class _SuiteOrCommand(click.Group):
    """`tuneloop eval SUITE ...` runs a suite; a first word naming a subcommand runs that instead."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["run", *args]
        return super().parse_args(ctx, args)


@click.group(cls=_SuiteOrCommand)
def eval_group() -> None:
    """Evaluate registered versions: `tuneloop eval SUITE --model NAME@ALIAS` runs an eval suite (YAML).

    Results land in one MLflow run per version and suite (metrics per task, a per-example table) and on
    the model version, where promotion gates read them.
    """


@eval_group.command("run")
@click.argument("suite", type=FILE)
@click.option("--model", "model_ref", required=True, metavar="NAME@ALIAS|NAME:VERSION", help="Version to evaluate.")
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a suite key; a task by name or index: tasks.answers.limit=20 or tasks.0.limit=20.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Use at most the first N rows of every task (a quick look).",
)
@output.json_option()
@pass_app
def run_suite(
    app: AppContext, suite: str, model_ref: str, overrides: tuple[str, ...], limit: int | None, as_json: bool
) -> None:
    """Run SUITE against one version (same as `tuneloop eval SUITE --model ...`)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tuneloop.pipelines.evaluation.runner import evaluate
    from tuneloop.pipelines.evaluation.suites import cap_tasks, load_suite

    parsed = load_suite(suite, list(overrides))
    if limit is not None:
        parsed = cap_tasks(parsed, limit)
    output.stage(f"evaluating {model_ref} with suite `{parsed.name}` ({len(parsed.tasks)} task(s))")
    bar = not as_json and output.is_tty()
    result = evaluate(
        app.registry,
        parsed,
        model_ref,
        suite_path=Path(suite),
        progress=bar,
        on_progress=None if bar or as_json else _progress_lines(),
    )
    if as_json:
        output.emit_json(result.as_dict())
        return
    click.echo(f"eval run {result.run_id}: {result.model}, suite {result.suite}")
    rows = [{"task": t.name, "metric": k, "value": _fmt(v)} for t in result.tasks for k, v in sorted(t.metrics.items())]
    click.echo(output.table(rows, ["task", "metric", "value"]))


@eval_group.command("score")
@file_option(
    "--predictions",
    "path",
    required=True,
    help="JSONL or CSV with `prediction` and `reference`.",
)
@click.option(
    "--metrics",
    required=True,
    help="Comma-separated: rouge, bleu, chrf, f1, accuracy, exact_match (or rouge1, f1_macro, ...).",
)
@click.option("--no-stemming", is_flag=True, help="ROUGE without Porter stemming.")
@click.option(
    "--rouge-tokenizer",
    type=click.Choice(["default", "unicode"]),
    default="default",
    help="`unicode` keeps words in any script (rouge-score's default keeps [a-z0-9] only).",
)
@output.json_option("Print one JSON object: metric name -> value.")
def score(path: str, metrics: str, no_stemming: bool, rouge_tokenizer: str, as_json: bool) -> None:
    """Score prediction/reference pairs without a model (ROUGE/F1/accuracy in [0, 1]; BLEU/chrF 0-100)."""
    from tuneloop.monitors.metrics.scoring import ScoreOptions
    from tuneloop.pipelines.evaluation.predictions import score_file

    result = score_file(
        Path(path), metrics.split(","), ScoreOptions(rouge_stemming=not no_stemming, rouge_tokenizer=rouge_tokenizer)
    )
    if as_json:
        output.emit_json(result.values)
        return
    click.echo(output.table([{"metric": k, "value": _fmt(v)} for k, v in result.values.items()], ["metric", "value"]))
    for name, signature in result.signatures.items():
        click.echo(f"{name} signature: {signature}")
    click.echo(f"{result.count} pair(s) from {path}")


@eval_group.command("compare")
@click.argument("a")
@click.argument("b")
@click.option("--suite", default=None, help="With model versions: use their latest run of this suite.")
@click.option("--resamples", default=1000, type=click.IntRange(100, 100_000), help="Bootstrap resamples.")
@click.option("--confidence", default=0.95, type=click.FloatRange(0.5, 0.999), help="Interval level.")
@output.json_option()
@pass_app
def compare_cmd(
    app: AppContext, a: str, b: str, suite: str | None, resamples: int, confidence: float, as_json: bool
) -> None:
    """Metric deltas B - A with paired bootstrap intervals. A and B: eval run ids or NAME@ALIAS / NAME:VERSION."""
    from tuneloop.pipelines.evaluation.compare import compare

    result = compare(app.registry, a, b, suite=suite, resamples=resamples, confidence=confidence)
    if as_json:
        output.emit_json(result.as_dict())
        return
    click.echo(f"A = {result.model_a} (run {result.run_a})\nB = {result.model_b} (run {result.run_b})")
    rows = [
        {
            "task": r.task,
            "metric": r.metric,
            "A": _fmt(r.a),
            "B": _fmt(r.b),
            "B-A": _fmt(r.delta),
            f"{confidence:.0%} CI": f"[{_fmt(r.low)}, {_fmt(r.high)}]",
            "p": f"{r.p_value:.3f}",
            "verdict": _verdict(r),
        }
        for r in result.rows
    ]
    click.echo(output.table(rows, ["task", "metric", "A", "B", "B-A", f"{confidence:.0%} CI", "p", "verdict"]))
    for note in result.skipped:
        click.echo(f"skipped {note}")
    if any(r.zero_width and not r.note for r in result.rows):
        click.echo(
            "zero-width intervals: every example differs by the same amount, so their verdict comes from an "
            "exact sign test over the examples, not from the interval"
        )


@eval_group.command("shadow")
@click.argument("name")
@click.option("--challenger", type=int, default=None, help="Version compared (default: the shadow alias's holder).")
@click.option(
    "--champion", type=int, default=None, help="Version whose live answers it is compared with (default: champion)."
)
@click.option("--resamples", default=1000, type=click.IntRange(100, 100_000), help="Bootstrap resamples.")
@click.option("--confidence", default=0.95, type=click.FloatRange(0.5, 0.999), help="Interval level.")
@click.option("--dry-run", is_flag=True, help="Print the comparison; write nothing on the version or in MLflow.")
@output.json_option()
@pass_app
def shadow_cmd(
    app: AppContext,
    name: str,
    challenger: int | None,
    champion: int | None,
    resamples: int,
    confidence: float,
    dry_run: bool,
    as_json: bool,
) -> None:
    """The challenger against the champion on the same live prompts (its shadow answers beside the champion's).

    Deltas are challenger minus champion with paired-bootstrap intervals, written on the challenger's
    version (`shadow_refusal_rate_delta_lo`, `shadow_pairs`, ...) where gates read them, e.g.
    `shadow_refusal_rate_delta_lo <= 0.01`.
    """
    from tuneloop.pipelines.evaluation.shadow import evaluate_shadow

    result = evaluate_shadow(
        app.registry,
        name,
        challenger=challenger,
        champion=champion,
        resamples=resamples,
        confidence=confidence,
        record=not dry_run,
    )
    if as_json:
        output.emit_json(result.as_dict())
        return
    click.echo(
        f"{name}: challenger v{result.challenger_version} vs champion v{result.champion_version} "
        f"on {result.pairs} live prompt(s) both answered"
    )
    rows = [
        {
            "compared": c.name,
            "pairs": c.pairs,
            "champion": _fmt(c.champion),
            "challenger": _fmt(c.challenger),
            "delta": _fmt(c.delta),
            f"{confidence:.0%} CI": f"[{_fmt(c.low)}, {_fmt(c.high)}]",
        }
        for c in result.comparisons
    ]
    click.echo(output.table(rows, ["compared", "pairs", "champion", "challenger", "delta", f"{confidence:.0%} CI"]))
    click.echo(
        "agreement with the champion's answers: " + ", ".join(f"{k} {v:.3f}" for k, v in result.agreement.items())
    )
    for note in result.skipped:
        click.echo(f"skipped {note}")
    if not dry_run:
        click.echo(f"written on {name}:{result.challenger_version} (gates read `shadow_*`); run {result.run_id}")


def _progress_lines() -> Any:
    """Without a terminal (a pipe, CI) no bar can redraw: a line per tenth of each task instead."""
    shown: set[str] = set()

    def report(text: str) -> None:
        task, _, rest = text.partition(": ")
        done, _, total = rest.rpartition(" ")[2].partition("/")
        key = text if not (done.isdigit() and total.isdigit()) else f"{task}:{10 * int(done) // max(1, int(total))}"
        if key not in shown:
            shown.add(key)
            output.stage(text)

    return report


def _verdict(row: Any) -> str:
    if row.note:
        return row.note
    if row.significant:
        return f"{row.better.upper()} better" + (" (sign test)" if row.zero_width else "")
    return "not significant"


@eval_group.group("human")
def human() -> None:
    """Blinded A/B review by people: export a sheet, import the ratings."""


@human.command("export")
@click.argument("a")
@click.argument("b")
@click.option("--task", required=True, help="Suite task whose outputs are compared.")
@file_option(
    "--out",
    required=True,
    help="Sheet path without suffix: writes .csv, .jsonl and .key.json.",
)
@click.option("--suite", default=None, help="With model versions: use their latest run of this suite.")
@click.option("--seed", default=0, help="Seed of the left/right shuffle.")
@output.json_option()
@pass_app
def human_export(
    app: AppContext, a: str, b: str, task: str, out: str, suite: str | None, seed: int, as_json: bool
) -> None:
    """Write a blinded sheet comparing eval runs (or versions) A and B on TASK. Give raters only the sheet."""
    from tuneloop.pipelines.evaluation.human import export_sheet

    result = export_sheet(app.registry, a, b, task, Path(out), seed=seed, suite=suite)
    if as_json:
        output.emit_json(result.as_dict())
        return
    click.echo(f"{result.rows} rows: {result.sheet_csv} and {result.sheet_jsonl} (for raters)")
    click.echo(f"key: {result.key} (keep it from raters; also stored in MLflow run {result.review_id})")


@human.command("import")
@click.argument("ratings", type=FILE)
@click.option(
    "--review", "review_id", default=None, help="Review id (default: read from the .key.json next to RATINGS)."
)
@file_option(
    "--pairs",
    default=None,
    help="Also write preference pairs (JSONL) for a dpo recipe.",
)
@output.json_option()
@pass_app
def human_import(app: AppContext, ratings: str, review_id: str | None, pairs: str | None, as_json: bool) -> None:
    """Read RATINGS (the sheet with `rating` = left/right/tie), log B's win rate with a Wilson interval."""
    from tuneloop.pipelines.evaluation.human import import_ratings

    result = import_ratings(app.registry, Path(ratings), review_id=review_id, pairs_out=Path(pairs) if pairs else None)
    if as_json:
        output.emit_json(result.as_dict())
        return
    click.echo(
        f"B = {result.model_b} vs A = {result.model_a}: {result.wins} wins, {result.losses} losses, {result.ties} ties"
    )
    click.echo(
        f"win rate {result.win_rate:.3f} (95% Wilson interval [{result.low:.3f}, {result.high:.3f}]), recorded on {result.model_b}"
    )
    if pairs:
        click.echo(f"{result.pairs_written} preference pairs written to {pairs}")


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
