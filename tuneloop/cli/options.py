"""Option shapes the commands share: paths, options generated from an options class, and the
`add PATH [--replace]` command of every YAML definition (monitors, alert rules, loops)."""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from tuneloop.cli import output
from tuneloop.cli.context import AppContext, pass_app
from tuneloop.optionspec import OptionSpec, spec_of

FILE = click.Path(dir_okay=False)
FOLDER = click.Path(file_okay=False)


def file_option(*decls: str, help: str, **kwargs: Any) -> Any:
    """An option naming a file (a folder is refused by click with a clear message)."""
    return click.option(*decls, type=FILE, help=help, **kwargs)


def folder_option(*decls: str, help: str, **kwargs: Any) -> Any:
    return click.option(*decls, type=FOLDER, help=help, **kwargs)


def listen_options(what: str, port_setting: str, default_port: int) -> Callable[[Any], Any]:
    """`--host` and `--port` of a server command; None leaves them to the settings."""

    def declare(command: Any) -> Any:
        command = click.option(
            "--port",
            type=click.IntRange(1, 65535),
            default=None,
            help=f"{what} port (default: settings `{port_setting}`, {default_port}).",
        )(command)
        return click.option("--host", default=None, help=f"{what} address (default: settings `server.host`).")(command)

    return declare


def options_of(options_class: type) -> Callable[[Any], Any]:
    """Declare one click option per field of `options_class` made with `tuneloop.optionspec.option`,
    in field order: `--field-name` (or the spec's off flag), its default, bounds and help."""

    def declare(command: Any) -> Any:
        for field in reversed(dataclasses.fields(options_class)):
            spec = spec_of(field)
            if spec is not None:
                command = _click_option(field, spec)(command)
        return command

    return declare


def options_from(options_class: type, parsed: dict[str, Any]) -> Any:
    """The `options_class` instance for what click parsed into `parsed` (its keys are popped)."""
    chosen: dict[str, Any] = {}
    for field in dataclasses.fields(options_class):
        spec = spec_of(field)
        if spec is None:
            continue
        if spec.off_flag:
            chosen[field.name] = not parsed.pop(_dest(spec.off_flag))
        elif spec.comma_list:
            chosen[field.name] = tuple(c.strip().lower() for c in parsed.pop(field.name).split(",") if c.strip())
        else:
            chosen[field.name] = parsed.pop(field.name)
    return options_class(**chosen)


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _click_option(field: dataclasses.Field, spec: OptionSpec) -> Any:
    flag = "--" + field.name.replace("_", "-")
    if spec.off_flag:
        return click.option(spec.off_flag, is_flag=True, help=spec.help)
    if isinstance(field.default, bool):
        return click.option(flag, is_flag=True, help=spec.help)
    if spec.comma_list:
        codes = ",".join(field.default) if isinstance(field.default, tuple) else ""
        return click.option(flag, default=codes, metavar="CODES", show_default=False, help=spec.help)
    show_default: bool | str = spec.default_text or True
    if spec.choices:
        return click.option(flag, type=click.Choice(spec.choices), default=field.default, help=spec.help)
    kind = "float" if "float" in str(field.type) else "int" if "int" in str(field.type) else "str"
    value_type: Any = {"float": float, "int": int, "str": str}[kind]
    if spec.minimum is not None or spec.maximum is not None:
        bounds = (spec.minimum, spec.maximum)
        value_type = click.FloatRange(*bounds) if kind == "float" else click.IntRange(*(_int(b) for b in bounds))
    return click.option(flag, type=value_type, default=field.default, show_default=show_default, help=spec.help)


def _int(bound: float | None) -> int | None:
    return None if bound is None else int(bound)


def add_definition_command(
    group: click.Group, what: str, doc: str, adder: str, describe: Callable[[dict[str, Any]], str]
) -> None:
    """`GROUP add PATH [--replace] [--json]`: store the YAML definition in PATH with `adder`
    ("module:function", imported when the command runs so `--help` stays light) and print `describe`
    of its result."""

    @group.command("add", help=doc)
    @click.argument("path", type=FILE)
    @click.option("--replace", is_flag=True, help=f"Update a {what} of the same name.")
    @output.json_option()
    @pass_app
    def add(app: AppContext, path: str, replace: bool, as_json: bool) -> None:
        module, function = adder.split(":")
        result = getattr(importlib.import_module(module), function)(app.registry, Path(path), replace=replace)
        if as_json:
            output.emit_json(result)
        else:
            click.echo(describe(result))
