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


@records_group.command("show")
@click.argument("record_id")
@output.json_option()
@pass_app
def show(app: AppContext, record_id: str, as_json: bool) -> None:
    """One record: what was asked and answered, its feedback and where it came from, its MLflow trace, and
    every assessment made on that trace (a reviewer's not in `feedback.trusted_reviewers` is shown, never
    trained on)."""
    from tuneloop.errors import NotFound

    stores = app.registry.stores
    record = stores.records.get(record_id)
    if record is None:
        raise NotFound(f"no record `{record_id}`", hint="see `tuneloop records list`")
    given = stores.records.feedback_of(record_id)
    link = stores.traces.link_of(record_id)
    document = {
        "id": record.id,
        "model": record.model,
        "version": record.version,
        "alias": record.alias,
        "kind": record.kind,
        "pair_of": record.pair_of,
        "ts": record.ts.isoformat(),
        "prompt": record.prompt,
        "output": record.output,
        "feedback": None
        if given is None
        else {
            "rating": given.rating,
            "label": given.label,
            "reference": given.reference,
            "at": given.at.isoformat() if given.at else None,
            "source": given.source or "tuneloop",
        },
        "trace": None if link is None else {"trace_id": link.trace_id, "experiment_id": link.experiment_id},
        "assessments": [
            {
                "name": a.name,
                "value": a.value,
                "source": f"{a.source_type}:{a.source_id}",
                "trusted": a.trusted,
                "updated_at": a.updated_at.isoformat(),
            }
            for a in stores.traces.assessments_of(record_id)
        ],
    }
    if as_json:
        output.emit_json(document)
        return
    click.echo(f"{record.id}  {record.model}:{record.version}  {record.kind}  {document['ts'][:19]}")
    click.echo(f"  prompt: {record.prompt}")
    click.echo(f"  output: {record.output}")
    if document["feedback"]:
        shown = {k: v for k, v in document["feedback"].items() if v is not None and k != "at"}
        click.echo(f"  feedback: {shown}")
    trace = document["trace"]
    click.echo(f"  trace: {trace['trace_id']} (experiment {trace['experiment_id']})" if trace else "  trace: none")
    for a in document["assessments"]:
        trust = "trusted" if a["trusted"] else "not trusted: never trained on"
        click.echo(f"  assessment {a['name']} = {a['value']!r} by {a['source']} ({trust})")


@records_group.command("sync-feedback")
@click.argument("name")
@output.json_option()
@pass_app
def sync_feedback(app: AppContext, name: str, as_json: bool) -> None:
    """Exchange NAME's feedback with MLflow now (`tuneloop serve` does it every `feedback.sync_seconds`):
    feedback posted to tuneloop goes onto the records' traces, assessments made on them come back."""
    from tuneloop.monitors.ingestion.trace_feedback import sync

    app.registry.registered_model(name)
    result = sync(app.registry, name).as_dict()
    if as_json:
        output.emit_json(result)
        return
    click.echo(
        f"{name}: {result['pushed']} record(s) of feedback copied to traces, {result['pulled']} assessment(s) read "
        f"({result['trusted']} from trusted reviewers became feedback)"
        + (f", {result['failed']} copy(ies) failed (tried again next time)" if result["failed"] else "")
    )
