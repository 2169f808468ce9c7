"""`tuneloop data`: check training and eval data before anything runs on it."""

from __future__ import annotations

from pathlib import Path

import click

from tuneloop.cli import output
from tuneloop.cli.main import AppContext, pass_app


@click.group("data")
def data_group() -> None:
    """Training and eval data: validate a file (every problem with its line), curate it into a clean split."""


@data_group.command("validate")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["auto", "chat", "instruction", "completion", "preference"]),
              default="auto", show_default=True, help="Row format; `auto` detects it from the first row's fields.")
@click.option("--max-chars", type=click.IntRange(1), default=None, help="Report rows longer than this many characters.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
def validate(path: str, fmt: str, max_chars: int | None, as_json: bool) -> None:
    """Check every row of PATH (.jsonl, .csv, .parquet): bad JSON, missing fields, wrong roles, empty turns,
    rows without an assistant turn, over-long rows. Exit 1 when any row has a problem."""
    from pipelines.data import check
    from tuneloop.errors import InvalidInput

    file = Path(path)
    if not file.is_file():
        raise InvalidInput(f"data file `{file}` does not exist", hint="check the path")
    scan = check(file, fmt, max_chars=max_chars)
    result = {"file": str(file), "format": scan.format, "rows": scan.total, "valid_rows": len(scan.rows),
              "valid": not scan.problems and scan.total > 0, "counts": scan.counts(),
              "problems": [{"line": p.line, "message": p.message} for p in scan.problems]}
    if as_json:
        output.emit_json(result)
    else:
        for p in scan.problems:
            click.echo(f"{file}:{p.line}: {p.message}" if p.line else f"{file}: {p.message}")
        verdict = "valid" if result["valid"] else ("empty" if scan.total == 0 else f"{len(scan.problems)} problem(s)")
        click.echo(f"{file}: {scan.total} row(s), {len(scan.rows)} usable, format {scan.format}: {verdict}")
        for kind, n in result["counts"].items():
            click.echo(f"  {n:6d}  {kind}")
    if not result["valid"]:
        raise click.exceptions.Exit(1)


@data_group.command("curate")
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Folder for train.jsonl, eval.jsonl, report.json.")
@click.option("--format", "fmt", type=click.Choice(["auto", "chat", "instruction", "completion", "preference"]),
              default="auto", show_default=True, help="Row format; `auto` detects it.")
@click.option("--eval-share", type=click.FloatRange(0.0, 0.9), default=0.1, show_default=True, help="Share of rows for eval (0: no split).")
@click.option("--near-threshold", type=click.FloatRange(0.1, 1.0), default=0.8, show_default=True,
              help="Jaccard similarity (word 3-grams) at which rows count as near duplicates.")
@click.option("--no-near-dedup", is_flag=True, help="Drop exact duplicates only.")
@click.option("--no-pii", is_flag=True, help="Keep e-mails, phones, cards, IBANs and IPs as they are.")
@click.option("--min-chars", type=click.IntRange(0), default=1, show_default=True, help="Drop rows with less text.")
@click.option("--max-chars", type=click.IntRange(1), default=None, help="Drop rows with more text.")
@click.option("--languages", default="", metavar="CODES",
              help="Keep only rows in these languages (comma-separated ISO 639-1 codes, e.g. en,de); rows too short "
                   "to tell are kept.")
@click.option("--language-confidence", type=click.FloatRange(0.0, 1.0), default=0.5, show_default=True,
              help="How sure the language identifier must be before a row is dropped for its language.")
@click.option("--seed", default=0, show_default=True, help="Seed of the split.")
@click.option("--no-mlflow", is_flag=True, help="Do not record the curated set in MLflow.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON document on stdout.")
@pass_app
def curate_cmd(app: AppContext, path: str, out_dir: str, fmt: str, eval_share: float, near_threshold: float,
               no_near_dedup: bool, no_pii: bool, min_chars: int, max_chars: int | None, languages: str,
               language_confidence: float, seed: int, no_mlflow: bool, as_json: bool) -> None:
    """Clean PATH into OUT: drop invalid rows, normalise text, scrub PII, filter by length and language, drop exact and
    near duplicates, split train/eval (seeded, stratified by `label`, near duplicates never across).
    OUT/report.json (and .html) counts every dropped or changed row by reason, with samples. The curated
    files are recorded in MLflow (experiment `<prefix>-data`) as datasets with their sha256."""
    from pipelines.cleaning.curate import CurateOptions, curate
    from tuneloop.errors import InvalidInput

    file = Path(path)
    if not file.is_file():
        raise InvalidInput(f"data file `{file}` does not exist", hint="check the path")
    options = CurateOptions(scrub_pii=not no_pii, near_dedup=not no_near_dedup, near_threshold=near_threshold,
                            eval_share=eval_share, seed=seed, min_chars=min_chars, max_chars=max_chars,
                            languages=tuple(c.strip().lower() for c in languages.split(",") if c.strip()),
                            language_confidence=language_confidence)
    report = curate(file, Path(out_dir), options, fmt)
    if not no_mlflow:
        from pipelines.cleaning.curate import log_to_mlflow

        report["mlflow_run_id"] = log_to_mlflow(app.registry, report, Path(out_dir))
    if as_json:
        output.emit_json(report)
        return
    click.echo(f"{report['rows_in']} rows in, {report['rows_out']} out ({report['train_rows']} train, {report['eval_rows']} eval)")
    for reason, n in report["dropped"].items():
        click.echo(f"  dropped {n:6d}  {reason}")
    for reason, n in report["changed"].items():
        click.echo(f"  changed {n:6d}  {reason}" + (f" ({', '.join(f'{k} {v}' for k, v in report['pii'].items())})"
                                                   if reason == "pii_scrubbed" else ""))
    if report["languages"]:
        click.echo("  languages: " + ", ".join(f"{k} {v}" for k, v in sorted(report["languages"].items(), key=lambda kv: -kv[1])))
    click.echo(f"report: {Path(out_dir) / 'report.json'} and report.html"
               + (f"; MLflow run {report['mlflow_run_id']}" if "mlflow_run_id" in report else ""))
