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
    """NAME's traffic policy, and which version each alias it names holds."""
    from tuneloop.registry.traffic import show_policy

    _print(app, show_policy(app.registry, name), as_json)


def _print(app: AppContext, stored: Any, as_json: bool, note: str = "") -> None:
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
    if note:
        click.echo(note, err=True)
