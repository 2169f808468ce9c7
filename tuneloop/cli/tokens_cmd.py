"""`tuneloop tokens`: bearer tokens, each with one scope — `serve` (the OpenAI-compatible API of
`tuneloop serve`) or `ingest` (posting records and feedback)."""

from __future__ import annotations

import click

from tuneloop.cli import output
from tuneloop.cli.context import AppContext, pass_app

SCOPES = ("serve", "ingest")


@click.group("tokens")
def tokens_group() -> None:
    """Bearer tokens for `tuneloop serve` and the ingest API (stored hashed, shown once)."""


@tokens_group.command("create")
@click.argument("name")
@click.option(
    "--scope",
    type=click.Choice(SCOPES),
    required=True,
    help="serve: call the served model; ingest: post records and feedback (feedback trains challengers).",
)
@output.json_option()
@pass_app
def create(app: AppContext, name: str, scope: str, as_json: bool) -> None:
    """Create a token; it is printed once and only its hash is kept."""
    from tuneloop.store.tokens import Scope

    value = app.registry.stores.tokens.create(name, Scope(scope))
    if as_json:
        output.emit_json({"name": name, "scope": scope, "token": value})
        return
    click.echo(value)
    click.echo(f"token `{name}` (scope {scope}) created; it is not shown again", err=True)


@tokens_group.command("list")
@output.json_option()
@pass_app
def listing(app: AppContext, as_json: bool) -> None:
    """Token names, scopes and dates (never the tokens)."""
    found = [
        {
            "name": t.name,
            "scope": str(t.scope),
            "created_at": t.created_at.isoformat(),
            "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None,
        }
        for t in app.registry.stores.tokens.all()
    ]
    output.rows(found, as_json, ["name", "scope", "created_at", "revoked_at"], empty="no tokens")


@tokens_group.command("revoke")
@click.argument("name")
@pass_app
def revoke(app: AppContext, name: str) -> None:
    """Revoke a token; servers refuse it within seconds."""
    app.registry.stores.tokens.revoke(name)
    click.echo(f"token `{name}` revoked")
