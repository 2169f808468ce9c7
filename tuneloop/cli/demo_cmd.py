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
    help="Training steps of the champion (default 40); the challenger, with twice the data, trains twice as long.",
)
@click.option(
    "--quick",
    is_flag=True,
    help="A smoke run: 6/12 steps, 6 eval rows, 8 held-out rows, windows of 50, answers of <= 12 tokens.",
)
@click.option(
    "--webhook", "webhooks", multiple=True, metavar="URL", help="Also POST the alert and the decision to URL."
)
@output.json_option("Print the summary as one JSON document on stdout.")
@pass_app
def demo(app: AppContext, steps: int | None, quick: bool, webhooks: tuple[str, ...], as_json: bool) -> None:
    """The closed loop on SmolLM2-135M-Instruct: fine-tune, evaluate, promote, serve, monitor, drift, alert, retrain,
    promote, serve the new champion.

    Offline, on the embedded stores; the production prompts are answered by `tuneloop serve` through the
    openai client; before it decides, the challenger shadows the champion on live prompts. It takes about 7 min on
    2 CPU cores of a recent Xeon, 15 on a 3x slower VM (measured: README, "What the demo does"). Everything it
    declares is written under <home>/demo/; everything it records is in MLflow (`tuneloop up` serves the UI).
    """
    import functools
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tuneloop.demo.live import served
    from tuneloop.demo.run import QUICK, SYSTEM, Demo, DemoConfig

    started = time.monotonic()
    settings = app.settings
    sizes: dict[str, Any] = dict(QUICK) if quick else {}
    if steps:
        sizes.update(train_steps=steps, retrain_steps=2 * steps)
    cfg = DemoConfig(**sizes)
    output.stage(f"stores under {settings.home}; demo files under {settings.home / 'demo'}")
    rc = app.registry
    production = functools.partial(served, rc, app.config_file, system=SYSTEM, max_tokens=cfg.answer_tokens)
    ui = f"http://{settings.server.host}:{settings.server.mlflow_port}/#/models/{cfg.adapter}"
    result = Demo(rc, cfg, output.stage, app.config_file).run(production, ui, list(webhooks))
    result["seconds"] = round(time.monotonic() - started, 1)
    if as_json:
        output.emit_json(result)
        return
    _print_summary(result)


def _print_summary(s: dict) -> None:
    click.echo("")
    click.echo(f"champion: {s['model']} v{s['champion']['version']}")
    for version in dict.fromkeys(w["version"] for w in s["windows"]):
        windows = [w for w in s["windows"] if w["version"] == version]
        statuses = ", ".join(f"{w['window_id']} {w['status']}" for w in windows)
        click.echo(f"monitor, windows of v{version}'s answers: {statuses}")
    click.echo(f"checks that fired: {', '.join(s['drifted']) or '-'}")
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
    shadow = s.get("shadow") or {}
    if "pairs" in shadow:
        measured = (shadow.get("evaluation") or {}).get("metrics", {})
        click.echo(f"shadow: {shadow['pairs']} live prompts answered by both ({shadow['ended']})")
        for name, what in (("refusal_rate", "refusal rate"), ("language_share", "answers in the prompt's language")):
            if f"shadow_{name}_delta" in measured:
                delta, low, high = (measured[f"shadow_{name}_delta{end}"] for end in ("", "_lo", "_hi"))
                click.echo(f"  {what}, challenger - champion: {delta:+.3f} [{low:+.3f}, {high:+.3f}]")
        if measured:
            click.echo(f"  answers that agree exactly: {measured['shadow_agreement_exact_match']:.0%}")
    if s["decision"]:
        click.echo(f"decision: {s['decision']['action']} — {s['decision']['why']}")
    if len(s["answers"]["by"]) == 2:
        click.echo(f"\nthe same prompt, answered by the served champion before and after: {s['answers']['prompt']!r}")
        for answer in s["answers"]["by"]:
            click.echo(f"  v{answer['version']}: {answer['text']!r}")
    production = s.get("production") or {}
    if production.get("experiment_id"):
        click.echo(
            f"\nproduction in MLflow: {production['traces']} served requests are traces in experiment "
            f"`{production['experiment']}` (its Traces tab), beside one run per server with figures per version"
        )
    click.echo(f"\nSee it in the MLflow UI: run `tuneloop up`, then open {s['mlflow_ui']}   ({s['seconds']} s)")
