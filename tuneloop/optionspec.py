"""Options classes that describe their own command-line options.

A field made with `option(...)` carries its help and its bounds; `tuneloop.cli.options.options_of`
turns every such field into a click option and `options_from` builds the class back from what click
parsed, so a command cannot drift from the class it fills (`data curate`, `data synth`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

SPEC = "tuneloop.option"


@dataclass(frozen=True)
class OptionSpec:
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    off_flag: str | None = None  # a True default is turned off by this flag, e.g. `--no-pii`
    comma_list: bool = False  # a tuple of lower-case codes, given comma-separated
    default_text: str | None = None  # shown as the default where the value is computed (None)
    on_cli: bool = True


def option(default: Any, help: str, **spec: Any) -> Any:
    """A dataclass field with a default and how it is offered on the command line."""
    return dataclasses.field(default=default, metadata={SPEC: OptionSpec(help, **spec)})


def spec_of(field: dataclasses.Field) -> OptionSpec | None:
    spec = field.metadata.get(SPEC)
    return spec if isinstance(spec, OptionSpec) and spec.on_cli else None
