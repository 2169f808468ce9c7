"""`tuneloop records`: the production records captured by `tuneloop serve` or posted to the ingest API."""

from __future__ import annotations

from typing import Any

import click

from tuneloop.cli import output
from tuneloop.cli.context import AppContext, pass_app

KINDS = ("live", "canary", "shadow")


@click.group("records")
def records_group() -> None:
    """Production records: what each version was asked and answered."""


@records_group.command("list")
@click.option("--model", default=None, help="Only records of this registered model.")
@click.option("--kind", type=click.Choice(KINDS), default=None, help="Only records of this kind.")
@click.option("--limit", type=click.IntRange(1, 10_000), default=20, show_default=True, help="Newest N records.")
@output.json_option()
@pass_app
def listing(app: AppContext, model: str | None, kind: str | None, limit: int, as_json: bool) -> None:
    """The newest records, newest first: id, model version, alias, kind, prompt and output."""
    found = [
        {
            "id": r.id,
            "seq": r.seq,
            "model": r.model,
            "version": r.version,
            "alias": r.alias,
            "kind": r.kind,
            "pair_of": r.pair_of,
            "ts": r.ts.isoformat(),
            "latency_ms": r.latency_ms,
            "prompt": r.prompt,
            "output": r.output,
            "meta": r.meta,
        }
        for r in app.registry.stores.records.recent(model=model, kind=kind, limit=limit)
    ]
    output.rows(
        found,
        as_json,
        ["id", "model", "version", "alias", "kind", "ts", "prompt", "output"],
        shown=_shown,
        empty="no records",
    )


def _shown(row: dict[str, Any]) -> dict[str, Any]:
    def short(text: str, width: int = 40) -> str:
        text = " ".join(text.split())
        return text if len(text) <= width else text[: width - 1] + "…"

    return row | {"ts": row["ts"][:19], "prompt": short(row["prompt"]), "output": short(row["output"])}
