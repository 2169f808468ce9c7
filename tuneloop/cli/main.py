"""Entry point of the `tuneloop` console script: the group, its commands, and error reporting.

`tuneloop --help` must stay fast: nothing here imports torch, transformers, mlflow or evidently.
Errors from tuneloop's hierarchy print a message and a fix and exit with the error's code; any
other exception is reported in one line (set TUNELOOP_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import os
import sys

import click

from tuneloop import __version__
from tuneloop.cli import output
from tuneloop.cli.context import AppContext
from tuneloop.cli.options import FILE


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100, "show_default": True})
@click.option("--config", "config_file", type=FILE, help="tuneloop.toml to read (default: ./tuneloop.toml).")
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Let the libraries underneath (transformers, MLflow, ...) print their logs, warnings and progress bars.",
)
@click.version_option(__version__, prog_name="tuneloop")
@click.pass_context
def cli(ctx: click.Context, config_file: str | None, verbose: bool) -> None:
    """tuneloop: fine-tune, evaluate, promote and monitor LLMs, with everything in MLflow."""
    from tuneloop.quiet import quiet_libraries

    quiet_libraries(verbose_requested=verbose)
    ctx.obj = AppContext(config_file)


def _register_commands() -> None:
    from tuneloop.cli.config_cmd import config
    from tuneloop.cli.data_cmd import data_group
    from tuneloop.cli.db_cmd import db_group
    from tuneloop.cli.demo_cmd import demo
    from tuneloop.cli.eval_cmd import eval_group
    from tuneloop.cli.loop_cmd import alerts_group, loop_group, retrain_group, scheduler_group
    from tuneloop.cli.models_cmd import models
    from tuneloop.cli.monitor_cmd import monitor
    from tuneloop.cli.records_cmd import records_group
    from tuneloop.cli.serve_cmd import serve
    from tuneloop.cli.tokens_cmd import tokens_group
    from tuneloop.cli.traffic_cmd import traffic_group
    from tuneloop.cli.train_cmd import train
    from tuneloop.cli.up_cmd import up

    for command in (
        config,
        data_group,
        db_group,
        demo,
        models,
        monitor,
        records_group,
        serve,
        tokens_group,
        traffic_group,
        train,
        up,
        alerts_group,
        loop_group,
        retrain_group,
        scheduler_group,
    ):
        cli.add_command(command)
    cli.add_command(eval_group, name="eval")


_register_commands()


def main(argv: list[str] | None = None) -> int:
    from tuneloop.errors import TuneloopError

    wants_json = "--json" in (argv if argv is not None else sys.argv[1:])
    try:
        result = cli.main(args=argv, prog_name="tuneloop", standalone_mode=False)
        return result if isinstance(result, int) else 0  # click returns an Exit's code here instead of raising
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:  # usage errors: exit 2
        exc.show()
        return exc.exit_code
    except click.Abort:
        output.error("aborted")
        return 130
    except KeyboardInterrupt:
        output.error("interrupted")
        return 130
    except TuneloopError as exc:
        output.error(exc.message, exc.hint)
        if wants_json:
            output.emit_json(exc.to_dict())
        return exc.exit_code
    except Exception as exc:  # a bug or an unexpected library failure: one line, no traceback
        if os.environ.get("TUNELOOP_DEBUG"):
            raise
        message = _scrub(f"{type(exc).__name__}: {exc}")
        output.error(message, "rerun with TUNELOOP_DEBUG=1 for the traceback, and report it")
        if wants_json:
            output.emit_json({"error": "internal_error", "message": message})
        return 1


def _scrub(text: str) -> str:
    """Mask passwords in URLs and any secret the settings hold before printing `text`."""
    from tuneloop.settings import load_settings, mask_secrets

    try:
        return load_settings().scrub(text)
    except Exception:  # noqa: BLE001 - settings that do not load still leave URL passwords to mask
        return mask_secrets(text)


def entrypoint() -> None:
    sys.exit(main())
