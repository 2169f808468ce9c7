"""`tuneloop db`: schema versions of MLflow's store and tuneloop's tables, and their explicit upgrade."""

from __future__ import annotations

import click

from tuneloop.cli import output
from tuneloop.cli.context import AppContext, pass_app


@click.group("db")
def db_group() -> None:
    """The two databases (MLflow's store, tuneloop's tables): check what is pending, upgrade them."""


def _show(found: list, as_json: bool) -> None:
    if as_json:
        output.emit_json({"up_to_date": all(s.up_to_date for s in found), "stores": [s.as_dict() for s in found]})
        return
    for s in found:
        shown = ", ".join(s.pending) if len(s.pending) <= 4 else f"{s.pending[0]} … {s.pending[-1]}"
        state = "up to date" if s.up_to_date else f"{len(s.pending)} migration(s) pending ({shown})"
        click.echo(f"{s.store:9s} {s.url}\n          at {s.current or '(no tables)'}, head {s.head}: {state}")


@db_group.command("check")
@output.json_option()
@pass_app
def check(app: AppContext, as_json: bool) -> None:
    """Report each database's schema revision and the migrations pending; exit 1 when any are."""
    from tuneloop.store.schema import status

    found = status(app.settings)
    _show(found, as_json)
    if not all(s.up_to_date for s in found):
        if not as_json:
            click.echo("run `tuneloop db upgrade` (take a backup first)", err=True)
        raise click.exceptions.Exit(1)


@db_group.command("upgrade")
@output.json_option()
@pass_app
def upgrade_cmd(app: AppContext, as_json: bool) -> None:
    """Apply every pending migration of MLflow's store and of tuneloop's tables (safe to rerun; two
    concurrent runs on PostgreSQL serialise on a lock)."""
    from tuneloop.store.schema import upgrade

    _show(upgrade(app.settings), as_json)
