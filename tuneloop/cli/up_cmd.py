"""`tuneloop up`: the MLflow server (UI), the ingest API, the scheduler and the model servers — one
`tuneloop serve NAME` for each model a loop or monitor names, and each `--serve NAME` — as one
supervised group. A server follows its model's aliases by itself: when the loop promotes a challenger,
the running server answers with it, without a restart.

A status line is printed when the group is up and whenever a member's health changes (the
scheduler's role: active or standby). If a member exits, the others are stopped and `up` fails;
Ctrl-C or SIGTERM stops them all cleanly.
"""

from __future__ import annotations

import faulthandler
import signal
import time

import click

from tuneloop.cli import output
from tuneloop.cli.context import AppContext, pass_app
from tuneloop.errors import NotFound, StoreError


@click.command()
@click.option("--host", default=None, help="Bind address (default: settings `server.host`, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="MLflow UI port (default: settings `server.mlflow_port`, 5000).")
@click.option("--ingest-port", type=int, default=None, help="Ingest API port (default: settings `ingest.port`, 8765).")
@click.option(
    "--scheduler-port", type=int, default=None, help="Scheduler health port (default: settings `scheduler.port`, 8766)."
)
@click.option("--no-scheduler", is_flag=True, help="Serve MLflow and the ingest API only.")
@click.option(
    "--serve",
    "served",
    multiple=True,
    metavar="NAME",
    help="Also run `tuneloop serve NAME` (repeatable). Servers take `serve.port` (8767) and the ports after.",
)
@click.option(
    "--no-serve", is_flag=True, help="Serve only the `--serve` names, not every model a loop or monitor names."
)
@pass_app
def up(
    app: AppContext,
    host: str | None,
    port: int | None,
    ingest_port: int | None,
    scheduler_port: int | None,
    no_scheduler: bool,
    served: tuple[str, ...],
    no_serve: bool,
) -> None:
    """Start the MLflow server (UI), the ingest API and the loop's scheduler; Ctrl-C stops them cleanly.

    A second `tuneloop up` on the same database (on other ports) runs its scheduler as a standby that
    takes over when the active one's lease lapses.
    """
    from tuneloop.services import (
        health,
        start_ingest_server,
        start_mlflow_server,
        start_model_server,
        start_scheduler,
        stop,
        wait_healthy,
    )

    settings = app.settings
    host = host or settings.server.host
    output.stage("preparing stores")
    app.registry.mlflow  # noqa: B018 - creates and migrates MLflow's database before the server sees it
    app.registry.stores  # noqa: B018 - and tuneloop's (or checks both, with migrate_on_start false)
    urls = {
        "MLflow UI": f"http://{host}:{port or settings.server.mlflow_port}",
        "ingest API": f"http://{host}:{ingest_port or settings.ingest.port}",
        "scheduler": f"http://{host}:{scheduler_port or settings.scheduler.port}",
    }
    output.stage(f"starting the MLflow server on {urls['MLflow UI']}, the ingest API and the scheduler")
    members = {
        "MLflow UI": start_mlflow_server(settings, host, port or settings.server.mlflow_port),
        "ingest API": start_ingest_server(app.config_file, host, ingest_port or settings.ingest.port),
    }
    if not no_scheduler:
        members["scheduler"] = start_scheduler(app.config_file, host, scheduler_port or settings.scheduler.port)
    paths = {"MLflow UI": "/health", "ingest API": "/v1/health", "scheduler": "/health"}
    for name in served:
        app.registry.registered_model(name)  # an unknown NAME fails here, before anything waits on it
    for offset, name in enumerate(_models_to_serve(app, served, declared=not no_serve)):
        member, serve_port = f"serving {name}", settings.serve.port + offset
        urls[member], paths[member] = f"http://{host}:{serve_port}", "/health"
        members[member] = start_model_server(app.config_file, name, host, serve_port)
    stopping = False

    def _terminate(signum, frame):
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)  # also where SIGINT was inherited ignored (`nohup`)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints where every thread is (a stuck stop)
    try:
        for name, process in members.items():
            wait_healthy(urls[name], process, path=paths[name], what=f"the {name}")
        click.echo(
            f"tuneloop is up: MLflow UI at {urls['MLflow UI']}, ingest API at {urls['ingest API']}/v1/records"
            + (f", scheduler health at {urls['scheduler']}/health" if "scheduler" in members else "")
            + "".join(f", {n[len('serving ') :]} at {urls[n]}/v1" for n in members if n.startswith("serving "))
            + "   (Ctrl-C to stop)",
            err=True,
        )
        last = ""
        while all(p.poll() is None for p in members.values()):
            line = _status_line({n: health(urls[n] + paths[n]) for n in members})
            if line != last:
                click.echo(f"[{time.strftime('%H:%M:%S')}] {line}", err=True)
                last = line
            time.sleep(2)
        if not stopping:
            name, process = next((n, p) for n, p in members.items() if p.poll() is not None)
            raise StoreError(f"the {name} exited with code {process.returncode}", hint="read its output above")
    except KeyboardInterrupt:
        output.stage("shutting down")
    finally:
        stop(*members.values())
    click.echo("stopped", err=True)


def _models_to_serve(app: AppContext, named: tuple[str, ...], *, declared: bool) -> list[str]:
    """`named`, then (with `declared`) every registered model a loop or monitor names, each once."""
    from tuneloop.names import ModelRef

    names = list(named)
    if declared:
        stores = app.registry.stores
        names += [loop.model for loop in stores.loops.loops()]
        names += [ModelRef.parse(monitor.spec["model"]).name for monitor in stores.monitors.all()]
    registered = []
    for name in dict.fromkeys(names):
        try:
            app.registry.registered_model(name)
        except NotFound:
            output.stage(f"not serving {name}: a loop or monitor names it, but it is not registered")
            continue
        registered.append(name)
    return registered


def _status_line(states: dict) -> str:
    parts = []
    for name, state in states.items():
        if state is None:
            parts.append(f"{name}: not answering")
        elif name == "scheduler":
            lease = state.get("lease") or {}
            parts.append(
                f"scheduler: {state.get('role')}"
                + (f" (active: {lease.get('owner')})" if state.get("role") != "active" else "")
                + (f", {len(state.get('workers', []))} retrain worker(s)" if state.get("workers") else "")
            )
        else:
            parts.append(f"{name}: ok")
    return "; ".join(parts)
