"""`tuneloop data`: check training and eval data before anything runs on it."""

from __future__ import annotations

from pathlib import Path

import click

from tuneloop.cli import output


@click.group("data")
def data_group() -> None:
    """Training and eval data: validate a file (every problem with its line)."""


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
