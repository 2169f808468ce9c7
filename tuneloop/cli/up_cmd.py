"""`tuneloop up`: the MLflow server (UI) and the ingest API on tuneloop's stores, supervised until Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import click

from tuneloop.cli import output
from tuneloop.cli.main import AppContext, pass_app
from tuneloop.errors import StoreError

HEALTH_TIMEOUT_S = 120


def start_mlflow_server(settings, host: str, port: int) -> subprocess.Popen:  # type: ignore[no-untyped-def]
    """Start `mlflow server` on the configured stores; the store URI travels by environment, not argv."""
    env = dict(os.environ, MLFLOW_BACKEND_STORE_URI=settings.mlflow_uri, MLFLOW_REGISTRY_STORE_URI=settings.mlflow_uri)
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--default-artifact-root", settings.artifact_root,
        "--no-serve-artifacts",
        "--host", host,
        "--port", str(port),
        "--workers", "1",  # SQLite allows one writer; MLflow's own advice for a file store
    ]
    return subprocess.Popen(command, env=env, start_new_session=True)


def start_ingest_server(config_file: str | None, host: str, port: int) -> subprocess.Popen:  # type: ignore[type-arg]
    command = [sys.executable, "-m", "tuneloop", *(["--config", config_file] if config_file else []),
               "monitor", "serve", "--host", host, "--port", str(port)]
    return subprocess.Popen(command, start_new_session=True)


def wait_healthy(url: str, process: subprocess.Popen, timeout_s: float = HEALTH_TIMEOUT_S,  # type: ignore[type-arg]
                 path: str = "/health", what: str = "the MLflow server") -> None:
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StoreError(
                f"{what} exited with code {process.returncode} before it was ready",
                hint="read its output above; another process may hold the port",
            )
        try:
            with urllib.request.urlopen(url + path, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise StoreError(f"{what} did not answer on {url} within {timeout_s:.0f} s", hint="check the port and the logs")


def stop(process: subprocess.Popen, grace_s: float = 10) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@click.command()
@click.option("--host", default=None, help="Bind address (default: settings `server.host`, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="MLflow UI port (default: settings `server.mlflow_port`, 5000).")
@click.option("--ingest-port", type=int, default=None, help="Ingest API port (default: settings `ingest.port`, 8765).")
@pass_app
def up(app: AppContext, host: str | None, port: int | None, ingest_port: int | None) -> None:
    """Start the MLflow server (UI) and the ingest API on tuneloop's stores; Ctrl-C stops both cleanly."""
    from registry.db import get_engine
    from registry.tracking import connect

    settings = app.settings
    host = host or settings.server.host
    port = port or settings.server.mlflow_port
    output.stage("preparing stores")
    connect(settings)  # creates and migrates MLflow's database before the server sees it
    get_engine(settings.database_url)
    url = f"http://{host}:{port}"
    output.stage(f"starting MLflow server on {url}")
    process = start_mlflow_server(settings, host, port)
    ingest_port = ingest_port or settings.ingest.port
    ingest_url = f"http://{host}:{ingest_port}"
    ingest = start_ingest_server(app.config_file, host, ingest_port)
    stopping = False

    def _terminate(signum, frame):  # type: ignore[no-untyped-def]
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    try:
        wait_healthy(url, process)
        wait_healthy(ingest_url, ingest, path="/v1/health", what="the ingest API")
        click.echo(f"tuneloop is up: MLflow UI at {url}, ingest API at {ingest_url}/v1/records   (Ctrl-C to stop)", err=True)
        while process.poll() is None and ingest.poll() is None:
            time.sleep(1)
        if not stopping:
            which, code = ("the MLflow server", process.returncode) if process.poll() is not None else ("the ingest API", ingest.returncode)
            raise StoreError(f"{which} exited with code {code}", hint="read its output above")
    except KeyboardInterrupt:
        output.stage("shutting down")
    finally:
        stop(ingest)
        stop(process)
    click.echo("stopped", err=True)
