"""`tuneloop config`: show the resolved settings, secrets masked."""

from __future__ import annotations

import click

from tuneloop.cli import output
from tuneloop.cli.context import AppContext, pass_app


@click.group()
def config() -> None:
    """Inspect tuneloop's settings."""


@config.command("show")
@output.json_option()
@pass_app
def show(app: AppContext, as_json: bool) -> None:
    """The settings in force (tuneloop.toml + TUNELOOP_* variables), with secrets masked."""
    data = app.settings.public_dict()
    if as_json:
        output.emit_json(data)
        return
    for key, value in data.items():
        if isinstance(value, dict):
            click.echo(f"[{key}]")
            for k, v in value.items():
                click.echo(f"  {k} = {v}")
        else:
            click.echo(f"{key} = {value}")
