"""`tuneloop demo`: the whole loop on the embedded stores, offline, on a CPU (see `tuneloop.demo.run`)."""

from __future__ import annotations

import time
from typing import Any

import click

from tuneloop.cli import output
from tuneloop.cli.context import AppContext, pass_app


@click.command()
@click.option(
    "--steps",
    type=click.IntRange(1, 10_000),
    default=None,
    help="Training steps of the champion (default 60); the challenger, with twice the data, trains twice as long.",
)
@click.option("--quick", is_flag=True, help="A smoke run: 6/12 steps, 6 eval rows, 8 held-out rows (about a minute).")
@click.option(
    "--webhook", "webhooks", multiple=True, metavar="URL", help="Also POST the alert and the decision to URL."
)
@output.json_option("Print the summary as one JSON document on stdout.")
@pass_app
def demo(app: AppContext, steps: int | None, quick: bool, webhooks: tuple[str, ...], as_json: bool) -> None:
    """The closed loop on SmolLM2-135M-Instruct: fine-tune, evaluate, promote, monitor, drift, alert, retrain, decide.

    Offline, on the embedded stores: about 9 min on 2 CPU cores with the converted model cached, about
    1 min more the first time (measured: README, "What the demo does"). Everything it declares is written
    under <home>/demo/; everything it records is in MLflow (`tuneloop up` serves the UI).
    """
    import os
    import socket
    import uuid

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tuneloop.demo.run import QUICK, Demo, DemoConfig, ingest_over_http
    from tuneloop.services import start_ingest_server, stop, wait_healthy
    from tuneloop.store.tokens import Scope

    started = time.monotonic()
    settings = app.settings
    sizes: dict[str, Any] = dict(QUICK) if quick else {}
    if steps:
        sizes.update(train_steps=steps, retrain_steps=2 * steps)
    cfg = DemoConfig(**sizes)
    output.stage(f"stores under {settings.home}; demo files under {settings.home / 'demo'}")
    rc = app.registry
    token = rc.stores.tokens.create(f"demo-{uuid.uuid4().hex[:8]}", Scope.INGEST)
    with socket.socket() as s:  # a free port: a running `tuneloop up` may hold the configured one
        s.bind((settings.server.host, 0))
        port = s.getsockname()[1]
    ingest = start_ingest_server(app.config_file, settings.server.host, port)
    url = f"http://{settings.server.host}:{port}"
    ui = f"http://{settings.server.host}:{settings.server.mlflow_port}/#/models/{cfg.adapter}"
    try:
        wait_healthy(url, ingest, path="/v1/health", what="the ingest API")
        result = Demo(rc, cfg, output.stage, app.config_file).run(ingest_over_http(url, token), ui, list(webhooks))
    finally:
        stop(ingest)
    result["seconds"] = round(time.monotonic() - started, 1)
    if as_json:
        output.emit_json(result)
        return
    _print_summary(result)


def _print_summary(s: dict) -> None:
    click.echo("")
    click.echo(f"champion: {s['model']} v{s['champion']['version']}")
    drifted = [w for w in s["windows"] if w["status"] == "drift"]
    click.echo(
        f"monitor: {len(s['windows'])} windows judged, {len(drifted)} drifted; checks that fired: {', '.join(s['drifted']) or '-'}"
    )
    for a in s["alerts"]:
        click.echo(f"alert {a['id']} ({a['rule']}, {a['severity']}): {a['status']}, opened {a['opened_at']}")
    r = s["retrain"]
    if r["id"] is None:
        click.echo("no retrain: no alert fired")
    else:
        click.echo(
            f"retrain {r['id']}: {r['state']}"
            + (f", challenger v{r['challenger_version']}" if r["challenger_version"] else "")
            + (f" — {r['error']}" if r["error"] else "")
        )
        if r["data"]:
            d = r["data"]
            click.echo(
                f"  data: {d['champion_rows']} champion rows + {d.get('new_rows_kept', d['new_training_rows'])} reviewed "
                "production rows; "
                f"{d['held_out_rows']} held out as task `production-holdout`"
            )
    rows = []
    for who, e in s["comparison"].items():
        for task, metrics in e["tasks"].items():
            rows.append(
                {
                    "model": f"{who} v{e['version']}",
                    "task": task,
                    **{k: f"{v:.3f}" for k, v in metrics.items() if k in ("rougeL", "chrf")},
                }
            )
    if rows:
        click.echo(output.table(rows, ["model", "task", "rougeL", "chrf"]))
    if s["decision"]:
        click.echo(f"decision: {s['decision']['action']} — {s['decision']['why']}")
    click.echo(f"\nSee it in the MLflow UI: run `tuneloop up`, then open {s['mlflow_ui']}   ({s['seconds']} s)")
