"""`tuneloop train RECIPE`: validate, train, track in MLflow, register the adapter."""

from __future__ import annotations

import click

from tuneloop.cli import output
from tuneloop.cli.main import AppContext, pass_app


@click.command()
@click.argument("recipe", type=click.Path(dir_okay=False), required=False)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe key, e.g. training.max_steps=20.")
@click.option("--alias", default=None, help="Alias the registered version takes (gates apply), e.g. challenger.")
@click.option("--resume", "resume_run_id", default=None, metavar="RUN_ID", help="Continue this run from its last checkpoint.")
@click.option("--check", is_flag=True, help="Validate the recipe and its data, then stop (no model loads).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document on stdout.")
@pass_app
def train(app: AppContext, recipe: str | None, overrides: tuple[str, ...], alias: str | None, resume_run_id: str | None,
          check: bool, as_json: bool) -> None:
    """Fine-tune with RECIPE (YAML; see examples/recipes/) and register the result.

    `tuneloop train --resume RUN_ID` continues a run from its last checkpoint, with its own recipe.
    """
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from pipelines import data as data_io
    from pipelines.recipes import load_recipe
    from tuneloop.errors import UsageError

    if resume_run_id:
        if recipe or overrides:
            raise UsageError("`--resume` continues a run with the recipe it started with",
                             hint="drop RECIPE and --set, or start a new run without --resume")
        from pipelines.training.run import recipe_of_run
        from pipelines.training.run import train as run_training

        result = run_training(recipe_of_run(app.registry, resume_run_id), app.registry, resume_run_id=resume_run_id, alias=alias)
        _print_result(result, as_json)
        return
    if recipe is None:
        raise UsageError("missing RECIPE", hint="tuneloop train RECIPE.yaml, or tuneloop train --resume RUN_ID")
    parsed = load_recipe(recipe, list(overrides))
    if check:
        train_data = data_io.load(parsed.data.train, parsed.data.format)
        eval_data = data_io.load(parsed.data.eval, train_data.format) if parsed.data.eval else None
        summary = {"recipe": recipe, "valid": True, "method": parsed.method, "train_rows": len(train_data),
                   "eval_rows": len(eval_data) if eval_data else 0, "format": train_data.format}
        if as_json:
            output.emit_json(summary)
        else:
            click.echo(f"recipe and data are valid: {summary}")
        return
    from pathlib import Path

    from pipelines.training.run import train as run_training

    if os.environ.get("RANK", "0") == "0":
        output.stage(f"training `{parsed.name}` ({parsed.method}) on {parsed.base}")
    result = run_training(parsed, app.registry, recipe_path=Path(recipe), alias=alias)
    _print_result(result, as_json)


def _print_result(result, as_json: bool) -> None:  # type: ignore[no-untyped-def]
    if result.version is None:  # a non-main rank of a distributed run: rank 0 reports
        return
    if as_json:
        output.emit_json(result.as_dict())
        return
    click.echo(f"registered {result.model} v{result.version} from run {result.run_id}"
               + (f"  (alias {result.alias})" if result.alias else ""))
    click.echo(f"  final loss {result.final_loss:.4f}; precision {result.precision['dtype']} ({result.precision['reason']})")
