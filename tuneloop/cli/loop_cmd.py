"""The closed loop on the command line: alert rules and alerts, retraining loops and runs, the scheduler.

tuneloop alerts add RULE.yaml | list | show ID
tuneloop loop add LOOP.yaml | list
tuneloop retrain LOOP [--json]        queue a retrain and run it now (a worker subprocess)
tuneloop retrain list | show ID
tuneloop scheduler run | status       (`tuneloop up` runs the scheduler for you)
"""

from __future__ import annotations

import click

from tuneloop.cli import output
from tuneloop.cli.context import AppContext, pass_app
from tuneloop.cli.options import add_definition_command, listen_options

JSON = output.json_option()


# --- alerts -------------------------------------------------------------------------------------
@click.group("alerts")
def alerts_group() -> None:
    """Alert rules (YAML) on monitors, and the alerts they raised (one per incident)."""


add_definition_command(
    alerts_group,
    "rule",
    "Store the alert rule in PATH (see examples/alerts/); it applies from the monitor's next check.",
    "tuneloop.monitors.alerting.alerts:add_rule",
    lambda result: (
        f"alert rule `{result['rule']}` watches monitor `{result['monitor']}`: fires when "
        f"{result['condition']} in {result['for_windows']} judged window(s) in a row, severity {result['severity']}"
    ),
)


@alerts_group.command("list")
@click.option(
    "--status", type=click.Choice(["open", "resolved", "superseded"]), default=None, help="Only alerts in this state."
)
@click.option("--monitor", default=None, help="Only alerts of this monitor.")
@JSON
@pass_app
def alerts_list(app: AppContext, status: str | None, monitor: str | None, as_json: bool) -> None:
    """Alerts, oldest first."""
    from tuneloop.monitors.alerting.alerts import list_alerts

    def drifted(checks: list[str]) -> str:
        return ", ".join(checks[:3]) + (f" (+{len(checks) - 3} more)" if len(checks) > 3 else "") if checks else "-"

    output.rows(
        list_alerts(app.registry, status=status, monitor=monitor),
        as_json,
        ["id", "rule", "monitor", "severity", "status", "opened_at", "drifted"],
        shown=lambda r: {**r, "drifted": drifted(r["summary"]["drifted_checks"])},
        empty="no alerts",
    )
    from tuneloop.monitors.alerting.alerts import explain_rules, rules_of

    for name in sorted({r.monitor for r in rules_of(app.registry) if r.monitor} if monitor is None else {monitor}):
        for rule in explain_rules(app.registry, name):
            click.echo(f"rule `{rule['rule']}` on {name}: {rule['state']}")


@alerts_group.command("show")
@click.argument("alert_id", type=int)
@JSON
@pass_app
def alerts_show(app: AppContext, alert_id: int, as_json: bool) -> None:
    """One alert with its windows, notifications and every delivery attempt."""
    from tuneloop.monitors.alerting.alerts import get
    from tuneloop.monitors.alerting.notify import for_alert

    alert = get(app.registry, alert_id) | {"notifications": for_alert(app.registry.stores, alert_id)}
    if as_json:
        output.emit_json(alert)
        return
    summary = alert["summary"]
    click.echo(
        f"alert {alert['id']} ({alert['rule']}, {alert['severity']}): {alert['status']}\n"
        f"  monitor {alert['monitor']} on {alert['model']}; condition {summary['condition']} held for "
        f"{summary['for_windows']} window(s): {summary['window_ids']}\n"
        f"  drifted: {', '.join(summary['drifted_checks']) or '-'}\n"
        f"  opened {alert['opened_at']}"
        + (f", closed {alert['closed_at']}" if alert["closed_at"] else "")
        + f"; MLflow run {alert['mlflow_run_id'] or '(not mirrored yet)'}"
    )
    for n in alert["notifications"]:
        tries = (
            ", ".join(f"#{a['attempt']} {'ok' if a['ok'] else a['detail']}" for a in n["attempts"]) or "not tried yet"
        )
        click.echo(f"  {n['event']} -> {n['sink']}: {n['state']} ({tries})")


# --- loops and retraining -----------------------------------------------------------------------
@click.group("loop")
def loop_group() -> None:
    """Retraining loops: which monitors the scheduler checks, which alerts and crontab retrain, how to decide."""


def _describe_loop(result: dict) -> str:
    triggers = [f"incidents of {', '.join(f'`{a}`' for a in result['on_alerts'])}"] if result["on_alerts"] else []
    triggers += [f"cron `{result['cron']}` (UTC)"] if result["cron"] else []
    return (
        f"loop `{result['loop']}` retrains {result['model']} on {' and '.join(triggers) or 'demand only'} "
        f"(promotion: {result['promotion']})"
    )


add_definition_command(
    loop_group,
    "loop",
    "Store the loop in PATH (see examples/loops/); a running scheduler picks it up within seconds.",
    "tuneloop.pipelines.loop.retrain:add_loop",
    _describe_loop,
)


@loop_group.command("list")
@JSON
@pass_app
def loop_list(app: AppContext, as_json: bool) -> None:
    """Declared loops."""
    from tuneloop.pipelines.loop.retrain import loops

    output.rows(
        [s.model_dump(mode="json") for s in loops(app.registry)],
        as_json,
        ["name", "model", "monitors", "on_alerts", "cron", "promotion"],
        shown=lambda r: {
            **r,
            "monitors": ", ".join(m["name"] for m in r["monitors"]) or "-",
            "on_alerts": ", ".join(r["on_alerts"]) or "-",
        },
        empty="no loops",
    )


class _LoopOrCommand(click.Group):
    """`tuneloop retrain LOOP` queues and runs; a first word naming a subcommand runs that instead."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["now", *args]
        return super().parse_args(ctx, args)


@click.group("retrain", cls=_LoopOrCommand)
def retrain_group() -> None:
    """Retraining runs: `tuneloop retrain LOOP` queues one and runs it now; `list` and `show` report them."""


@retrain_group.command("now")
@click.argument("loop_name")
@JSON
@pass_app
def retrain_now(app: AppContext, loop_name: str, as_json: bool) -> None:
    """Queue a retrain of LOOP and run it in a worker subprocess, showing each stage."""
    from tuneloop.pipelines.loop.retrain import enqueue
    from tuneloop.pipelines.loop.worker import follow

    run_id, _ = enqueue(app.registry, loop_name, "manual")

    def show(state: str) -> None:
        if not as_json:
            output.stage(f"retrain {run_id}: {state}")

    def progress(text: str) -> None:
        if not as_json:
            click.echo(f"    {text}", err=True)

    row = follow(app.registry, app.config_file, run_id, show, on_progress=progress)
    if as_json:
        output.emit_json(row)
        return
    print_run(row)


def print_run(row: dict) -> None:
    click.echo(
        f"retrain {row['id']} of {row['model']} ({row['trigger']}): {row['state']}"
        + (f", challenger v{row['version']}" if row["version"] else "")
        + (f" — {row['error']}" if row["error"] else "")
    )
    decision = row["details"].get("decision")
    if decision:
        click.echo(f"  decision: {decision['action']} — {decision['why']}")


@retrain_group.command("list")
@JSON
@pass_app
def retrain_list(app: AppContext, as_json: bool) -> None:
    """Every retraining run and its state."""
    from tuneloop.pipelines.loop.retrain import list_runs

    output.rows(
        list_runs(app.registry),
        as_json,
        ["id", "loop", "trigger", "state", "attempts", "version", "decision", "updated_at"],
        shown=lambda r: {**r, "decision": r["details"].get("decision", {}).get("action")},
        empty="no retraining runs",
    )


@retrain_group.command("show")
@click.argument("run_id", type=int)
@JSON
@pass_app
def retrain_show(app: AppContext, run_id: int, as_json: bool) -> None:
    """One retraining run: data counts, both evaluations, the decision."""
    from tuneloop.pipelines.loop.retrain import get

    row = get(app.registry, run_id)
    if as_json:
        output.emit_json(row)
        return
    print_run(row)
    details = row["details"]
    if details.get("data"):
        click.echo("  data: " + ", ".join(f"{k} {v}" for k, v in details["data"]["counts"].items()))
    for who, e in details.get("evals", {}).items():
        for task, metrics in e["tasks"].items():
            shown = ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            click.echo(f"  {who} v{e['version']} on {task}: {shown}   (eval run {e['run_id']})")


@retrain_group.command("cancel")
@click.argument("run_id", type=int)
@click.option("--reason", default="", show_default=False, help="Why; recorded on the run and in the notification.")
@JSON
@pass_app
def retrain_cancel(app: AppContext, run_id: int, reason: str, as_json: bool) -> None:
    """End retraining run RUN_ID for good: its worker stops, nothing resumes it, the reason is recorded."""
    from tuneloop.pipelines.loop.retrain import cancel

    row = cancel(app.registry, run_id, reason)
    if as_json:
        output.emit_json(row)
        return
    print_run(row)


# --- the scheduler ------------------------------------------------------------------------------
@click.group("scheduler")
def scheduler_group() -> None:
    """The loop's scheduler: one active per database, others stand by (`tuneloop up` runs one)."""


@scheduler_group.command("run")
@listen_options("Health endpoint", "scheduler.port", 8766)
@pass_app
def scheduler_run(app: AppContext, host: str | None, port: int | None) -> None:
    """Run the scheduler until SIGTERM/Ctrl-C: active while it holds the lease, standby otherwise."""
    import logging
    import signal
    import threading

    from tuneloop.pipelines.loop.scheduler import LoopScheduler, serve_health

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    scheduler = LoopScheduler(app.registry, app.config_file)
    server = serve_health(scheduler, host or app.settings.server.host, port or app.settings.scheduler.port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    bound = server.server_address[0]
    bound = bound.decode() if isinstance(bound, bytes) else bound
    click.echo(
        f"scheduler {scheduler.owner}: health at http://{bound}:{server.server_port}/health",
        err=True,
    )
    try:
        scheduler.run(stop)
    except KeyboardInterrupt:
        stop.set()
    finally:
        server.shutdown()
    click.echo("scheduler stopped", err=True)
    # A job still running (a check, a dispatch waiting on the database) is abandoned, not awaited: every job
    # is idempotent and its writes are transactions, so the next active scheduler redoes it. Python would
    # otherwise wait at exit for APScheduler's pool threads, holding up shutdown and takeover.
    import os
    import sys

    sys.stderr.flush()
    sys.stdout.flush()
    os._exit(0)


@scheduler_group.command("status")
@JSON
@pass_app
def scheduler_status(app: AppContext, as_json: bool) -> None:
    """Which scheduler holds the lease, and the retraining queue."""
    from tuneloop.pipelines.loop.retrain import list_runs
    from tuneloop.pipelines.loop.scheduler import LEASE
    from tuneloop.store.loops import TERMINAL

    held = app.registry.stores.leases.holder(LEASE)
    lease = held.as_dict() if held else None
    queue = [
        {"id": r["id"], "state": r["state"], "loop": r["loop"]}
        for r in list_runs(app.registry)
        if r["state"] not in TERMINAL
    ]
    result = {"lease": lease, "queue": queue}
    if as_json:
        output.emit_json(result)
        return
    if lease is None:
        click.echo("no scheduler has run on this database")
    else:
        click.echo(
            f"scheduler lease: {lease['owner']} ({'live' if lease['live'] else 'lapsed'}, until {lease['expires_at']})"
        )
    click.echo(
        f"{len(queue)} retraining run(s) not finished"
        + "".join(f"\n  {q['id']} {q['loop']}: {q['state']}" for q in queue)
    )
