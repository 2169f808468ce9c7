"""`tuneloop serve NAME`: the OpenAI-compatible API over the registered versions of NAME."""

from __future__ import annotations

import click

from tuneloop.cli import output
from tuneloop.cli.context import AppContext, pass_app
from tuneloop.cli.options import listen_options


@click.command()
@click.argument("name")
@listen_options("Serving API", "serve.port", 8767)
@pass_app
def serve(app: AppContext, name: str, host: str | None, port: int | None) -> None:
    """Serve NAME's versions over an OpenAI-compatible API until Ctrl-C/SIGTERM: `model` is NAME@ALIAS or
    NAME:VERSION (default NAME@champion); every answer is stored as a record of the version that gave it."""
    from tuneloop.services import run_http
    from tuneloop.serving.api import create_app

    settings = app.settings
    host, port = host or settings.server.host, port or settings.serve.port
    api = create_app(settings, name)
    output.stage(f"serving {name} on http://{host}:{port}/v1 (OpenAI-compatible; Ctrl-C to stop)")
    try:
        run_http(api, host, port)
    finally:
        api.state.shadows.shutdown(wait=True)  # shadow work already routed reaches its batcher
        api.state.host.close()  # running batches finish, and their records are written before the recorder stops
        api.state.recorder.close()
    click.echo("stopped", err=True)
