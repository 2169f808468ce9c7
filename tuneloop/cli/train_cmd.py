"""`tuneloop train RECIPE`: validate, train, track in MLflow, register the adapter."""

from __future__ import annotations

import click

from tuneloop.cli import output
from tuneloop.cli.context import AppContext, pass_app
from tuneloop.cli.options import FILE


@click.command()
@click.argument("recipe", type=FILE, required=False)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a recipe key (dotted path), e.g. training.max_steps=20; `--keys` lists them.",
)
@click.option("--alias", default=None, help="Alias the registered version takes (gates apply), e.g. challenger.")
@click.option(
    "--resume", "resume_run_id", default=None, metavar="RUN_ID", help="Continue this run from its last checkpoint."
)
@click.option(
    "--check",
    is_flag=True,
    help="Validate the recipe, its data and its base model's registration, then stop (no model loads).",
)
@click.option(
    "--keys", "list_keys", is_flag=True, help="List every recipe key with its type, default and meaning, then stop."
)
@click.option(
    "--backend",
    type=click.Choice(["local", "kubernetes", "vertex"]),
    default="local",
    help="Where to train: here, as a Kubernetes Job (settings [kubernetes]), or a Vertex AI custom job spec.",
)
@click.option("--dry-run", is_flag=True, help="With a remote backend: print the job it would submit, submit nothing.")
@click.option(
    "--gpus", type=click.IntRange(0, 64), default=None, help="GPUs of the remote job (default: kubernetes.gpus)."
)
@output.json_option()
@pass_app
def train(
    app: AppContext,
    recipe: str | None,
    overrides: tuple[str, ...],
    alias: str | None,
    resume_run_id: str | None,
    check: bool,
    list_keys: bool,
    backend: str,
    dry_run: bool,
    gpus: int | None,
    as_json: bool,
) -> None:
    """Fine-tune with RECIPE (YAML; see examples/recipes/) and register the result.

    `tuneloop train --keys` lists every recipe key. `tuneloop train --resume RUN_ID` continues an
    unfinished run from its last checkpoint, with its own recipe.
    """
    import os

    if list_keys:
        _print_keys(as_json)
        return

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tuneloop.errors import UsageError
    from tuneloop.pipelines.data import formats as data_io
    from tuneloop.pipelines.training.recipes import load_recipe

    if backend == "local" and (dry_run or gpus is not None):
        raise UsageError(
            "--dry-run and --gpus apply to a remote backend",
            hint="add --backend kubernetes (or vertex), or launch local GPUs with torchrun (see README)",
        )
    if resume_run_id:
        if backend != "local":
            raise UsageError("`--resume` continues a run here", hint="drop --backend, or submit the recipe again")
        if recipe or overrides:
            raise UsageError(
                "`--resume` continues a run with the recipe it started with",
                hint="drop RECIPE and --set, or start a new run without --resume",
            )
        from tuneloop.pipelines.training.run import recipe_of_run
        from tuneloop.pipelines.training.run import train as run_training

        result = run_training(
            recipe_of_run(app.registry, resume_run_id), app.registry, resume_run_id=resume_run_id, alias=alias
        )
        _print_result(result, as_json)
        return
    if recipe is None:
        raise UsageError("missing RECIPE", hint="tuneloop train RECIPE.yaml, or tuneloop train --resume RUN_ID")
    parsed = load_recipe(recipe, list(overrides))
    if backend != "local":
        _submit(app, parsed, backend, dry_run, gpus, alias, as_json)
        return
    if check:
        from tuneloop.pipelines.training.run import resolve_base

        train_data = data_io.load(parsed.data.train, parsed.data.format)
        eval_data = data_io.load(parsed.data.eval, train_data.format) if parsed.data.eval else None
        base = resolve_base(app.registry, parsed.base)
        summary = {
            "recipe": recipe,
            "valid": True,
            "method": parsed.method,
            "train_rows": len(train_data),
            "eval_rows": len(eval_data) if eval_data else 0,
            "format": train_data.format,
            "base": f"{base.name}:{base.version}",
        }
        if as_json:
            output.emit_json(summary)
        else:
            click.echo(
                f"recipe `{recipe}` is valid: {parsed.method} on base {summary['base']}, "
                f"{summary['train_rows']} training and {summary['eval_rows']} eval rows ({summary['format']} format)"
            )
        return
    from pathlib import Path

    from tuneloop.pipelines.training.run import train as run_training

    if os.environ.get("RANK", "0") == "0":
        output.stage(f"training `{parsed.name}` ({parsed.method}) on {parsed.base}")
    result = run_training(parsed, app.registry, recipe_path=Path(recipe), alias=alias)
    _print_result(result, as_json)


def _submit(
    app: AppContext,
    recipe,
    backend: str,
    dry_run: bool,
    gpus: int | None,
    alias: str | None,
    as_json: bool,
) -> None:
    """Validate the recipe's local data, render the remote job, and submit it (kubernetes) or print it."""
    import uuid

    from tuneloop.pipelines.data import formats as data_io
    from tuneloop.pipelines.training import backends

    for path in (recipe.data.train, recipe.data.eval):
        if path is not None and not backends.is_remote(path):
            data_io.load(path, recipe.data.format)  # bad rows fail here, not an hour later on a GPU node
    settings = app.settings.kubernetes if gpus is None else app.settings.kubernetes.model_copy(update={"gpus": gpus})
    args = ["--alias", alias] if alias else []
    salt = uuid.uuid4().hex
    if backend == "kubernetes":
        submission = backends.submit_kubernetes(recipe, settings, args, salt=salt, dry_run=dry_run)
    else:
        submission = backends.vertex_custom_job(recipe, settings, args, salt=salt)
    if as_json:
        output.emit_json(submission.as_dict())
    elif not submission.submitted:
        click.echo(backends.describe(submission), nl=False)
        if backend == "vertex" and not dry_run:
            click.echo(f"# submit it with: {submission.follow}", err=True)
    else:
        click.echo(f"submitted job {submission.name}; follow it: {submission.follow}")


def _print_keys(as_json: bool) -> None:
    from tuneloop.pipelines.training.recipes import recipe_keys

    rows = recipe_keys()
    if as_json:
        output.emit_json(rows)
        return
    click.echo("Recipe keys (YAML; nested keys as `section.key`, also for --set):\n")
    click.echo(output.table(rows, ["key", "type", "default", "methods", "help"]))


def _print_result(result, as_json: bool) -> None:
    if result.version is None:  # a non-main rank of a distributed run: rank 0 reports
        return
    if as_json:
        output.emit_json(result.as_dict())
        return
    click.echo(
        f"registered {result.model} v{result.version} from run {result.run_id}"
        + (f"  (alias {result.alias})" if result.alias else "")
    )
    from tuneloop.pipelines.training.run import FINAL_LOSS_ROWS

    click.echo(
        f"  loss of the final weights on the first {FINAL_LOSS_ROWS} training rows (eval mode, no dropout; "
        f"the bar shows the training-mode loss of the last steps): {result.final_loss:.4f}"
    )
    click.echo(f"  precision {result.precision['dtype']} ({result.precision['reason']})")
