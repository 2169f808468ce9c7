"""`tuneloop traffic`: how a served model's requests are split between its champion and a challenger
(canary) or mirrored to the challenger (shadow)."""

from __future__ import annotations

from typing import Any

import click

from tuneloop.cli import output
from tuneloop.cli.context import AppContext, pass_app
from tuneloop.cli.options import FILE


@click.group("traffic")
def traffic_group() -> None:
    """Canary and shadow traffic to a challenger: the policy every `tuneloop serve` of a model follows."""


@traffic_group.command("set")
@click.argument("name")
@click.argument("policy_file", metavar="FILE", type=FILE)
@click.option("--reason", default="", help="Why, for the audit trail.")
@output.json_option()
@pass_app
def set_command(app: AppContext, name: str, policy_file: str, reason: str, as_json: bool) -> None:
    """Set NAME's traffic policy from a YAML FILE (an empty file turns canary and shadow off).

    \b
    canary: {alias: challenger, share: 0.1, sticky_by: user}
    shadow: {alias: challenger, share: 0.25, min_pairs: 600}
    """
    from tuneloop.registry.traffic import load_policy, set_policy

    stored = set_policy(app.registry, name, load_policy(policy_file), reason=reason)
    _print(app, stored, as_json, note=f"servers of `{name}` follow within {app.settings.serve.reload_seconds:g} s")


@traffic_group.command("show")
@click.argument("name")
@output.json_option()
@pass_app
def show_command(app: AppContext, name: str, as_json: bool) -> None:
    """NAME's traffic policy, which version each alias it names holds, and each server's latest figures per
    version (requests, completion tokens/s, p50/p95 latency, errors, 429s: its serving run in MLflow)."""
    from tuneloop.registry import serving_figures
    from tuneloop.registry.traffic import show_policy

    _print(app, show_policy(app.registry, name), as_json, servers=serving_figures.latest(app.registry, name))


def _print(app: AppContext, stored: Any, as_json: bool, note: str = "", servers: list[Any] | None = None) -> None:
    aliases = {a: int(v) for a, v in (app.registry.registered_model(stored.model).aliases or {}).items()}
    policy = stored.policy
    named = ["champion"] + [p.alias for p in (policy.canary, policy.shadow) if p is not None]
    document = {
        "model": stored.model,
        "policy": policy.model_dump(mode="json", exclude_none=True),
        "summary": policy.summary(),
        "holders": {alias: aliases.get(alias) for alias in dict.fromkeys(named)},
        "set_by": stored.set_by,
        "set_at": stored.set_at.isoformat() if stored.set_at else None,
    }
    if servers is not None:
        document["servers"] = [
            {
                "address": s.address,
                "status": s.status,
                "run_id": s.run_id,
                "versions": {str(v): f for v, f in sorted(s.figures.items())},
                "server": s.server,
            }
            for s in servers
        ]
    if as_json:
        output.emit_json(document)
        return
    click.echo(f"{stored.model}: {document['summary']}")
    for alias, version in document["holders"].items():
        click.echo(
            f"  @{alias}: {f'v{version}' if version is not None else 'no holder (its share goes to the champion)'}"
        )
    if stored.set_by:
        click.echo(f"  set by {stored.set_by} at {document['set_at'][:19]}")
    for server in document.get("servers", []):
        state = "serving" if server["status"] == "RUNNING" else "stopped"
        click.echo(f"  server {server['address']} ({state}; run {server['run_id']}), its latest interval:")
        for version, f in server["versions"].items():
            latency = (
                f", p50 {f['latency_p50_ms']:.0f} ms, p95 {f['latency_p95_ms']:.0f} ms" if "latency_p95_ms" in f else ""
            )
            click.echo(
                f"    v{version}: {f.get('requests', 0):.0f} requests ({f.get('requests_total', 0):.0f} in all), "
                f"{f.get('completion_tokens_per_s', 0):.1f} completion tokens/s{latency}, "
                f"{f.get('errors', 0):.0f} errors, {f.get('rejected_429', 0):.0f} refused (429)"
                + (f", {f['shadow_answers']:.0f} shadow answers" if f.get("shadow_answers") else "")
            )
    if note:
        click.echo(note, err=True)
