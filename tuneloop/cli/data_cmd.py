"""`tuneloop data`: check training and eval data before anything runs on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tuneloop.cli import output
from tuneloop.cli.context import AppContext, pass_app
from tuneloop.cli.options import FILE, file_option, folder_option, options_from, options_of
from tuneloop.names import RunTag
from tuneloop.pipelines.data.options import CurateOptions, SynthOptions


@click.group("data")
def data_group() -> None:
    """Training and eval data: validate a file (every problem with its line), curate it into a clean split,
    grow it with synthetic rows a registered model writes, and review rows by hand."""


FORMAT = click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "chat", "instruction", "completion", "preference"]),
    default="auto",
    help="Row format; `auto` detects it from the first row's fields.",
)


@data_group.command("validate")
@click.argument("path", type=FILE)
@FORMAT
@click.option("--max-chars", type=click.IntRange(1), default=None, help="Report rows longer than this many characters.")
@output.json_option()
def validate(path: str, fmt: str, max_chars: int | None, as_json: bool) -> None:
    """Check every row of PATH (.jsonl, .csv, .parquet): bad JSON, missing fields, wrong roles, empty turns,
    rows without an assistant turn, over-long rows. Exit 1 when any row has a problem."""
    from tuneloop.errors import InvalidInput
    from tuneloop.pipelines.data.formats import check

    file = Path(path)
    if not file.is_file():
        raise InvalidInput(f"data file `{file}` does not exist", hint="check the path")
    from tuneloop.pipelines.data.review import is_unreviewed_synthetic
    from tuneloop.rowfiles import read_rows

    scan = check(file, fmt, max_chars=max_chars)
    unreviewed = sum(isinstance(row, dict) and is_unreviewed_synthetic(row) for _, row in read_rows(file))
    result = {
        "file": str(file),
        "format": scan.format,
        "rows": scan.total,
        "valid_rows": len(scan.rows),
        "valid": not scan.problems and scan.total > 0,
        "counts": scan.counts(),
        "unreviewed_synthetic": unreviewed,
        "problems": [{"line": p.line, "message": p.message} for p in scan.problems],
    }
    if as_json:
        output.emit_json(result)
    else:
        for p in scan.problems:
            click.echo(f"{file}:{p.line}: {p.message}" if p.line else f"{file}: {p.message}")
        verdict = "valid" if result["valid"] else ("empty" if scan.total == 0 else f"{len(scan.problems)} problem(s)")
        click.echo(f"{file}: {scan.total} row(s), {len(scan.rows)} usable, format {scan.format}: {verdict}")
        for kind, n in scan.counts().items():
            click.echo(f"  {n:6d}  {kind}")
        if unreviewed:
            click.echo(
                f"note: {unreviewed} synthetic row(s) nobody reviewed yet (`tuneloop data review export {file}`)"
            )
    if not result["valid"]:
        raise click.exceptions.Exit(1)


@data_group.command("curate")
@click.argument("path", type=FILE)
@folder_option("--out", "out_dir", required=True, help="Folder for train.jsonl, eval.jsonl, report.json.")
@FORMAT
@options_of(CurateOptions)
@click.option("--no-mlflow", is_flag=True, help="Do not record the curated set in MLflow.")
@output.json_option("Print the report as one JSON document on stdout.")
@pass_app
def curate_cmd(
    app: AppContext, path: str, out_dir: str, fmt: str, no_mlflow: bool, as_json: bool, **chosen: Any
) -> None:
    """Clean PATH into OUT: drop invalid rows, normalise text, scrub PII, filter by length and language, drop exact and
    near duplicates, split train/eval (seeded, stratified by `label`, near duplicates never across).
    OUT/report.json (and .html) counts every dropped or changed row by reason, with samples. The curated
    files are recorded in MLflow (experiment `<prefix>-data`) as datasets with their sha256."""
    from tuneloop.errors import InvalidInput
    from tuneloop.pipelines.data.cleaning.curate import curate

    file = Path(path)
    if not file.is_file():
        raise InvalidInput(f"data file `{file}` does not exist", hint="check the path")
    options = options_from(CurateOptions, chosen)
    report = curate(file, Path(out_dir), options, fmt)
    if not no_mlflow:
        from tuneloop.pipelines.data.cleaning.curate import log_to_mlflow

        report["mlflow_run_id"] = log_to_mlflow(
            app.registry,
            report,
            [Path(out_dir) / "report.json", Path(out_dir) / "report.html"],
            run_name=f"curate {file.name}",
        )
    if as_json:
        output.emit_json(report)
        return
    click.echo(
        f"{report['rows_in']} rows in, {report['rows_out']} out ({report['train_rows']} train, {report['eval_rows']} eval)"
    )
    for reason, n in report["dropped"].items():
        click.echo(f"  dropped {n:6d}  {reason}")
    for reason, n in report["changed"].items():
        click.echo(
            f"  changed {n:6d}  {reason}"
            + (f" ({', '.join(f'{k} {v}' for k, v in report['pii'].items())})" if reason == "pii_scrubbed" else "")
        )
    if report["languages"]:
        click.echo(
            "  languages: "
            + ", ".join(f"{k} {v}" for k, v in sorted(report["languages"].items(), key=lambda kv: -kv[1]))
        )
    click.echo(
        f"report: {Path(out_dir) / 'report.json'} and report.html"
        + (f"; MLflow run {report['mlflow_run_id']}" if "mlflow_run_id" in report else "")
    )


@data_group.command("synth")
@click.argument("seeds", type=FILE)
@click.option(
    "--model",
    "generator",
    required=True,
    metavar="NAME@ALIAS|NAME:VERSION",
    help="Registered model that writes the rows (e.g. support-qlora@champion).",
)
@file_option("--out", "out_file", required=True, help="JSONL file for the kept rows.")
@file_option(
    "--template",
    "template_file",
    default=None,
    help="YAML with `question` ({examples}) and `answer` ({question}) prompts; see examples/synth/.",
)
@file_option(
    "--real",
    "real_files",
    multiple=True,
    help="More real data: generated questions that copy it are dropped (repeatable).",
)
@click.option(
    "--score-with", "scorer", default=None, metavar="REF", help="Model whose perplexity of each answer is recorded."
)
@options_of(SynthOptions)
@click.option("--no-mlflow", is_flag=True, help="Do not record the synthetic set in MLflow.")
@output.json_option("Print the report as one JSON document on stdout.")
@pass_app
def synth_cmd(
    app: AppContext,
    seeds: str,
    generator: str,
    out_file: str,
    template_file: str | None,
    real_files: tuple[str, ...],
    scorer: str | None,
    no_mlflow: bool,
    as_json: bool,
    **chosen: Any,
) -> None:
    """Grow SEEDS (chat, instruction or completion rows) with rows the model writes: a new question from a few
    seed questions, then its answer. Rows that are invalid, too short or long, copies of real or earlier
    questions, or (with --max-perplexity) implausible are dropped and counted in OUT.report.json. Each kept
    row records its generator version and prompts under `synthetic`; review them with `tuneloop data review`."""
    from tuneloop.errors import InvalidInput
    from tuneloop.pipelines.data.synthetic import load_template, synthesize

    for name in (seeds, *real_files):
        if not Path(name).is_file():
            raise InvalidInput(f"data file `{name}` does not exist", hint="check the path")
    if chosen["max_perplexity"] is not None and scorer is None:
        raise InvalidInput("--max-perplexity needs --score-with MODEL", hint="name the model that scores the answers")
    template = load_template(Path(template_file) if template_file else None)
    options = options_from(SynthOptions, chosen)
    out = Path(out_file)
    report = synthesize(
        app.registry,
        generator,
        Path(seeds),
        out,
        options,
        template=template,
        real=[Path(f) for f in real_files],
        scorer=scorer,
        progress=not as_json,
    )
    if not no_mlflow:
        from tuneloop.pipelines.data.cleaning.curate import log_to_mlflow

        report["mlflow_run_id"] = log_to_mlflow(
            app.registry,
            report,
            [Path(report["report"])],
            run_name=f"synth {out.name}",
            tags={RunTag.DATA_GENERATOR: report["generator"], RunTag.DATA_TEMPLATE: report["template_digest"]},
        )
    if as_json:
        output.emit_json(report)
    else:
        click.echo(
            f"{report['rows_out']} of {report['rows_in']} generated rows kept in {out} (generator {report['generator']})"
        )
        for reason, n in sorted(report["dropped"].items(), key=lambda kv: -kv[1]):
            click.echo(f"  dropped {n:6d}  {reason}")
        click.echo(
            f"report: {report['report']}"
            + (f"; MLflow run {report['mlflow_run_id']}" if "mlflow_run_id" in report else "")
        )
        click.echo(f"next: tuneloop data review export {out} --out review.csv")
    if report["rows_out"] < options.count:
        click.echo(
            f"warning: only {report['rows_out']} of {options.count} rows passed the checks in {report['rows_in']} attempts; "
            "raise --max-attempts, loosen the checks, or give more varied seeds",
            err=True,
        )


@data_group.group("review")
def review_group() -> None:
    """Human review of rows: export a sheet, fill `decision` (accept, reject, edit), import it back."""


@review_group.command("export")
@click.argument("path", type=FILE)
@click.option("--out", "sheet", required=True, type=FILE, help="Review sheet to write (.csv or .jsonl).")
@click.option("--sample", type=click.IntRange(1), default=None, help="Export a random sample of this many rows.")
@click.option("--seed", default=0, help="Seed of the sample.")
@click.option("--all", "everything", is_flag=True, help="Every row, not only the synthetic rows nobody reviewed.")
@output.json_option()
def review_export(path: str, sheet: str, sample: int | None, seed: int, everything: bool, as_json: bool) -> None:
    """Write a review sheet of PATH's unreviewed synthetic rows (or --all rows): id, prompt, answer, and the
    columns a reviewer fills: decision (accept, reject, edit; blank: not reviewed), edited_prompt,
    edited_answer, note."""
    from tuneloop.errors import InvalidInput
    from tuneloop.pipelines.data.review import export

    if not Path(path).is_file():
        raise InvalidInput(f"data file `{path}` does not exist", hint="check the path")
    result = export(Path(path), Path(sheet), sample=sample, seed=seed, everything=everything)
    if as_json:
        output.emit_json(result)
        return
    click.echo(f"{result['exported']} row(s) of {result['rows']} written to {sheet}")
    click.echo("fill `decision` with accept, reject or edit (with edited_prompt / edited_answer), then:")
    click.echo(f"  tuneloop data review import {path} {sheet} --out REVIEWED.jsonl")


@review_group.command("import")
@click.argument("path", type=FILE)
@click.argument("sheet", type=FILE)
@file_option(
    "--out", "out_file", required=True, help="Reviewed data file to write (may be PATH itself: it is replaced whole)."
)
@click.option(
    "--unreviewed",
    type=click.Choice(["hold", "keep"]),
    default="hold",
    help="Synthetic rows still unreviewed: hold them back in OUT's .held.jsonl, or keep them in OUT.",
)
@click.option(
    "--reviewer",
    default=None,
    help="Who reviewed, recorded in each decided row [default: settings `actor`, else the OS user].",
)
@output.json_option()
@pass_app
def review_import(
    app: AppContext, path: str, sheet: str, out_file: str, unreviewed: str, reviewer: str | None, as_json: bool
) -> None:
    """Apply the decisions of SHEET to PATH: rejected rows leave, edits replace the text (the original stays in
    the row's `review`), accepted rows are marked; every sheet problem is reported before anything is written."""
    from tuneloop.errors import InvalidInput
    from tuneloop.pipelines.data.review import apply

    if not Path(path).is_file():
        raise InvalidInput(f"data file `{path}` does not exist", hint="check the path")
    result = apply(
        Path(path), Path(sheet), Path(out_file), unreviewed=unreviewed, reviewer=reviewer or app.settings.actor_name
    )
    if as_json:
        output.emit_json(result)
        return
    click.echo(
        f"{result['rows_out']} of {result['rows_in']} rows written to {out_file}: {result['accepted']} accepted, "
        f"{result['edited']} edited, {result['rejected']} rejected"
    )
    if result["held"]:
        click.echo(f"{result['held_back']} unreviewed synthetic row(s) held back in {result['held']}")
