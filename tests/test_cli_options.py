"""Options generated from an options class (`tuneloop.optionspec` → `tuneloop.cli.options`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import click
import pytest
from click.testing import CliRunner

from tuneloop.cli.options import options_from, options_of
from tuneloop.optionspec import option, spec_of
from tuneloop.pipelines.data.options import CurateOptions, SynthOptions


@dataclass
class _Knobs:
    share: float = option(0.1, "A share.", minimum=0.0, maximum=0.9)
    dedup: bool = option(True, "Keep duplicates.", off_flag="--no-dedup")
    cap: int | None = option(None, "A cap.", minimum=1, default_text="twice the count")
    codes: tuple[str, ...] = option((), "Codes.", comma_list=True)
    policy: str = option("hold", "A policy.", choices=("hold", "keep"))
    hidden: int = option(8, "Not offered.", on_cli=False)


def _command(seen: list[Any]) -> click.Command:
    @click.command()
    @options_of(_Knobs)
    def knobs(**parsed: Any) -> None:
        seen.append(options_from(_Knobs, parsed))
        assert parsed == {}, parsed  # every generated option was taken back

    return knobs


def test_parsed_options_build_the_class() -> None:
    seen: list[Any] = []
    args = ["--share", "0.5", "--no-dedup", "--cap", "3", "--codes", "en, DE", "--policy", "keep"]
    result = CliRunner().invoke(_command(seen), args)
    assert result.exit_code == 0, result.output
    assert seen == [_Knobs(share=0.5, dedup=False, cap=3, codes=("en", "de"), policy="keep")]
    CliRunner().invoke(_command(seen), [])
    assert seen[-1] == _Knobs()


@pytest.mark.parametrize(
    ("args", "named"), [(["--share", "0.95"], "--share"), (["--cap", "0"], "--cap"), (["--policy", "x"], "--policy")]
)
def test_out_of_bounds_values_are_refused_naming_the_option(args: list[str], named: str) -> None:
    result = CliRunner().invoke(_command([]), args)
    assert result.exit_code == 2 and named in result.output


def test_help_shows_defaults_and_leaves_out_what_is_not_offered() -> None:
    text = CliRunner().invoke(_command([]), ["--help"], terminal_width=200).output
    assert "twice the count" in text and "0.0<=x<=0.9" in text and "--no-dedup" in text
    assert "--hidden" not in text and "--dedup " not in text


@pytest.mark.parametrize("options_class", [CurateOptions, SynthOptions])
def test_every_offered_field_of_the_data_commands_has_a_spec(options_class: type) -> None:
    for field in dataclasses.fields(options_class):
        assert field.metadata, f"{options_class.__name__}.{field.name} is not declared with `option(...)`"
    assert [f.name for f in dataclasses.fields(options_class) if spec_of(f) is None] == (
        ["answer_temperature", "batch_size"] if options_class is SynthOptions else []
    )
