"""`tuneloop monitor`: the ingest API and file ingestion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tuneloop.cli import output
from tuneloop.cli.context import AppContext, pass_app
from tuneloop.cli.options import FILE, add_definition_command, file_option, listen_options


@click.group()
def monitor() -> None:
    """Watch production: ingest what models answer, and check windows of it for drift."""


@monitor.command("serve")
@listen_options("Ingest API", "ingest.port", 8765)
@pass_app
def serve(app: AppContext, host: str | None, port: int | None) -> None:
    """Run the ingest API alone (`tuneloop up` runs it beside MLflow)."""
    from tuneloop.monitors.ingestion.api import serve as run

    run(app.settings, host, port)


@monitor.command("ingest")
@click.argument("path", type=FILE)
@output.json_option()
@pass_app
def ingest(app: AppContext, path: str, as_json: bool) -> None:
    """Store the records of a JSONL or CSV file (all or nothing; ids already stored are skipped)."""
    from tuneloop.monitors.ingestion.records import records_from_file, store

    parsed = records_from_file(Path(path), app.settings.ingest.max_text_chars)
    result = store(app.registry.stores, parsed, app.registry.models)
    if as_json:
        output.emit_json({"stored": result.stored, "duplicates": result.duplicates, "file": path})
        return
    click.echo(
        f"stored {result.stored} record(s) from {path}"
        + (f"; {result.duplicates} already stored" if result.duplicates else "")
    )


@monitor.command("backtest")
@file_option("--monitor", "monitor_file", required=True, help="Monitor YAML.")
@file_option(
    "--reference",
    default=None,
    help="Reference records (JSONL/CSV); default: the monitor's `reference.file`.",
)
@click.option("--current", required=True, type=FILE, help="Recorded production records (JSONL/CSV).")
@file_option(
    "--alert",
    "alert_file",
    default=None,
    help="An alert rule (YAML) to replay over the windows: the incidents it would have raised.",
)
@output.json_option("One JSON document: an entry per window with its drifted checks.")
@pass_app
def backtest_cmd(
    app: AppContext, monitor_file: str, reference: str | None, current: str, alert_file: str | None, as_json: bool
) -> None:
    """Run the monitor's checks over every window of CURRENT against REFERENCE, to tune it on history."""
    from tuneloop.errors import InvalidInput
    from tuneloop.monitors.backtest import backtest, read_records
    from tuneloop.monitors.monitor_spec import load_monitor

    spec = load_monitor(monitor_file)
    rule = None
    if alert_file is not None:
        from tuneloop.monitors.alerting.rules import load_rule

        rule = load_rule(alert_file)  # a bad rule fails before any window is checked
    if reference is None:
        if spec.reference is None or spec.reference.file is None:
            raise InvalidInput(f"monitor `{monitor_file}` names no reference file", hint="pass --reference FILE")
        reference = str(spec.reference.file)
    embedder = None
    if "embedding" in spec.checks:
        from tuneloop.monitors.drift.embedding import Embedder

        embedder = Embedder(Path(app.settings.cache_dir).expanduser() / "embeddings-minilm.sqlite")
    need_time = spec.window.kind == "time"
    outcome = backtest(
        spec,
        read_records(Path(reference)),
        read_records(Path(current), need_time=need_time),
        embedder=embedder,
        progress=not as_json and output.is_tty(),
    )
    result = outcome.as_dict()
    if rule is not None:
        from tuneloop.monitors.alerting.rules import incidents

        result["alerts"] = {
            "rule": rule.name,
            "severity": rule.severity,
            "incidents": [i.as_dict() for i in incidents(rule, [w for _, _, w in outcome.windows])],
        }
    if as_json:
        output.emit_json(result)
        return
    for w in result["windows"]:
        fired = ", ".join(w["drifted_checks"]) or "-"
        where = f"{w['start']} .. {w['end']}" if "start" in w else f"rows {w['first']}-{w['last']}"
        click.echo(f"window {w['index']:4d}  {where}  {w['size']:6d} records  {w['status']:15s}  {fired}")
    s = result["summary"]
    click.echo(f"{s['drifted']} of {s['judged']} judged windows drifted ({s['windows']} windows)")
    if rule is not None:
        found = result["alerts"]["incidents"]
        click.echo(f"alert `{rule.name}` ({rule.severity}) would have fired {len(found)} time(s)")
        for i in found:
            closed = (
                f"resolved at window {i['closed_at_window']}"
                if i["closed_at_window"] is not None
                else "still open at the last window"
            )
            click.echo(
                f"  fired at window {i['opened_at_window']}, after drift from window {i['streak_started_at_window']} "
                f"on; {closed}"
            )


add_definition_command(
    monitor,
    "monitor",
    "Declare the monitor in PATH (YAML; see examples/monitors/).",
    "tuneloop.monitors.service:add",
    lambda result: (
        f"monitor `{result['monitor']}` watches {result['model']} against {result['reference_records']} "
        f"reference records ({result['reference']}); check it with `tuneloop monitor check {result['monitor']}`"
    ),
)


@monitor.command("check")
@click.argument("name")
@click.option(
    "--latest",
    is_flag=True,
    help="Re-judge the newest records (the last `size` records, or the last "
    "`duration`) instead of the pending windows; logged, but no evidence for alert rules.",
)
@output.json_option()
@pass_app
def check_cmd(app: AppContext, name: str, latest: bool, as_json: bool) -> None:
    """Judge every window of the monitor that completed since the last check, log each to MLflow and apply
    its alert rules (exit 0 even on drift)."""
    from tuneloop.monitors.alerting.notify import deliver_pending
    from tuneloop.monitors.judging import check

    outcome = check(app.registry, name, latest=latest)
    n = app.settings.notify
    deliver_pending(
        app.registry.stores, timeout_s=n.timeout_seconds, max_attempts=n.max_attempts, base_delay_s=n.retry_base_seconds
    )
    if as_json:
        output.emit_json(outcome.as_dict())
        return
    for w in outcome.judged:
        fired = ", ".join(w["drifted_checks"]) or "none"
        again = " (re-judged: --latest)" if w.get("rejudged") else ""
        click.echo(
            f"{name} window {w['step']} ({_where(w)}): {w['status']}{again} ({w['size']} records; drifted checks: "
            f"{fired}); MLflow run {w['run_id']}"
        )
        for note in w["notes"]:
            click.echo(f"  note: {note}")
    if not outcome.judged:
        last = outcome.latest
        state = (
            f"the latest window ({_where(last)}) was {last['status']} ({last['size']} records)"
            if last
            else "no window judged yet"
        )
        click.echo(f"{name}: {state}")
    for note in outcome.notes:
        click.echo(f"  note: {note}")
    for c in outcome.alerts:
        click.echo(f"alert {c.alert_id} ({c.rule}) {c.kind}; `tuneloop alerts show {c.alert_id}`")
    for rule in outcome.rules:
        click.echo(f"rule `{rule['rule']}`: {rule['state']}")


def _where(window: dict[str, Any]) -> str:
    if window.get("first_seq") is not None:
        return f"records {window['first_seq']}-{window['last_seq']}"
    if window.get("start"):
        return f"{window['start']} .. {window['end']}"
    return f"up to record {window.get('last_seq')}"


@monitor.command("report")
@click.argument("name")
@click.option(
    "--window",
    "step",
    type=int,
    default=None,
    help="The window's number (its step in the monitor's "
    "MLflow run, as `monitor check` prints it); default: the newest.",
)
@output.json_option()
@pass_app
def report_cmd(app: AppContext, name: str, step: int | None, as_json: bool) -> None:
    """Log an Evidently report of one window against the monitor's reference (column summaries, text
    descriptors, under tuneloop's verdict) as an artifact of the monitor's MLflow run."""
    from tuneloop.monitors.service import report

    output.stage(f"building the Evidently report of a window of `{name}` (Evidently loads in a few seconds)")
    result = report(app.registry, name, step=step)
    if as_json:
        output.emit_json(result)
        return
    click.echo(
        f"{name} window {result['window']} ({result['status']}, {result['size']} records): Evidently report "
        f"`{result['artifact']}` in MLflow run {result['run_id']}"
    )


@monitor.command("status")
@output.json_option()
@pass_app
def status_cmd(app: AppContext, as_json: bool) -> None:
    """Every monitor's last state."""
    from tuneloop.monitors.service import status

    output.rows(
        status(app.registry),
        as_json,
        ["monitor", "model", "version", "state", "drifted_checks", "window_records", "checked_at"],
        shown=lambda r: {**r, "drifted_checks": ", ".join(r["drifted_checks"]) or "-"},
        empty="no monitors; add one with `tuneloop monitor add FILE`",
    )
