"""`tuneloop serve NAME`: the OpenAI-compatible API over the registered versions of NAME."""

from __future__ import annotations

import os

import click

from tuneloop.cli import output
from tuneloop.cli.context import AppContext, pass_app
from tuneloop.cli.options import listen_options

# MLflow's HTTP client retries a failed call 7 times over about 4 minutes; a server asks MLflow on a
# request's path only to refresh an alias (its last answer stands when MLflow is unreachable).
_MLFLOW_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}  # fmt: skip


@click.command()
@click.argument("name")
@listen_options("Serving API", "serve.port", 8767)
@pass_app
def serve(app: AppContext, name: str, host: str | None, port: int | None) -> None:
    """Serve NAME's versions over an OpenAI-compatible API until Ctrl-C/SIGTERM: `model` is NAME@ALIAS or
    NAME:VERSION (default NAME@champion); every answer is stored as a record of the version that gave it."""
    from tuneloop.services import run_http
    from tuneloop.serving.api import create_app

    for variable, value in _MLFLOW_HTTP.items():  # a stopped MLflow server costs a request seconds, not minutes
        os.environ.setdefault(variable, value)

    settings = app.settings
    host, port = host or settings.server.host, port or settings.serve.port
    api = create_app(settings, name, address=f"{host}:{port}")
    output.stage(f"serving {name} on http://{host}:{port}/v1 (OpenAI-compatible; Ctrl-C to stop)")
    try:
        run_http(api, host, port)
    finally:
        api.state.close()  # nothing answered is lost: batches finish, records are written, then traced
    click.echo("stopped", err=True)
