"""How commands print: one JSON document with --json, readable text otherwise."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click


def json_option(help: str = "Print one JSON document on stdout.") -> Any:
    """The one `--json` flag of every command that prints a result (as `as_json`)."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def emit_json(payload: Any) -> None:
    click.echo(json.dumps(payload, indent=2, default=str, sort_keys=False))


def stage(text: str) -> None:
    """A progress line on stderr, so stdout stays clean for --json."""
    click.echo(click.style("==> ", fg="cyan", bold=True) + text, err=True)


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[str(r.get(c, "") if r.get(c) is not None else "-") for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def rows(
    found: list[dict[str, Any]],
    as_json: bool,
    columns: list[str],
    *,
    shown: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    empty: str = "(none)",
) -> None:
    """What a `list` command prints: with --json the rows as they are; else a table of the rows as
    `shown` displays each, or `empty` when there is none."""
    if as_json:
        emit_json(found)
    elif not found:
        click.echo(empty)
    else:
        click.echo(table([shown(r) for r in found] if shown else found, columns))


def error(message: str, hint: str | None = None) -> None:
    click.echo(click.style("error: ", fg="red", bold=True) + message, err=True)
    if hint:
        click.echo(click.style("  fix: ", fg="yellow") + hint, err=True)


def is_tty() -> bool:
    return sys.stderr.isatty()
